"""lvmass.core.nifti: the files --save_labels writes, read back (reading a NIfTI input is the decoder's:
tests/core/decode/test_nifti.py)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from lvmass.core import acquisition
from lvmass.core.nifti import image_volume, nifti_bytes, read_nifti_volume, voxel_volume_ml

GRID = acquisition.AcquisitionGrid(affine_lps=acquisition.as_affine_tuple(np.diag([1.5, 1.75, 10.0, 1.0])),
                                   slice_shape=(4, 5), slice_planes=(0, 1, 3))


def test_labels_round_trip_with_the_grids_affine_and_the_same_bytes_twice():
    labels = np.zeros(GRID.shape, np.uint8)
    labels[1:3, 1:4, 1] = 2
    data = nifti_bytes(labels, GRID, labels=True, description="test")
    assert data == nifti_bytes(labels, GRID, labels=True, description="test")  # no time stamp
    voxels, affine = read_nifti_volume(data, "x.nii.gz")
    np.testing.assert_array_equal(voxels, labels)
    np.testing.assert_array_equal(affine, GRID.affine_ras())
    assert voxel_volume_ml(affine) == pytest.approx(1.5 * 1.75 * 10.0 / 1000.0)
    assert read_nifti_volume(gzip.decompress(data), "x.nii")[0].shape == GRID.shape  # .nii too


def test_whole_valued_images_are_int16_and_others_float32():
    whole = image_volume([np.full((4, 5), 7.0, np.float32)] * 3, GRID)
    assert whole.dtype == np.int16 and whole.shape == GRID.shape and whole[:, :, 2].sum() == 0
    assert image_volume([np.full((4, 5), 0.5, np.float32)] * 3, GRID).dtype == np.float32


def test_a_volume_off_the_grid_and_a_file_that_is_not_nifti_are_refused():
    with pytest.raises(ValueError, match=r"volume of shape \(4, 5, 3\) is not on the grid \(4, 5, 4\)"):
        nifti_bytes(np.zeros((4, 5, 3)), GRID)
    with pytest.raises(ValueError, match=r"x\.nii: not a readable NIfTI file"):
        read_nifti_volume(b"\x1f\x8b" + b"nonsense", "x.nii")
