"""Slice geometry: normals, projection, stack normal, direction and spacing rules."""

from __future__ import annotations

import numpy as np
import pytest

from lvmass.core import geometry
from tests.dicom_factory import StackGeometry


class TestSliceNormal:
    def test_axial(self):
        np.testing.assert_allclose(geometry.slice_normal([1, 0, 0, 0, 1, 0]), [0, 0, 1])

    def test_tilted_matches_construction(self):
        g = StackGeometry()
        np.testing.assert_allclose(geometry.slice_normal(g.orientation), g.normal, atol=1e-7)

    def test_bad_length(self):
        with pytest.raises(ValueError, match="ImageOrientationPatient must be 6 finite numbers"):
            geometry.slice_normal([1, 0, 0])

    def test_parallel_cosines(self):
        with pytest.raises(ValueError, match="row and column cosines are parallel"):
            geometry.slice_normal([1, 0, 0, 1, 0, 0])


class TestProjectPosition:
    def test_projects_tilted_positions_10mm_apart(self):
        g = StackGeometry(slice_spacing_mm=10.0, apex_sign=1.0)  # positions increase along the normal
        n = geometry.slice_normal(g.orientation)
        p = [geometry.project_position_mm(g.position(k), n) for k in range(4)]
        np.testing.assert_allclose(np.diff(p), 10.0, atol=1e-9)

    def test_bad_position(self):
        with pytest.raises(ValueError, match="ImagePositionPatient must be 3 finite numbers"):
            geometry.project_position_mm([0, float("nan"), 0], np.array([0, 0, 1.0]))


class TestStackNormal:
    def test_majority_wins_over_long_axis(self):
        sax = np.array([0.0, 0.0, 1.0])
        lax = np.array([1.0, 0.0, 0.0])
        n = geometry.stack_normal([sax, -sax, sax, lax, lax])
        assert abs(n @ sax) == pytest.approx(1.0)

    def test_empty(self):
        with pytest.raises(ValueError, match="no slice normals"):
            geometry.stack_normal([])


class TestClusterPositions:
    def test_groups_close_positions(self):
        assert geometry.cluster_positions_mm([20.0, 0.0, 10.2, 0.3, 10.0], tol_mm=1.0) == [
            [1, 3],
            [4, 2],
            [0],
        ]

    def test_tolerance_must_be_positive(self):
        with pytest.raises(ValueError, match="tol_mm must be positive"):
            geometry.cluster_positions_mm([0.0], tol_mm=0)


class TestDirection:
    def test_numbering_sign(self):
        assert geometry.numbering_sign([1, 2, 3], [5.0, 15.0, 25.0]) == 1.0
        assert geometry.numbering_sign([1, 2, 3], [25.0, 15.0, 5.0]) == -1.0
        # one misplaced slice cannot flip a stack
        assert geometry.numbering_sign([1, 2, 3, 4, 5], [0.0, 20.0, 10.0, 30.0, 40.0]) == 1.0

    def test_apex_sign_by_anatomy(self):
        assert geometry.apex_sign(np.array([1.0, -1.0, -1.0]) / np.sqrt(3)) == 1.0
        assert geometry.apex_sign(np.array([-1.0, 1.0, 1.0]) / np.sqrt(3)) == -1.0


class TestSpacing:
    def test_spacing_between_slices_tag_first(self):
        assert (
            geometry.slice_spacing_mm([0, 10, 20], spacing_between_slices_mm=9.5, slice_thickness_mm=8) == 9.5
        )

    def test_median_gap_next(self):
        assert (
            geometry.slice_spacing_mm([0, 10, 20, 40], spacing_between_slices_mm=None, slice_thickness_mm=8)
            == 10
        )

    def test_thickness_last(self):
        assert geometry.slice_spacing_mm([3.0], spacing_between_slices_mm=None, slice_thickness_mm=8.0) == 8.0

    def test_nothing_known(self):
        with pytest.raises(ValueError, match="cannot determine slice spacing"):
            geometry.slice_spacing_mm([3.0], spacing_between_slices_mm=None, slice_thickness_mm=None)

    def test_inconsistent_and_gap(self):
        assert not geometry.spacing_is_inconsistent([0, 10, 20, 40], 10.0)  # a gap, not inconsistency
        assert geometry.has_gap([0, 10, 20, 40], 10.0)
        assert geometry.spacing_is_inconsistent([0, 10, 17, 27], 10.0)
        assert not geometry.has_gap([0, 10, 20, 30], 10.0)
