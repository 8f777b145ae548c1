"""Where a participant's bytes come from: a zip streamed from one file object, or a folder's files, each
read through a reader that counts the bytes (:class:`CountingReader`), and how a read failure is worded."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from lvmass.core.decode.request import DecodeStats
from lvmass.core.identity import base_name
from lvmass.core.study import DecodeError
from lvmass.core.zip_members import HeaderTooLargeError, MemberError


@dataclass(frozen=True)
class ParticipantFolder:
    """One participant's folder of DICOMs (the any-vendor layout): its path and its files' paths."""

    path: str
    files: tuple[str, ...]
    size_in_bytes: int = 0


def folder_member_name(folder: str, path: str) -> str:
    """A file's name inside its participant folder (``series1/IM0001`` for ``folder/series1/IM0001``)."""
    if path.startswith(folder):
        return path[len(folder):].lstrip("/\\")
    return base_name(path)


class CountingReader:
    """A read-only file wrapper that counts the bytes actually read from ``raw`` (seeks are free)."""

    def __init__(self, raw: BinaryIO, stats: DecodeStats):
        self._raw = raw
        self._stats = stats
        self.name = str(getattr(raw, "name", "") or "")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(getattr(self._raw, "seekable", lambda: True)())

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._stats.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def counting_opener(opener: Callable[[], BinaryIO], stats: DecodeStats) -> Callable[[], BinaryIO]:
    """``opener`` whose streams count what is read from them into ``stats``."""

    def open_counted() -> BinaryIO:
        return CountingReader(opener(), stats)  # type: ignore[return-value]  # duck-typed: read/seek/tell

    return open_counted


def read_error_reason(exc: Exception) -> str:
    """``Type: message`` of an exception, for a dead letter's reason."""
    return f"{type(exc).__name__}: {exc}"


def member_error(source_uri: str, exc: MemberError) -> DecodeError:
    """Step ``headers`` for a header beyond its size limit, ``read`` for any other member error."""
    return DecodeError(source_uri, "headers" if isinstance(exc, HeaderTooLargeError) else "read", str(exc))
