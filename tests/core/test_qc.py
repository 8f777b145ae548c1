"""QC flags: geometry, labels, mass, InlineVF outlines, qc_pass."""

from __future__ import annotations

import numpy as np
import pytest

from lvmass.core import contracts
from lvmass.core.overlay import inlinevf_labels
from lvmass.core.qc import (
    geometry_qc_flags,
    inlinevf_qc_flags,
    label_qc_flags,
    mass_qc_flags,
    ordered_flags,
    qc_pass,
    study_qc_flags,
)
from lvmass.core.study import DecodedStudy
from tests.dicom_factory import circle_outline, ring_outline

N = 64


def study_with(outlines, positions=None, flags=()) -> DecodedStudy:
    n = len(outlines)
    return DecodedStudy(
        eid=1,
        instance=2,
        source_uri="s.zip",
        images=tuple(np.ones((N, N), np.float32) for _ in range(n)),
        outlines=tuple(outlines),
        pixel_spacing_mm=(1.8, 1.8),
        slice_spacing_mm=10.0,
        slice_thickness_mm=8.0,
        slice_positions_mm=tuple(positions if positions is not None else [10.0 * k for k in range(n)]),
        qc_flags=tuple(flags),
    )


def ring_labels(n_slices: int, empty: set[int] = frozenset()) -> np.ndarray:
    labels = np.zeros((N, N, n_slices), np.uint8)
    y, x = np.indices((N, N))
    d2 = (y - 31.5) ** 2 + (x - 31.5) ** 2
    for k in range(n_slices):
        if k in empty:
            continue
        labels[:, :, k][d2 <= 15**2] = contracts.MYOCARDIUM
        labels[:, :, k][d2 <= 9**2] = contracts.LV_CAVITY
    return labels


class TestGeometryQcFlags:
    def test_clean(self):
        assert geometry_qc_flags([10.0 * k for k in range(9)], 10.0) == ()

    def test_count_gap_and_spacing(self):
        assert geometry_qc_flags([0.0, 10.0, 20.0], 10.0) == (contracts.QC_SLICE_COUNT_OUT_OF_RANGE,)
        assert geometry_qc_flags([0, 10, 20, 40, 50, 60], 10.0) == (contracts.QC_NONCONTIGUOUS_SLICES,)
        assert geometry_qc_flags([0, 10, 20, 27, 37, 47], 10.0) == (contracts.QC_INCONSISTENT_SPACING,)
        # real stacks run to 20 slices of 5-8 mm (a per-slice model measures them all): 14 is plausible, 25
        # is not a short-axis cine of the LV
        assert geometry_qc_flags([10.0 * k for k in range(14)], 10.0) == ()
        assert geometry_qc_flags([8.0 * k for k in range(24)], 8.0) == ()
        too_many = geometry_qc_flags([8.0 * k for k in range(25)], 8.0)
        assert too_many == (contracts.QC_SLICE_COUNT_OUT_OF_RANGE,)


class TestStudyQcFlags:
    def test_union_with_decode_flags_in_vocabulary_order(self):
        study = study_with([None] * 3, flags=(contracts.QC_DUPLICATE_SLICE_ACQUISITION,))
        assert study_qc_flags(study) == (
            contracts.QC_SLICE_COUNT_OUT_OF_RANGE,
            contracts.QC_DUPLICATE_SLICE_ACQUISITION,
        )


class TestLabelQcFlags:
    def test_clean_rings(self):
        assert label_qc_flags(ring_labels(9), 9) == ()

    def test_empty_mid_slice(self):
        assert label_qc_flags(ring_labels(9, empty={4}), 9) == (contracts.QC_EMPTY_MID_SLICE_MYOCARDIUM,)

    def test_no_myocardium(self):
        assert label_qc_flags(np.zeros((N, N, 13), np.uint8), 8) == (contracts.QC_EMPTY_MID_SLICE_MYOCARDIUM,)

    def test_empty_apex_is_fine(self):
        assert label_qc_flags(ring_labels(9, empty={8}), 9) == ()

    def test_only_first_n_slices_considered(self):
        labels = ring_labels(13, empty={10, 11, 12})
        assert label_qc_flags(labels, 10) == ()

    def test_not_a_ring(self):
        # a C-shaped myocardium: the ring is cut open on the right, so nothing encloses the cavity
        labels = ring_labels(9)
        labels[28:36, 38:, 4] = np.where(
            labels[28:36, 38:, 4] == contracts.MYOCARDIUM, contracts.LV_CAVITY, 0
        )
        assert label_qc_flags(labels, 9) == (contracts.QC_MYOCARDIUM_NOT_RING,)

    def test_solid_disk_without_cavity_is_not_a_ring(self):
        labels = ring_labels(9)
        labels[:, :, 4][labels[:, :, 4] == contracts.LV_CAVITY] = contracts.MYOCARDIUM
        assert label_qc_flags(labels, 9) == (contracts.QC_MYOCARDIUM_NOT_RING,)

    def test_bad_n_slices(self):
        with pytest.raises(ValueError, match=r"n_slices must be within 1..9, got 0"):
            label_qc_flags(ring_labels(9), 0)


class TestMassQcFlags:
    @pytest.mark.parametrize("mass", [19.9, 400.1, None, float("nan"), float("inf")])
    def test_implausible(self, mass):
        assert mass_qc_flags(mass) == (contracts.QC_MASS_IMPLAUSIBLE,)

    @pytest.mark.parametrize("mass", [20.0, 90.0, 400.0])
    def test_plausible(self, mass):
        assert mass_qc_flags(mass) == ()


class TestInlinevfQcFlags:
    def test_clean(self):
        outlines = [None] + [ring_outline(N, N, 14 - k, 9 - k) for k in range(6)] + [None]
        study = study_with(outlines)
        assert inlinevf_qc_flags(study, inlinevf_labels(study)) == ()

    def test_no_outline_at_all(self):
        study = study_with([None] * 8)
        assert inlinevf_qc_flags(study, inlinevf_labels(study)) == (contracts.QC_INLINEVF_CONTOUR_MISSING,)

    def test_hole_in_outlined_slices(self):
        outlines = [ring_outline(N, N, 14, 9)] * 3 + [None] + [ring_outline(N, N, 14, 9)] * 3
        study = study_with(outlines)
        assert inlinevf_qc_flags(study, inlinevf_labels(study)) == (contracts.QC_INLINEVF_CONTOUR_MISSING,)

    def test_mistrace_with_extra_curves(self):
        extra = ring_outline(N, N, 14, 9) | circle_outline(N, N, 3, centre=(5.0, 5.0))
        outlines = [ring_outline(N, N, 14, 9)] * 3 + [extra] + [ring_outline(N, N, 14, 9)] * 3
        study = study_with(outlines)
        assert inlinevf_qc_flags(study, inlinevf_labels(study)) == (
            contracts.QC_INLINEVF_CONTOUR_IMPLAUSIBLE,
        )

    def test_outline_covering_the_image(self):
        outlines = (
            [ring_outline(N, N, 14, 9)] * 3 + [ring_outline(N, N, 31, 25)] + [ring_outline(N, N, 14, 9)] * 3
        )
        study = study_with(outlines)
        assert inlinevf_qc_flags(study, inlinevf_labels(study)) == (
            contracts.QC_INLINEVF_CONTOUR_IMPLAUSIBLE,
        )

    def test_label_count_mismatch(self):
        study = study_with([None] * 3)
        with pytest.raises(ValueError, match=r"s.zip: 2 label slices for 3 images"):
            inlinevf_qc_flags(study, [np.zeros((N, N), np.uint8)] * 2)


class TestQcPass:
    def test_informational_flags_pass(self):
        assert qc_pass(())
        assert qc_pass([contracts.QC_NO_PHENOTYPE, contracts.QC_DUPLICATE_SLICE_ACQUISITION])

    def test_other_flags_fail(self):
        assert not qc_pass([contracts.QC_NO_PHENOTYPE, contracts.QC_MASS_IMPLAUSIBLE])

    def test_unknown_flag(self):
        with pytest.raises(ValueError, match=r"unknown QC flag\(s\) \['shiny'\]"):
            qc_pass(["shiny"])

    def test_ordered_flags_dedupes(self):
        assert ordered_flags(
            [contracts.QC_NO_PHENOTYPE, contracts.QC_MISSING_SLICES, contracts.QC_NO_PHENOTYPE]
        ) == (contracts.QC_MISSING_SLICES, contracts.QC_NO_PHENOTYPE)
