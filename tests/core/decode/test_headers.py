"""lvmass.core.decode.headers: the minimal tag reader gives what pydicom gives (or hands the member to
pydicom), on pydicom's own test files and on unusual values."""

from __future__ import annotations

import io
import zipfile

import pydicom
import pytest
from pydicom.data import get_testdata_file

from lvmass.core import dicom_headers as dh
from lvmass.core.decode import DecodeStats
from lvmass.core.decode.headers import HeaderReader, header_info
from lvmass.core.zip_members import StreamMembers
from tests import dicom_factory as fac


def fast_and_pydicom_headers(data: bytes, name: str = "m.dcm"):
    members = StreamMembers({name: lambda: io.BytesIO(data)})
    fast_stats, ref_stats = DecodeStats(), DecodeStats()
    fast = HeaderReader(members, "mem://x", fast_stats, require_dicom=lambda n: True, use_pydicom=False)
    ref = HeaderReader(members, "mem://x", ref_stats, require_dicom=lambda n: True, use_pydicom=True)
    return fast.read(name, with_overlay=True), ref.read(name), fast_stats


class TestMinimalReaderMatchesPydicom:
    @pytest.mark.parametrize("name,by_pydicom", [
        ("MR_small.dcm", False),
        ("MR_small_implicit.dcm", False),
        ("CT_small.dcm", False),
        ("emri_small.dcm", False),
        ("JPEG2000.dcm", False),  # encapsulated pixel data, Explicit VR Little Endian data set
        ("rtplan.dcm", False),
        ("nested_priv_SQ.dcm", False),  # private sequences of undefined length before the stop
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", False),  # a real Siemens CSA header and an overlay
        ("MR_small_bigendian.dcm", True),
        ("image_dfl.dcm", True),  # deflated data set
        ("UN_sequence.dcm", None),
    ])
    def test_real_files(self, name, by_pydicom):
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"pydicom-data lacks {name}")
        with open(path, "rb") as fh:
            data = fh.read()
        fast, ref, stats = fast_and_pydicom_headers(data)
        assert fast == ref
        if by_pydicom is not None:
            assert stats.headers_read_with_pydicom == int(by_pydicom)

    def test_synthetic_members(self, synth_zips):
        """Headers of a synthetic participant (Siemens CSA stand-ins, overlays, the secondary capture)."""
        _, _, data = synth_zips[0]
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist()[1::7]:
                fast, ref, stats = fast_and_pydicom_headers(zf.read(name), name)
                assert fast == ref, name
                assert stats.headers_read_with_pydicom == 0

    @pytest.mark.parametrize("change", [
        {"SeriesDescription": "Cine Ä"},  # not ASCII: pydicom decodes the character set
        {"SeriesDescription": "a\\b"},  # two values
        {"TriggerTime": "nan"},
        {"TriggerTime": "1e999"},
        {"InstanceNumber": "1.0"},
        {"ImagePositionPatient": ["nan", "0", "0"]},
        {"PixelSpacing": "1.8"},  # one value where two are expected
        {"SliceThickness": " 8 "},
    ], ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))!r}")
    def test_unusual_values_fall_back_to_pydicom_or_match_it(self, change):
        ds = pydicom.dcmread(io.BytesIO(fac.plain_frame()))
        for keyword, value in change.items():
            setattr(ds, keyword, value)
        if "SeriesDescription" in change and not change["SeriesDescription"].isascii():
            ds.SpecificCharacterSet = "ISO_IR 100"
        buffer = io.BytesIO()
        ds.save_as(buffer)
        fast, ref, _ = fast_and_pydicom_headers(buffer.getvalue())
        assert fast == ref

    def test_an_element_out_of_order_goes_to_pydicom(self):
        data = fac.plain_frame()
        at = data.find(b"\x20\x00\x13\x00IS")  # InstanceNumber, renamed to a tag below the previous one
        swapped = data[:at] + b"\x08\x00\x10\x00" + data[at + 4:]
        with pytest.raises(dh.Unsupported, match="out of ascending order"):
            dh.read_elements(swapped, {0x00200013}, 0x00280030, complete=True,
                             expected_vrs={0x00200013: "IS"})

    def test_resume_after_need_more(self):
        data = fac.plain_frame()
        wanted = {0x00280010}
        try:
            dh.read_elements(data[:400], wanted, 0x00280010, complete=False, expected_vrs={0x00280010: "US"})
        except dh.NeedMore as more:
            resumed = dh.read_elements(data, wanted, 0x00280010, complete=True,
                                       expected_vrs={0x00280010: "US"}, resume=more)
        whole = dh.read_elements(data, wanted, 0x00280010, complete=True, expected_vrs={0x00280010: "US"})
        assert resumed.values == whole.values == {0x00280010: ("US", (8).to_bytes(2, "little"))}

    def test_not_dicom(self):
        with pytest.raises(dh.NotDicom):
            dh.read_elements(b"\x00" * 200, set(), 0, complete=True)


def test_header_info_is_unchanged_for_pydicom_datasets():
    """``header_info`` (pydicom datasets) is the reference the minimal reader is compared with."""
    ds = pydicom.dcmread(io.BytesIO(fac.plain_frame(trigger_time_ms=12.5, instance_number=3)))
    h = header_info(ds, "m")
    assert (h.trigger_time_ms, h.instance_number, h.has_overlay, h.geometry_problems) == (12.5, 3, False, ())
