"""NIfTI out: the label and image volumes ``--save_labels`` writes, on a study's acquisition grid, and the
reader of those files (the QC gallery, tests). Reading a NIfTI *input* is the decoder's
(:mod:`lvmass.core.decode.nifti`).

:func:`nifti_bytes` writes a volume on a study's acquisition grid (``acquisition.AcquisitionGrid``) as
gzipped NIfTI-1 with the grid's affine as both qform and sform (code 1, scanner), byte for byte the same
for the same volume.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from lvmass.core import acquisition

GZIP_MAGIC = b"\x1f\x8b"


def nifti_bytes(volume: np.ndarray, grid: acquisition.AcquisitionGrid, *, description: str = "",
                labels: bool = False) -> bytes:
    """``volume`` (rows, cols, planes) on ``grid`` as gzipped NIfTI-1: the grid's affine (RAS) as qform
    and sform (code 1, scanner), mm units; labels as uint8 with the NIfTI label intent. Deterministic
    (no time stamp in the gzip header)."""
    arr = np.asarray(volume)
    if arr.shape != grid.shape:
        raise ValueError(f"volume of shape {arr.shape} is not on the grid {grid.shape}")
    if labels:
        arr = arr.astype(np.uint8)
    image = nib.Nifti1Image(arr, grid.affine_ras())
    header = image.header
    header.set_qform(grid.affine_ras(), code=1)
    header.set_sform(grid.affine_ras(), code=1)
    header.set_xyzt_units(xyz="mm")
    header.set_dim_info(slice=2)
    if labels:
        header.set_intent("label")
    header["descrip"] = description[:79].encode("ascii", "replace")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def image_volume(images: Sequence[np.ndarray], grid: acquisition.AcquisitionGrid) -> np.ndarray:
    """A study's slices on ``grid``'s planes, as int16 when every value is a whole number that fits
    (scanner values usually are: half the bytes of float32), else float32."""
    stack = np.stack([np.asarray(img, dtype=np.float32) for img in images], axis=-1)
    info = np.iinfo(np.int16)
    whole = bool(np.all(np.isfinite(stack)) and np.array_equal(np.round(stack), stack))
    if whole and stack.size and info.min <= float(stack.min()) and float(stack.max()) <= info.max:
        stack = stack.astype(np.int16)
    return grid.on_planes(stack)


def read_nifti_volume(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, RAS affine) of a whole NIfTI file in memory (``.nii`` or ``.nii.gz`` bytes), for readers
    of the files this module writes (the QC gallery, tests). ValueError naming ``source`` otherwise."""
    try:
        raw = gzip.decompress(data) if data[:2] == GZIP_MAGIC else data
        image = nib.Nifti1Image.from_bytes(raw)
    except (OSError, EOFError, zlib.error, ValueError, HeaderDataError) as exc:
        raise ValueError(f"{source}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def voxel_volume_ml(affine_ras: np.ndarray) -> float:
    """The volume of one voxel of ``affine_ras`` (mL): |det| of its 3 x 3 part / 1000."""
    return abs(float(np.linalg.det(np.asarray(affine_ras, dtype=np.float64)[:3, :3]))) / 1000.0


