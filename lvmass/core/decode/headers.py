"""DICOM headers: the tags slice selection needs, read with the minimal reader of
:mod:`lvmass.core.dicom_headers` (pydicom for a member it cannot read), each member at most once
(:class:`HeaderReader`), into ``slices.HeaderInfo``.

The header pass stops at PixelSpacing (0028,0030); for an InlineVF frame (or where asked) it reads on
through the Siemens CSA group to the overlay group, to know whether the frame carries a contour.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from lvmass.core import dicom_headers as dh
from lvmass.core.decode.request import DecodeStats
from lvmass.core.decode.sources import member_error, read_error_reason
from lvmass.core.slices import INLINEVF_SERIES, HeaderInfo, normalise_description
from lvmass.core.study import DecodeError
from lvmass.core.zip_members import MAX_HEADER_BYTES, MemberError, Prefix, StreamMembers, ZipMembers

OVERLAY_GROUP = 0x6000
# Tags read from every candidate header; pixel data and overlay data are not among them.
HEADER_TAGS = [
    Tag(0x0008, 0x0021),  # SeriesDate
    Tag(0x0008, 0x0022),  # AcquisitionDate
    Tag(0x0008, 0x0031),  # SeriesTime
    Tag(0x0008, 0x0032),  # AcquisitionTime
    Tag(0x0008, 0x103E),  # SeriesDescription
    Tag(0x0010, 0x0020),  # PatientID
    Tag(0x0018, 0x0050),  # SliceThickness
    Tag(0x0018, 0x0088),  # SpacingBetweenSlices
    Tag(0x0018, 0x1060),  # TriggerTime
    Tag(0x0020, 0x000E),  # SeriesInstanceUID
    Tag(0x0020, 0x0011),  # SeriesNumber
    Tag(0x0020, 0x0013),  # InstanceNumber
    Tag(0x0020, 0x0032),  # ImagePositionPatient
    Tag(0x0020, 0x0037),  # ImageOrientationPatient
    Tag(0x0028, 0x0008),  # NumberOfFrames
    Tag(0x0028, 0x0010),  # Rows
    Tag(0x0028, 0x0011),  # Columns
    Tag(0x0028, 0x0030),  # PixelSpacing
    Tag(OVERLAY_GROUP, 0x0010),  # OverlayRows: present iff an overlay plane exists
]
# Tags of an InlineVF instance read for its outline only (no pixels): the overlay plane and image size.
OVERLAY_TAGS = [
    Tag(0x0028, 0x0010),  # Rows
    Tag(0x0028, 0x0011),  # Columns
    *(Tag(OVERLAY_GROUP, element) for element in (0x0010, 0x0011, 0x0015, 0x0040, 0x0050, 0x0100, 0x0102)),
    Tag(OVERLAY_GROUP, 0x3000),  # OverlayData
]
OVERLAY_ROWS = 0x60000010
# The header tags for the minimal reader, by VR (PS3.6); all but OverlayRows precede the Siemens CSA
# group (0029), so the header pass stops at PixelSpacing (0028,0030).
HEADER_VRS: dict[int, str] = {
    0x00080021: "DA", 0x00080022: "DA", 0x00080031: "TM", 0x00080032: "TM", 0x0008103E: "LO",
    0x00100020: "LO", 0x00180050: "DS", 0x00180088: "DS", 0x00181060: "DS", 0x0020000E: "UI",
    0x00200011: "IS", 0x00200013: "IS", 0x00200032: "DS", 0x00200037: "DS", 0x00280008: "IS",
    0x00280010: "US", 0x00280011: "US", 0x00280030: "DS", OVERLAY_ROWS: "US",
}
_HEADER_WANTED = frozenset(t for t in HEADER_VRS if t != OVERLAY_ROWS)
_LAST_HEADER_TAG = 0x00280030
_FIRST_HEADER_BYTES = 4096


# The converters below take a pydicom element value as it comes (Any: a number, a string, a MultiValue, None)
# and give None for what does not convert.
def float_or_none(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def int_or_none(value: Any) -> int | None:
    f = float_or_none(value)
    return None if f is None else int(f)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(map(math.isfinite, out)) else None


def _geometry_problem(label: str, value: Any, n: int) -> str | None:
    """Why a present geometry tag gives no value (None when absent or fine)."""
    if value is None or value == "":
        return None
    items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    text = "\\".join(str(v) for v in items)
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        return f"{label} is not a number: {text!r}"
    if not all(math.isfinite(v) for v in numbers):
        return f"{label} is not a finite number: {text!r}"
    if len(numbers) != n:
        return f"{label} has {len(numbers)} value(s), {n} expected: {text!r}"
    return None


def header_info(ds: pydicom.Dataset, member: str) -> HeaderInfo:
    """Extract the selection fields from a (header-only) pydicom dataset."""
    spacing = _floats(ds.get("PixelSpacing"), 2)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    problems = tuple(
        p for p in (
            position is None and _geometry_problem(
                "ImagePositionPatient (0020,0032)", ds.get("ImagePositionPatient"), 3),
            orientation is None and _geometry_problem(
                "ImageOrientationPatient (0020,0037)", ds.get("ImageOrientationPatient"), 6),
            spacing is None and _geometry_problem("PixelSpacing (0028,0030)", ds.get("PixelSpacing"), 2),
        ) if p
    )
    return HeaderInfo(
        member=member,
        series_description=normalise_description(str(ds.get("SeriesDescription", "") or "")),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        series_number=int_or_none(ds.get("SeriesNumber")),
        instance_number=int_or_none(ds.get("InstanceNumber")),
        trigger_time_ms=float_or_none(ds.get("TriggerTime")),
        position=None if position is None else (position[0], position[1], position[2]),
        orientation=orientation,
        pixel_spacing_mm=None if spacing is None else (spacing[0], spacing[1]),
        slice_thickness_mm=float_or_none(ds.get("SliceThickness")),
        spacing_between_slices_mm=float_or_none(ds.get("SpacingBetweenSlices")),
        rows=int_or_none(ds.get("Rows")),
        cols=int_or_none(ds.get("Columns")),
        acquisition_key=(
            str(ds.get("AcquisitionDate", "") or ""),
            str(ds.get("AcquisitionTime", "") or ""),
            str(ds.get("SeriesDate", "") or ""),
            str(ds.get("SeriesTime", "") or ""),
        ),
        has_overlay=Tag(OVERLAY_GROUP, 0x0010) in ds,
        patient_id=str(ds.get("PatientID", "") or ""),
        number_of_frames=int_or_none(ds.get("NumberOfFrames")) or 1,
        geometry_problems=problems,
    )


def header_from_elements(elements: Mapping[int, tuple[str, bytes]], member: str) -> HeaderInfo:
    """:func:`header_info` from the minimal reader's raw values, converted as pydicom converts them.

    Raises ``dicom_headers.Unsupported`` for any value whose conversion is not certain to match (the
    member is then read with pydicom), including geometry that is present but unusable: pydicom's path
    words that error. ``has_overlay`` is left None (OverlayRows (6000,0010) lies past the header tags).
    """

    def raw(tag: int) -> bytes | None:
        element = elements.get(tag)
        return None if element is None else element[1]

    def text(tag: int) -> str:
        value = raw(tag)
        return "" if value is None else dh.text(value)

    def vector(tag: int, n: int) -> tuple[float, ...] | None:
        value = raw(tag)
        numbers = None if value is None else dh.decimals(value)
        if numbers is None:
            return None
        if not isinstance(numbers, list) or len(numbers) != n or not all(map(math.isfinite, numbers)):
            raise dh.Unsupported(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has unusable geometry")
        return tuple(numbers)

    def decimal(tag: int) -> float | None:
        value = raw(tag)
        return None if value is None else float_or_none(dh.decimal(value))

    def integer(tag: int) -> int | None:
        value = raw(tag)
        return None if value is None else int_or_none(dh.integer_string(value))

    def unsigned(tag: int) -> int | None:
        value = raw(tag)
        return None if value is None else int_or_none(dh.unsigned_short(value))

    spacing = vector(0x00280030, 2)
    position = vector(0x00200032, 3)
    return HeaderInfo(
        member=member,
        series_description=normalise_description(text(0x0008103E)),
        series_uid=text(0x0020000E),
        series_number=integer(0x00200011),
        instance_number=integer(0x00200013),
        trigger_time_ms=decimal(0x00181060),
        position=None if position is None else (position[0], position[1], position[2]),
        orientation=vector(0x00200037, 6),
        pixel_spacing_mm=None if spacing is None else (spacing[0], spacing[1]),
        slice_thickness_mm=decimal(0x00180050),
        spacing_between_slices_mm=decimal(0x00180088),
        rows=unsigned(0x00280010),
        cols=unsigned(0x00280011),
        acquisition_key=(text(0x00080022), text(0x00080032), text(0x00080021), text(0x00080031)),
        has_overlay=None,  # read on by HeaderReader where needed
        patient_id=text(0x00100020),
        number_of_frames=integer(0x00280008) or 1,
    )



def walk_prefix(prefix: Prefix, wanted: frozenset[int], stop_after: int, *, after: dh.Elements | None = None,
                 size_hint: int | None = None, expected_vrs: dict[int, str] | None = None) -> dh.Elements:
    """Grow ``prefix`` until the minimal reader gets past ``stop_after`` (or the member ends); ``after``:
    go on from where that earlier walk of the same prefix stopped; ``size_hint``: how far that probably
    is (read at once)."""
    resume = None if after is None else after.resume()
    size = _FIRST_HEADER_BYTES if after is None else after.stop_pos + _FIRST_HEADER_BYTES
    if size_hint is not None:
        size = max(size, size_hint)
    while True:
        buf = prefix.need(size)
        try:
            return dh.read_elements(buf, wanted, stop_after, complete=prefix.complete,
                                    expected_vrs=expected_vrs or HEADER_VRS, resume=resume)
        except dh.NeedMore as more:
            resume = more
            size = max(more.needed, len(buf) + len(buf) // 2)


class HeaderReader:
    """Reads headers of one participant's members, each at most once, by the decode's strategy."""

    def __init__(self, members: ZipMembers | StreamMembers, source_uri: str, stats: DecodeStats, *,
                 require_dicom: Callable[[str], bool], use_pydicom: bool):
        self._members = members
        self._source_uri = source_uri
        self._stats = stats
        self._require_dicom = require_dicom
        self.use_pydicom = use_pydicom
        self._cache: dict[str, HeaderInfo | None] = {}
        self._overlay: dict[str, bool] = {}

    def read(self, name: str, *, with_overlay: bool = False) -> HeaderInfo | None:
        """The member's header; None for a member that is not DICOM and need not be. ``with_overlay``:
        with ``has_overlay`` known (for the minimal reader, read on through the CSA group)."""
        if name in self._cache:
            header = self._cache[name]
            if with_overlay and header is not None and header.has_overlay is None:
                header = self._cache[name] = replace(header, has_overlay=self.has_overlay(header))
            return header
        header = self._read_pydicom(name) if self.use_pydicom else self._read_fast(name, with_overlay)
        self._cache[name] = header
        if header is not None:
            self._stats.headers_read += 1
        return header

    @property
    def members_read(self) -> int:
        """How many members' headers were read."""
        return len(self._cache)

    def read_many(self, names: Iterable[str], *, with_overlay: bool = False) -> list[HeaderInfo]:
        return [h for h in (self.read(n, with_overlay=with_overlay) for n in names) if h is not None]

    def _read_fast(self, name: str, with_overlay: bool) -> HeaderInfo | None:
        """The minimal reader's header; an InlineVF frame's (or, ``with_overlay``, any frame's) overlay
        presence is read on in the same pass, through the Siemens CSA group."""
        try:
            prefix = self._members.prefix(name, limit=MAX_HEADER_BYTES)
            try:
                elements = walk_prefix(prefix, _HEADER_WANTED, _LAST_HEADER_TAG)
                header = header_from_elements(elements.values, name)
                if with_overlay or header.series_description == INLINEVF_SERIES:
                    hint = None  # the overlay group lies just before the pixel data: read up to there at once
                    if prefix.declared_size and header.rows and header.cols:
                        hint = prefix.declared_size - 2 * header.rows * header.cols
                    overlay = walk_prefix(prefix, frozenset({OVERLAY_ROWS}), OVERLAY_ROWS, after=elements,
                                           size_hint=hint)
                    header = replace(header, has_overlay=OVERLAY_ROWS in overlay.values)
                    self._stats.overlay_checks += 1
            finally:
                prefix.close()
        except (dh.Unsupported, dh.NotDicom):
            return self._read_pydicom(name)  # pydicom decides, and words any error, as the scan does
        except MemberError as exc:
            raise member_error(self._source_uri, exc) from exc
        return header

    def _read_pydicom(self, name: str) -> HeaderInfo | None:
        source_uri = self._source_uri
        try:
            with self._members.open_stream(name, limit=MAX_HEADER_BYTES) as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            header = header_info(ds, name)
        except InvalidDicomError as exc:
            if self._require_dicom(name):
                raise DecodeError(
                    source_uri, "headers", f"member {name!r} is not a DICOM file ({exc})"
                ) from exc
            return None
        except MemberError as exc:
            raise member_error(source_uri, exc) from exc
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DecodeError(
                source_uri, "read", f"member {name!r} cannot be read from the zip ({read_error_reason(exc)})"
            ) from exc
        except Exception as exc:
            raise DecodeError(
                source_uri, "headers", f"member {name!r}: unreadable DICOM header ({read_error_reason(exc)})"
            ) from exc
        self._stats.headers_read_with_pydicom += 1
        return header

    def has_overlay(self, h: HeaderInfo) -> bool:
        """Whether OverlayRows (6000,0010) is present (read on demand, once per member)."""
        if h.has_overlay is not None:
            return h.has_overlay
        if h.member not in self._overlay:
            self._overlay[h.member] = self._read_overlay_presence(h.member)
        return self._overlay[h.member]

    def _read_overlay_presence(self, name: str) -> bool:
        try:
            prefix = self._members.prefix(name, limit=MAX_HEADER_BYTES)
            try:
                self._stats.overlay_checks += 1
                return OVERLAY_ROWS in walk_prefix(prefix, frozenset({OVERLAY_ROWS}), OVERLAY_ROWS).values
            finally:
                prefix.close()
        except (dh.Unsupported, dh.NotDicom):
            pass
        except MemberError as exc:
            raise member_error(self._source_uri, exc) from exc
        try:
            with self._members.open_stream(name, limit=MAX_HEADER_BYTES) as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=[Tag(OVERLAY_GROUP, 0x0010)])
        except MemberError as exc:
            raise member_error(self._source_uri, exc) from exc
        except Exception as exc:
            reason = f"member {name!r}: unreadable DICOM header ({read_error_reason(exc)})"
            raise DecodeError(self._source_uri, "headers", reason) from exc
        return Tag(OVERLAY_GROUP, 0x0010) in ds

