"""A model's weights as a backend-neutral ``.npz``: ``model.get_weights()`` in layer order as ``arr_0,
arr_1, ...`` (no optimizer state), so a run fitted on any Keras backend loads into the fixed-shape twin the
export builds. The one save and load of the trainers (``trainer.portable``, ``trainer.fit``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def save_weights(model: Any, path: str) -> None:
    """Write ``model.get_weights()`` to ``path`` atomically (a temp file moved into place)."""
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, *model.get_weights())
    os.replace(tmp, path)


def load_weights(model: Any, path: str) -> None:
    """Set ``model``'s weights from a file :func:`save_weights` wrote."""
    with np.load(path) as stored:
        arrays = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    model.set_weights(arrays)
