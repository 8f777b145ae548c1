"""lvmass.core.zip_members: members read within their size limits, from a zip or from openers."""

from __future__ import annotations

import io
import zipfile

import pytest

from lvmass.core.zip_members import HeaderTooLargeError, MemberError, StreamMembers, ZipMembers


def zipped(members: dict[str, bytes]) -> tuple[io.BytesIO, zipfile.ZipFile]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    buffer.seek(0)
    return buffer, zipfile.ZipFile(buffer)


def test_a_member_is_read_whole_and_its_size_is_the_declared_one():
    fp, zf = zipped({"a.dcm": b"x" * 5000, "b.dcm": b"y"})
    members = ZipMembers(fp, zf, zf.infolist())
    assert members.read("a.dcm", limit=10_000) == b"x" * 5000
    assert members.declared_size("b.dcm") == 1


def test_a_member_beyond_its_limit_is_refused_naming_it():
    fp, zf = zipped({"big.dcm": b"z" * 5000})
    with pytest.raises(MemberError, match=r"member 'big\.dcm' declares 5000 bytes"):
        ZipMembers(fp, zf, zf.infolist()).read("big.dcm", limit=1000)


def test_a_header_longer_than_its_limit_is_a_header_error():
    members = StreamMembers({"m": lambda: io.BytesIO(b"q" * 100_000)})
    prefix = members.prefix("m", limit=8192)
    with pytest.raises(HeaderTooLargeError, match="member 'm': more than"):
        prefix.need(9000)
    prefix.close()


def test_openers_are_read_as_streams():
    members = StreamMembers({"m": lambda: io.BytesIO(b"abc")})
    with members.open_stream("m") as stream:
        assert stream.read() == b"abc"
