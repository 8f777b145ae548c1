"""lvmass.core.identity: the one parser of input names, parsed once (``InputIdentity``) and carried."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lvmass.core.decode import decode_dicom_members, decode_participant_zip
from lvmass.core.identity import (
    ANY_VENDOR_INSTANCE,
    InputIdentity,
    check_input_name,
    input_identity,
    parse_input_name,
    parse_ukbb_zip_name,
    participant_identity,
    participant_ids,
)
from lvmass.core.study import DecodedStudy
from tests.dicom_factory import any_vendor_members, zip_members


def study(uri: str, *, eid: int | None = None, instance: int | None = None, patient_id: str = "",
          name: InputIdentity | None = None) -> DecodedStudy:
    image = np.zeros((4, 4), np.float32)
    return DecodedStudy(eid=eid, instance=instance, source_uri=uri, images=(image,), outlines=(None,),
                        pixel_spacing_mm=(1.8, 1.8), slice_spacing_mm=10.0, slice_thickness_mm=8.0,
                        slice_positions_mm=(0.0,), patient_id=patient_id, name=name)


class TestParseInputName:
    @pytest.mark.parametrize(("uri", "expected"), [
        ("gs://b/20209/1000123_20209_2_0.zip", (1000123, 2, 20209, 0)),
        ("1000123_3.zip", (1000123, 3, None, None)),
        ("labels/1000123_3.npz", (1000123, 3, None, None)),
        ("dicoms/1000123", (1000123, None, None, None)),
        ("subjects/1000123_2/sa.nii.gz", (1000123, 2, None, None)),  # named by its folder
    ])
    def test_accepted_names(self, uri, expected):
        parsed = parse_input_name(uri)
        assert (parsed.eid, parsed.instance, parsed.field, parsed.array) == expected

    @pytest.mark.parametrize("uri", ["SCD0000501.zip", "abc_20209_2_0.zip", "1_2_3.zip", ""])
    def test_names_that_say_no_eid(self, uri):
        assert parse_input_name(uri) is None

    def test_ukbb_zip_names_only_with_one_extension(self):
        assert parse_ukbb_zip_name("x/1000123_20209_2_0.zip") == (1000123, 20209, 2, 0)
        assert parse_ukbb_zip_name("x/1000123_20209_2_0.tar.zip") is None
        assert parse_ukbb_zip_name("x/1000123_20209_2_0") is None


class TestInputIdentity:
    def test_a_ukbb_zip(self):
        identity = input_identity("gs://b/1000123_20209_2_0.zip")
        assert identity == InputIdentity("gs://b/1000123_20209_2_0.zip", "1000123", 1000123, 2, ukbb_zip=True)
        assert identity.key == ("1000123", 2)
        identity.check()  # a good name

    def test_a_name_without_an_eid_is_known_by_its_stem_at_any_visit(self):
        identity = input_identity("data/SCD0000501.zip")
        assert (identity.participant_id, identity.eid, identity.instance) == ("SCD0000501", None,
                                                                              ANY_VENDOR_INSTANCE)
        assert not identity.ukbb_zip and identity.problem is None

    def test_a_name_the_results_cannot_hold_carries_its_problem(self):
        identity = input_identity("x/99999999999999999999_20209_2_0.zip")
        assert identity.problem is not None and "outside 0..9223372036854775807" in identity.problem
        with pytest.raises(ValueError, match=r"outside 0\.\.9223372036854775807"):
            identity.check()
        with pytest.raises(ValueError, match=r"eid 'abc' is not a number"):
            check_input_name("abc_20209_2_0.zip")


class TestParticipantIdentity:
    def test_the_ukbb_zip_name_first(self):
        got = participant_identity(study("x/1000123_20209_2_0.zip", eid=1000123, instance=2, patient_id="77"))
        assert (got.participant_id, got.eid, got.instance) == ("1000123", 1000123, 2)

    def test_then_any_other_name_then_patient_id_then_the_stem(self):
        assert participant_identity(study("x/1000123_3.zip", patient_id="77")).eid == 1000123
        by_patient = participant_identity(study("x/scan.zip", patient_id="77"))
        assert (by_patient.participant_id, by_patient.eid, by_patient.instance) == ("77", 77, 0)
        by_stem = participant_identity(study("x/SCD0000501.zip", patient_id="anon"))
        assert (by_stem.participant_id, by_stem.eid) == ("SCD0000501", None)

    def test_the_carried_name_is_used_not_parsed_again(self):
        carried = InputIdentity("x/renamed.zip", "424242", 424242, 5)
        got = participant_identity(study("x/renamed.zip", name=carried))
        assert (got.participant_id, got.eid, got.instance) == ("424242", 424242, 5)

    def test_participant_ids_refuses_a_study_without_eid(self):
        with pytest.raises(ValueError, match=r"mem://scan.zip: no participant id"):
            participant_ids(study("mem://scan.zip"))


class TestParticipantIdsOfDecodedStudies:
    """File or folder name first, a numeric PatientID (0010,0020) only as the last resort."""

    @pytest.fixture(scope="class")
    def vendor(self):
        return any_vendor_members(n_slices=6, n_phases=2, patient_id="555")

    def test_zip_name_beats_numeric_patient_id(self, vendor):
        study = decode_participant_zip(io.BytesIO(zip_members(vendor.members)), "gs://b/1000077_3.zip")
        assert participant_ids(study) == (1000077, 3)

    def test_folder_names(self, vendor):
        for uri, expected in (("gs://b/dicoms/1000078/", (1000078, 0)),
                              ("/data/1000079_20209_3_0", (1000079, 3))):
            assert participant_ids(decode_dicom_members(vendor.opener_mapping(), uri)) == expected

    def test_patient_id_is_the_last_resort(self, vendor):
        study = decode_participant_zip(io.BytesIO(zip_members(vendor.members)), "gs://b/scan.zip")
        assert participant_ids(study) == (555, 0)
