"""NIfTI twins of DICOM studies, written by the tests with nibabel, independent of ``lvmass.core.nifti``.

:func:`nifti_twin` reads a stack of single-frame DICOMs with pydicom and writes the same cine as one 4-D
NIfTI-1 the way converters do: voxel ``(i, j, k, t)``, ``t`` the frames in TriggerTime order, the affine
from ImagePositionPatient, ImageOrientationPatient and PixelSpacing (PS3.3 C.7.6.2.1.1) turned from LPS to
RAS, the stored values with RescaleSlope/Intercept as ``scl_slope``/``scl_inter``. ``layout`` chooses which
way the in-plane axes are stored, so a test can show the decoder is indifferent to it.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable

import nibabel as nib
import numpy as np
import pydicom

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# i along the rows (a DICOM image as it is stored), or i along the columns with j running up the image
# (dcm2niix's habit: closer to RAS), or the slices written apex first.
LAYOUTS = ("rows_i", "cols_i_flipped", "rows_i_apex_first")


def _frames(members: Iterable[bytes]) -> dict[tuple[float, ...], list[pydicom.Dataset]]:
    """Frames of each slice position (IPP), each slice's frames in TriggerTime order."""
    by_position: dict[tuple[float, ...], list[pydicom.Dataset]] = {}
    for data in members:
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except pydicom.errors.InvalidDicomError:
            continue
        if "ImagePositionPatient" not in ds or "inlinevf" in str(ds.get("SeriesDescription", "")).lower():
            continue  # the InlineVF series repeats the positions; the cine is the rest
        by_position.setdefault(tuple(float(v) for v in ds.ImagePositionPatient), []).append(ds)
    return {p: sorted(f, key=lambda d: float(d.TriggerTime)) for p, f in by_position.items()}


def nifti_twin(members: Iterable[bytes], *, layout: str = "rows_i", gz: bool = True,
               frames: int | None = None) -> bytes:
    """The short-axis cine of ``members`` (DICOM file bytes) as one NIfTI-1 file (``frames``: keep only
    the first n frames; 1 gives the 3-D ED volume)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    stacks = _frames(members)
    first = next(iter(stacks.values()))[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    x_dir, y_dir = iop[:3], iop[3:]  # increasing column, increasing row
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    normal = np.cross(x_dir, y_dir)
    positions = sorted(stacks, key=lambda p: float(np.dot(p, normal)))
    if layout == "rows_i_apex_first":
        positions = positions[::-1]
    n_frames = min(len(f) for f in stacks.values()) if frames is None else frames
    rows, cols = int(first.Rows), int(first.Columns)
    volume = np.zeros((rows, cols, len(positions), n_frames), dtype=np.int16)
    for k, position in enumerate(positions):
        for t, ds in enumerate(stacks[position][:n_frames]):
            volume[:, :, k, t] = ds.pixel_array
    origin = np.array(positions[0])
    step = np.array(positions[1]) - origin
    affine = np.eye(4)
    if layout == "cols_i_flipped":
        volume = volume.transpose(1, 0, 2, 3)[:, ::-1]
        affine[:3, 0], affine[:3, 1] = x_dir * col_mm, -y_dir * row_mm
        affine[:3, 3] = origin + (rows - 1) * y_dir * row_mm
    else:
        affine[:3, 0], affine[:3, 1] = y_dir * row_mm, x_dir * col_mm
        affine[:3, 3] = origin
    affine[:3, 2] = step
    if n_frames == 1:
        volume = volume[..., 0]
    image = nib.Nifti1Image(np.ascontiguousarray(volume), LPS_RAS @ affine)
    image.set_data_dtype(np.int16)
    slope, intercept = float(first.get("RescaleSlope", 1.0)), float(first.get("RescaleIntercept", 0.0))
    image.header.set_slope_inter(slope, intercept)
    image.header.set_qform(LPS_RAS @ affine, code=1)
    image.header.set_sform(LPS_RAS @ affine, code=1)
    image.header.set_xyzt_units(xyz="mm", t="msec")
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def plain_nifti(voxels: np.ndarray, affine_ras: np.ndarray | None, *, gz: bool = True, qform_code: int = 1,
                sform_code: int = 1, dtype=np.float32) -> bytes:
    """``voxels`` with ``affine_ras`` as qform/sform of the given codes (0, 0: no affine at all; a qform
    code of 0 leaves the qform out, for an affine it cannot hold)."""
    image = nib.Nifti1Image(np.asarray(voxels, dtype=dtype), None)  # the header alone says the geometry
    if affine_ras is not None and sform_code:
        image.header.set_sform(affine_ras, code=sform_code)
    if affine_ras is not None and qform_code:
        image.header.set_qform(affine_ras, code=qform_code)
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw
