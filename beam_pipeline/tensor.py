"""Build the model tensor ``(256, 256, 13, 1)`` from a decoded study; the one shared layout function.

The layout is documented once in :mod:`beam_pipeline.contracts`: slices base to apex at indices
``0..n-1``, each slice zero-padded centred (odd remainder bottom/right), centre-cropped and flagged when
larger than 256, intensities z-scored over the acquired pixels with padding exactly 0. The pipeline
(inference), tensorize (TFRecords) and the trainer all call these functions, so image and labels always
share one placement.

More than 13 slices: 13 contiguous slices are kept. The window is the one holding the most slices with an
InlineVF outline (ties: the most basal), else the 13 most basal; the tensor is flagged
``too_many_slices_truncated``. :func:`build_label_volume` applies the same rule to the label slices
(non-empty labels mark the outlined slices), so both stay aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from beam_pipeline import contracts
from beam_pipeline.study import DecodedStudy


@dataclass(frozen=True)
class ImageTensor:
    """The model input for one participant: ``image`` float32 TENSOR_SHAPE, ``spacing_mm`` float32
    (row_mm, col_mm, slice_mm), the number of acquired slices placed, the first acquired slice used,
    and the flags raised while building it."""

    image: np.ndarray
    spacing_mm: np.ndarray
    n_slices_used: int
    qc_flags: tuple[str, ...]
    slice_start: int = 0
    n_slices_acquired: int = 0


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


def build_image_tensor(study: DecodedStudy) -> ImageTensor:
    """The ``(256, 256, 13, 1)`` float32 model input and its voxel spacing for one decoded study."""
    if study.n_slices == 0:
        raise ValueError(f"{study.source_uri}: study has no slices")
    flags: list[str] = []
    start = slice_window_start([o is not None for o in study.outlines])
    if study.n_slices > contracts.TENSOR_SLICES:
        flags.append(contracts.QC_TOO_MANY_SLICES_TRUNCATED)
    kept = list(study.images[start : start + contracts.TENSOR_SLICES])
    placed = []
    cropped_any = False
    for img in kept:
        out, cropped = pad_or_crop_slice(np.asarray(img, dtype=np.float32))
        cropped_any |= cropped
        # Normalise over the pixels that land in the tensor: crop first, then mark what was acquired.
        dr, _, nr = _offsets(img.shape[0], contracts.TENSOR_ROWS)
        dc, _, nc = _offsets(img.shape[1], contracts.TENSOR_COLS)
        placed.append((out, (slice(dr, dr + nr), slice(dc, dc + nc))))
    if cropped_any:
        flags.append(contracts.QC_IMAGE_CROPPED)
    acquired = _normalise([out[window] for out, window in placed], study.source_uri)
    image = np.zeros(contracts.TENSOR_SHAPE, dtype=np.float32)
    for k, ((_, window), values) in enumerate(zip(placed, acquired, strict=True)):
        image[window[0], window[1], k, 0] = values
    spacing = np.array(
        [study.pixel_spacing_mm[0], study.pixel_spacing_mm[1], study.slice_spacing_mm], dtype=np.float32
    )
    ordered = tuple(f for f in contracts.QC_FLAGS if f in flags)
    return ImageTensor(
        image=image,
        spacing_mm=spacing,
        n_slices_used=len(kept),
        qc_flags=ordered,
        slice_start=start,
        n_slices_acquired=study.n_slices,
    )


def build_label_volume(
    labels_per_slice: Sequence[np.ndarray], *, slice_start: int | None = None
) -> np.ndarray:
    """uint8 LABEL_VOLUME_SHAPE labels placed exactly like :func:`build_image_tensor` places images.

    ``slice_start`` defaults to the window rule of the module docstring applied to non-empty label
    slices; pass ``ImageTensor.slice_start`` to force the image's window.
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
    if slice_start is None:
        slice_start = slice_window_start([bool(np.any(np.asarray(lab))) for lab in labels_per_slice])
    if not 0 <= slice_start < len(labels_per_slice):
        raise ValueError(f"slice_start {slice_start} outside 0..{len(labels_per_slice) - 1}")
    volume = np.zeros(contracts.LABEL_VOLUME_SHAPE, dtype=np.uint8)
    for k, lab in enumerate(labels_per_slice[slice_start : slice_start + contracts.TENSOR_SLICES]):
        volume[:, :, k], _ = pad_or_crop_slice(np.asarray(lab).astype(np.uint8))
    return volume


def unplace_label_volume(
    volume: np.ndarray, shape: tuple[int, int, int], *, slice_start: int = 0
) -> np.ndarray:
    """The inverse of :func:`build_label_volume`: labels back on the acquisition grid ``shape`` =
    (rows, cols, n_slices).

    Slice ``k`` of ``volume`` goes back to acquired slice ``slice_start + k`` (pass the
    ``ImageTensor.slice_start`` the volume was built with); each slice is un-padded (the centred window,
    odd remainder bottom/right, as :func:`pad_or_crop_slice` placed it) or, where the acquisition was
    larger than the tensor and was centre-cropped, put back in the middle of zeros (the cropped-away
    border is unknown and comes back as background). Acquired slices outside the window are background.
    Returns a new uint8 array; ``volume`` is not changed.
    """
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"label volume must be 3-D (rows, cols, slices), got shape {arr.shape}")
    if len(shape) != 3 or any(int(s) <= 0 for s in shape):
        raise ValueError(f"shape must be 3 positive sizes (rows, cols, n_slices), got {tuple(shape)}")
    rows, cols, n_slices = (int(s) for s in shape)
    if not 0 <= slice_start < n_slices:
        raise ValueError(f"slice_start {slice_start} outside 0..{n_slices - 1}")
    out = np.zeros((rows, cols, n_slices), dtype=np.uint8)
    # _offsets(acquired, tensor) gives (tensor start, acquired start, length) of the placed window
    tr, ar, nr = _offsets(rows, arr.shape[0])
    tc, ac, nc = _offsets(cols, arr.shape[1])
    n = min(arr.shape[2], n_slices - slice_start)
    out[ar : ar + nr, ac : ac + nc, slice_start : slice_start + n] = arr[tr : tr + nr, tc : tc + nc, :n]
    return out
