"""lvmass.core.measure: participant tensors from studies, raw measurements, calibration to results."""

from __future__ import annotations

import pytest

from lvmass.core import contracts
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.identity import participant_ids
from lvmass.core.mass import SexCentering
from lvmass.core.measure import (
    apply_p90,
    calibrate,
    measure_inlinevf,
    participant_from_study,
    recalibrated_inlinevf,
    results_file_row,
)
from lvmass.core.phenotypes import Phenotype
from lvmass.core.schema import (
    CALIBRATION_LINEAR,
    CALIBRATION_NONE,
    CALIBRATION_SEX_CENTERED,
    RESULTS_FILE_SCHEMA,
)
from tests.hand_made import COL_MM, MALE, ROW_MM, SLICE_MM, label_study, measurement


class TestParticipantFromStudy:
    def test_tensor_and_flags(self):
        study, _ = label_study()
        participant = participant_from_study(study, with_inlinevf=True)
        assert participant.image.shape == contracts.TENSOR_SHAPE
        assert participant.n_slices == participant.n_slices_used == 9
        assert participant.spacing_mm.tolist() == [ROW_MM, COL_MM, SLICE_MM]
        assert participant.inlinevf_labels is None  # no outlines
        assert contracts.QC_INLINEVF_CONTOUR_MISSING in participant.inlinevf_flags

    def test_without_an_eid_the_participant_is_known_by_its_file_stem(self):
        study, _ = label_study(eid=None, uri="mem://SCD0000501.zip")
        participant = participant_from_study(study, with_inlinevf=False)
        assert (participant.participant_id, participant.eid, participant.instance) == ("SCD0000501", None, 0)

    def test_participant_ids_still_refuses_a_study_without_eid(self):
        study, _ = label_study(eid=None, uri="mem://scan.zip")
        with pytest.raises(ValueError, match=r"mem://scan.zip: no participant id"):
            participant_ids(study)

    def test_inlinevf_without_contours_is_flagged_not_measured(self):
        study, _ = label_study()
        result = measure_inlinevf(participant_from_study(study, with_inlinevf=True))
        assert result.lv_mass_raw_g is None
        assert contracts.QC_INLINEVF_CONTOUR_MISSING in result.qc_flags


class TestCalibrate:
    def test_worked_example_sex_centred(self):
        centering = {contracts.METHOD_ML4H_SEG: SexCentering(offsets_g={"male": -40.0, "female": -30.0})}
        record = calibrate(measurement(raw=150.0), MALE, centering)
        bsa = 0.007184 * 80.0**0.425 * 180.0**0.725  # DuBois, worked by hand: 1.9964 m2
        assert record.calibration == CALIBRATION_SEX_CENTERED
        assert record.lv_mass_g == pytest.approx(110.0)
        assert record.bsa_m2 == pytest.approx(bsa)
        assert record.lvmi_g_m2 == pytest.approx(110.0 / bsa)
        assert record.lvh is False  # 55.1 g/m2 <= 72 (men)
        assert record.qc_pass and record.qc_flags == []
        assert record.pipeline_version == PIPELINE_VERSION

    def test_lvh_threshold_depends_on_sex(self):
        female = Phenotype(eid=1, sex="female", height_cm=180.0, weight_kg=80.0)
        record = calibrate(measurement(method=contracts.METHOD_ML4H_REG, raw=120.0), female, {})
        assert record.calibration == CALIBRATION_NONE and record.lv_mass_g == 120.0
        assert record.lvmi_g_m2 == pytest.approx(60.1, abs=0.1)
        assert record.lvh is True  # 60.1 > 55 (women)

    def test_inlinevf_recalibration(self):
        raw = 155.0
        record = calibrate(recalibrated_inlinevf(measurement(method=contracts.METHOD_INLINEVF, raw=raw)),
                           MALE, {})
        assert record.method == contracts.METHOD_INLINEVF_RECALIBRATED
        assert record.calibration == CALIBRATION_LINEAR
        assert record.lv_mass_g == pytest.approx(0.543487 * 155.0 + 5.808005)
        assert record.lv_mass_raw_g == raw

    def test_no_phenotype_keeps_masses(self):
        record = calibrate(measurement(method=contracts.METHOD_ML4H_REG, raw=130.0), None, {})
        assert record.lv_mass_raw_g == record.lv_mass_g == 130.0
        assert record.sex is None and record.bsa_m2 is None
        assert record.lvmi_g_m2 is None and record.lvh is None
        assert record.qc_flags == [contracts.QC_NO_PHENOTYPE]
        assert record.qc_pass  # informational flag

    def test_centred_method_without_centering_has_no_calibrated_mass(self):
        centering = {contracts.METHOD_ML4H_SEG: SexCentering(offsets_g={"male": -40.0})}
        female = Phenotype(eid=1, sex="female", height_cm=160.0, weight_kg=60.0)
        for phenotype, table in ((None, centering), (female, centering), (MALE, {})):
            record = calibrate(measurement(raw=150.0), phenotype, table)
            assert record.lv_mass_raw_g == 150.0
            assert record.lv_mass_g is None and record.calibration == CALIBRATION_NONE
            assert record.lvmi_g_m2 is None and record.lvh is None

    def test_failed_qc(self):
        record = calibrate(measurement(flags=(contracts.QC_MYOCARDIUM_NOT_RING,)), MALE, {})
        assert not record.qc_pass
        assert record.qc_flags == [contracts.QC_MYOCARDIUM_NOT_RING]

    def test_p90(self):
        record = calibrate(measurement(method=contracts.METHOD_ML4H_REG, raw=130.0), MALE, {})
        above = apply_p90(record, {contracts.METHOD_ML4H_REG: {"male": 129.0}})
        below = apply_p90(record, {contracts.METHOD_ML4H_REG: {"male": 130.0}})
        assert above.lvh_p90 is True and below.lvh_p90 is False  # strictly above
        assert apply_p90(record, {}).lvh_p90 is None

    def test_file_row_matches_the_file_schema(self):
        row = results_file_row(calibrate(measurement(), MALE, {}))
        assert list(row) == RESULTS_FILE_SCHEMA.names
