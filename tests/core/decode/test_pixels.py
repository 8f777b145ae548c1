"""lvmass.core.decode.pixels: a native 16-bit frame unpacked by numpy exactly as pydicom unpacks it."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from lvmass.core import dicom_headers as dh
from lvmass.core.decode.pixels import _OVERLAY_VRS, _PIXEL_VRS, decode_frame_pixels, native_pixels
from lvmass.core.study import DecodeError
from tests import dicom_factory as fac


def test_native_pixels_equal_pydicoms():
    data = fac.plain_frame(rows=6, cols=5, pixels=np.arange(30).reshape(6, 5) * 7)
    ds = pydicom.dcmread(io.BytesIO(data))
    elements = dh.read_elements(data, _PIXEL_VRS.keys() | _OVERLAY_VRS.keys(), 0xFFFFFFFF, complete=True,
                                expected_vrs={**_PIXEL_VRS, **_OVERLAY_VRS})
    ours = native_pixels(elements, data)
    assert ours is not None and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, decode_frame_pixels(ds, source_uri="x", member="m"))


def test_a_frame_without_pixel_data_is_named():
    ds = pydicom.dcmread(io.BytesIO(fac.plain_frame()), stop_before_pixels=True)
    with pytest.raises(DecodeError, match=r"x: pixels: member 'm' has no Pixel Data \(7FE0,0010\)"):
        decode_frame_pixels(ds, source_uri="x", member="m")
