"""Reliability of the decoder on hostile or broken inputs (the reliability issue, decoder items 4, 5, 11).

4. Sizes are capped before reading: a member that declares more than the limit, one that inflates past
   what it declares (a zip bomb), a PixelData that declares far more than its image size, a manifest larger
   than its limit, a DICOM header larger than its limit.
5. A manifest that cannot be used (a 200 KB line, a NUL byte, encrypted, too large) only loses the hint:
   the participant is decoded from the DICOM headers.
11. Messages say what is wrong: an encrypted member is named with the zip; a PixelSpacing that is not a
   finite number is not called missing; an InlineVF overlay of the wrong size leaves a note (and a logged
   warning) saying why the slice has no contour.

Sizes in the zip are patched in place (local header and central directory), so nothing large is built.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile

import numpy as np
import pydicom
import pytest

from lvmass.core import budget
from lvmass.core.decode import (
    STRATEGIES,
    DecodeRequest,
    decode_participant_zip,
    decode_zip,
    headers,
    ukbb_layout,
)
from lvmass.core.study import DecodeError
from tests import dicom_factory as fac

ZIP_URI = "gs://bucket/20209/1000001_20209_2_0.zip"
CENTRAL = b"PK\x01\x02"


def patch_member(data: bytes, name: str, *, declared_size: int | None = None,
                 encrypted: bool = False) -> bytes:
    """The zip with ``name``'s uncompressed size (and/or its encryption flag) rewritten in its local header
    and its central directory entry (APPNOTE 4.3.7, 4.3.12)."""
    buf = bytearray(data)
    at = 0
    found = False
    while (at := buf.find(CENTRAL, at)) >= 0:
        name_len = struct.unpack_from("<H", buf, at + 28)[0]
        if bytes(buf[at + 46:at + 46 + name_len]) == name.encode():
            local = struct.unpack_from("<I", buf, at + 42)[0]
            if declared_size is not None:
                struct.pack_into("<I", buf, at + 24, declared_size)
                struct.pack_into("<I", buf, local + 22, declared_size)
            if encrypted:
                struct.pack_into("<H", buf, at + 8, struct.unpack_from("<H", buf, at + 8)[0] | 1)
                struct.pack_into("<H", buf, local + 6, struct.unpack_from("<H", buf, local + 6)[0] | 1)
            found = True
        at += 4
    assert found, name
    return bytes(buf)


def stack_members(n_slices: int = 6, **fields_by_slice) -> dict[str, bytes]:
    """bK series s1.dcm..sN.dcm of one frame each (a UK Biobank-named stack)."""
    g = fac.StackGeometry()
    return {f"s{k + 1}.dcm": fac.stack_frame(g, k, **fields_by_slice.get(f"s{k + 1}", {}))
            for k in range(n_slices)}


def with_manifest(members: dict[str, bytes], manifest: bytes | None = None) -> bytes:
    if manifest is None:
        entries = [(n, f"CINE_segmented_SAX_b{k + 1}") for k, n in enumerate(members)]
        manifest = fac.manifest_text(entries).encode()
    return fac.zip_members({"manifest.cvs": manifest, **members})


def decode(data: bytes, **kwargs):
    return decode_participant_zip(io.BytesIO(data), ZIP_URI, **kwargs)


def decode_with_stats(data: bytes, **kwargs):
    """(study, stats) of the zip ``data``."""
    decoded = decode_zip(io.BytesIO(data), DecodeRequest(ZIP_URI, **kwargs))
    return decoded.study, decoded.stats


@pytest.fixture(params=STRATEGIES)
def strategy(request):
    return request.param


class TestSizeLimits:
    """Item 4: cap declared and actual sizes before reading."""

    def test_a_member_declaring_gigabytes_is_refused_before_it_is_read(self, strategy):
        data = patch_member(with_manifest(stack_members()), "s3.dcm", declared_size=3 * 1024**3)
        with pytest.raises(DecodeError) as caught:
            decode(data, strategy=strategy)
        assert caught.value.stage == "read"
        message = str(caught.value)
        assert message.startswith(f"{ZIP_URI}: read: member 's3.dcm' declares 3221225472 bytes uncompressed")
        assert "above the 64.0 MiB limit" in message

    def test_an_element_declaring_gigabytes_is_not_allocated(self, strategy):
        """A damaged 4-byte element length before the pixels (found by the fuzz test: pydicom asked the
        member stream for 1.1 GB, which io.RawIOBase.read allocated before reading): the read stops at
        the header limit, and the error names the zip."""
        import tracemalloc

        from pydicom.uid import ImplicitVRLittleEndian

        members = stack_members()
        ds = pydicom.dcmread(io.BytesIO(members["s3.dcm"]))
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # every element length is 4 bytes
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        raw = bytearray(buffer.getvalue())
        at = raw.find(b"\x08\x00\x3e\x10")  # SeriesDescription, which the decoder reads
        assert at > 0
        struct.pack_into("<I", raw, at + 4, 0x7FFFFFF0)
        members["s3.dcm"] = bytes(raw)
        tracemalloc.start()
        try:
            with pytest.raises(DecodeError) as caught:
                decode(with_manifest(members), strategy=strategy)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"
        assert caught.value.stage == "headers"
        assert str(caught.value) == (f"{ZIP_URI}: headers: member 's3.dcm': more than 16.0 MiB would have to "
                                     "be read before its DICOM header ends")

    def test_a_member_that_inflates_past_its_declared_size_is_refused(self, strategy):
        members = stack_members()
        data = patch_member(with_manifest(members), "s2.dcm", declared_size=len(members["s2.dcm"]) - 100)
        with pytest.raises(DecodeError, match=r"read: member 's2.dcm' inflates past its declared \d+ bytes"):
            decode(data, strategy=strategy)

    def test_pixel_data_declaring_more_than_its_image_is_refused(self, strategy):
        members = stack_members()
        dicom = members["s4.dcm"]
        at = dicom.find(b"\xe0\x7f\x10\x00OW\x00\x00")
        members["s4.dcm"] = dicom[:at + 8] + struct.pack("<I", 3 * 1024**3) + dicom[at + 12:]
        with pytest.raises(DecodeError) as caught:
            decode(with_manifest(members), strategy=strategy)
        assert caught.value.stage == "pixels"
        assert ("member 's4.dcm': Pixel Data (7FE0,0010) declares 3221225472 bytes, more than Rows x "
                "Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames = 40 x 36 x 1 x 16/8 x 1 = 2880"
                ) in str(caught.value)

    def test_a_header_larger_than_its_limit_is_refused(self, strategy, monkeypatch):
        monkeypatch.setattr(headers, "MAX_HEADER_BYTES", 4096)
        ds = pydicom.dcmread(io.BytesIO(fac.stack_frame(fac.StackGeometry(), 0)))
        ds.add_new((0x0019, 0x0010), "LO", "BIG PRIVATE")
        ds.add_new((0x0019, 0x1001), "OB", b"\x01" * 20000)  # before (0020,xxxx): inside the header pass
        buffer = io.BytesIO()
        ds.save_as(buffer)
        members = stack_members()
        members["s1.dcm"] = buffer.getvalue()
        with pytest.raises(DecodeError) as caught:
            decode(with_manifest(members), strategy=strategy)
        assert caught.value.stage == "headers"
        assert "member 's1.dcm'" in str(caught.value) and "MiB" in str(caught.value)

    def test_a_manifest_above_its_limit_is_ignored(self, strategy, monkeypatch):
        monkeypatch.setattr(ukbb_layout, "MAX_MANIFEST_BYTES", 100)
        study, stats = decode_with_stats(with_manifest(stack_members()), strategy=strategy)
        assert study.n_slices == 6
        assert "member 'manifest.cvs' declares" in stats.manifest_error
        assert "above the 0.0 MiB limit" in stats.manifest_error
        assert any("manifest 'manifest.cvs' ignored" in note for note in stats.notes)

    def test_a_manifest_declaring_a_gigabyte_is_not_read(self, strategy):
        data = patch_member(with_manifest(stack_members()), "manifest.cvs", declared_size=1024**3)
        study, stats = decode_with_stats(data, strategy=strategy)
        assert study.n_slices == 6
        assert ("declares 1073741824 bytes uncompressed (1024.0 MiB), above the 8.0 MiB limit"
                in stats.manifest_error)


class TestManifestIsOnlyAHint:
    """Item 5: a manifest that cannot be used loses the hint, not the participant."""

    def test_a_200_kb_line(self, strategy):
        members = stack_members()
        manifest = fac.manifest_text([(n, "CINE_segmented_SAX_b1") for n in members]) + "x" * 200_000 + "\n"
        study, stats = decode_with_stats(with_manifest(members, manifest.encode()), strategy=strategy)
        assert study.n_slices == 6
        assert "manifest line 8 has 200000 characters" in stats.manifest_error

    def test_binary_garbage(self, strategy):
        members = stack_members()
        garbage = bytes(range(256)) * 40
        study, stats = decode_with_stats(with_manifest(members, garbage), strategy=strategy)
        assert study.n_slices == 6
        assert stats.manifest_error

    def test_an_encrypted_manifest(self, strategy):
        data = patch_member(with_manifest(stack_members()), "manifest.cvs", encrypted=True)
        study, stats = decode_with_stats(data, strategy=strategy)
        assert study.n_slices == 6
        assert stats.manifest_error == (f"{ZIP_URI}: member 'manifest.cvs' is encrypted "
                                        "(password-protected); lvmass cannot decrypt zip members")


class TestMessages:
    """Item 11: messages that name the zip, the member and the problem."""

    def test_an_encrypted_member_is_named_with_the_zip(self, strategy):
        data = patch_member(with_manifest(stack_members()), "s5.dcm", encrypted=True)
        with pytest.raises(DecodeError) as caught:
            decode(data, strategy=strategy)
        assert caught.value.stage == "read"
        assert str(caught.value) == (f"{ZIP_URI}: read: member 's5.dcm' is encrypted (password-protected); "
                                     "lvmass cannot decrypt zip members")

    @pytest.mark.parametrize("spacing,problem", [
        (["nan", "nan"], r"PixelSpacing \(0028,0030\) is not a finite number: 'nan\\\\nan'"),
        (["1.8", "inf"], r"PixelSpacing \(0028,0030\) is not a finite number: '1.8\\\\inf'"),
        (["1.8"], r"PixelSpacing \(0028,0030\) has 1 value\(s\), 2 expected: '1.8'"),
    ])
    def test_pixel_spacing_that_is_not_a_number_is_not_called_missing(self, strategy, spacing, problem):
        members = stack_members(s3={"pixel_spacing_mm": None})
        ds = pydicom.dcmread(io.BytesIO(members["s3.dcm"]))
        ds.PixelSpacing = spacing if len(spacing) > 1 else spacing[0]
        buffer = io.BytesIO()
        ds.save_as(buffer)
        members["s3.dcm"] = buffer.getvalue()
        with pytest.raises(DecodeError, match=rf"geometry: member 's3.dcm': {problem}$") as caught:
            decode(with_manifest(members), strategy=strategy)
        assert "lacks" not in str(caught.value)

    def test_missing_pixel_spacing_is_still_called_missing(self, strategy):
        members = stack_members(s3={"pixel_spacing_mm": None})
        with pytest.raises(DecodeError, match=r"geometry: member 's3.dcm' lacks PixelSpacing \(0028,0030\)$"):
            decode(with_manifest(members), strategy=strategy)

    def test_an_overlay_of_the_wrong_size_says_why_the_contour_is_dropped(self, strategy, caplog):
        g = fac.StackGeometry()
        members = stack_members()
        ring = fac.ring_outline(g.rows, g.cols, 12, 7)
        for k in range(6):
            outline = ring[:20, :20] if k == 2 else ring  # slice 3's overlay is 20 x 20, its image 40 x 36
            members[f"vf{k + 1}.dcm"] = fac.stack_frame(
                g, k, series_description="CINE_segmented_SAX_InlineVF", series_uid="1.2.99", series_number=99,
                instance_number=k + 1, outline=outline)
        described = [(n, "CINE_segmented_SAX_InlineVF" if n.startswith("vf")
                      else f"CINE_segmented_SAX_b{n[1]}") for n in members]
        with caplog.at_level(logging.WARNING, logger="lvmass.core.decode.assemble"):
            study, stats = decode_with_stats(with_manifest(members, fac.manifest_text(described).encode()),
                                             strategy=strategy)
        assert [o is None for o in study.outlines] == [False, False, True, False, False, False]
        (note,) = [n for n in stats.notes if "overlay" in n]
        assert note == ("member 'vf3.dcm': the InlineVF overlay is 20 x 20 but slice 3's image ('s3.dcm') is "
                        "40 x 36; its outline is dropped (no contour for that slice)")
        messages = [record.getMessage() for record in caplog.records]
        assert any(note in message and ZIP_URI in message for message in messages)


def test_zip_members_read_within_limits():
    """The member reader itself: whole members checked against size and CRC, prefixes bounded."""
    from lvmass.core.zip_members import MemberError, ZipMembers

    payload = np.arange(50_000, dtype=np.uint16).tobytes()
    data = fac.zip_members({"a.bin": payload, "b.bin": b"x" * 10}, compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = ZipMembers(io.BytesIO(data), zf, zf.infolist())
        assert members.read("a.bin") == payload
        prefix = members.prefix("a.bin")
        assert prefix.need(1000)[:1000] == payload[:1000] and not prefix.complete
        with pytest.raises(MemberError, match=r"member 'a.bin' declares 100000 bytes .* above the 0\.0 MiB"):
            members.read("a.bin", limit=1000)
        with pytest.raises(MemberError, match=r"more than 0\.0 MiB would have to be read"):
            members.prefix("a.bin", limit=10).need(20)
    corrupt = bytearray(data)
    corrupt[data.find(b"b.bin") + 5 + 2] ^= 0xFF  # a byte of b.bin's stored data
    with zipfile.ZipFile(io.BytesIO(bytes(corrupt))) as zf:
        with pytest.raises(MemberError, match="corrupt"):
            ZipMembers(io.BytesIO(bytes(corrupt)), zf, zf.infolist()).read("b.bin")


class TestParticipantBudget:
    """A participant whose chosen frames would take more memory than its budget (``lvmass.core.budget``)
    is refused from its headers, before a pixel is read, naming the input, the frames and the largest
    member; the members themselves are all under the per-member cap."""

    def test_refused_before_any_pixel_is_read(self, strategy):
        data = with_manifest(stack_members())
        frames = 6 * fac.StackGeometry().rows * fac.StackGeometry().cols
        with pytest.raises(DecodeError) as caught:
            decode(data, strategy=strategy, budget_bytes=budget.HELD_BYTES_PER_PIXEL * frames)
        assert caught.value.stage == "budget" and caught.value.source == ZIP_URI
        assert "6 end-diastolic frames of up to 40 x 36 pixels" in str(caught.value)
        assert "one participant may use" in str(caught.value) and ".dcm'" in str(caught.value)
        assert caught.value.stats.pixel_frames_decoded == 0  # what was read up to the refusal
        decode(data, strategy=strategy)  # the default budget is far beyond a study this size

    def test_the_estimate(self):
        assert budget.bytes_needed([100, 300], 50) == 8 * 400 + 24 * 300 + 50
        assert budget.check([10], budget=1000, what="x") == 8 * 10 + 24 * 10
        with pytest.raises(budget.ParticipantTooLarge, match=r"^x would take about 0 MiB .* the 0 MiB one"):
            budget.check([10], budget=100, what="x")
