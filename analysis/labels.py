"""Dice between predicted and reference label volumes, per study (eid, imaging instance) and structure.

Predicted volumes may be in the model's tensor layout (``LABEL_VOLUME_SHAPE`` = 256 x 256 x 13, as the
pipeline's ``--save_labels`` writes them to ``labels/method=<m>/{eid}_{instance}.npz``) while references
(e.g. the generator's ``truth_labels/{eid}_20209_{instance}_0.npz``) are on the acquisition grid
(rows, cols, n_slices). :func:`to_acquisition_grid` undoes the placement with the pipeline's own inverse,
``lvmass.core.tensor.unplace_label_volume``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis import io as aio
from lvmass.core.contracts import LABEL_VOLUME_SHAPE, TENSOR_SLICES
from lvmass.core.identity import parse_input_name
from lvmass.core.metrics import DICE_LABELS, dice_by_label
from lvmass.core.tensor import slice_window_start, unplace_label_volume

DICE_COLUMNS: tuple[str, ...] = ("method", "eid", "instance", "structure", "dice", "status")


def to_acquisition_grid(
    volume: np.ndarray, shape: tuple[int, int, int], *, slice_start: int = 0,
    acquired_pixel_spacing_mm: tuple[float, float] | None = None, grid_pixel_mm: float | None = None,
) -> np.ndarray:
    """The (rows, cols, slices) = ``shape`` labels of a volume: the volume itself when it is already on
    that grid, else a tensor-layout volume (LABEL_VOLUME_SHAPE) put back by
    ``lvmass.core.tensor.unplace_label_volume`` (its slice k is acquired slice ``slice_start + k``;
    resampled back from ``grid_pixel_mm`` to ``acquired_pixel_spacing_mm`` when the pipeline's grid was
    not the acquisition's). Raises ValueError for any other shape."""
    if volume.shape == tuple(shape):
        return volume
    if volume.shape != LABEL_VOLUME_SHAPE:
        raise ValueError(
            f"a label volume of shape {volume.shape} is neither on the {tuple(shape)} acquisition grid "
            f"nor in the tensor layout {LABEL_VOLUME_SHAPE}"
        )
    return unplace_label_volume(volume, shape, slice_start=slice_start,
                                acquired_pixel_spacing_mm=acquired_pixel_spacing_mm,
                                grid_pixel_mm=grid_pixel_mm)


def _slice_start(recorded: int | None, reference: np.ndarray) -> int:
    """The first acquired slice of a tensor-layout prediction: as its file records it; else 0 for a
    stack that fits the tensor; else the pipeline's window rule (``slice_window_start``) applied to the
    reference's labelled slices, standing in for the InlineVF-outlined slices the pipeline used."""
    if recorded is not None:
        return recorded
    if reference.shape[2] <= TENSOR_SLICES:
        return 0
    return slice_window_start([bool(reference[..., k].any()) for k in range(reference.shape[2])])


def _predicted_files(
    predicted_dir: str, instance: int | None
) -> dict[str, dict[tuple[int, int | None], str]]:
    """``{method: {(eid, instance): path}}`` from one listing: sub-folders (``method=<m>/`` or ``<m>/``)
    holding .npz files, or the folder itself as method 'predicted'. (eid, instance) is what the file
    name says (``lvmass.core.identity.parse_input_name``); other names are skipped."""
    base = predicted_dir.rstrip("/")
    out: dict[str, dict[tuple[int, int | None], str]] = {}
    for path in aio.list_files(predicted_dir, ".npz"):
        relative = path[len(base) + 1 :]
        method = relative.split("/", 1)[0].removeprefix("method=") if "/" in relative else "predicted"
        name = parse_input_name(path)
        if name is not None and (instance is None or name.instance == instance):
            out.setdefault(method, {})[(name.eid, name.instance)] = path
    return out


def dice_per_study(
    predicted_dir: str,
    reference_dir: str,
    labels: Mapping[str, int] = DICE_LABELS,
    *,
    instance: int | None = None,
) -> pd.DataFrame:
    """One row per method x study x structure (``DICE_COLUMNS``) for every predicted volume with a
    reference of the same (eid, instance); a study that cannot be compared gets rows with its reason.
    ``instance`` keeps only that imaging visit's files (the analysis's ``--instance``).

    Each reference volume is read once, whatever the number of methods."""
    references = aio.label_files(reference_dir, instance=instance)
    by_method = _predicted_files(predicted_dir, instance)
    predicted: dict[tuple[int, int | None], dict[str, str]] = {}
    for method, files in by_method.items():
        for key, path in files.items():
            predicted.setdefault(key, {})[method] = path
    rows: list[dict[str, object]] = []

    def add(method: str, key: tuple[int, int | None], scores: Mapping[str, float], status: str) -> None:
        rows.extend(
            {"method": method, "eid": key[0], "instance": key[1], "structure": s, "dice": d, "status": status}
            for s, d in scores.items()
        )

    missing = dict.fromkeys(labels, np.nan)
    for key in sorted(predicted, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        if key not in references:
            for method in predicted[key]:
                add(method, key, missing, "no reference labels")
            continue
        reference = aio.read_label_volume(references[key])
        for method, path in predicted[key].items():
            try:
                record = aio.read_label_record(path)
                start = _slice_start(record.slice_start, reference)
                on_acquisition = to_acquisition_grid(
                    record.volume, reference.shape, slice_start=start,
                    acquired_pixel_spacing_mm=record.acquired_pixel_spacing_mm,
                    grid_pixel_mm=record.grid_pixel_mm)
                scores = dice_by_label(on_acquisition, reference, labels)
            except ValueError as exc:
                add(method, key, missing, f"{path}: {exc}")
                continue
            add(method, key, scores, "ok")
    frame = pd.DataFrame(rows, columns=list(DICE_COLUMNS))
    rank = frame["method"].map({m: i for i, m in enumerate(by_method)})
    return frame.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)
