"""lvmass.core.acquisition: a study's grid for the NIfTI files, and LPS (DICOM) against RAS (NIfTI)."""

from __future__ import annotations

import numpy as np
import pytest

from lvmass.core import acquisition
from lvmass.core.study import DecodedStudy


def study(shapes, positions, affine=None) -> DecodedStudy:
    images = tuple(np.zeros(s, np.float32) for s in shapes)
    return DecodedStudy(eid=None, instance=None, source_uri="x.zip", images=images,
                        outlines=(None,) * len(images), pixel_spacing_mm=(1.5, 1.75), slice_spacing_mm=10.0,
                        slice_thickness_mm=8.0,
                        slice_positions_mm=tuple(positions), affine_lps=affine)


def test_lps_and_ras_differ_in_the_sign_of_x_and_y():
    affine = np.eye(4)
    affine[:3, 3] = [1.0, 2.0, 3.0]
    ras = acquisition.lps_to_ras(affine)
    assert ras[:3, 3].tolist() == [-1.0, -2.0, 3.0]
    np.testing.assert_array_equal(acquisition.lps_to_ras(ras), affine)  # its own inverse


def test_a_missing_slice_leaves_an_empty_plane():
    grid = acquisition.acquisition_grid(study([(4, 5)] * 3, [0.0, 10.0, 30.0]))
    assert grid.slice_planes == (0, 1, 3) and grid.shape == (4, 5, 4) and not grid.located
    on_planes = grid.on_planes(np.ones((4, 5, 3), np.uint8))
    assert on_planes[:, :, 2].sum() == 0 and on_planes.sum() == 3 * 20
    np.testing.assert_array_equal(np.diag(np.asarray(grid.affine_lps)), [1.5, 1.75, 10.0, 1.0])


def test_slices_of_different_sizes_have_no_grid():
    assert acquisition.acquisition_grid(study([(4, 5), (4, 6)], [0.0, 10.0])) is None


def test_slices_of_the_wrong_shape_are_refused():
    grid = acquisition.acquisition_grid(study([(4, 5)] * 2, [0.0, 10.0]))
    with pytest.raises(ValueError, match=r"slices must be \(4, 5, 2\)"):
        grid.on_planes(np.zeros((4, 5, 3)))
