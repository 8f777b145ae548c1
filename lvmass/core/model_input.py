"""What a model takes: an example with the model tensor and its voxel (:class:`ModelExample`,
:class:`ModelInput`), checked against the tensor contract before a signature is called
(:func:`check_example`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lvmass.core import contracts


class ModelExample(Protocol):
    """What the handler needs from an example: the model tensor and its voxel size."""

    @property
    def image(self) -> np.ndarray: ...

    @property
    def spacing_mm(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelInput:
    """The minimal example: a ``contracts.TENSOR_SHAPE`` float32 image and its (row, col, slice) mm."""

    image: np.ndarray
    spacing_mm: np.ndarray


def check_example(example: ModelExample, index: int, slices: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One example's ``image`` (1, 256, 256, S, 1) and ``spacing_mm`` (1, 3) for a signature call; ``slices``
    the model's slots (13) or None (a per-slice model: any number of slices).

    Raises ``ValueError`` naming the example's index when a shape differs from the contract."""
    shape = np.shape(example.image)
    grid = (contracts.TENSOR_ROWS, contracts.TENSOR_COLS)
    if (len(shape) != 4 or shape[:2] != grid or shape[3] != contracts.TENSOR_CHANNELS
            or (slices is not None and shape[2] != slices)
            or not 1 <= shape[2] <= max(contracts.MAX_PER_SLICE_SLICES, contracts.TENSOR_SLICES)):
        expected = (*grid, "any" if slices is None else slices, contracts.TENSOR_CHANNELS)
        raise ValueError(f"example {index}: image shape {shape}, expected {expected}")
    if np.shape(example.spacing_mm) != (len(contracts.SPACING_FIELDS),):
        raise ValueError(f"example {index}: spacing_mm shape {np.shape(example.spacing_mm)}, expected (3,)")
    return (np.asarray(example.image, dtype=np.float32)[None],
            np.asarray(example.spacing_mm, dtype=np.float32)[None])
