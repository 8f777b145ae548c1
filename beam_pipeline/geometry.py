"""Slice geometry of a short-axis stack: normals, positions along the normal, order, spacing.

All positions are in the DICOM patient coordinate system (LPS, millimetres). The slice normal is the
cross product of the row and column direction cosines of ImageOrientationPatient (0020,0037); a slice's
position along the stack is ImagePositionPatient (0020,0032) projected on that normal. Ordering by
InstanceNumber or by ``ImagePositionPatient[2]`` (MONAI's shortcut) is wrong for oblique short-axis
stacks, so nothing here uses either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Two slices belong to one stack when their normals are within ~8 degrees (|cos| >= 0.99).
PARALLEL_COS_MIN = 0.99
# Neighbouring gaps more than 10% (and 0.5 mm) off the median gap mean inconsistent spacing.
SPACING_REL_TOL = 0.10
SPACING_ABS_TOL_MM = 0.5
# A gap of 1.5 median gaps or more means a slice is missing from the stack.
GAP_FACTOR_NONCONTIGUOUS = 1.5
# Apex direction in LPS: the LV apex lies left (+x), anterior (-y) and inferior (-z) of the base.
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice from ImageOrientationPatient (0020,0037): row cosines x column cosines."""
    iop = np.asarray(orientation, dtype=np.float64)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise ValueError(f"ImageOrientationPatient must be 6 finite numbers, got {list(orientation)}")
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient row and column cosines are parallel: {list(orientation)}")
    return normal / norm


def project_position_mm(position: Sequence[float], normal: np.ndarray) -> float:
    """Signed distance (mm) of ImagePositionPatient (0020,0032) along ``normal``."""
    ipp = np.asarray(position, dtype=np.float64)
    if ipp.shape != (3,) or not np.all(np.isfinite(ipp)):
        raise ValueError(f"ImagePositionPatient must be 3 finite numbers, got {list(position)}")
    return float(ipp @ normal)


def is_parallel(normal_a: np.ndarray, normal_b: np.ndarray, cos_min: float = PARALLEL_COS_MIN) -> bool:
    """Whether two slice normals describe parallel planes (either sign)."""
    return abs(float(normal_a @ normal_b)) >= cos_min


def stack_normal(normals: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The normal shared by most slices (weighted): robust to a few long-axis or localiser images.

    Picks the candidate normal with the largest total weight of parallel normals, then averages those
    (sign-aligned) for a stable estimate.
    """
    if len(normals) == 0:
        raise ValueError("no slice normals to choose a stack normal from")
    arr = np.asarray(normals, dtype=np.float64)
    w = np.ones(len(arr)) if weights is None else np.asarray(weights, dtype=np.float64)
    cos = np.abs(arr @ arr.T) >= PARALLEL_COS_MIN
    support = cos.astype(np.float64) @ w
    best = int(np.argmax(support))
    members = cos[best]
    signs = np.sign(arr[members] @ arr[best])
    mean = (arr[members] * (signs * w[members])[:, None]).sum(axis=0)
    return mean / np.linalg.norm(mean)


def cluster_positions_mm(positions_mm: Sequence[float], tol_mm: float) -> list[list[int]]:
    """Group indices whose positions lie within ``tol_mm`` of their neighbour (sorted single linkage)."""
    if tol_mm <= 0:
        raise ValueError(f"tol_mm must be positive, got {tol_mm}")
    order = np.argsort(np.asarray(positions_mm, dtype=np.float64), kind="stable")
    groups: list[list[int]] = []
    previous: float | None = None
    for idx in order:
        pos = float(positions_mm[idx])
        if previous is None or pos - previous > tol_mm:
            groups.append([])
        groups[-1].append(int(idx))
        previous = pos
    return groups


def apex_sign(normal: np.ndarray) -> float:
    """+1 when ``normal`` points from base towards apex by the anatomical rule, else -1.

    Used only when the data carry no slice numbering (any-vendor layout): the LV long axis runs from
    the base (right, posterior, superior) to the apex (left, anterior, inferior), so the projection of
    the normal on :data:`APEX_DIRECTION_LPS` decides the direction.
    """
    return 1.0 if float(normal @ APEX_DIRECTION_LPS) >= 0.0 else -1.0


def numbering_sign(numbers: Sequence[float], positions_mm: Sequence[float]) -> float:
    """+1 when positions increase with slice numbering (b1 = base), else -1.

    Uses the sign of the least-squares slope of position against number, so one misplaced slice cannot
    flip the stack.
    """
    n = np.asarray(numbers, dtype=np.float64)
    p = np.asarray(positions_mm, dtype=np.float64)
    if len(n) < 2 or np.ptp(n) == 0:
        return 1.0
    slope = float(np.polyfit(n, p, 1)[0])
    return 1.0 if slope >= 0 else -1.0


def slice_gaps_mm(sorted_positions_mm: Sequence[float]) -> np.ndarray:
    """Distances between neighbouring slice centres (mm), positions already sorted base to apex."""
    return np.diff(np.asarray(sorted_positions_mm, dtype=np.float64))


def slice_spacing_mm(
    sorted_positions_mm: Sequence[float],
    *,
    spacing_between_slices_mm: float | None,
    slice_thickness_mm: float | None,
) -> float:
    """Centre-to-centre slice distance: SpacingBetweenSlices (0018,0088) if present, else the median
    gap between neighbouring projected positions, else SliceThickness (0018,0050)."""
    if (
        spacing_between_slices_mm is not None
        and np.isfinite(spacing_between_slices_mm)
        and (spacing_between_slices_mm > 0)
    ):
        return float(spacing_between_slices_mm)
    gaps = slice_gaps_mm(sorted_positions_mm)
    if len(gaps) > 0 and float(np.median(gaps)) > 0:
        return float(np.median(gaps))
    if slice_thickness_mm is not None and np.isfinite(slice_thickness_mm) and slice_thickness_mm > 0:
        return float(slice_thickness_mm)
    raise ValueError(
        "cannot determine slice spacing: no SpacingBetweenSlices, fewer than two distinct slice positions "
        "and no SliceThickness"
    )


def spacing_is_inconsistent(sorted_positions_mm: Sequence[float], spacing_mm: float) -> bool:
    """True when a neighbouring gap differs from ``spacing_mm`` by more than the tolerance but is not a
    whole multiple of it (a missing slice is reported separately as non-contiguous)."""
    gaps = slice_gaps_mm(sorted_positions_mm)
    if len(gaps) == 0:
        return False
    tol = max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * spacing_mm)
    for gap in gaps:
        multiple = max(1.0, round(gap / spacing_mm))
        if abs(gap - multiple * spacing_mm) > tol * multiple:
            return True
    return False


def has_gap(sorted_positions_mm: Sequence[float], spacing_mm: float) -> bool:
    """True when two neighbouring slices are 1.5 spacings or more apart: a slice is missing."""
    gaps = slice_gaps_mm(sorted_positions_mm)
    return bool(len(gaps) > 0 and np.any(gaps >= GAP_FACTOR_NONCONTIGUOUS * spacing_mm))
