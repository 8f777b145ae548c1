"""Quality-control flags per participant and method, from the vocabulary in :mod:`lvmass.core.contracts`.

Flags describe; they never drop a participant. ``qc_pass`` is False when any flag outside
``QC_INFORMATIONAL_FLAGS`` is raised. Each function returns flags in vocabulary order, without
duplicates, so rows are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes, label

from lvmass.core import contracts, geometry
from lvmass.core.study import DecodedStudy

# A mid-ventricular slice's cavity should lie inside its myocardium: at least this share of cavity pixels.
RING_ENCLOSED_CAVITY_MIN = 0.9
# InlineVF outlines: two closed curves per slice (endocardium, epicardium); more components is a mistrace.
MAX_OUTLINE_COMPONENTS = 2
# An InlineVF outline covering more than this share of the image is not a left ventricle.
MAX_OUTLINE_AREA_FRACTION = 0.25


def ordered_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Flags in vocabulary order without duplicates; raises on a flag outside the vocabulary."""
    flags = set(flags)
    unknown = flags - set(contracts.QC_FLAGS)
    if unknown:
        raise ValueError(f"unknown QC flag(s) {sorted(unknown)}; vocabulary: {contracts.QC_FLAGS}")
    return tuple(f for f in contracts.QC_FLAGS if f in flags)


def geometry_qc_flags(sorted_positions_mm: Sequence[float], slice_spacing_mm: float) -> tuple[str, ...]:
    """Slice count outside 6..13, inconsistent spacing, and gaps (missing slices) along the normal."""
    flags = []
    low, high = contracts.PLAUSIBLE_SLICE_COUNT
    if not low <= len(sorted_positions_mm) <= high:
        flags.append(contracts.QC_SLICE_COUNT_OUT_OF_RANGE)
    if geometry.has_gap(sorted_positions_mm, slice_spacing_mm):
        flags.append(contracts.QC_NONCONTIGUOUS_SLICES)
    if geometry.spacing_is_inconsistent(sorted_positions_mm, slice_spacing_mm):
        flags.append(contracts.QC_INCONSISTENT_SPACING)
    return ordered_flags(flags)


def study_qc_flags(study: DecodedStudy) -> tuple[str, ...]:
    """Decode-time flags of the study plus its geometry flags (recomputed from the slice positions)."""
    return ordered_flags(
        (*study.qc_flags, *geometry_qc_flags(study.slice_positions_mm, study.slice_spacing_mm))
    )


def _mid_slices(myocardium_present: Sequence[bool]) -> range:
    """The middle third of the slices between the first and last slice holding myocardium."""
    idx = [k for k, present in enumerate(myocardium_present) if present]
    if not idx:
        return range(0)
    first, last = idx[0], idx[-1]
    span = last - first + 1
    return range(first + span // 3, last + 1 - span // 3)


def label_qc_flags(labels: np.ndarray, n_slices: int) -> tuple[str, ...]:
    """Flags of a label volume ``(H, W, S)`` (model argmax or InlineVF labels) over its first
    ``n_slices`` slices.

    ``empty_mid_slice_myocardium``: no myocardium at all, or a slice without myocardium between slices
    with it, or none on the stack's middle slice. ``myocardium_not_ring``: on a mid-ventricular slice,
    no cavity, or less than 90% of the cavity enclosed by the myocardium (filled holes).
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"labels must be 3-D (rows, cols, slices), got shape {arr.shape}")
    if not 0 < n_slices <= arr.shape[2]:
        raise ValueError(f"n_slices must be within 1..{arr.shape[2]}, got {n_slices}")
    myo = arr[:, :, :n_slices] == contracts.MYOCARDIUM
    cavity = arr[:, :, :n_slices] == contracts.LV_CAVITY
    present = [bool(myo[:, :, k].any()) for k in range(n_slices)]
    flags = []
    mid = _mid_slices(present)
    if (
        not any(present)
        or not present[n_slices // 2]
        or not all(present[k] for k in range(mid.start, mid.stop))
    ):
        flags.append(contracts.QC_EMPTY_MID_SLICE_MYOCARDIUM)
    idx = [k for k, p in enumerate(present) if p]
    if idx and not all(present[idx[0] : idx[-1] + 1]):
        flags.append(contracts.QC_EMPTY_MID_SLICE_MYOCARDIUM)
    for k in mid:
        if not present[k]:
            continue
        cav = cavity[:, :, k]
        n_cav = int(cav.sum())
        enclosed = int((binary_fill_holes(myo[:, :, k]) & cav).sum())
        if n_cav == 0 or enclosed < RING_ENCLOSED_CAVITY_MIN * n_cav:
            flags.append(contracts.QC_MYOCARDIUM_NOT_RING)
            break
    return ordered_flags(flags)


def mass_qc_flags(mass_g: float | None) -> tuple[str, ...]:
    """``mass_implausible`` for an unknown mass or one outside 20..400 g."""
    low, high = contracts.PLAUSIBLE_LV_MASS_RANGE_G
    if mass_g is None or not math.isfinite(mass_g) or not low <= mass_g <= high:
        return (contracts.QC_MASS_IMPLAUSIBLE,)
    return ()


def neighbour_correlation(image: np.ndarray) -> float:
    """Mean lag-1 autocorrelation of an image along rows and columns (0 for a constant image)."""
    values = np.asarray(image, dtype=np.float64)
    if values.ndim != 2 or min(values.shape) < 2:
        return 0.0
    centred = values - values.mean()
    variance = float((centred * centred).mean())
    if variance == 0.0 or not math.isfinite(variance):
        return 0.0
    down = float((centred[1:, :] * centred[:-1, :]).mean())
    across = float((centred[:, 1:] * centred[:, :-1]).mean())
    return (down + across) / (2.0 * variance)


def image_qc_flags(study: DecodedStudy) -> tuple[str, ...]:
    """``image_implausible`` when the images cannot be a cine short-axis heart acquisition, whatever a
    model makes of them: a field of view under ``contracts.MIN_FIELD_OF_VIEW_MM`` (an 8 x 8 image), or
    pixels with no spatial structure (noise: median neighbour correlation under
    ``contracts.MIN_NEIGHBOUR_CORRELATION``). Applies to every method, the regression model included."""
    row_mm, col_mm = study.pixel_spacing_mm
    fovs = [min(img.shape[0] * row_mm, img.shape[1] * col_mm) for img in study.images]
    correlations = [neighbour_correlation(img) for img in study.images]
    if (fovs and min(fovs) < contracts.MIN_FIELD_OF_VIEW_MM) or (
        correlations and float(np.median(correlations)) < contracts.MIN_NEIGHBOUR_CORRELATION
    ):
        return (contracts.QC_IMAGE_IMPLAUSIBLE,)
    return ()


def lvmi_qc_flags(lvmi_g_m2: float | None) -> tuple[str, ...]:
    """``mass_implausible`` for a known LVMI outside ``contracts.PLAUSIBLE_LVMI_RANGE_G_M2`` (an
    unknown LVMI, e.g. no height, is not a fault of the mass)."""
    low, high = contracts.PLAUSIBLE_LVMI_RANGE_G_M2
    if lvmi_g_m2 is not None and (not math.isfinite(lvmi_g_m2) or not low <= lvmi_g_m2 <= high):
        return (contracts.QC_MASS_IMPLAUSIBLE,)
    return ()


def body_size_plausible(height_cm: float | None, weight_kg: float | None) -> bool:
    """False when a known height or weight lies outside the adult ranges of ``contracts``
    (PLAUSIBLE_HEIGHT_CM, PLAUSIBLE_WEIGHT_KG): BSA, LVMI and LVH are then not computed."""
    for value, (low, high) in ((height_cm, contracts.PLAUSIBLE_HEIGHT_CM),
                               (weight_kg, contracts.PLAUSIBLE_WEIGHT_KG)):
        if value is not None and (not math.isfinite(value) or not low <= value <= high):
            return False
    return True


def pixel_spacing_qc_flags(
    acquired_pixel_spacing_mm: Sequence[float], training_range_mm: Sequence[float] | None
) -> tuple[str, ...]:
    """``pixel_spacing_outside_training`` when the acquisition's pixels (either direction) are outside
    the range of pixel sizes the model was trained on (its card's ``training_pixel_spacing_mm``)."""
    if not training_range_mm:
        return ()
    low, high = (float(v) for v in training_range_mm)
    if any(not low <= float(v) <= high for v in acquired_pixel_spacing_mm):
        return (contracts.QC_PIXEL_SPACING_OUTSIDE_TRAINING,)
    return ()


def inlinevf_qc_flags(study: DecodedStudy, labels: Sequence[np.ndarray]) -> tuple[str, ...]:
    """InlineVF-specific flags from the outlines and their per-slice labels (acquisition grid).

    ``inlinevf_contour_missing``: no outline at all, or a slice without outline between outlined slices.
    ``inlinevf_contour_implausible``: an outline with more than two connected curves, covering more
    than a quarter of the image, or whose labels hold no cavity on a mid-ventricular slice.
    """
    if len(labels) != study.n_slices:
        raise ValueError(f"{study.source_uri}: {len(labels)} label slices for {study.n_slices} images")
    present = [o is not None for o in study.outlines]
    flags = []
    idx = [k for k, p in enumerate(present) if p]
    if not idx or not all(present[idx[0] : idx[-1] + 1]):
        flags.append(contracts.QC_INLINEVF_CONTOUR_MISSING)
    mid = set(_mid_slices(present))
    for k, outline in enumerate(study.outlines):
        if outline is None:
            continue
        _, n_components = label(outline, structure=np.ones((3, 3), dtype=bool))
        filled = binary_fill_holes(outline)
        lab = np.asarray(labels[k])
        no_cavity_mid = k in mid and not bool((lab == contracts.LV_CAVITY).any())
        if (
            n_components > MAX_OUTLINE_COMPONENTS
            or filled.mean() > MAX_OUTLINE_AREA_FRACTION
            or no_cavity_mid
        ):
            flags.append(contracts.QC_INLINEVF_CONTOUR_IMPLAUSIBLE)
            break
    return ordered_flags(flags)


def qc_pass(flags: Iterable[str]) -> bool:
    """True when every raised flag is informational (``no_phenotype``, ``duplicate_slice_acquisition``)."""
    return all(f in contracts.QC_INFORMATIONAL_FLAGS for f in ordered_flags(flags))
