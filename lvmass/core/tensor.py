"""Build the model tensor ``(256, 256, 13, 1)`` from a decoded study; the one shared layout function.

The layout is documented once in :mod:`lvmass.core.contracts`: slices base to apex at indices
``0..n-1``, each slice resampled in-plane to the grid's pixel size (the model's; linear with Gaussian
anti-aliasing for images, nearest neighbour for labels), zero-padded centred (odd remainder bottom/right),
centre-cropped and flagged when larger than 256, intensities z-scored over the acquired pixels with
padding exactly 0. The pipeline (inference), tensorize (TFRecords) and the trainer all call these
functions, so image and labels always share one placement.

Resampling keeps the centre of the acquired field of view at the centre of the resampled one: output
pixel ``i`` of ``n_out`` samples the acquisition at ``(i - (n_out - 1) / 2) * grid_mm / acquired_mm +
(n_in - 1) / 2``, with ``n_out = round(n_in * acquired_mm / grid_mm)``; :func:`unplace_label_volume`
inverts it.

Slots. The paper's 3-D models take 13 slots (``n_slots=contracts.TENSOR_SLICES``, the default): past 13
slices, 13 contiguous slices are kept. The window is the one holding the most slices with an InlineVF
outline (ties: the most basal), else the 13 most basal; the tensor is flagged ``too_many_slices_truncated``.
:func:`build_label_volume` applies the same rule to the label slices (non-empty labels mark the outlined
slices), so both stay aligned. A per-slice model (``n_slots=None``) gets every acquired slice and no
padding slot: ``(256, 256, n_slices, 1)`` (at most ``contracts.MAX_PER_SLICE_SLICES``, flagged beyond).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lvmass.core import contracts
from lvmass.core.study import DecodedStudy


@dataclass(frozen=True)
class ImageTensor:
    """The model input for one participant: ``image`` float32 TENSOR_SHAPE, ``spacing_mm`` float32
    (row_mm, col_mm, slice_mm) of the tensor's grid, the number of acquired slices placed, the first
    acquired slice used, the flags raised while building it, and the acquisition's own PixelSpacing with
    the in-plane scale applied (acquired / grid pixel size per axis; 1.0 where nothing was resampled)."""

    image: np.ndarray
    spacing_mm: np.ndarray
    n_slices_used: int
    qc_flags: tuple[str, ...]
    slice_start: int = 0
    n_slices_acquired: int = 0
    acquired_pixel_spacing_mm: tuple[float, float] = (0.0, 0.0)
    in_plane_scale: tuple[float, float] = (1.0, 1.0)


def grid_pixel_pair_mm(
    acquired_pixel_spacing_mm: Sequence[float], grid_pixel_mm: float | None
) -> tuple[float, float]:
    """(row, col) pixel size of the tensor grid: ``grid_pixel_mm`` in both directions, or the acquired
    spacing itself when ``grid_pixel_mm`` is None (no resampling)."""
    row_mm, col_mm = (float(v) for v in acquired_pixel_spacing_mm)
    if not (np.isfinite(row_mm) and np.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
        raise ValueError(
            f"PixelSpacing must be two positive numbers. Received {list(acquired_pixel_spacing_mm)}")
    if grid_pixel_mm is None:
        return row_mm, col_mm
    if not (np.isfinite(grid_pixel_mm) and grid_pixel_mm > 0):
        raise ValueError(f"grid pixel size must be a positive number of mm. Received {grid_pixel_mm!r}")
    return float(grid_pixel_mm), float(grid_pixel_mm)


def _resampled_size(n_in: int, acquired_mm: float, grid_mm: float) -> int:
    return max(1, round(n_in * acquired_mm / grid_mm))


def _is_same_grid(acquired_mm: Sequence[float], grid_mm: Sequence[float]) -> bool:
    return all(abs(a - g) <= 1e-9 * max(a, g) for a, g in zip(acquired_mm, grid_mm, strict=True))


def resample_slice(
    arr: np.ndarray, acquired_pixel_spacing_mm: Sequence[float], grid_pixel_pair_mm: Sequence[float], *,
    labels: bool = False,
) -> np.ndarray:
    """One 2-D slice on the grid ``grid_pixel_pair_mm`` (row, col), centres aligned (module docstring).

    Images: linear interpolation, after a Gaussian filter along each axis shrunk by ``factor`` (> 1) of
    sigma ``sqrt(factor**2 - 1) / 2`` input pixels, the blur that widens an input pixel's footprint to an
    output pixel's (anti-aliasing: a pattern finer than the new grid is averaged, not folded back).
    Enlarging (factor < 1) is not filtered. Labels
    (``labels=True``): nearest neighbour, no filter, values kept. The same grid returns an unchanged copy.
    """
    src = np.asarray(arr)
    if src.ndim != 2:
        raise ValueError(f"slice must be 2-D (rows, cols), got shape {src.shape}")
    acquired = tuple(float(v) for v in acquired_pixel_spacing_mm)
    grid = tuple(float(v) for v in grid_pixel_pair_mm)
    if _is_same_grid(acquired, grid):
        return src.copy()
    factors = [g / a for a, g in zip(acquired, grid, strict=True)]  # input pixels per output pixel
    shape = tuple(_resampled_size(n, a, g) for n, a, g in zip(src.shape, acquired, grid, strict=True))
    offset = [(n_in - 1) / 2.0 - (n_out - 1) / 2.0 * f for n_in, n_out, f in zip(src.shape, shape, factors,
                                                                                 strict=True)]
    if labels:
        return ndimage.affine_transform(src, factors, offset=offset, output_shape=shape, order=0,
                                        mode="nearest").astype(src.dtype, copy=False)
    values = src.astype(np.float64)
    sigma = [float(np.sqrt(f * f - 1.0)) / 2.0 if f > 1.0 else 0.0 for f in factors]
    if any(s > 0 for s in sigma):
        values = ndimage.gaussian_filter(values, sigma=sigma, mode="nearest")
    out = ndimage.affine_transform(values, factors, offset=offset, output_shape=shape, order=1,
                                   mode="nearest")
    return out.astype(np.float32)


def _offsets(size: int, target: int) -> tuple[int, int, int]:
    """(dst_start, src_start, length) placing ``size`` centred in ``target`` (pad or crop)."""
    if size <= target:
        return (target - size) // 2, 0, size
    return 0, (size - target) // 2, target


def pad_or_crop_slice(
    arr: np.ndarray, *, rows: int = contracts.TENSOR_ROWS, cols: int = contracts.TENSOR_COLS
) -> tuple[np.ndarray, bool]:
    """Place a 2-D slice centred in a zero ``(rows, cols)`` array of the same dtype.

    Padding puts an odd remainder at the bottom/right; a dimension larger than the target is
    centre-cropped (the extra odd pixel removed at the bottom/right). Returns (new array, cropped?).
    """
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"slice must be 2-D (rows, cols), got shape {arr.shape}")
    if rows <= 0 or cols <= 0:
        raise ValueError(f"target size must be positive, got ({rows}, {cols})")
    out = np.zeros((rows, cols), dtype=arr.dtype)
    dr, sr, nr = _offsets(arr.shape[0], rows)
    dc, sc, nc = _offsets(arr.shape[1], cols)
    out[dr : dr + nr, dc : dc + nc] = arr[sr : sr + nr, sc : sc + nc]
    return out, bool(arr.shape[0] > rows or arr.shape[1] > cols)


def slice_window_start(has_content: Sequence[bool], n_slots: int = contracts.TENSOR_SLICES) -> int:
    """First slice of the ``n_slots`` contiguous slices holding the most ``has_content`` (ties: basal)."""
    n = len(has_content)
    if n <= n_slots:
        return 0
    counts = np.convolve(np.asarray(has_content, dtype=np.int64), np.ones(n_slots, dtype=np.int64), "valid")
    return int(np.argmax(counts))  # argmax returns the first (most basal) maximum


def _normalise(slices: Sequence[np.ndarray], source: str) -> list[np.ndarray]:
    """z-score over all acquired pixels of the participant volume (the paper's per-image normalisation)."""
    values = np.concatenate([s.astype(np.float64).ravel() for s in slices])
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{source}: image holds non-finite pixel values")
    sd = float(values.std())
    if sd == 0.0:
        raise ValueError(
            f"{source}: all {values.size} acquired pixels equal {values[0]}; cannot normalise to sd 1"
        )
    mean = float(values.mean())
    return [((s.astype(np.float64) - mean) / sd).astype(np.float32) for s in slices]


def slots_for(n_slices: int, n_slots: int | None) -> int:
    """The tensor's slice axis: ``n_slots`` (13 for the paper's models), or every slice for a per-slice
    model (``None``), capped at ``contracts.MAX_PER_SLICE_SLICES``."""
    if n_slots is None:
        return max(1, min(int(n_slices), contracts.MAX_PER_SLICE_SLICES))
    if n_slots < 1:
        raise ValueError(f"n_slots must be >= 1 or None. Received: {n_slots!r}")
    return int(n_slots)


def build_image_tensor(study: DecodedStudy, *, grid_pixel_mm: float | None = None,
                       n_slots: int | None = contracts.TENSOR_SLICES) -> ImageTensor:
    """The ``(256, 256, slots, 1)`` float32 model input and its grid's voxel size for one decoded study.

    ``grid_pixel_mm``: the in-plane pixel size of the tensor grid (the model card's); None keeps the
    acquired pixels as they are (no resampling). ``n_slots``: 13 slots (the paper's models) or None (every
    slice, a per-slice model)."""
    if study.n_slices == 0:
        raise ValueError(f"{study.source_uri}: study has no slices")
    acquired = (float(study.pixel_spacing_mm[0]), float(study.pixel_spacing_mm[1]))
    try:
        grid = grid_pixel_pair_mm(acquired, grid_pixel_mm)
    except ValueError as exc:
        raise ValueError(f"{study.source_uri}: {exc}") from exc
    flags: list[str] = []
    slots = slots_for(study.n_slices, n_slots)
    start = slice_window_start([o is not None for o in study.outlines], slots)
    if study.n_slices > slots:
        flags.append(contracts.QC_TOO_MANY_SLICES_TRUNCATED)
    kept = [resample_slice(np.asarray(img, dtype=np.float32), acquired, grid)
            for img in study.images[start : start + slots]]
    placed = []
    cut_per_side_mm = 0.0  # the most cut from one side of a slice by the centre crop
    for img in kept:
        out, _ = pad_or_crop_slice(img)
        cut_per_side_mm = max(cut_per_side_mm,
                              math.ceil(max(0, img.shape[0] - contracts.TENSOR_ROWS) / 2) * grid[0],
                              math.ceil(max(0, img.shape[1] - contracts.TENSOR_COLS) / 2) * grid[1])
        # Normalise over the pixels that land in the tensor: crop first, then mark what was acquired.
        dr, _, nr = _offsets(img.shape[0], contracts.TENSOR_ROWS)
        dc, _, nc = _offsets(img.shape[1], contracts.TENSOR_COLS)
        placed.append((out, (slice(dr, dr + nr), slice(dc, dc + nc))))
    if cut_per_side_mm > contracts.IMAGE_CROP_TOLERANCE_MM:
        flags.append(contracts.QC_IMAGE_CROPPED)
    values = _normalise([out[window] for out, window in placed], study.source_uri)
    image = np.zeros((contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slots, contracts.TENSOR_CHANNELS),
                     dtype=np.float32)
    for k, ((_, window), slice_values) in enumerate(zip(placed, values, strict=True)):
        image[window[0], window[1], k, 0] = slice_values
    spacing = np.array([grid[0], grid[1], study.slice_spacing_mm], dtype=np.float32)
    ordered = tuple(f for f in contracts.QC_FLAGS if f in flags)
    return ImageTensor(
        image=image,
        spacing_mm=spacing,
        n_slices_used=len(kept),
        qc_flags=ordered,
        slice_start=start,
        n_slices_acquired=study.n_slices,
        acquired_pixel_spacing_mm=acquired,
        in_plane_scale=(acquired[0] / grid[0], acquired[1] / grid[1]),
    )


def build_label_volume(
    labels_per_slice: Sequence[np.ndarray], *, slice_start: int | None = None,
    acquired_pixel_spacing_mm: Sequence[float] | None = None, grid_pixel_mm: float | None = None,
    n_slots: int | None = contracts.TENSOR_SLICES,
) -> np.ndarray:
    """uint8 ``(256, 256, slots)`` labels placed exactly like :func:`build_image_tensor` places images.

    ``slice_start`` defaults to the window rule of the module docstring applied to non-empty label
    slices; pass ``ImageTensor.slice_start`` to force the image's window. With ``grid_pixel_mm`` (and the
    acquisition's ``acquired_pixel_spacing_mm``) each slice is resampled by nearest neighbour first.
    """
    if len(labels_per_slice) == 0:
        raise ValueError("no label slices")
    for k, lab in enumerate(labels_per_slice):
        arr = np.asarray(lab)
        if arr.ndim != 2:
            raise ValueError(f"label slice {k} must be 2-D, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= contracts.NUM_CLASSES):
            raise ValueError(
                f"label slice {k} holds values outside the label map {contracts.LABEL_MAP}: "
                f"{sorted(np.unique(arr).tolist())}"
            )
    if grid_pixel_mm is not None and acquired_pixel_spacing_mm is None:
        raise ValueError("resampling labels to a grid needs the acquired pixel spacing")
    slots = slots_for(len(labels_per_slice), n_slots)
    if slice_start is None:
        slice_start = slice_window_start([bool(np.any(np.asarray(lab))) for lab in labels_per_slice], slots)
    if not 0 <= slice_start < len(labels_per_slice):
        raise ValueError(f"slice_start {slice_start} outside 0..{len(labels_per_slice) - 1}")
    volume = np.zeros((contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slots), dtype=np.uint8)
    for k, lab in enumerate(labels_per_slice[slice_start : slice_start + slots]):
        arr = np.asarray(lab).astype(np.uint8)
        if grid_pixel_mm is not None:
            assert acquired_pixel_spacing_mm is not None
            grid = grid_pixel_pair_mm(acquired_pixel_spacing_mm, grid_pixel_mm)
            arr = resample_slice(arr, acquired_pixel_spacing_mm, grid, labels=True)
        volume[:, :, k], _ = pad_or_crop_slice(arr)
    return volume


def unplace_label_volume(
    volume: np.ndarray, shape: tuple[int, int, int], *, slice_start: int = 0,
    acquired_pixel_spacing_mm: Sequence[float] | None = None, grid_pixel_mm: float | None = None,
) -> np.ndarray:
    """The inverse of :func:`build_label_volume`: labels back on the acquisition grid ``shape`` =
    (rows, cols, n_slices).

    Slice ``k`` of ``volume`` goes back to acquired slice ``slice_start + k`` (pass the
    ``ImageTensor.slice_start`` the volume was built with); each slice is un-padded (the centred window,
    odd remainder bottom/right, as :func:`pad_or_crop_slice` placed it) or, where the acquisition was
    larger than the tensor and was centre-cropped, put back in the middle of zeros (the cropped-away
    border is unknown and comes back as background), then, for a resampled grid (``grid_pixel_mm`` and
    ``acquired_pixel_spacing_mm``), resampled back by nearest neighbour. Acquired slices outside the
    window are background. Returns a new uint8 array; ``volume`` is not changed.
    """
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"label volume must be 3-D (rows, cols, slices), got shape {arr.shape}")
    if len(shape) != 3 or any(int(s) <= 0 for s in shape):
        raise ValueError(f"shape must be 3 positive sizes (rows, cols, n_slices), got {tuple(shape)}")
    rows, cols, n_slices = (int(s) for s in shape)
    if not 0 <= slice_start < n_slices:
        raise ValueError(f"slice_start {slice_start} outside 0..{n_slices - 1}")
    acquired = grid = None
    grid_rows, grid_cols = rows, cols
    if grid_pixel_mm is not None:
        if acquired_pixel_spacing_mm is None:
            raise ValueError("unplacing labels from a resampled grid needs the acquired pixel spacing")
        acquired = tuple(float(v) for v in acquired_pixel_spacing_mm)
        grid = grid_pixel_pair_mm(acquired, grid_pixel_mm)
        if not _is_same_grid(acquired, grid):
            grid_rows = _resampled_size(rows, acquired[0], grid[0])
            grid_cols = _resampled_size(cols, acquired[1], grid[1])
        else:
            acquired = grid = None
    out = np.zeros((rows, cols, n_slices), dtype=np.uint8)
    # _offsets(grid size, tensor) gives (tensor start, grid start, length) of the placed window
    tr, ar, nr = _offsets(grid_rows, arr.shape[0])
    tc, ac, nc = _offsets(grid_cols, arr.shape[1])
    n = min(arr.shape[2], n_slices - slice_start)
    for k in range(n):
        on_grid = np.zeros((grid_rows, grid_cols), dtype=np.uint8)
        on_grid[ar : ar + nr, ac : ac + nc] = arr[tr : tr + nr, tc : tc + nc, k]
        if acquired is not None and grid is not None:
            on_grid = _resample_to_shape(on_grid, grid, acquired, (rows, cols))
        out[:, :, slice_start + k] = on_grid
    return out


def _resample_to_shape(
    arr: np.ndarray, from_mm: Sequence[float], to_mm: Sequence[float], shape: tuple[int, int]
) -> np.ndarray:
    """Nearest-neighbour labels from a grid of ``from_mm`` pixels onto ``shape`` pixels of ``to_mm``,
    centres aligned (the inverse mapping of :func:`resample_slice`)."""
    factors = [t / f for f, t in zip(from_mm, to_mm, strict=True)]
    offset = [(n_in - 1) / 2.0 - (n_out - 1) / 2.0 * fac
              for n_in, n_out, fac in zip(arr.shape, shape, factors, strict=True)]
    return ndimage.affine_transform(arr, factors, offset=offset, output_shape=shape, order=0,
                                    mode="constant", cval=0).astype(np.uint8)
