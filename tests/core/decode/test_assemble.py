"""lvmass.core.decode.assemble: the study in the standard view, its affine, and an overlay that does not
fit its slice dropped with a note (the outline of that slice only)."""

from __future__ import annotations

import io

import numpy as np

from lvmass.core import contracts
from lvmass.core.decode import DecodeRequest, decode_zip
from tests import dicom_factory as fac


def test_a_ukbb_zip_names_its_participant_and_the_study_carries_the_identity():
    fz = fac.ukbb_participant_zip(eid=1000123, n_slices=6, n_phases=2)
    decoded = decode_zip(io.BytesIO(fz.data), DecodeRequest(f"gs://b/{fz.name}"))
    study = decoded.study
    assert (study.eid, study.instance) == (1000123, 2) and study.name.key == ("1000123", 2)
    assert study.affine_lps is not None and len(study.affine_lps) == 4
    assert study.qc_flags == tuple(f for f in contracts.QC_FLAGS if f in study.qc_flags)


def test_transposed_acquisitions_give_the_same_slices():
    standard = fac.any_vendor_members(n_slices=6, n_phases=2, seed=3)
    study = decode_zip(io.BytesIO(fac.zip_members(standard.members)), DecodeRequest("x.zip")).study
    assert all(np.asarray(image).dtype == np.float32 for image in study.images)
    assert study.in_plane_view  # the transform applied to reach contracts.IN_PLANE_VIEW is recorded
