"""Dice between predicted and reference label volumes, per study and structure.

Predicted volumes may be in the model's tensor layout (``LABEL_VOLUME_SHAPE`` = 256 x 256 x 13, each slice
zero-padded centred, the odd remainder at the bottom/right, slices base to apex with padding at the
apical end; ``beam_pipeline.contracts``) while references (e.g. the generator's ``truth_labels``) are in
the acquisition grid (rows, cols, n_slices). :func:`to_acquisition_grid` undoes the padding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis import io as aio
from analysis.stats import DICE_LABELS, dice_by_label


def to_acquisition_grid(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The (rows, cols, slices) = ``shape`` window of a centred, zero-padded volume (a view when the
    shapes already agree). Raises ValueError when ``shape`` does not fit inside the volume."""
    if volume.shape == tuple(shape):
        return volume
    rows, cols, n_slices = shape
    if volume.ndim != 3 or rows > volume.shape[0] or cols > volume.shape[1] or n_slices > volume.shape[2]:
        raise ValueError(f"a {tuple(shape)} grid does not fit inside a padded volume of shape {volume.shape}")
    top = (volume.shape[0] - rows) // 2
    left = (volume.shape[1] - cols) // 2
    return volume[top : top + rows, left : left + cols, :n_slices]


def _method_folders(predicted_dir: str) -> dict[str, str]:
    """``{method: folder}``: sub-folders holding .npz files, or the folder itself as 'predicted'."""
    files = aio.list_files(predicted_dir, ".npz")
    base = predicted_dir.rstrip("/")
    folders: dict[str, str] = {}
    for path in files:
        relative = path[len(base) + 1 :]
        if "/" in relative:
            method = relative.split("/", 1)[0].removeprefix("method=")
            folders.setdefault(method, f"{base}/{relative.split('/', 1)[0]}")
        else:
            folders.setdefault("predicted", base)
    return folders


def dice_per_study(
    predicted_dir: str, reference_dir: str, labels: Mapping[str, int] = DICE_LABELS
) -> pd.DataFrame:
    """One row per method x study x structure (method, eid, structure, dice, status) for every
    predicted volume with a reference of the same eid; a study that cannot be compared gets a row
    with its reason."""
    references = aio.label_files(reference_dir)
    rows = []
    for method, folder in _method_folders(predicted_dir).items():
        for eid, path in sorted(aio.label_files(folder).items()):
            if eid not in references:
                rows += [
                    {
                        "method": method,
                        "eid": eid,
                        "structure": s,
                        "dice": np.nan,
                        "status": "no reference labels",
                    }
                    for s in labels
                ]
                continue
            reference = aio.read_label_volume(references[eid])
            try:
                predicted = to_acquisition_grid(aio.read_label_volume(path), reference.shape)
                scores = dice_by_label(predicted, reference, labels)
            except ValueError as exc:
                rows += [
                    {"method": method, "eid": eid, "structure": s, "dice": np.nan, "status": f"{path}: {exc}"}
                    for s in labels
                ]
                continue
            rows += [
                {"method": method, "eid": eid, "structure": s, "dice": d, "status": "ok"}
                for s, d in scores.items()
            ]
    return pd.DataFrame(rows, columns=["method", "eid", "structure", "dice", "status"])
