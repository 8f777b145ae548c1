"""Small 3-D vector helpers shared by the image generator and the label-map generator."""

from __future__ import annotations

import math

import numpy as np


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to length 1."""
    return v / np.linalg.norm(v)


def rotate(vec: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``vec`` by ``angle`` radians about the unit ``axis``."""
    return (
        vec * math.cos(angle)
        + np.cross(axis, vec) * math.sin(angle)
        + axis * float(np.dot(axis, vec)) * (1.0 - math.cos(angle))
    )
