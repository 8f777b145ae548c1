"""QC that knows its limits: out-of-training pixel sizes, implausible calibrated masses and LVMI, and
impossible body sizes are flagged on the row, not only logged."""

from __future__ import annotations

import io

import pytest

from lvmass.core import contracts
from lvmass.core.measure import Measurement, calibrate
from lvmass.core.phenotypes import Phenotype, read_phenotype_table
from lvmass.core.qc import body_size_plausible, lvmi_qc_flags, pixel_spacing_qc_flags, qc_pass


def measurement(raw: float = 120.0, method: str = contracts.METHOD_ML4H_REG) -> Measurement:
    return Measurement(
        source_uri="mem://1_20209_2_0.zip", participant_id="1", eid=1, instance=2, method=method,
        lv_mass_raw_g=raw, myocardium_volume_ml=None, lv_cavity_volume_ml=None, n_slices=10,
        acquired_voxel_mm=(1.8, 1.8, 10.0), grid_pixel_mm=1.86, in_plane_scale=1.8 / 1.86,
    )


class TestPixelSpacing:
    @pytest.mark.parametrize(("spacing", "flagged"), [
        ((1.8, 1.8), False), ((1.65, 2.07), False), ((1.3672, 1.3672), True), ((1.8, 2.2), True),
    ])
    def test_outside_the_training_range_is_flagged(self, spacing, flagged):
        flags = pixel_spacing_qc_flags(spacing, (1.65, 2.07))
        assert (contracts.QC_PIXEL_SPACING_OUTSIDE_TRAINING in flags) is flagged
        assert qc_pass(flags) is not flagged

    def test_a_model_without_a_recorded_range_flags_nothing(self):
        assert pixel_spacing_qc_flags((0.5, 0.5), None) == ()


class TestCalibratedValues:
    def test_a_calibrated_mass_at_or_below_zero_fails_qc(self):
        """Sex centering can push a tiny raw mass below zero: the calibrated value is checked too."""
        from lvmass.core.mass import SexCentering

        centering = SexCentering(offsets_g={"male": -50.0, "female": -50.0}, source="run")
        phenotype = Phenotype(eid=1, sex="male", height_cm=175.0, weight_kg=75.0)
        record = calibrate(measurement(raw=40.0, method=contracts.METHOD_ML4H_SEG), phenotype,
                           {contracts.METHOD_ML4H_SEG: centering})
        assert record.lv_mass_g == pytest.approx(-10.0)
        assert contracts.QC_MASS_IMPLAUSIBLE in record.qc_flags and not record.qc_pass

    @pytest.mark.parametrize(("lvmi", "flagged"), [(70.0, False), (5.0, True), (400.0, True), (None, False)])
    def test_lvmi_outside_physiology_is_flagged(self, lvmi, flagged):
        assert (contracts.QC_MASS_IMPLAUSIBLE in lvmi_qc_flags(lvmi)) is flagged


class TestBodySize:
    @pytest.mark.parametrize(("height", "weight", "plausible"), [
        (175.0, 75.0, True), (None, 75.0, True), (100.0, 75.0, False), (175.0, 20.0, False),
        (175.0, 300.0, False),
    ])
    def test_adult_ranges(self, height, weight, plausible):
        assert body_size_plausible(height, weight) is plausible

    def test_an_implausible_height_is_flagged_and_gives_no_lvmi(self):
        phenotype = Phenotype(eid=1, sex="female", height_cm=100.0, weight_kg=60.0)
        record = calibrate(measurement(), phenotype, {})
        assert contracts.QC_BODY_SIZE_IMPLAUSIBLE in record.qc_flags
        assert record.bsa_m2 is None and record.lvmi_g_m2 is None and record.lvh is None
        assert record.qc_pass  # the mass itself is fine; the flag is informational

    def test_a_value_the_reader_rejected_as_impossible_is_flagged(self):
        """A height of 3 m is read as unknown (the reader's limits); the row says why there is no LVMI."""
        table = read_phenotype_table(io.BytesIO(b"eid,sex,height_cm,weight_kg\n1,F,300,60\n"), source="p.csv")
        phenotype = table.lookup(1, 2)
        assert phenotype.height_cm is None and "height_cm" in phenotype.implausible
        record = calibrate(measurement(), phenotype, {})
        assert contracts.QC_BODY_SIZE_IMPLAUSIBLE in record.qc_flags and record.lvmi_g_m2 is None


class TestTrueAnatomyModels:
    """A model of true anatomy (card label_source) gives a raw mass that needs no centering: without
    manual masses its calibrated mass is the raw one; the paper's InlineVF-label model stays uncalibrated."""

    def test_raw_mass_is_the_estimate_without_a_centering(self):
        phenotype = Phenotype(eid=1, sex="male", height_cm=180.0, weight_kg=80.0)
        seg = measurement(raw=130.0, method=contracts.METHOD_ML4H_SEG)
        anatomy = calibrate(seg, phenotype, {}, raw_is_estimate=frozenset({contracts.METHOD_ML4H_SEG}))
        assert anatomy.lv_mass_g == 130.0 and anatomy.calibration == "none" and anatomy.lvmi_g_m2 is not None
        inlinevf_recipe = calibrate(seg, phenotype, {})
        assert inlinevf_recipe.lv_mass_g is None

    def test_still_centred_when_the_run_has_manual_masses(self):
        from lvmass.core.mass import SexCentering

        centering = SexCentering(offsets_g={"male": -10.0, "female": -5.0}, source="run")
        phenotype = Phenotype(eid=1, sex="male", height_cm=180.0, weight_kg=80.0)
        record = calibrate(measurement(raw=130.0, method=contracts.METHOD_ML4H_SEG), phenotype,
                           {contracts.METHOD_ML4H_SEG: centering},
                           raw_is_estimate=frozenset({contracts.METHOD_ML4H_SEG}))
        assert record.lv_mass_g == 120.0 and record.calibration == "sex_mean_centered"
