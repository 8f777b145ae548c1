"""lvmass.core.decode.sources: folders, counted reads, and read failures in words."""

from __future__ import annotations

import io

from lvmass.core.decode import DecodeStats
from lvmass.core.decode.sources import CountingReader, counting_opener, folder_member_name, member_error
from lvmass.core.zip_members import HeaderTooLargeError, MemberError


def test_a_files_name_inside_its_folder():
    assert folder_member_name("gs://b/dicoms/1000123", "gs://b/dicoms/1000123/series1/IM1") == "series1/IM1"
    assert folder_member_name("/elsewhere", "/data/x/IM1") == "IM1"


def test_reads_are_counted_and_seeks_are_free():
    stats = DecodeStats()
    reader = CountingReader(io.BytesIO(b"0123456789"), stats)
    reader.seek(4)
    assert reader.read(3) == b"456" and reader.tell() == 7
    assert stats.bytes_read == 3
    with counting_opener(lambda: io.BytesIO(b"abc"), stats)() as stream:
        stream.read()
    assert stats.bytes_read == 6


def test_a_header_beyond_its_limit_fails_the_headers_step_others_the_read():
    assert member_error("x.zip", HeaderTooLargeError("too long")).stage == "headers"
    error = member_error("x.zip", MemberError("encrypted"))
    assert (error.stage, str(error)) == ("read", "x.zip: read: encrypted")
