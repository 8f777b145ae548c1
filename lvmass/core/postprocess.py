"""Label post-processing a segmentation model's card asks for (``ModelCard.postprocess``): pure functions
of a ``(rows, cols, slices)`` label volume, applied by the model handler to the argmax
(:data:`POSTPROCESSING`) and by the evaluation scripts to a checkpoint's predictions alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from lvmass.core import contracts
from lvmass.core.ring import close_rings


def largest_lv_component(labels: np.ndarray, *, spacing_mm: Sequence[float] | None = None,
                         max_offset_mm: float = 30.0) -> np.ndarray:
    """``labels`` (rows, cols, slices) with only the LV kept; a new array.

    The LV is the largest 3-D connected component of cavity and myocardium together. On each slice, of
    its 2-D components only the one nearest the LV's axis is kept (the axis: the main component's
    cavity centroid on that slice, else on the whole stack), and only if its centroid lies within
    ``max_offset_mm`` of it (``spacing_mm``: the grid's row and column mm; without it, pixels are taken as
    mm). What a per-slice model finds elsewhere (the RV, a vessel, the stomach, a bright blob above the base)
    is not the LV that the other slices outline, even where it touches the LV's component on a neighbouring
    slice."""
    arr = np.asarray(labels)
    lv = arr != contracts.BACKGROUND
    components, count = ndimage.label(lv)
    if count == 0:
        return arr.copy()
    sizes = np.bincount(components.ravel())[1:]
    main = components == int(np.argmax(sizes)) + 1
    cavity = main & (arr == contracts.LV_CAVITY)
    axis_all = np.argwhere(cavity if cavity.any() else main)[:, :2].mean(axis=0)
    row_mm, col_mm = (float(spacing_mm[0]), float(spacing_mm[1])) if spacing_mm is not None else (1.0, 1.0)
    keep = np.zeros(arr.shape, dtype=bool)
    for k in range(arr.shape[2]):
        if not main[:, :, k].any():
            continue
        here = np.argwhere(cavity[:, :, k])
        axis = here.mean(axis=0) if here.size else axis_all
        pieces, n = ndimage.label(lv[:, :, k])
        best, best_mm = 0, max_offset_mm
        for piece in range(1, n + 1):
            centre = np.argwhere(pieces == piece).mean(axis=0)
            offset_mm = float(np.hypot((centre[0] - axis[0]) * row_mm, (centre[1] - axis[1]) * col_mm))
            if offset_mm <= best_mm:
                best, best_mm = piece, offset_mm
        if best:
            keep[:, :, k] = pieces == best
    return np.where(keep, arr, contracts.BACKGROUND).astype(arr.dtype)


def lv_with_closed_rings(labels: np.ndarray, *, spacing_mm: Sequence[float] | None = None) -> np.ndarray:
    """The LV alone (:func:`largest_lv_component`), then each slice's short gaps in the myocardial ring
    closed and what is fused to its outside cut (:func:`lvmass.core.ring.close_rings`); a new array.

    Why both: a per-slice model's stray blobs elsewhere are not the LV, and a short stretch of thin wall it
    missed would leave the ring open (mass too low, the slice failing QC's ring check)."""
    return close_rings(largest_lv_component(labels, spacing_mm=spacing_mm))


LARGEST_COMPONENT = "largest_component"
LV_WITH_CLOSED_RINGS = "largest_component+closed_rings"

# A card's postprocess name -> the function (called with the grid's row and column mm as spacing_mm).
POSTPROCESSING: dict[str, Callable[..., np.ndarray]] = {
    LARGEST_COMPONENT: largest_lv_component,
    LV_WITH_CLOSED_RINGS: lv_with_closed_rings,
}
