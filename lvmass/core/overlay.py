"""InlineVF contours: DICOM overlay plane -> 1-pixel outline -> background / LV cavity / myocardium labels.

The Siemens InlineVF series stores the endocardial and epicardial contours of each LV slice as a
1-bit overlay in group 0x6000 (DICOM PS3.3 C.9.2): OverlayData (6000,3000) packed least-significant
bit first, row-major. ml4h (Khurshid et al. 2021's code) turns the outline into labels with two
morphological closings; :func:`outline_to_labels` reproduces it exactly, quirks included
(docs/ukbb_format.md, "From outline to labels").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from scipy.signal import fftconvolve

from lvmass.core import contracts
from lvmass.core.study import DecodedStudy

# ml4h's constants (ml4h/tensorize/tensor_writer_ukbb.py).
MIN_RADIUS_PX = 2
SMALL_RADIUS_FACTOR = 0.19
BIG_RADIUS_FACTOR = 0.90
MAX_MYOCARDIUM_PX_WITHOUT_CAVITY = 20
TINY_VENTRICLE_EROSION_FACTOR = 1.5


def overlay_outline(
    ds: pydicom.Dataset, group: int = 0x6000, *, source: str | None = None
) -> np.ndarray | None:
    """The overlay plane of ``group`` as a bool ``(rows, cols)`` array, or None when absent or empty.

    Reads OverlayRows/Columns (gggg,0010)/(gggg,0011), NumberOfFramesInOverlay (gggg,0015),
    OverlayBitsAllocated (gggg,0100), OverlayBitPosition (gggg,0102), OverlayOrigin (gggg,0050) and
    OverlayData (gggg,3000), unpacked least-significant bit first. An origin other than (1, 1) shifts the
    overlay into the image grid (Rows x Columns (0028,0010)/(0028,0011)) when the image size is known.
    Raises ValueError (naming ``source``) for overlays this reader cannot interpret.
    """
    if not 0x6000 <= group <= 0x601E or group % 2:
        raise ValueError(f"overlay group must be an even group in 0x6000..0x601E, got {group:#06x}")
    where = source or str(getattr(ds, "filename", None) or "dataset")
    data_elem = ds.get((group, 0x3000))
    if data_elem is None or data_elem.value is None:
        return None
    rows_elem, cols_elem = ds.get((group, 0x0010)), ds.get((group, 0x0011))
    if rows_elem is None or cols_elem is None:
        raise ValueError(f"{where}: overlay {group:#06x} has OverlayData but no OverlayRows/OverlayColumns")
    rows, cols = int(rows_elem.value), int(cols_elem.value)
    frames_elem = ds.get((group, 0x0015))
    frames = int(frames_elem.value) if frames_elem is not None and frames_elem.value not in (None, "") else 1
    if frames != 1:
        raise ValueError(f"{where}: overlay {group:#06x} has {frames} frames; one expected")
    bits_elem = ds.get((group, 0x0100))
    bits = int(bits_elem.value) if bits_elem is not None and bits_elem.value is not None else 1
    if bits != 1:
        raise ValueError(f"{where}: overlay {group:#06x} OverlayBitsAllocated is {bits}; only 1 is supported")
    bitpos_elem = ds.get((group, 0x0102))
    bit_position = int(bitpos_elem.value) if bitpos_elem is not None and bitpos_elem.value is not None else 0
    if bit_position != 0:
        raise ValueError(
            f"{where}: overlay {group:#06x} OverlayBitPosition is {bit_position}; only 0 is supported"
        )
    raw = np.frombuffer(bytes(data_elem.value), dtype=np.uint8)
    if raw.size * 8 < rows * cols:
        raise ValueError(
            f"{where}: overlay {group:#06x} holds {raw.size * 8} bits, "
            f"fewer than {rows} x {cols} = {rows * cols}"
        )
    bits_arr = np.unpackbits(raw, bitorder="little")[: rows * cols].reshape(rows, cols).astype(bool)
    if not bits_arr.any():
        return None
    origin_elem = ds.get((group, 0x0050))
    origin = [int(v) for v in origin_elem.value] if origin_elem is not None and origin_elem.value else [1, 1]
    image_rows, image_cols = ds.get("Rows"), ds.get("Columns")
    if origin == [1, 1] or image_rows is None or image_cols is None:
        return bits_arr
    # OverlayOrigin is 1-based (row, column) of the overlay's first pixel in the image.
    out = np.zeros((int(image_rows), int(image_cols)), dtype=bool)
    r0, c0 = origin[0] - 1, origin[1] - 1
    src_r0, src_c0 = max(0, -r0), max(0, -c0)
    dst_r0, dst_c0 = max(0, r0), max(0, c0)
    h = min(rows - src_r0, out.shape[0] - dst_r0)
    w = min(cols - src_c0, out.shape[1] - dst_c0)
    if h > 0 and w > 0:
        out[dst_r0 : dst_r0 + h, dst_c0 : dst_c0 + w] = bits_arr[src_r0 : src_r0 + h, src_c0 : src_c0 + w]
    return out if out.any() else None


def unit_disk(radius_px: float) -> np.ndarray:
    """ml4h's structuring element: ``y, x = ogrid[-r:r+1, -r:r+1]; x*x + y*y <= r*r``.

    With a fractional radius the grid starts at ``-r`` in unit steps, exactly as ml4h builds it.
    """
    if not radius_px > 0:
        raise ValueError(f"disk radius must be positive, got {radius_px}")
    y, x = np.ogrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    return (x * x + y * y <= radius_px * radius_px).astype(np.int64)


def binary_dilation_fft(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, structure)`` (origin at ``shape // 2``) by FFT convolution.

    Same result, but the cost no longer grows with the structure's area: ml4h's big closing uses a disk
    of radius 0.9 x the ventricle's size (~120 px wide), which takes seconds per slice the direct way.
    """
    centre = (structure.shape[0] // 2, structure.shape[1] // 2)
    full = fftconvolve(mask.astype(np.float64), structure.astype(np.float64))
    return full[centre[0] : centre[0] + mask.shape[0], centre[1] : centre[1] + mask.shape[1]] > 0.5


def binary_erosion_fft(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, structure)`` (border value 0) by FFT correlation."""
    m0, m1 = structure.shape
    outside = np.pad(~mask.astype(bool), [(m0, m0), (m1, m1)], constant_values=True).astype(np.float64)
    full = fftconvolve(outside, structure[::-1, ::-1].astype(np.float64))
    o0, o1 = m0 + m0 - 1 - m0 // 2, m1 + m1 - 1 - m1 // 2
    return full[o0 : o0 + mask.shape[0], o1 : o1 + mask.shape[1]] < 0.5


def binary_closing_fft(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_closing(mask, structure)``: erosion of the dilation, both by FFT."""
    return binary_erosion_fft(binary_dilation_fft(mask, structure), structure)


def outline_to_labels(outline: np.ndarray) -> np.ndarray:
    """Labels (uint8 ``(rows, cols)``: 0 background, 1 LV cavity, 2 myocardium) from an InlineVF outline.

    ml4h's morphology: with ``short`` the smaller side of the outline's bounding box (max - min, as ml4h),
    the closing with ``disk(max(2, 0.19 short))`` fills the band between the two curves (myocardium) and
    the closing with ``disk(max(3, 0.90 short))`` fills everything inside the epicardium; their sum is the
    label. When no cavity remains and more than 20 pixels are myocardium (a tiny ventricle whose cavity
    the small closing filled), the erosion of the small closing by ``disk(1.5 small_radius)`` is
    subtracted. Both outlines count as myocardium, so these labels run heavier than the true ring.

    An empty outline gives all background (ml4h would fail on it). The morphology runs on the outline's
    bounding box padded by the big radius, so the image border cannot erode the closings (the same
    result as ml4h wherever its closing stays inside the image), and by FFT (same result as scipy's).
    """
    outline = np.asarray(outline)
    if outline.ndim != 2:
        raise ValueError(f"outline must be 2-D (rows, cols), got shape {outline.shape}")
    mask = outline.astype(bool)
    labels = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return labels
    rows_idx, cols_idx = np.nonzero(mask)
    r0, r1, c0, c1 = rows_idx.min(), rows_idx.max(), cols_idx.min(), cols_idx.max()
    short_side = min(int(r1 - r0), int(c1 - c0))
    small_radius = max(MIN_RADIUS_PX, short_side * SMALL_RADIUS_FACTOR)
    big_radius = max(MIN_RADIUS_PX + 1, short_side * BIG_RADIUS_FACTOR)
    pad = int(np.ceil(big_radius)) + 2
    box = np.pad(mask[r0 : r1 + 1, c0 : c1 + 1], pad)
    m1 = binary_closing_fft(box, unit_disk(small_radius)).astype(np.int64)
    m2 = binary_closing_fft(box, unit_disk(big_radius)).astype(np.int64)
    label = m1 + m2
    cavity = int(np.count_nonzero(label == contracts.LV_CAVITY))
    myocardium = int(np.count_nonzero(label == contracts.MYOCARDIUM))
    if cavity == 0 and myocardium > MAX_MYOCARDIUM_PX_WITHOUT_CAVITY:
        eroded = binary_erosion_fft(m1.astype(bool), unit_disk(small_radius * TINY_VENTRICLE_EROSION_FACTOR))
        label = label - eroded.astype(np.int64)
    np.clip(label, 0, contracts.MYOCARDIUM, out=label)
    # Back into the image grid; the padding can reach past the image edge, so clip both windows.
    top, left = r0 - pad, c0 - pad
    dst_r = slice(max(top, 0), min(top + label.shape[0], mask.shape[0]))
    dst_c = slice(max(left, 0), min(left + label.shape[1], mask.shape[1]))
    labels[dst_r, dst_c] = label[dst_r.start - top : dst_r.stop - top, dst_c.start - left : dst_c.stop - left]
    return labels


def inlinevf_labels(study: DecodedStudy) -> list[np.ndarray]:
    """Per-slice InlineVF labels in each slice's own grid (base to apex); all zeros where no outline."""
    return labels_from_outlines(study.outlines, [img.shape for img in study.images])


def labels_from_outlines(
    outlines: Sequence[np.ndarray | None], shapes: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """:func:`outline_to_labels` per slice, zeros of ``shapes[k]`` where ``outlines[k]`` is None."""
    if len(outlines) != len(shapes):
        raise ValueError(f"{len(outlines)} outlines for {len(shapes)} slices")
    out = []
    for outline, shape in zip(outlines, shapes, strict=True):
        if outline is None:
            out.append(np.zeros(shape, dtype=np.uint8))
        else:
            if outline.shape != tuple(shape):
                raise ValueError(f"outline shape {outline.shape} differs from its image shape {tuple(shape)}")
            out.append(outline_to_labels(outline))
    return out
