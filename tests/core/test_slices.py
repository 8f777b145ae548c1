"""lvmass.core.slices: slice selection over parsed headers (no pixels): the ED frame of a slice, the series
of a UK Biobank stack, base to apex."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from lvmass.core.decode.headers import header_info
from lvmass.core.slices import (
    HeaderInfo,
    choose_ed_frame,
    is_image_series,
    normalise_description,
    select_slices,
)
from lvmass.core.study import DecodeError
from tests import dicom_factory as fac

NORMAL_AXES = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows along x, columns along y: normal +z


def header(member: str, k: int, phase: int, *, description: str | None = None) -> HeaderInfo:
    """Slice ``k`` (10 mm apart along z) at ``phase`` of a bK stack."""
    return HeaderInfo(
        member=member, series_description=description or f"cine_segmented_sax_b{k + 1}", series_uid=f"1.{k}",
        series_number=10 + k, instance_number=phase + 1, trigger_time_ms=40.0 * phase,
        position=(0.0, 0.0, -10.0 * k), orientation=NORMAL_AXES, pixel_spacing_mm=(1.8, 1.8),
        slice_thickness_mm=8.0, spacing_between_slices_mm=None, rows=8, cols=8,
        acquisition_key=("20140501", "080000", "20140501", "080000"), has_overlay=False, patient_id="1",
        number_of_frames=1)


class TestDescriptions:
    def test_normalised_as_ml4h_does(self):
        assert normalise_description("CINE_segmented_SAX_b3 ") == "cine_segmented_sax_b3"
        assert is_image_series("cine_segmented_sax_b3") and not is_image_series("cine_segmented_lax_4ch")


class TestSelectSlices:
    def test_a_bk_stack_is_chosen_one_ed_frame_per_slice(self):
        headers = [header(f"s{k}p{p}", k, p) for k in range(4) for p in (2, 0, 1)]
        selection = select_slices(headers, "x.zip", ukbb_required=True, ed_rule="first_trigger_time")
        assert sorted(s.ed.member for s in selection.slices) == ["s0p0", "s1p0", "s2p0", "s3p0"]
        positions = [s.position_mm for s in selection.slices]
        assert np.all(np.diff(positions) > 0)  # base to apex: increasing along the chosen direction

    def test_no_short_axis_series_is_a_decode_error_naming_the_file(self):
        headers = [header("l1", 0, 0, description="cine_segmented_lax_4ch")]
        with pytest.raises(DecodeError, match=r"^x.zip: series: "):
            select_slices(headers, "x.zip", ukbb_required=True, ed_rule="first_trigger_time")


class TestChooseEdFrame:
    def _headers(self, trigger_times, instance_numbers):
        out = []
        for tt, num in zip(trigger_times, instance_numbers, strict=True):
            data = fac.plain_frame(rows=4, cols=4, instance_number=num, trigger_time_ms=tt)
            out.append(header_info(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True), f"m{num}"))
        return out

    def test_first_trigger_time_wins_over_instance_number(self):
        frames = self._headers([40.0, 0.0, 20.0], [1, 3, 2])
        assert choose_ed_frame(frames).member == "m3"

    def test_first_instance_rule(self):
        frames = self._headers([40.0, 0.0, 20.0], [1, 3, 2])
        assert choose_ed_frame(frames, "first_instance").member == "m1"

    def test_unknown_rule_raises(self):
        frames = self._headers([0.0], [1])
        with pytest.raises(ValueError, match="unknown ED rule 'largest'"):
            choose_ed_frame(frames, "largest")
