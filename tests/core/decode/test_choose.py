"""lvmass.core.decode.choose: the geometry checks and the memory budget, decided from headers alone."""

from __future__ import annotations

import io

import pytest

from lvmass.core import budget
from lvmass.core.decode import DecodeRequest, decode_zip
from lvmass.core.study import DecodeError
from tests import dicom_factory as fac


def stack(**fields_by_slice) -> bytes:
    g = fac.StackGeometry()
    members = {f"s{k + 1}.dcm": fac.stack_frame(g, k, **fields_by_slice.get(f"s{k + 1}", {}))
               for k in range(6)}
    return fac.zip_members(members)


def test_pixel_spacing_that_differs_between_slices_is_refused():
    with pytest.raises(DecodeError, match=r"geometry: PixelSpacing \(0028,0030\) differs between slices"):
        decode_zip(io.BytesIO(stack(s3={"pixel_spacing_mm": (2.5, 2.5)})), DecodeRequest("x.zip"))


def test_a_participant_beyond_its_budget_is_refused_before_any_pixel():
    frames = 6 * fac.StackGeometry().rows * fac.StackGeometry().cols
    with pytest.raises(DecodeError) as caught:
        decode_zip(io.BytesIO(stack()),
                   DecodeRequest("x.zip", budget_bytes=budget.HELD_BYTES_PER_PIXEL * frames))
    assert caught.value.stage == "budget" and caught.value.stats.pixel_frames_decoded == 0


def test_the_slice_geometry_comes_from_the_headers():
    decoded = decode_zip(io.BytesIO(stack()), DecodeRequest("x.zip"))
    assert decoded.study.n_slices == 6 and decoded.stats.pixel_frames_decoded == 6
