"""The decoder's study and stats together, for tests that count what a decode read
(``lvmass.core.decode``: one request in, one ``Decoded`` out)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from lvmass.core.decode import DecodeRequest, DecodeStats, decode_file, decode_folder, decode_zip
from lvmass.core.study import DecodedStudy


def zip_with_stats(fileobj: BinaryIO, uri: str, **options: Any) -> tuple[DecodedStudy, DecodeStats]:
    decoded = decode_zip(fileobj, DecodeRequest(uri, **options))
    return decoded.study, decoded.stats


def folder_with_stats(members: Mapping[str, Callable[[], BinaryIO]], uri: str,
                      **options: Any) -> tuple[DecodedStudy, DecodeStats]:
    decoded = decode_folder(members, DecodeRequest(uri, **options))
    return decoded.study, decoded.stats


def file_with_stats(fileobj: BinaryIO, uri: str, **options: Any) -> tuple[DecodedStudy, DecodeStats]:
    decoded = decode_file(fileobj, DecodeRequest(uri, **options))
    return decoded.study, decoded.stats
