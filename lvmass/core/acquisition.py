"""Where a decoded study's voxels lie in the patient: the affine of its grid.

A :class:`~lvmass.core.study.DecodedStudy` holds its slices in the standard in-plane view, base to apex
(``lvmass.core.geometry``). Its ``affine_lps`` (4 x 4, row-major) maps voxel ``(row, col, plane)`` of that
grid to the DICOM patient coordinate system (LPS: x to the patient's left, y posterior, z head; mm).
Slice ``k`` lies on plane :func:`slice_planes` ``[k]``: ``k`` itself in a regular stack, one plane further for
each missing slice, so a stack with a gap keeps its slices where they were acquired and the gap stays empty.

The decoders build the affine from what they read: DICOM from ImagePositionPatient (0020,0032),
ImageOrientationPatient (0020,0037) and PixelSpacing (0028,0030) of each chosen frame (PS3.3 C.7.6.2.1.1),
NIfTI from the file's own affine turned to the same slices (``lvmass.core.nifti``). ``--save_labels``
writes labels and the ED image on this grid (NIfTI, whose affine is RAS: :func:`lps_to_ras`), so they open
over each other, and over any other image of the participant, in ITK-SNAP or 3D Slicer.

Pure numpy; no Beam, no nibabel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lvmass.core.geometry import ViewTransform
from lvmass.core.study import DecodedStudy

# Slices farther than this from the one affine fitted to the stack (in-plane drift, a skewed stack) are
# reported: the saved NIfTI files then place them approximately (half a typical 1.8 mm pixel).
AFFINE_FIT_TOL_MM = 0.9
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse

Affine = tuple[tuple[float, float, float, float], ...]


def as_affine_tuple(affine: np.ndarray) -> Affine:
    """A 4 x 4 array as the immutable nested tuple a frozen record holds."""
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        raise ValueError(f"an affine must be a finite 4 x 4 matrix. Received shape {arr.shape}")
    return tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in arr)


def lps_to_ras(affine_lps: np.ndarray | Affine) -> np.ndarray:
    """The same affine with patient coordinates in RAS (NIfTI's) instead of LPS (DICOM's): x and y
    change sign. Also RAS -> LPS (the flip is its own inverse)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def acquired_pixel_axes(
    orientation: Sequence[float], position: Sequence[float], pixel_spacing_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, row step, column step) of one acquired frame, LPS mm: pixel ``(r, c)`` lies at
    ``origin + r * row_step + c * col_step`` (PS3.3 C.7.6.2.1.1: ImageOrientationPatient's first
    triplet is the direction of increasing column index, spaced PixelSpacing[1]; its second that of
    increasing row index, spaced PixelSpacing[0])."""
    iop = np.asarray(orientation, dtype=np.float64)
    origin = np.asarray(position, dtype=np.float64)
    if iop.shape != (6,) or origin.shape != (3,) or len(pixel_spacing_mm) != 2:
        raise ValueError(f"need 6 orientation cosines, 3 position coordinates and 2 pixel spacings. "
                         f"Received {list(orientation)}, {list(position)}, {list(pixel_spacing_mm)}")
    row_mm, col_mm = (float(v) for v in pixel_spacing_mm)
    return origin, iop[3:] * row_mm, iop[:3] * col_mm


def in_view(
    origin: np.ndarray, row_step: np.ndarray, col_step: np.ndarray, shape: tuple[int, int],
    view: ViewTransform,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, row step, column step) of the same frame after ``view`` (transpose, then flip rows, then
    flip columns: ``ViewTransform.apply``), ``shape`` the acquired (rows, cols)."""
    rows, cols = shape
    if view.transpose:
        row_step, col_step, rows, cols = col_step, row_step, cols, rows
    if view.flip_rows:
        origin, row_step = origin + (rows - 1) * row_step, -row_step
    if view.flip_cols:
        origin, col_step = origin + (cols - 1) * col_step, -col_step
    return origin, row_step, col_step


def slice_planes(positions_mm: Sequence[float], slice_spacing_mm: float) -> tuple[int, ...]:
    """The plane of each slice (positions base to apex along the normal): the number of spacings from
    the first, rounded; ``0..n-1`` when that would not give increasing planes (spacing inconsistent)."""
    positions = np.asarray(positions_mm, dtype=np.float64)
    if len(positions) == 0:
        return ()
    if not (np.isfinite(slice_spacing_mm) and slice_spacing_mm > 0):
        return tuple(range(len(positions)))
    planes = np.rint((positions - positions[0]) / slice_spacing_mm).astype(int)
    if len(planes) > 1 and not np.all(np.diff(planes) > 0):
        return tuple(range(len(positions)))
    return tuple(int(p) for p in planes)


def stack_affine_lps(
    origins: Sequence[np.ndarray], row_step: np.ndarray, col_step: np.ndarray, planes: Sequence[int],
    fallback_step: np.ndarray,
) -> tuple[np.ndarray, float]:
    """The affine of a stack whose slice ``k`` has its pixel (0, 0) at ``origins[k]`` on plane
    ``planes[k]``, and how far (mm) the farthest slice lies from it.

    The through-plane step is the first-to-last displacement per plane, which keeps a skewed but regular
    stack exact; ``fallback_step`` (normal x spacing) serves a single slice."""
    points = np.asarray(origins, dtype=np.float64)
    if len(points) == 0 or len(planes) != len(points):
        raise ValueError(f"need one origin per slice plane. Received {len(points)} origins, "
                         f"{len(planes)} planes")
    last = int(planes[-1]) - int(planes[0])
    step = (points[-1] - points[0]) / last if last > 0 else np.asarray(fallback_step, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row_step, col_step, step
    affine[:3, 3] = points[0] - int(planes[0]) * step
    predicted = affine[:3, 3] + np.outer(np.asarray(planes, dtype=np.float64), step)
    residual = float(np.max(np.linalg.norm(points - predicted, axis=1)))
    return affine, residual


def decoded_affine_lps(
    *, orientation: Sequence[float], positions_lps: Sequence[Sequence[float]],
    pixel_spacing_mm: Sequence[float], shape: tuple[int, int], view: ViewTransform,
    slice_positions_mm: Sequence[float], slice_spacing_mm: float, apex_normal: np.ndarray,
) -> tuple[np.ndarray, float]:
    """The affine of a decoded study's grid, and the farthest slice's distance from it (mm).

    ``orientation``, ``pixel_spacing_mm`` and ``shape`` (rows, cols) are the acquisition's (before the
    view); ``positions_lps`` is each decoded slice's ImagePositionPatient, base to apex, and
    ``slice_positions_mm`` their positions along ``apex_normal`` (the study's ``slice_positions_mm``)."""
    frames = [acquired_pixel_axes(orientation, p, pixel_spacing_mm) for p in positions_lps]
    turned = [in_view(o, r, c, shape, view) for o, r, c in frames]
    planes = slice_planes(slice_positions_mm, slice_spacing_mm)
    normal = np.asarray(apex_normal, dtype=np.float64)
    return stack_affine_lps([t[0] for t in turned], turned[0][1], turned[0][2], planes,
                            normal / np.linalg.norm(normal) * slice_spacing_mm)


@dataclass(frozen=True)
class AcquisitionGrid:
    """The grid ``--save_labels`` writes a participant's NIfTI files on: ``affine_lps`` (voxel ->
    LPS mm), each slice's ``(rows, cols)`` and plane (:func:`slice_planes`). ``located`` is False when
    the study carried no affine: the files then have the voxel size only (no position, no orientation)."""

    affine_lps: Affine
    slice_shape: tuple[int, int]
    slice_planes: tuple[int, ...]
    located: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, cols, planes) of the volume."""
        return (*self.slice_shape, (self.slice_planes[-1] + 1) if self.slice_planes else 0)

    def affine_ras(self) -> np.ndarray:
        """The affine as NIfTI holds it (RAS)."""
        return lps_to_ras(self.affine_lps)

    def on_planes(self, slices: np.ndarray) -> np.ndarray:
        """``slices`` (rows, cols, n_slices: slice k = the study's slice k) on the grid's planes; a plane
        no slice lies on (a missing slice) is zeros. A new array of ``slices``' dtype."""
        arr = np.asarray(slices)
        if arr.ndim != 3 or arr.shape[:2] != self.slice_shape or arr.shape[2] != len(self.slice_planes):
            raise ValueError(f"slices must be {(*self.slice_shape, len(self.slice_planes))} (rows, cols, "
                             f"slices) for this grid. Received shape {arr.shape}")
        out = np.zeros(self.shape, dtype=arr.dtype)
        out[:, :, list(self.slice_planes)] = arr
        return out


def acquisition_grid(study: DecodedStudy) -> AcquisitionGrid | None:
    """The grid of a study's NIfTI files (:class:`AcquisitionGrid`); None when its slices differ in size
    (no one grid holds them: the study is measured all the same, its NIfTI files are not written)."""
    shapes = {tuple(int(v) for v in np.shape(img)) for img in study.images}
    if len(shapes) != 1:
        return None
    (rows, cols), = shapes
    planes = slice_planes(study.slice_positions_mm, study.slice_spacing_mm)
    if study.affine_lps is not None:
        return AcquisitionGrid(affine_lps=study.affine_lps, slice_shape=(rows, cols), slice_planes=planes)
    row_mm, col_mm = study.pixel_spacing_mm
    voxel_only = np.diag([float(row_mm), float(col_mm), float(study.slice_spacing_mm), 1.0])
    return AcquisitionGrid(affine_lps=as_affine_tuple(voxel_only), slice_shape=(rows, cols),
                           slice_planes=planes, located=False)
