"""Read a participant's zip (or folder) members as bytes: prefixes on demand, whole members within limits.

The decoder needs two kinds of reads (docs/ukbb_format.md, "How much is read"):

- a *prefix* of a member, inflated only as far as asked (a DICOM header up to the last tag wanted), grown on
  demand (:class:`Prefix`);
- a *whole* member (the chosen frames, the manifest), inflated once into memory.

Zip members are read straight from the file: one seek and one read for the local header and the first
compressed bytes, then ``zlib`` (stored and deflated members; any other method goes through ``zipfile``).
Every read is bounded, so a small zip cannot make the decoder allocate gigabytes (a zip bomb, or a member
that lies about its size):

- a member whose declared uncompressed size (central directory) exceeds the reader's limit is refused
  before a byte of it is read (:data:`MAX_MEMBER_BYTES` for a whole member, :data:`MAX_MANIFEST_BYTES` for
  the manifest);
- a member never inflates past its declared size: more output is an error, and so is a whole member whose
  CRC-32 differs from the central directory's;
- an encrypted member is refused with its name (lvmass does not decrypt).

Errors are :class:`MemberError` (step ``read`` of :class:`~lvmass.core.study.DecodeError`); the caller
adds the file's name.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# A DICOM member larger than this (declared uncompressed size) is refused. One short-axis frame is ~0.1 MB
# (UK Biobank, 208 x 192 x 16 bits) and a large single-frame image a few MB; multi-frame files are refused
# anyway. The limit bounds what one member can cost in memory.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# A manifest larger than this is ignored (the manifest is a hint): UK Biobank's lists ~1,000 members in
# ~150 KB.
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# A DICOM header (everything before the pixel data that the decoder reads) larger than this is refused.
MAX_HEADER_BYTES = 16 * 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
_LOCAL_SIGNATURE = b"PK\x03\x04"
_FIRST_READ_BYTES = 2048  # compressed bytes read with the local header: a DICOM header's first ~4-8 KB
_MIN_READ_BYTES = 4096
_ENCRYPTED_FLAG = 0x1


class MemberError(ValueError):
    """A member cannot be read (corrupt, too large, encrypted, ...); the message names the member."""


class HeaderTooLargeError(MemberError):
    """A DICOM header runs past :data:`MAX_HEADER_BYTES` before the tags the decoder reads end."""


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


class Prefix:
    """The first bytes of one member, inflated on demand (:meth:`need`), never past its declared size.

    ``data`` holds what is inflated so far and ``complete`` is True once it is the whole member.
    """

    def __init__(self, name: str, declared_size: int | None, fill: Callable[[int], tuple[bytes, bool]],
                 close: Callable[[], None] | None = None):
        self.name = name
        self.declared_size = declared_size
        self.data = b""
        self.complete = False
        self._fill = fill
        self._close = close

    def close(self) -> None:
        """Release what the reads hold (an open file); the bytes read stay in ``data``."""
        if self._close is not None:
            self._close()
            self._close = None

    def need(self, n_bytes: int) -> bytes:
        """At least ``n_bytes`` (fewer only when the member is shorter); MemberError beyond the limit."""
        if len(self.data) < n_bytes and not self.complete:
            self.data, self.complete = self._fill(n_bytes)
        return self.data


class ZipMembers:
    """The members of an open zip, read from ``fp`` (the same file object ``zipfile`` listed).

    ``infos`` are the members to offer, by name. ``fp`` must be seekable; every read goes through it (so a
    counting wrapper sees every byte).
    """

    def __init__(self, fp: BinaryIO, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]):
        self._fp = fp
        self._zf = zf
        self.infos = {info.filename: info for info in infos}

    def declared_size(self, name: str) -> int:
        return int(self.infos[name].file_size)

    def _check(self, info: zipfile.ZipInfo) -> None:
        if info.flag_bits & _ENCRYPTED_FLAG:
            raise MemberError(f"member {info.filename!r} is encrypted (password-protected); lvmass cannot "
                              "decrypt zip members")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                      zipfile.ZIP_LZMA):
            raise MemberError(f"member {info.filename!r} uses zip compression method {info.compress_type}, "
                              "which Python's zipfile cannot decompress")

    def _data_start(self, info: zipfile.ZipInfo, extra_bytes: int) -> tuple[int, bytes]:
        """(offset of the member's compressed data, up to ``extra_bytes`` of it read with the local
        header)."""
        name_len = len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
        want = _LOCAL_HEADER.size + name_len + len(info.extra) + min(extra_bytes, info.compress_size)
        self._fp.seek(info.header_offset)
        head = self._fp.read(want)
        if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_SIGNATURE:
            raise MemberError(f"member {info.filename!r}: bad local file header (truncated or corrupt zip)")
        fields = _LOCAL_HEADER.unpack_from(head)
        start = _LOCAL_HEADER.size + fields[10] + fields[11]  # name and extra field lengths
        data = head[start:]
        return info.header_offset + start, data[: info.compress_size]

    def prefix(self, name: str, *, limit: int = MAX_HEADER_BYTES) -> Prefix:
        """The member's first bytes on demand (at most ``limit``, else MemberError)."""
        info = self.infos[name]
        self._check(info)
        state: dict = {}

        def fill(n_bytes: int) -> tuple[bytes, bool]:
            if n_bytes > limit:
                raise HeaderTooLargeError(f"member {name!r}: more than {_mib(limit)} would have to be read "
                                          "before its DICOM header ends")
            return self._inflate(info, state, n_bytes)

        return Prefix(name, int(info.file_size), fill)

    def read(self, name: str, *, limit: int = MAX_MEMBER_BYTES) -> bytes:
        """The whole member, checked against its declared size and CRC-32; refused beyond ``limit``."""
        info = self.infos[name]
        self._check(info)
        if info.file_size > limit:
            raise MemberError(f"member {name!r} declares {info.file_size} bytes uncompressed "
                              f"({_mib(info.file_size)}), above the {_mib(limit)} limit; not read")
        state: dict = {}
        data, complete = self._inflate(info, state, info.file_size + 1)
        if not complete or len(data) != info.file_size:
            raise MemberError(f"member {name!r} inflates to {len(data)} bytes, {info.file_size} declared "
                              "(truncated or corrupt zip)")
        if zlib.crc32(data) != info.CRC:
            raise MemberError(f"member {name!r}: CRC-32 differs from the zip's directory (corrupt zip)")
        return data

    def _inflate(self, info: zipfile.ZipInfo, state: dict, n_bytes: int) -> tuple[bytes, bool]:
        """Grow ``state['out']`` to at least ``n_bytes`` (or the whole member); (bytes, complete)."""
        declared = int(info.file_size)
        target = min(n_bytes, declared + 1)
        if not state:
            if info.compress_type == zipfile.ZIP_DEFLATED:
                pos, first = self._data_start(info, _FIRST_READ_BYTES)
                state.update(out=b"", pos=pos + len(first), left=info.compress_size - len(first),
                             pending=first, d=zlib.decompressobj(-15), eof=False)
            elif info.compress_type == zipfile.ZIP_STORED:
                pos, first = self._data_start(info, min(max(target, _FIRST_READ_BYTES), declared))
                state.update(out=first, pos=pos + len(first), left=info.compress_size - len(first))
            else:
                state.update(out=b"", stream=self._zf.open(info))
        if "stream" in state:  # bzip2, lzma: zipfile's own reader
            try:
                more = state["stream"].read(target - len(state["out"])) if target > len(state["out"]) else b""
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                raise MemberError(f"member {info.filename!r} cannot be decompressed ({exc})") from exc
            state["out"] += more
            out = state["out"]
            return out, len(out) >= declared or not more
        if info.compress_type == zipfile.ZIP_STORED:
            if len(state["out"]) < target and state["left"] > 0:
                want = min(state["left"], max(target - len(state["out"]), _MIN_READ_BYTES))
                self._fp.seek(state["pos"])
                more = self._fp.read(want)
                state["pos"] += len(more)
                state["left"] -= len(more)
                state["out"] += more
                if len(more) < want:
                    raise MemberError(f"member {info.filename!r} is truncated (truncated or corrupt zip)")
            out = state["out"]
            return out, len(out) >= declared
        d = state["d"]
        parts = [state["out"]]
        have = len(state["out"])
        while have < target and not state["eof"]:
            data = state["pending"]
            state["pending"] = b""
            if not data:
                if state["left"] <= 0:
                    raise MemberError(f"member {info.filename!r}: compressed data ends early "
                                      "(truncated or corrupt zip)")
                # headers deflate ~3:1: half the bytes still wanted is a generous guess; loop if short
                want = min(state["left"], max(_MIN_READ_BYTES, (target - have) // 2))
                self._fp.seek(state["pos"])
                data = self._fp.read(want)
                state["pos"] += len(data)
                state["left"] -= len(data)
                if not data:
                    raise MemberError(f"member {info.filename!r} is truncated (truncated or corrupt zip)")
            try:
                more = d.decompress(data, target - have)
            except zlib.error as exc:
                raise MemberError(f"member {info.filename!r} cannot be decompressed (zlib: {exc})") from exc
            state["pending"] = d.unconsumed_tail
            parts.append(more)
            have += len(more)
            state["eof"] = d.eof
        out = b"".join(parts)
        state["out"] = out
        if len(out) > declared:
            raise MemberError(f"member {info.filename!r} inflates past its declared {declared} bytes "
                              "(corrupt zip, or a zip bomb)")
        return out, state["eof"] or (len(out) == declared and n_bytes <= declared)

    def open_stream(self, name: str, *, limit: int = MAX_HEADER_BYTES) -> BinaryIO:
        """A seekable stream over the member (for pydicom), read through :meth:`prefix` (same limits)."""
        # ignored: a PrefixStream (io.RawIOBase) has the read/seek/tell pydicom uses, not all of BinaryIO
        return PrefixStream(self.prefix(name, limit=limit))  # type: ignore[return-value]


class StreamMembers:
    """Members given as openers (a folder's files, or any mapping of name -> opener of a binary stream)."""

    def __init__(self, openers: dict[str, Callable[[], BinaryIO]]):
        self._openers = openers

    def prefix(self, name: str, *, limit: int = MAX_HEADER_BYTES) -> Prefix:
        state: dict = {}

        def fill(n_bytes: int) -> tuple[bytes, bool]:
            if n_bytes > limit:
                raise HeaderTooLargeError(f"member {name!r}: more than {_mib(limit)} would have to be read "
                                          "before its DICOM header ends")
            if "fp" not in state:
                state["fp"] = self._openers[name]()
                state["out"] = b""
            fp = state["fp"]
            want = max(n_bytes, _FIRST_READ_BYTES) - len(state["out"])
            more = fp.read(want) if want > 0 else b""
            state["out"] += more
            complete = len(more) < want
            if complete:
                close()
            return state["out"], complete

        def close() -> None:
            fp = state.pop("fp", None)
            if fp is not None:
                fp.close()

        return Prefix(name, None, fill, close)

    def read(self, name: str, *, limit: int = MAX_MEMBER_BYTES) -> bytes:
        with self._openers[name]() as fp:
            data = fp.read(limit + 1)
        if len(data) > limit:
            raise MemberError(f"member {name!r} is larger than the {_mib(limit)} limit; not read")
        return data

    def open_stream(self, name: str, *, limit: int = MAX_HEADER_BYTES) -> BinaryIO:
        """A seekable stream over the member (for pydicom), read through :meth:`prefix` (same limits)."""
        # ignored: a PrefixStream (io.RawIOBase) has the read/seek/tell pydicom uses, not all of BinaryIO
        return PrefixStream(self.prefix(name, limit=limit))  # type: ignore[return-value]


class PrefixStream(io.RawIOBase):
    """A read-only, seekable stream over a :class:`Prefix`: what is read is inflated on demand, in growing
    steps, never past the prefix's limit (a read beyond it raises :class:`HeaderTooLargeError`)."""

    def __init__(self, prefix: Prefix):
        super().__init__()
        self._prefix = prefix
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            while not self._prefix.complete:
                self._prefix.need(2 * len(self._prefix.data) + _FIRST_READ_BYTES)
            base = len(self._prefix.data)
        else:
            base = self._pos if whence == io.SEEK_CUR else 0
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, never allocating more than what is there: ``io.RawIOBase.read`` would
        first allocate ``size`` bytes, and a damaged DICOM element length asks for gigabytes."""
        if size is None or size < 0:
            return self.readall()
        end = self._pos + size
        data = self._prefix.data
        if end > len(data) and not self._prefix.complete:
            data = self._prefix.need(max(end, 2 * len(data), _FIRST_READ_BYTES))
        chunk = bytes(data[self._pos:end])
        self._pos += len(chunk)
        return chunk

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view:
            end = self._pos + len(view)
            data = self._prefix.data
            if end > len(data) and not self._prefix.complete:
                data = self._prefix.need(max(end, 2 * len(data), _FIRST_READ_BYTES))
            chunk = data[self._pos:end]
            view[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def close(self) -> None:
        self._prefix.close()
        super().close()
