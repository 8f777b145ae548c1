"""ML4H_seg's heart-centred crop, as a policy the model handler is given (:class:`CropPolicy`), pure: which
windows of the tensor grid to segment and whether what came back holds the whole LV.

The tensor is 256 x 256 pixels of 1.86 mm, a 476 mm field of view; the heart fills a 40-50 pixel square of
it. When the model's card has ``crop_inference`` (a ``serving_crop`` signature with open rows and columns,
``trainer/export.py``), the handler segments a ``crop_px`` square (128, the bundled model's training crop;
the card's ``crop_px`` when it names one) instead of the whole tensor, and keeps only its inner window, the
crop less ``margin_px`` (32 px, 60 mm) on each side (:meth:`CropPolicy.segment`):

1. first pass: the crop around the LV of the participant's InlineVF outlines when it carries them (the
   pipeline decodes them for the InlineVF method anyway; :func:`lv_hint_box`), else at the centre of the
   grid. The hint only places the crop; where it finds no LV, the centred crop is tried next;
2. the LV is the largest connected component of cavity and myocardium in the kept window (:func:`lv_box`).
   If it does not touch the window's edges (other than the grid's own), its labels are kept and everything
   outside the window is background;
3. otherwise a second crop is centred on that LV (its cut-off side extended, :meth:`Window.extend_clipped`;
   larger, in steps of ``align_px``, if the LV needs it) and checked the same way; if that fails too, or no
   LV of at least ``min_lv_ml`` is found, the whole field of view is segmented, as without a crop.

Why the labels are the same: a U-Net is fully convolutional; crop origins and sizes are multiples of the
pooling factor (``align_px``, 8) so every pooling window falls where it does on the full tensor, and an
output voxel depends only on the pixels within ``receptive_field_px`` (52) of it. Measured on synthetic
cohorts and the real study (``benchmarks/bench_inference.py speed``, ``tests/test_inference_crop.py``):
inside the kept window the labels equal the full field of view's, except, rarely, a voxel whose two most
likely classes are within 0.01 of each other (a coin toss either way; 0.036 g); what the crop drops are
labels 60 mm or more from the LV, never part of it (on the real study, 39 voxels of false-positive
"myocardium" 190 mm away).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from lvmass.core import contracts

# 128 px: the bundled model's training crop (its card's hyperparameters.crop_px). 32 px: no labels within
# 60 mm of a crop edge; crops with at least this margin gave the full field of view's labels on every
# participant measured, 20-30 px did not always.
CROP_PX = 128
CROP_MARGIN_PX = contracts.SEG_WINDOW_MARGIN_PX
MIN_LV_ML = 20.0  # smaller "LV" (cavity + myocardium) in a crop: no heart found there
GRID = contracts.LABEL_VOLUME_SHAPE[:2]
# The paths a segmentation takes (the handler counts each): the first crop held the LV, the second did,
# or the whole field of view was segmented.
FIRST_PASS, SECOND_PASS, FULL_FIELD_OF_VIEW = "crop_first_pass", "crop_second_pass", "full_field_of_view"
PATHS = (FIRST_PASS, SECOND_PASS, FULL_FIELD_OF_VIEW)
Box = tuple[int, int, int, int]  # inclusive (row_min, row_max, col_min, col_max)


@dataclass(frozen=True)
class Window:
    """An in-plane window of the tensor grid: rows ``row0:row0 + rows``, columns ``col0:col0 + cols``."""

    row0: int
    col0: int
    rows: int
    cols: int

    @property
    def index(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row0 + self.rows), slice(self.col0, self.col0 + self.cols)

    def inner(self, margin_px: int, grid: tuple[int, int]) -> Window:
        """This window less ``margin_px`` on each side that is not the grid's own edge."""
        top = margin_px if self.row0 > 0 else 0
        left = margin_px if self.col0 > 0 else 0
        bottom = margin_px if self.row0 + self.rows < grid[0] else 0
        right = margin_px if self.col0 + self.cols < grid[1] else 0
        return Window(self.row0 + top, self.col0 + left, self.rows - top - bottom, self.cols - left - right)

    def shrunk(self, margin_px: int) -> Window:
        """This window less ``margin_px`` on every side (grid edges or not)."""
        return Window(self.row0 + margin_px, self.col0 + margin_px, self.rows - 2 * margin_px,
                      self.cols - 2 * margin_px)

    def clear_of_edges(self, box: Box, grid: tuple[int, int]) -> bool:
        """Whether the inclusive box lies inside this window without touching an edge of it that is not
        the grid's own edge: a labelled component that touches such an edge may go on beyond it."""
        return (self.holds(box)
                and (box[0] > self.row0 or self.row0 == 0)
                and (box[1] < self.row0 + self.rows - 1 or self.row0 + self.rows == grid[0])
                and (box[2] > self.col0 or self.col0 == 0)
                and (box[3] < self.col0 + self.cols - 1 or self.col0 + self.cols == grid[1]))

    def extend_clipped(self, box: Box, grid: tuple[int, int]) -> Box:
        """Where a box cut by this window's edges (not the grid's) probably ends, to place the next crop
        (whatever that crop finds is checked again): in short axis an LV is about as long as it is wide,
        so an axis cut on one side is taken to be as long as the other axis, and at least 16 px longer
        than what was seen; an axis cut on both sides grows 16 px each way."""
        low_cut = (box[0] == self.row0 and self.row0 > 0, box[2] == self.col0 and self.col0 > 0)
        high_cut = (box[1] == self.row0 + self.rows - 1 and self.row0 + self.rows < grid[0],
                    box[3] == self.col0 + self.cols - 1 and self.col0 + self.cols < grid[1])
        extent = (box[1] - box[0] + 1, box[3] - box[2] + 1)
        grown = list(box)
        for axis in (0, 1):
            other = 1 - axis
            clean_other = not (low_cut[other] or high_cut[other])
            span = max(extent[axis] + 16, extent[other] if clean_other else 0)
            if low_cut[axis] and high_cut[axis]:
                grown[2 * axis] -= 16
                grown[2 * axis + 1] += 16
            elif low_cut[axis]:
                grown[2 * axis] = grown[2 * axis + 1] - span + 1
            elif high_cut[axis]:
                grown[2 * axis + 1] = grown[2 * axis] + span - 1
        return (max(0, grown[0]), min(grid[0] - 1, grown[1]), max(0, grown[2]), min(grid[1] - 1, grown[3]))

    def holds(self, box: Box) -> bool:
        """Whether the inclusive box ``(row_min, row_max, col_min, col_max)`` lies inside this window."""
        return (self.row0 <= box[0] and box[1] < self.row0 + self.rows
                and self.col0 <= box[2] and box[3] < self.col0 + self.cols)

    def offset(self, box: Box) -> Box:
        """A box found inside this window, in the grid's coordinates."""
        return box[0] + self.row0, box[1] + self.row0, box[2] + self.col0, box[3] + self.col0


def _aligned_span(centre: float, size: int, extent: int, align: int) -> int:
    """Origin of a ``size``-wide span centred near ``centre``, a multiple of ``align``, inside ``extent``."""
    origin = round((centre - size / 2) / align) * align
    return int(min(max(origin, 0), extent - size))


def crop_window(centre: tuple[float, float], size: tuple[int, int], grid: tuple[int, int],
                align: int) -> Window:
    """A window of ``size`` (multiples of ``align``) centred near ``centre``, with aligned origins."""
    return Window(_aligned_span(centre[0], size[0], grid[0], align),
                  _aligned_span(centre[1], size[1], grid[1], align), size[0], size[1])


def window_around(box: Box, *, crop_px: int, margin_px: int, grid: tuple[int, int],
                  align: int) -> Window | None:
    """The crop centred on the inclusive ``box`` that keeps ``margin_px`` around it: ``crop_px`` square,
    or larger in steps of ``align`` where the box needs it; None when that is the whole grid."""
    sizes = []
    for extent, low, high in ((grid[0], box[0], box[1]), (grid[1], box[2], box[3])):
        need = high - low + 1 + 2 * margin_px
        sizes.append(max(crop_px, math.ceil(need / align) * align))
        if sizes[-1] >= extent:
            return None
    centre = ((box[0] + box[1] + 1) / 2, (box[2] + box[3] + 1) / 2)
    return crop_window(centre, (sizes[0], sizes[1]), grid, align)


def lv_box(labels: np.ndarray, *, min_voxels: int) -> Box | None:
    """Inclusive in-plane box (row_min, row_max, col_min, col_max) of the largest connected component of
    cavity and myocardium in a ``(rows, cols, slices)`` label volume; None below ``min_voxels``."""
    components, count = ndimage.label(labels != contracts.LABEL_MAP["background"])
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    if sizes[largest - 1] < min_voxels:
        return None
    rows, cols, _ = np.nonzero(components == largest)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def lv_hint_box(example: Any) -> Box | None:
    """Where the example's InlineVF outlines put the LV on the tensor grid (the in-plane box of its
    labels), if it carries them (``inlinevf_labels``, as the pipeline's participants do); else None.

    Only where ML4H_seg's first crop goes: the labels it keeps are checked the same way wherever the crop
    is, so the hint saves a second crop, never changes a label.
    """
    labels = getattr(example, "inlinevf_labels", None)
    if labels is None or np.shape(labels)[:2] != contracts.LABEL_VOLUME_SHAPE[:2]:
        return None
    rows = np.flatnonzero(np.any(labels, axis=(1, 2)))
    cols = np.flatnonzero(np.any(labels, axis=(0, 2)))
    if rows.size == 0 or cols.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


# A model call on one window: (the window kept of it, its argmax labels over that kept window).
SegmentWindow = Callable[[Window], tuple[Window, np.ndarray]]


@dataclass(frozen=True)
class CropPolicy:
    """How ML4H_seg segments a participant through heart-centred crops (module docstring).

    ``crop_px``: the first crop's side (left at :data:`CROP_PX`, the card's ``crop_inference.crop_px`` is
    taken where it names one: :meth:`first_crop_px`); ``margin_px``: what is left off each side of a crop
    (its labels are never kept); ``min_lv_ml``: the smallest LV that counts as found. Raises ValueError
    unless ``0 <= 2 * margin_px < crop_px``."""

    crop_px: int = CROP_PX
    margin_px: int = CROP_MARGIN_PX
    min_lv_ml: float = MIN_LV_ML

    def __post_init__(self) -> None:
        if not 0 <= 2 * self.margin_px < self.crop_px:
            raise ValueError(f"need 0 <= 2 * crop_margin_px < crop_px. Received: {self.margin_px}, "
                             f"{self.crop_px}")

    def first_crop_px(self, card_crop_px: int | None) -> int:
        """The first crop's side: the card's when this policy was left at its default, else its own."""
        return int(card_crop_px) if card_crop_px and self.crop_px == CROP_PX else self.crop_px

    def min_voxels(self, spacing_mm: Sequence[float]) -> int:
        """Voxels of a ``spacing_mm`` (row, col, slice) grid in :attr:`min_lv_ml`."""
        voxel_ml = float(np.prod(np.asarray(spacing_mm, dtype=np.float32), dtype=np.float64)) / 1000.0
        return max(1, math.ceil(self.min_lv_ml / voxel_ml)) if voxel_ml > 0 else 1

    def segment(self, segment_window: SegmentWindow, *, n_slices: int, spacing_mm: Sequence[float],
                align_px: int, card_crop_px: int | None = None,
                hint: Box | None = None) -> tuple[np.ndarray | None, str]:
        """The labels ``(256, 256, n_slices)`` uint8 of the LV found through at most two crops, each
        segmented by ``segment_window`` (the model call), and the path taken (:data:`PATHS`); ``(None,
        FULL_FIELD_OF_VIEW)`` when the whole field of view must be segmented instead."""
        crop_px = self.first_crop_px(card_crop_px)
        min_voxels = self.min_voxels(spacing_mm)
        centred = crop_window((GRID[0] / 2, GRID[1] / 2), (crop_px, crop_px), GRID, align_px)
        hinted = None if hint is None else window_around(
            hint, crop_px=crop_px, margin_px=self.margin_px, grid=GRID, align=align_px)
        window: Window | None = hinted or centred
        for path in (FIRST_PASS, SECOND_PASS):
            assert window is not None
            kept, labels = segment_window(window)
            box = lv_box(labels, min_voxels=min_voxels)
            if box is None:
                if window == hinted and hinted != centred:  # a wrong hint: look where there is none
                    window = centred
                    continue
                break
            box = kept.offset(box)
            if kept.clear_of_edges(box, GRID):
                full = np.zeros((*GRID, n_slices), dtype=np.uint8)
                full[kept.index] = labels
                return full, path
            window = window_around(kept.extend_clipped(box, GRID), crop_px=crop_px, margin_px=self.margin_px,
                                   grid=GRID, align=align_px)
            if window is None:
                break
        return None, FULL_FIELD_OF_VIEW
