"""lvmass.core.study: the hand-off between decoding and everything downstream."""

from __future__ import annotations

import numpy as np

from lvmass.core.study import DecodedStudy, DecodeError


def test_a_study_counts_its_slices_and_knows_whether_inlinevf_drew():
    image = np.zeros((4, 4), np.float32)
    study = DecodedStudy(eid=None, instance=None, source_uri="x.zip", images=(image, image),
                         outlines=(None, np.zeros((4, 4), bool)), pixel_spacing_mm=(1.8, 1.8),
                         slice_spacing_mm=10.0, slice_thickness_mm=8.0, slice_positions_mm=(0.0, 10.0))
    assert study.n_slices == 2 and study.has_inlinevf
    assert not DecodedStudy(**{**study.__dict__, "outlines": (None, None)}).has_inlinevf


def test_a_decode_error_names_the_file_the_step_and_the_reason():
    exc = DecodeError("gs://b/x.zip", "series", "no short-axis series")
    assert str(exc) == "gs://b/x.zip: series: no short-axis series"
    assert (exc.source, exc.stage, exc.reason) == ("gs://b/x.zip", "series", "no short-axis series")
    assert exc.stats is None  # the decoder attaches what it read when it raises
