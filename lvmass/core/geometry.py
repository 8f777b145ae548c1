"""Slice geometry of a short-axis stack: normals, positions along the normal, order, spacing.

All positions are in the DICOM patient coordinate system (LPS, millimetres). The slice normal is the
cross product of the row and column direction cosines of ImageOrientationPatient (0020,0037); a slice's
position along the stack is ImagePositionPatient (0020,0032) projected on that normal. Ordering by
InstanceNumber or by ``ImagePositionPatient[2]`` (MONAI's shortcut) is wrong for oblique short-axis
stacks, so nothing here uses either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

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
    lengths = [float(np.linalg.norm(iop[:3])), float(np.linalg.norm(iop[3:]))]
    if min(lengths) < 1e-6:
        raise ValueError(f"ImageOrientationPatient has a zero-length row or column direction (lengths "
                         f"{lengths[0]:g} and {lengths[1]:g}; unit vectors expected): {list(orientation)}")
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


APEX_DIRECTION_CLEAR_COS = 0.5  # |cos| between the normal and APEX_DIRECTION_LPS above which anatomy decides


def apex_direction_is_clear(normal: np.ndarray) -> bool:
    """True when the stack's normal is within 60 degrees of the anatomical long axis (either sense), so
    :func:`apex_sign` can tell base from apex without the slice numbering."""
    return abs(float(np.asarray(normal) @ APEX_DIRECTION_LPS)) >= APEX_DIRECTION_CLEAR_COS


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
    """Centre-to-centre slice distance, from the slice positions first.

    The median gap between neighbouring projected positions is the measurement. SpacingBetweenSlices
    (0018,0088), the scanner's nominal value, is used instead when it agrees with that gap (within
    :data:`SPACING_REL_TOL` / :data:`SPACING_ABS_TOL_MM`): it is free of the positions' rounding. Vendors
    disagree on what the tag holds (some write the gap between slabs), so a value the positions
    contradict is ignored. One slice only: SpacingBetweenSlices, else SliceThickness (0018,0050).
    """
    def usable(value: float | None) -> TypeGuard[float]:
        return value is not None and bool(np.isfinite(value)) and value > 0

    gaps = slice_gaps_mm(sorted_positions_mm)
    if len(gaps) > 0 and float(np.median(gaps)) > 0:
        measured = float(np.median(gaps))
        if usable(spacing_between_slices_mm) and abs(float(spacing_between_slices_mm) - measured) <= max(
            SPACING_ABS_TOL_MM, SPACING_REL_TOL * measured
        ):
            return float(spacing_between_slices_mm)
        return measured
    if usable(spacing_between_slices_mm):
        return float(spacing_between_slices_mm)
    if usable(slice_thickness_mm):
        return float(slice_thickness_mm)
    raise ValueError(
        "cannot determine slice spacing: fewer than two distinct slice positions, and no "
        "SpacingBetweenSlices (0018,0088) or SliceThickness (0018,0050)"
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


# --- In-plane view ----------------------------------------------------------------------------------
# The standard short-axis view every slice is turned to (contracts.IN_PLANE_VIEW): image down (rows
# increasing) as close to posterior as a quarter turn or a mirror of the acquired grid allows, image right
# (columns increasing) such that right x down points from apex to base, i.e. the slice is seen from the
# apex with the anterior wall at the top and the right ventricle on the image's left.
POSTERIOR_LPS = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class ViewTransform:
    """How to turn an acquired slice ``A[row, col]`` into the standard view: transpose first (rows <->
    columns), then flip rows, then flip columns. The identity for a standard acquisition."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def describe(self) -> str:
        """``"none"`` or the steps, e.g. ``"transpose+flip_rows"`` (recorded with the study)."""
        steps = [name for name, on in (("transpose", self.transpose), ("flip_rows", self.flip_rows),
                                       ("flip_cols", self.flip_cols)) if on]
        return "+".join(steps) or "none"

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` (2-D, rows x cols) in the standard view; a new array, ``arr`` is not changed."""
        out = np.asarray(arr)
        if out.ndim != 2:
            raise ValueError(f"a slice must be 2-D (rows, cols). Received shape {out.shape}")
        if self.transpose:
            out = out.T
        if self.flip_rows:
            out = out[::-1, :]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def apply_spacing(self, pixel_spacing_mm: tuple[float, float]) -> tuple[float, float]:
        """PixelSpacing (row, column) after the transform: a transpose swaps them."""
        row_mm, col_mm = pixel_spacing_mm
        return (col_mm, row_mm) if self.transpose else (row_mm, col_mm)


def standard_view_transform(orientation: Sequence[float], apex_normal: np.ndarray) -> ViewTransform:
    """The :class:`ViewTransform` that turns a slice with ImageOrientationPatient (0020,0037)
    ``orientation`` into the standard view, given the stack's base-to-apex unit normal.

    ``orientation[:3]`` is the direction of increasing column index, ``orientation[3:]`` that of
    increasing row index (DICOM PS3.3 C.7.6.2.1.1). Of the four in-plane axes (+-row, +-column
    directions) the one nearest posterior becomes "down"; "right" is then the axis that makes
    right x down = -apex_normal (seen from the apex). Any of the eight mirrored or transposed
    acquisitions of one plane therefore ends in the same view.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise ValueError(f"ImageOrientationPatient must be 6 finite numbers. Received {list(orientation)}")
    along_cols, along_rows = iop[:3], iop[3:]  # direction of increasing column / row index
    candidates = [  # (down direction, transpose?, flip rows?)
        (along_rows, False, False), (-along_rows, False, True),
        (along_cols, True, False), (-along_cols, True, True),
    ]
    down, transpose, flip_rows = max(candidates, key=lambda c: float(c[0] @ POSTERIOR_LPS))
    right_after = along_rows if transpose else along_cols  # columns' direction after the transpose
    wanted_right = np.cross(np.asarray(apex_normal, dtype=np.float64), down)
    return ViewTransform(transpose=transpose, flip_rows=flip_rows,
                         flip_cols=bool(float(right_after @ wanted_right) < 0.0))
