"""lvmass.core.dicom_headers: the minimal tag reader on a written DICOM (pydicom's own files and the
comparison with pydicom: tests/core/decode/test_headers.py)."""

from __future__ import annotations

import pytest

from lvmass.core import dicom_headers as dh
from tests import dicom_factory as fac

INSTANCE_NUMBER, TRIGGER_TIME = 0x00200013, 0x00181060


def test_wanted_values_are_read_raw_up_to_the_stop():
    data = fac.plain_frame(trigger_time_ms=12.5, instance_number=3)
    elements = dh.read_elements(data, {INSTANCE_NUMBER, TRIGGER_TIME}, 0x00280030, complete=True,
                                expected_vrs={INSTANCE_NUMBER: "IS", TRIGGER_TIME: "DS"})
    assert dh.integer_string(elements.values[INSTANCE_NUMBER][1]) == 3
    assert float(dh.decimal(elements.values[TRIGGER_TIME][1])) == 12.5


def test_a_short_prefix_asks_for_more():
    data = fac.plain_frame(trigger_time_ms=12.5, instance_number=3)
    with pytest.raises(dh.NeedMore):
        dh.read_elements(data[:200], {INSTANCE_NUMBER}, 0x00280030, complete=False,
                         expected_vrs={INSTANCE_NUMBER: "IS"})


def test_not_dicom():
    with pytest.raises(dh.NotDicom):
        dh.read_elements(b"\x00" * 200, set(), 0, complete=True)
