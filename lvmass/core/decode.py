"""Decode one participant's short-axis cine CMR into a :class:`~lvmass.core.study.DecodedStudy`.

Reads only what the mass needs (docs/architecture.md, "Read only what is needed"):

1. list the zip's members (central directory) and parse the manifest, a hint used only to skip members
   it clearly describes as something other than short-axis cine;
2. read the DICOM *headers* of the remaining ``.dcm`` members, as far as the tags slice selection needs;
3. choose the short-axis series, the stack normal, the end-diastolic (ED) frame of each slice and the
   base-to-apex order: ``lvmass.core.slices`` (pure, over the parsed headers; docs/ukbb_format.md);
4. decode pixels of the chosen ED frames only, and InlineVF overlays of the matching
   ``CINE_segmented_SAX_InlineVF`` instances only (none at all with ``with_inlinevf=False``).

How step 2 reads headers is the ``strategy`` (:data:`STRATEGIES`); all three give the same study on a
UK Biobank zip (tested on the synthetic cohorts and a real study):

``fast`` (default)
    On a UK Biobank zip whose manifest lists every ``.dcm`` member and names ``bK`` series, trust the
    layout (:class:`_TrustedLayout`): each run of consecutive members with one manifest description is one
    series stored in InstanceNumber order, its first member the ED frame, and the InlineVF series holds one
    block of frames per slice in the same order. A few headers of every run verify it (series, numbering,
    trigger times, positions); a run that fails is read in full, and a manifest that disagrees with a
    header drops the trust altogether. Everything else (no manifest, other layouts, other vendors) is read
    as ``all_headers``.
``all_headers``
    every candidate header, with the minimal tag reader of :mod:`lvmass.core.dicom_headers` (pydicom
    for a member it cannot read), up to PixelSpacing (0028,0030); for an InlineVF frame on through the
    Siemens CSA group to the overlay group.
``scan_all_headers``
    every candidate header, and the chosen frames, parsed by pydicom (``dcmread``, ``pixel_array``): the
    decoder before the minimal reader, kept as the reference the others are tested against.

With ``fast`` and ``all_headers`` the chosen frames are parsed by the minimal reader too, and a native
16-bit grey-scale image is unpacked with numpy exactly as pydicom unpacks it (:func:`_native_pixels`);
anything else goes to pydicom. Every member is read through :mod:`lvmass.core.zip_members`, which
refuses members beyond a size limit (:data:`MAX_MEMBER_BYTES`, :data:`MAX_MANIFEST_BYTES`,
:data:`MAX_HEADER_BYTES`), never inflates a member past its declared size and names encrypted members.
Each chosen member is inflated once. :class:`DecodeStats` counts what was read, so tests can prove the
decoder never touches more than it needs. Every failure raises :class:`~lvmass.core.study.DecodeError`
naming the file/member and the reason.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from lvmass.core import acquisition, budget, contracts, geometry
from lvmass.core import dicom_headers as dh
from lvmass.core.budget import MAX_PARTICIPANT_BYTES
from lvmass.core.identity import base_name, is_nifti_name, parse_ukbb_zip_name
from lvmass.core.manifest import ManifestError, is_manifest_name, series_descriptions
from lvmass.core.nifti import decode_nifti
from lvmass.core.overlay import overlay_outline
from lvmass.core.qc import geometry_qc_flags
from lvmass.core.slices import (
    BK_SERIES,
    ED_RULES,
    INLINEVF_SERIES,
    MIXED_SAX_SERIES,
    SAX_SERIES_PREFIX,
    ChosenSlice,
    HeaderInfo,
    SliceSelection,
    choose_ed_frame,
    inlinevf_pool,
    inlinevf_positions,
    is_image_series,
    match_inlinevf,
    normalise_description,
    select_slices,
)
from lvmass.core.study import DecodedStudy, DecodeError
from lvmass.core.zip_members import (
    MAX_HEADER_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    HeaderTooLargeError,
    MemberError,
    StreamMembers,
    ZipMembers,
)

__all__ = [  # choose_ed_frame and HeaderInfo live in lvmass.core.slices; decoding callers find them here
    "ED_RULES", "MAX_MANIFEST_BYTES", "MAX_MEMBER_BYTES", "STRATEGIES", "DecodeStats", "HeaderInfo",
    "ParticipantFolder", "choose_ed_frame", "decode_dicom_members", "decode_frame_pixels",
    "decode_participant_file", "decode_participant_zip", "folder_member_name", "header_info",
    "parse_ukbb_zip_name",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("fast", "all_headers", "scan_all_headers")
OVERLAY_GROUP = 0x6000
PIXEL_SPACING_REL_TOL = 1e-3
# PixelData (7FE0,0010) may declare at most this much more than Rows x Columns x SamplesPerPixel x
# BitsAllocated/8 x NumberOfFrames (odd-length padding, vendors' trailing bytes) before it is refused.
PIXEL_DATA_SLACK_BYTES = 64 * 1024

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
_OVERLAY_ROWS = 0x60000010
# The header tags for the minimal reader, by VR (PS3.6); all but OverlayRows precede the Siemens CSA
# group (0029), so the header pass stops at PixelSpacing (0028,0030).
_HEADER_VRS: dict[int, str] = {
    0x00080021: "DA", 0x00080022: "DA", 0x00080031: "TM", 0x00080032: "TM", 0x0008103E: "LO",
    0x00100020: "LO", 0x00180050: "DS", 0x00180088: "DS", 0x00181060: "DS", 0x0020000E: "UI",
    0x00200011: "IS", 0x00200013: "IS", 0x00200032: "DS", 0x00200037: "DS", 0x00280008: "IS",
    0x00280010: "US", 0x00280011: "US", 0x00280030: "DS", _OVERLAY_ROWS: "US",
}
_HEADER_WANTED = frozenset(t for t in _HEADER_VRS if t != _OVERLAY_ROWS)
_HEADER_WITH_OVERLAY_WANTED = frozenset(_HEADER_VRS)
_LAST_HEADER_TAG = 0x00280030
_FIRST_HEADER_BYTES = 4096


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


@dataclass
class DecodeStats:
    """What one decode touched. ``bytes_read`` counts bytes read from the participant's file object
    (the zip, compressed) or, for loose members, from the member streams.

    ``headers_read`` counts DICOM headers parsed (``headers_read_with_pydicom`` of them by pydicom),
    ``headers_not_read`` the candidate headers the trusted UK Biobank layout made unnecessary,
    ``overlay_checks`` the InlineVF frames whose overlay group was read only to see whether they carry a
    contour, ``members_decoded`` the members parsed for pixels or overlays (each once). ``strategy`` is what
    was done (``trusted_ukbb_layout``, ``all_headers`` or ``scan_all_headers``). ``notes`` are decisions a
    user should know about that do not fail the participant (an outline dropped, a manifest ignored, the
    layout not trusted), each naming the member.
    """

    members_listed: int = 0
    headers_read: int = 0
    pixel_frames_decoded: int = 0
    overlay_frames_decoded: int = 0
    bytes_read: int = 0
    members_skipped_by_manifest: int = 0
    manifest_rows: int = 0
    manifest_error: str | None = None
    headers_read_with_pydicom: int = 0
    headers_not_read: int = 0
    overlay_checks: int = 0
    members_decoded: list[str] = field(default_factory=list)
    strategy: str = ""
    notes: list[str] = field(default_factory=list)


class _CountingReader:
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

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- headers ---------------------------------------------------------------------------------------


def _float_or_none(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int_or_none(value) -> int | None:
    f = _float_or_none(value)
    return None if f is None else int(f)


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(map(math.isfinite, out)) else None


def _geometry_problem(label: str, value, n: int) -> str | None:
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
        series_number=_int_or_none(ds.get("SeriesNumber")),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        trigger_time_ms=_float_or_none(ds.get("TriggerTime")),
        position=position,  # type: ignore[arg-type]
        orientation=orientation,
        pixel_spacing_mm=None if spacing is None else (spacing[0], spacing[1]),
        slice_thickness_mm=_float_or_none(ds.get("SliceThickness")),
        spacing_between_slices_mm=_float_or_none(ds.get("SpacingBetweenSlices")),
        rows=_int_or_none(ds.get("Rows")),
        cols=_int_or_none(ds.get("Columns")),
        acquisition_key=(
            str(ds.get("AcquisitionDate", "") or ""),
            str(ds.get("AcquisitionTime", "") or ""),
            str(ds.get("SeriesDate", "") or ""),
            str(ds.get("SeriesTime", "") or ""),
        ),
        has_overlay=Tag(OVERLAY_GROUP, 0x0010) in ds,
        patient_id=str(ds.get("PatientID", "") or ""),
        number_of_frames=_int_or_none(ds.get("NumberOfFrames")) or 1,
        geometry_problems=problems,
    )


def _header_from_elements(elements: Mapping[int, tuple[str, bytes]], member: str) -> HeaderInfo:
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
        return None if value is None else _float_or_none(dh.decimal(value))

    def integer(tag: int) -> int | None:
        value = raw(tag)
        return None if value is None else _int_or_none(dh.integer_string(value))

    def unsigned(tag: int) -> int | None:
        value = raw(tag)
        return None if value is None else _int_or_none(dh.unsigned_short(value))

    spacing = vector(0x00280030, 2)
    return HeaderInfo(
        member=member,
        series_description=normalise_description(text(0x0008103E)),
        series_uid=text(0x0020000E),
        series_number=integer(0x00200011),
        instance_number=integer(0x00200013),
        trigger_time_ms=decimal(0x00181060),
        position=vector(0x00200032, 3),  # type: ignore[arg-type]
        orientation=vector(0x00200037, 6),
        pixel_spacing_mm=None if spacing is None else (spacing[0], spacing[1]),
        slice_thickness_mm=decimal(0x00180050),
        spacing_between_slices_mm=decimal(0x00180088),
        rows=unsigned(0x00280010),
        cols=unsigned(0x00280011),
        acquisition_key=(text(0x00080022), text(0x00080032), text(0x00080021), text(0x00080031)),
        has_overlay=None,  # read on by _HeaderReader where needed
        patient_id=text(0x00100020),
        number_of_frames=integer(0x00280008) or 1,
    )


def _read_error_reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _member_error(source_uri: str, exc: MemberError) -> DecodeError:
    """Step ``headers`` for a header beyond its size limit, ``read`` for any other member error."""
    return DecodeError(source_uri, "headers" if isinstance(exc, HeaderTooLargeError) else "read", str(exc))


def _walk_prefix(prefix, wanted: frozenset[int], stop_after: int, *, after: dh.Elements | None = None,
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
                                    expected_vrs=expected_vrs or _HEADER_VRS, resume=resume)
        except dh.NeedMore as more:
            resume = more
            size = max(more.needed, len(buf) + len(buf) // 2)


class _HeaderReader:
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
                elements = _walk_prefix(prefix, _HEADER_WANTED, _LAST_HEADER_TAG)
                header = _header_from_elements(elements.values, name)
                if with_overlay or header.series_description == INLINEVF_SERIES:
                    hint = None  # the overlay group lies just before the pixel data: read up to there at once
                    if prefix.declared_size and header.rows and header.cols:
                        hint = prefix.declared_size - 2 * header.rows * header.cols
                    overlay = _walk_prefix(prefix, frozenset({_OVERLAY_ROWS}), _OVERLAY_ROWS, after=elements,
                                           size_hint=hint)
                    header = replace(header, has_overlay=_OVERLAY_ROWS in overlay.values)
                    self._stats.overlay_checks += 1
            finally:
                prefix.close()
        except (dh.Unsupported, dh.NotDicom):
            return self._read_pydicom(name)  # pydicom decides, and words any error, as the scan does
        except MemberError as exc:
            raise _member_error(self._source_uri, exc) from exc
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
            raise _member_error(source_uri, exc) from exc
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DecodeError(
                source_uri, "read", f"member {name!r} cannot be read from the zip ({_read_error_reason(exc)})"
            ) from exc
        except Exception as exc:
            raise DecodeError(
                source_uri, "headers", f"member {name!r}: unreadable DICOM header ({_read_error_reason(exc)})"
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
                return _OVERLAY_ROWS in _walk_prefix(prefix, frozenset({_OVERLAY_ROWS}), _OVERLAY_ROWS).values
            finally:
                prefix.close()
        except (dh.Unsupported, dh.NotDicom):
            pass
        except MemberError as exc:
            raise _member_error(self._source_uri, exc) from exc
        try:
            with self._members.open_stream(name, limit=MAX_HEADER_BYTES) as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=[Tag(OVERLAY_GROUP, 0x0010)])
        except MemberError as exc:
            raise _member_error(self._source_uri, exc) from exc
        except Exception as exc:
            reason = f"member {name!r}: unreadable DICOM header ({_read_error_reason(exc)})"
            raise DecodeError(self._source_uri, "headers", reason) from exc
        return Tag(OVERLAY_GROUP, 0x0010) in ds


# --- the trusted UK Biobank layout ------------------------------------------------------------------


def _runs(names: Sequence[str], description: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """Maximal runs of consecutive members (in zip order) that the manifest gives one description."""
    runs: list[tuple[str, list[str]]] = []
    for name in names:
        desc = description[name.rsplit("/", 1)[-1]]
        if runs and runs[-1][0] == desc:
            runs[-1][1].append(name)
        else:
            runs.append((desc, [name]))
    return runs


def _increasing(values: Sequence[float | int | None]) -> bool:
    return all(v is not None for v in values) and all(
        a < b for a, b in itertools.pairwise(values))  # type: ignore[operator]


class _LayoutNotAsDescribed(Exception):
    """A header contradicts the manifest: the trusted layout is dropped for the whole zip."""


@dataclass
class _Block:
    """One slice's frames in the InlineVF series: consecutive members, first and last read."""

    names: list[str]
    first: HeaderInfo
    last: HeaderInfo


class _TrustedLayout:
    """Slice selection and InlineVF matching from a few headers, where the UK Biobank layout holds.

    The layout trusted (docs/ukbb_format.md, "Phases and the end-diastolic frame"): each run of
    consecutive ``.dcm`` members that the manifest gives one ``CINE_segmented_SAX_bK`` description is one
    series stored in InstanceNumber order, TriggerTime rising with it, one acquisition time per series;
    the InlineVF run holds one block of frames per slice, each block as long as a bK run and in the same
    frame order, then a few extra images (the mitral-valve planes). What is read:

    - of each bK run, the first, middle and last headers: one series, InstanceNumbers rising and
      contiguous (last - first = length - 1), TriggerTimes rising. The run's first member is then its ED
      frame; a run that fails is read in full;
    - of each InlineVF block, the first (with the overlay group) and last headers: one series, one
      position per block, another position for the next block, TriggerTimes rising, InstanceNumbers rising
      and contiguous; the extras in full; a run that fails is read in full;
    - for each chosen slice, the frames of its InlineVF block in order until one carries an overlay (the
      nearest phase with a contour), or the whole block where that order is not the order of preference.
      On a slice without contours, a frame whose declared size (central directory) shows no overlay plane
      is not read (:meth:`_block_frames`).

    A header whose series description differs from the manifest's drops the trust for the zip (the general
    path reads every header). The ED frames and contours chosen are the ones reading every header gives
    whenever the layout holds; the tests compare both on the synthetic cohorts.
    """

    def __init__(self, reader: _HeaderReader, names: Sequence[str], description: Mapping[str, str],
                 sizes: Mapping[str, int], stats: DecodeStats, *, with_inlinevf: bool):
        self._reader = reader
        self._sizes = sizes
        self._names = list(names)
        self._description = description
        self._stats = stats
        self._with_inlinevf = with_inlinevf
        self._rank = {n: k for k, n in enumerate(self._names)}
        self._blocks: list[_Block] = []
        self._vf_headers: list[HeaderInfo] = []

    @staticmethod
    def applies(names: Sequence[str], description: Mapping[str, str]) -> bool:
        """Every ``.dcm`` member is in the manifest, which names bK series and no mixed series."""
        descriptions = set()
        for name in names:
            desc = description.get(name.rsplit("/", 1)[-1])
            if desc is None:
                return False
            descriptions.add(desc)
        return any(BK_SERIES.match(d) for d in descriptions) and MIXED_SAX_SERIES not in descriptions

    def _read(self, names: Iterable[str], desc: str, *, with_overlay: bool = False) -> list[HeaderInfo]:
        out = []
        for name in names:
            h = self._reader.read(name, with_overlay=with_overlay)
            if h is None or h.series_description != desc:
                raise _LayoutNotAsDescribed(name)
            out.append(h)
        return out

    def headers(self) -> list[HeaderInfo]:
        """Headers for slice selection (bK samples, InlineVF samples). Raises _LayoutNotAsDescribed when a
        header contradicts the manifest."""
        runs = _runs(self._names, self._description)
        # Frames per slice: the length of every bK run (known from the manifest, before any read).
        lengths = {len(run) for desc, run in runs if BK_SERIES.match(desc)}
        phases = next(iter(lengths)) if len(lengths) == 1 else None
        n_slices = len({desc for desc, _ in runs if BK_SERIES.match(desc)})
        out: list[HeaderInfo] = []
        for desc, run in runs:  # in zip order: one forward sweep
            if BK_SERIES.match(desc):
                out += self._bk_run(run, desc)
            elif desc == INLINEVF_SERIES and self._with_inlinevf:
                out += self._inlinevf_run(run, phases, n_slices)
        out.sort(key=lambda h: self._rank[h.member])
        return out

    def _bk_run(self, run: list[str], desc: str) -> list[HeaderInfo]:
        """Sampled headers of one bK run when they show the layout, else all of its headers."""
        samples = sorted({0, len(run) // 2, len(run) - 1})
        got = self._read((run[i] for i in samples), desc)
        trusted = len(got) == len(run) or (
            len({h.series_uid for h in got}) == 1
            and _increasing([h.instance_number for h in got])
            and got[-1].instance_number - got[0].instance_number == len(run) - 1  # type: ignore[operator]
            and _increasing([h.trigger_time_ms for h in got])
        )
        return got if trusted else self._read(run, desc)

    def _inlinevf_run(self, run: list[str], phases: int | None, n_slices: int) -> list[HeaderInfo]:
        """Headers of one InlineVF run: block firsts and lasts and the extras, or every frame."""
        blocks: list[_Block] = []
        extras: list[str] = run
        if phases and phases > 2 and len(run) >= phases:
            n_blocks = min(len(run) // phases, n_slices)  # one block per slice, then the extras
            extras = run[n_blocks * phases:]
            for b in range(n_blocks):
                names = run[b * phases:(b + 1) * phases]
                (first,) = self._read((names[0],), INLINEVF_SERIES, with_overlay=True)
                (last,) = self._read((names[-1],), INLINEVF_SERIES)  # the overlay is read if asked
                blocks.append(_Block(names, first, last))
            if not self._blocks_hold(blocks, phases):
                blocks, extras = [], run
        got = self._read(extras, INLINEVF_SERIES, with_overlay=True)
        got += [h for b in blocks for h in (b.first, b.last)]
        self._blocks += blocks
        self._vf_headers += got
        return got

    @staticmethod
    def _blocks_hold(blocks: Sequence[_Block], phases: int) -> bool:
        if len({h.series_uid for b in blocks for h in (b.first, b.last)}) != 1:
            return False
        for k, b in enumerate(blocks):
            if b.first.position is None or b.first.position != b.last.position:
                return False
            if b.first.orientation != b.last.orientation:
                return False
            if not (_increasing([b.first.instance_number, b.last.instance_number])
                    and b.last.instance_number - b.first.instance_number == phases - 1  # type: ignore[operator]
                    and _increasing([b.first.trigger_time_ms, b.last.trigger_time_ms])):
                return False
            if k and b.first.position == blocks[k - 1].first.position:
                return False
        return True

    def inlinevf_pool(self, selection: SliceSelection, slices: Sequence[ChosenSlice], tol_mm: float
                      ) -> list[HeaderInfo]:
        """The InlineVF frames matching needs for ``slices``: for each slice, its block's frames in order up
        to the first with an overlay (or the whole block), on top of every InlineVF header read so far."""
        block_at = [(p, b) for b in self._blocks for p, _ in inlinevf_positions(
            inlinevf_pool([b.first]), selection.normal, selection.direction_sign)]
        block_members = {n for b in self._blocks for n in b.names}
        others = [(p, h) for p, h in inlinevf_positions(
            inlinevf_pool(self._vf_headers), selection.normal, selection.direction_sign)
            if h.member not in block_members]
        # How much of each block near a slice is needed; blocks are then read in zip order (forward).
        whole: dict[int, bool] = {}
        for s in slices:
            near = [b for p, b in block_at if abs(p - s.position_mm) <= tol_mm]
            near_others = any(abs(p - s.position_mm) <= tol_mm for p, _ in others)
            ed_tt = s.ed.trigger_time_ms
            in_order = len(near) == 1 and not near_others and (
                ed_tt is None or (near[0].first.trigger_time_ms is not None
                                  and ed_tt <= near[0].first.trigger_time_ms))
            for b in near:
                whole[id(b)] = whole.get(id(b), False) or not in_order
        footprint = self._overlay_footprint()
        extra: list[HeaderInfo] = []
        for b in sorted((b for b in self._blocks if id(b) in whole), key=lambda b: self._rank[b.names[0]]):
            extra += self._block_frames(b, until_overlay=not whole[id(b)], footprint=footprint)
        return inlinevf_pool(self._vf_headers + extra)

    def _overlay_footprint(self) -> int | None:
        """How many bytes an overlay plane adds to an InlineVF frame of this zip: the smallest block first
        frame with one minus the largest without (None unless both kinds were read and differ clearly)."""
        with_overlay = [self._sizes[b.first.member] for b in self._blocks if b.first.has_overlay]
        without = [self._sizes[b.first.member] for b in self._blocks if b.first.has_overlay is False]
        if not with_overlay or not without:
            return None
        footprint = min(with_overlay) - max(without)
        spread = max(without) - min(without)
        return footprint if footprint > 4 * spread and footprint > 0 else None

    def _block_frames(self, block: _Block, *, until_overlay: bool, footprint: int | None) -> list[HeaderInfo]:
        """The block's frames in order, up to the first with an overlay (``until_overlay``) or all.

        A frame whose declared size is within half an overlay ``footprint`` of the block's first frame,
        which has none, has none either and is not read: in one series the header's length varies by a few
        bytes between frames (values of different lengths), an overlay plane adds Rows x Columns / 8 bytes.
        """
        out = []
        base = None
        if until_overlay and footprint is not None and block.first.has_overlay is False:
            base = self._sizes[block.first.member]
        for k, name in enumerate(block.names):
            if base is not None and k and abs(self._sizes[name] - base) < footprint / 2:  # type: ignore[operator]
                continue
            h = self._read((name,), INLINEVF_SERIES, with_overlay=True)[0]
            out.append(h)
            if until_overlay and self._reader.has_overlay(h):
                break
        return out


# --- pixels ----------------------------------------------------------------------------------------


def decode_frame_pixels(ds: pydicom.Dataset, *, source_uri: str, member: str) -> np.ndarray:
    """Pixel data (7FE0,0010) of one single-frame image as float32 after RescaleSlope (0028,1053) and
    RescaleIntercept (0028,1052)."""
    if "PixelData" not in ds:
        raise DecodeError(source_uri, "pixels", f"member {member!r} has no Pixel Data (7FE0,0010)")
    frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    if frames != 1:
        raise DecodeError(
            source_uri,
            "pixels",
            f"member {member!r} is multi-frame ({frames} frames); one frame per file expected",
        )
    _check_pixel_data_length(ds, source_uri=source_uri, member=member)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DecodeError(
            source_uri,
            "pixels",
            f"member {member!r}: pixel data cannot be decoded ({_read_error_reason(exc)})",
        ) from exc
    if arr.ndim != 2:
        raise DecodeError(
            source_uri, "pixels", f"member {member!r}: expected a 2-D image, got shape {arr.shape}"
        )
    slope = _float_or_none(ds.get("RescaleSlope"))
    intercept = _float_or_none(ds.get("RescaleIntercept"))
    out = arr.astype(np.float32)
    if slope is not None and slope != 1.0:
        out = out * np.float32(slope)
    if intercept is not None and intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def _check_pixel_data_length(ds: pydicom.Dataset, *, source_uri: str, member: str) -> None:
    """Refuse native PixelData whose declared length is far beyond Rows x Columns x SamplesPerPixel x
    BitsAllocated/8 x NumberOfFrames, before any array is allocated from it."""
    element = ds.get_item(0x7FE00010)
    declared = getattr(element, "length", None)
    if declared is None or declared == dh.UNDEFINED_LENGTH:
        return  # encapsulated (compressed) frames, or a value set in memory
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    except (AttributeError, TypeError, ValueError):
        return  # pydicom's decoder reports what is missing
    expected = math.ceil(rows * cols * samples * frames * bits / 8)
    if declared > expected + PIXEL_DATA_SLACK_BYTES:
        raise DecodeError(
            source_uri, "pixels",
            f"member {member!r}: Pixel Data (7FE0,0010) declares {declared} bytes, more than Rows x Columns "
            f"x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames = {rows} x {cols} x {samples} x {bits}/8 "
            f"x {frames} = {expected} (+{PIXEL_DATA_SLACK_BYTES} slack); refused",
        )


# Pixel attributes the native fast path reads with the pixel data (the rest goes to pydicom).
_PIXEL_VRS: dict[int, str] = {
    0x00280002: "US",  # SamplesPerPixel
    0x00280004: "CS",  # PhotometricInterpretation
    0x00280008: "IS",  # NumberOfFrames
    0x00280010: "US", 0x00280011: "US",  # Rows, Columns
    0x00280100: "US", 0x00280101: "US", 0x00280102: "US",  # BitsAllocated, BitsStored, HighBit
    0x00280103: "US",  # PixelRepresentation
    0x00281052: "DS", 0x00281053: "DS",  # RescaleIntercept, RescaleSlope
}
_OVERLAY_VRS: dict[int, str] = {
    0x00280010: "US", 0x00280011: "US",
    0x60000010: "US", 0x60000011: "US", 0x60000015: "IS", 0x60000040: "CS", 0x60000050: "SS",
    0x60000100: "US", 0x60000102: "US", 0x60003000: "OW",
}
_NATIVE_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class _Frame:
    """A chosen member, parsed once: its image (pixel members) and the dataset its overlay is read from."""

    image: np.ndarray | None
    overlay: pydicom.Dataset


def _overlay_dataset(elements: dh.Elements) -> pydicom.Dataset:
    """A pydicom dataset of the raw overlay elements, converted by pydicom exactly as ``dcmread`` would."""
    return pydicom.Dataset({
        Tag(tag): RawDataElement(Tag(tag), None if elements.implicit else vr, len(value), value, 0,
                                 elements.implicit, True)
        for tag, (vr, value) in elements.values.items() if tag in _OVERLAY_VRS
    })


def _native_pixels(elements: dh.Elements, data: bytes) -> np.ndarray | None:
    """The image of a native, little-endian, single-frame, 16-bit grey-scale file, exactly as pydicom's
    ``pixel_array`` and :func:`decode_frame_pixels` give it (unused high bits cleared, or the sign extended,
    from BitsStored; then RescaleSlope and RescaleIntercept); None for anything else (pydicom decides)."""
    if (not elements.native or elements.stop_tag != 0x7FE00010
            or elements.stop_length in (None, dh.UNDEFINED_LENGTH)):
        return None
    values = elements.values

    def number(tag: int, convert):
        element = values.get(tag)
        return None if element is None else convert(element[1])

    try:
        rows, cols = number(0x00280010, dh.unsigned_short), number(0x00280011, dh.unsigned_short)
        samples, frames = number(0x00280002, dh.unsigned_short), number(0x00280008, dh.integer_string)
        allocated, stored = number(0x00280100, dh.unsigned_short), number(0x00280101, dh.unsigned_short)
        high_bit, signed = number(0x00280102, dh.unsigned_short), number(0x00280103, dh.unsigned_short)
        photometric = number(0x00280004, dh.text)
        intercept, slope = number(0x00281052, dh.decimal), number(0x00281053, dh.decimal)
    except dh.Unsupported:
        return None
    if (samples != 1 or frames not in (None, 1) or allocated != 16 or stored is None
            or not 1 <= stored <= 16 or high_bit not in (None, stored - 1) or signed not in (0, 1)
            or photometric not in _NATIVE_PHOTOMETRIC or not rows or not cols
            or elements.stop_length != rows * cols * 2):
        return None
    head = 8 if elements.implicit else 12
    available = len(data) - (elements.stop_pos + head)
    if available < rows * cols * 2:
        raise ValueError(f"Pixel Data (7FE0,0010) is truncated: the file ends {max(available, 0)} bytes into "
                         f"the {rows * cols * 2} bytes of its {rows} x {cols} 16-bit image")
    arr = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=rows * cols,
                        offset=elements.stop_pos + head).reshape(rows, cols)
    if stored < 16:
        if signed:
            shift = 16 - stored
            arr = np.left_shift(arr, shift) >> shift
        else:
            arr = arr & np.uint16((1 << stored) - 1)
    out = arr.astype(np.float32)
    slope, intercept = _float_or_none(slope), _float_or_none(intercept)
    if slope is not None and slope != 1.0:
        out = out * np.float32(slope)
    if intercept is not None and intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def _read_frame(members: ZipMembers | StreamMembers, member: str, source_uri: str, stats: DecodeStats, *,
                pixels: bool, use_pydicom: bool, size_hint: int | None = None) -> _Frame:
    """A chosen member parsed once: in full (``pixels``), or only its overlay plane and image size read up
    to its pixel data. The minimal reader and :func:`_native_pixels` handle the common encodings; pydicom
    the rest, and everything with ``use_pydicom`` (the reference path)."""
    prefix = None
    try:
        if pixels:
            data = members.read(member, limit=MAX_MEMBER_BYTES)
        else:
            prefix = members.prefix(member, limit=MAX_MEMBER_BYTES)
            data = b""
        stats.members_decoded.append(member)
        if not use_pydicom:
            try:
                if pixels:
                    elements = dh.read_elements(data, _PIXEL_VRS.keys() | _OVERLAY_VRS.keys(), 0xFFFFFFFF,
                                                complete=True, expected_vrs={**_PIXEL_VRS, **_OVERLAY_VRS})
                    try:
                        image = _native_pixels(elements, data)
                    except ValueError as exc:  # the member ends inside its pixel data
                        raise DecodeError(source_uri, "pixels", f"member {member!r}: {exc}") from exc
                    if image is not None:
                        return _Frame(image, _overlay_dataset(elements))
                else:
                    elements = _walk_prefix(prefix, frozenset(_OVERLAY_VRS), 0xFFFFFFFF, size_hint=size_hint,
                                            expected_vrs=_OVERLAY_VRS)
                    return _Frame(None, _overlay_dataset(elements))
            except (dh.Unsupported, dh.NotDicom):
                pass
        if not pixels:
            data = _prefix_before_pixels(prefix)  # type: ignore[arg-type]
    except MemberError as exc:
        raise _member_error(source_uri, exc) from exc
    finally:
        if prefix is not None:
            prefix.close()
    try:
        if pixels:
            ds = pydicom.dcmread(io.BytesIO(data))  # PixelData stays raw, its length as declared
        else:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=OVERLAY_TAGS)
    except InvalidDicomError as exc:
        raise DecodeError(source_uri, "pixels", f"member {member!r} is not a DICOM file ({exc})") from exc
    except Exception as exc:
        raise DecodeError(
            source_uri, "pixels", f"member {member!r}: unreadable DICOM ({_read_error_reason(exc)})"
        ) from exc
    image = decode_frame_pixels(ds, source_uri=source_uri, member=member) if pixels else None
    return _Frame(image, ds)


def _prefix_before_pixels(prefix) -> bytes:
    """The member up to its pixel data (the whole member when the minimal reader cannot tell where that
    is): what pydicom reads with ``stop_before_pixels``."""
    try:
        elements = _walk_prefix(prefix, frozenset(), 0xFFFFFFFF)
        if elements.stop_tag is None:
            return prefix.data[: elements.stop_pos]
        return prefix.need(elements.stop_pos + 12)[: elements.stop_pos + 12]
    except (dh.Unsupported, dh.NotDicom):
        while not prefix.complete:
            prefix.need(2 * len(prefix.data) + 65536)
        return prefix.data


# --- entry points ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chosen:
    """What slice selection and InlineVF matching decided, before any pixel is read."""

    selection: SliceSelection
    flags: frozenset[str]
    positions: list[float]
    spacing_mm: float
    thickness_mm: float
    pixel_spacing_mm: tuple[float, float]
    matched: list[HeaderInfo | None]


def _choose(
    reader: _HeaderReader,
    header_names: Sequence[str],
    deferred_names: Sequence[str],
    source_uri: str,
    *,
    ed_rule: str,
    stats: DecodeStats,
    ukbb_required: bool,
    with_inlinevf: bool,
    layout: _TrustedLayout | None,
) -> _Chosen:
    """Headers (those ``layout`` asks for, else ``header_names``, then ``deferred_names`` when those hold no
    short-axis image series), slice selection, geometry checks and InlineVF matching."""
    if layout is not None:
        stats.strategy = "trusted_ukbb_layout"
        headers = layout.headers()
    else:
        stats.strategy = "scan_all_headers" if reader.use_pydicom else "all_headers"
        headers = reader.read_many(header_names)
        if deferred_names and not any(is_image_series(h.series_description) for h in headers):
            # The manifest is never the authority: if what it let through holds no short-axis image
            # series (it hid them, or InlineVF is the only one), read the deferred headers too.
            headers += reader.read_many(deferred_names)
    if not headers:
        raise DecodeError(source_uri, "series", f"no DICOM files among {stats.members_listed} members")

    selection = select_slices(headers, source_uri, ukbb_required=ukbb_required, ed_rule=ed_rule)
    slices, flags = selection.slices, set(selection.qc_flags)

    spacings = {s.ed.pixel_spacing_mm for s in slices}
    ref = slices[0].ed.pixel_spacing_mm
    assert ref is not None
    for sp in spacings:
        assert sp is not None
        if any(abs(a - b) > PIXEL_SPACING_REL_TOL * max(abs(b), 1e-6) for a, b in zip(sp, ref, strict=True)):
            raise DecodeError(
                source_uri, "geometry", f"PixelSpacing (0028,0030) differs between slices: {sorted(spacings)}"
            )
    positions = [s.position_mm for s in slices]
    between = [s.ed.spacing_between_slices_mm for s in slices if s.ed.spacing_between_slices_mm]
    thickness = [s.ed.slice_thickness_mm for s in slices if s.ed.slice_thickness_mm]
    thickness_mm = float(np.median(thickness)) if thickness else float("nan")
    try:
        spacing_mm = geometry.slice_spacing_mm(
            positions,
            spacing_between_slices_mm=float(np.median(between)) if between else None,
            slice_thickness_mm=thickness_mm if thickness else None,
        )
    except ValueError as exc:
        raise DecodeError(source_uri, "geometry", str(exc)) from exc
    if len({round(p, 3) for p in positions}) != len(positions):
        raise DecodeError(
            source_uri, "geometry", f"two slices share one position along the normal: {positions}"
        )

    flags.update(geometry_qc_flags(positions, spacing_mm))

    tol_mm = max(0.5, 0.25 * spacing_mm)
    matched: list[HeaderInfo | None] = [None] * len(slices)
    if with_inlinevf:
        pool = (layout.inlinevf_pool(selection, slices, tol_mm) if layout is not None
                else list(selection.inlinevf_pool))  # InlineVF frames: overlay presence read with the header
        matched = match_inlinevf(slices, pool, selection.normal, selection.direction_sign, tol_mm,
                                 has_overlay=reader.has_overlay)
    if layout is not None:
        stats.headers_not_read = len(header_names) - reader.members_read
    return _Chosen(selection, frozenset(flags), positions, float(spacing_mm), thickness_mm,
                   (float(ref[0]), float(ref[1])), matched)


def _decode(
    reader: _HeaderReader,
    members: ZipMembers | StreamMembers,
    header_names: Sequence[str],
    deferred_names: Sequence[str],
    source_uri: str,
    *,
    eid: int | None,
    instance: int | None,
    ed_rule: str,
    stats: DecodeStats,
    ukbb_required: bool,
    with_inlinevf: bool,
    order: Mapping[str, int] | None = None,
    layout: _TrustedLayout | None = None,
    budget_bytes: int = MAX_PARTICIPANT_BYTES,
) -> DecodedStudy:
    """Choose the slices and contours (:func:`_choose`; with a ``layout``, from the headers it asks for,
    falling back to every header when a header contradicts the manifest), check that decoding them fits
    ``budget_bytes`` (:func:`_check_budget`), then one forward pass over the chosen members in ``order``
    (the zip's member order; name order without one)."""
    chosen = None
    if layout is not None:
        try:
            chosen = _choose(reader, header_names, deferred_names, source_uri, ed_rule=ed_rule, stats=stats,
                             ukbb_required=ukbb_required, with_inlinevf=with_inlinevf, layout=layout)
        except _LayoutNotAsDescribed as exc:
            note = f"member {exc.args[0]!r}: its header contradicts the manifest; every header is read"
            stats.notes.append(note)
            logger.info("%s: %s", source_uri, note)
    if chosen is None:
        chosen = _choose(reader, header_names, deferred_names, source_uri, ed_rule=ed_rule, stats=stats,
                         ukbb_required=ukbb_required, with_inlinevf=with_inlinevf, layout=None)
    selection, matched = chosen.selection, chosen.matched
    slices = selection.slices
    _check_budget(slices, matched, members, source_uri, budget_bytes)
    frames = _read_chosen(
        pixel_members=[s.ed.member for s in slices],
        overlay_members=[vf for vf in matched if vf is not None],
        members=members,
        source_uri=source_uri,
        stats=stats,
        order=order,
        use_pydicom=reader.use_pydicom,
    )

    images = []
    for s in slices:
        images.append(frames[s.ed.member].image)
        stats.pixel_frames_decoded += 1

    outlines: list[np.ndarray | None] = []
    for k, (image, vf) in enumerate(zip(images, matched, strict=True)):
        if vf is None:
            outlines.append(None)
            continue
        try:
            outline = overlay_outline(
                frames[vf.member].overlay, OVERLAY_GROUP, source=f"{source_uri} member {vf.member!r}"
            )
        except ValueError as exc:
            # An overlay that cannot be read (too few bits for its size, an unsupported bit depth...)
            # costs that slice its InlineVF contour, as a missing or misfitting overlay does: InlineVF
            # is then measured without it (flagged inlinevf_contour_missing), and the other methods,
            # which never use overlays, measure the participant as usual.
            note = f"{exc}; slice {k + 1}'s InlineVF outline is dropped (no contour for that slice)"
            stats.notes.append(note)
            logger.warning("%s", note)
            outlines.append(None)
            continue
        stats.overlay_frames_decoded += 1
        if outline is not None and outline.shape != image.shape:
            note = (f"member {vf.member!r}: the InlineVF overlay is {outline.shape[0]} x {outline.shape[1]} "
                    f"but slice {k + 1}'s image ({slices[k].ed.member!r}) is {image.shape[0]} x "
                    f"{image.shape[1]}; its outline is dropped (no contour for that slice)")
            stats.notes.append(note)
            logger.warning("%s: %s", source_uri, note)
            outline = None
        outlines.append(outline)

    # One standard in-plane view for every acquisition (contracts.IN_PLANE_VIEW): mirrored or transposed
    # acquisitions of the same plane give the same slices.
    apex_normal = selection.direction_sign * selection.normal
    view = geometry.standard_view_transform(slices[0].ed.orientation, apex_normal)  # type: ignore[arg-type]
    affine = _study_affine(slices, [image.shape for image in images], view, chosen, apex_normal,
                           source_uri, stats)
    images = [view.apply(image) for image in images]
    outlines = [None if o is None else view.apply(o) for o in outlines]
    row_mm, col_mm = view.apply_spacing(chosen.pixel_spacing_mm)

    ids = {s.ed.patient_id for s in slices}
    return DecodedStudy(
        eid=eid,
        instance=instance,
        source_uri=source_uri,
        images=tuple(images),
        outlines=tuple(outlines),
        pixel_spacing_mm=(row_mm, col_mm),
        in_plane_view=view.describe(),
        slice_spacing_mm=chosen.spacing_mm,
        slice_thickness_mm=chosen.thickness_mm,
        slice_positions_mm=tuple(float(p) for p in chosen.positions),
        end_diastolic_trigger_times_ms=tuple(
            float("nan") if s.ed.trigger_time_ms is None else s.ed.trigger_time_ms for s in slices
        ),
        series_descriptions=tuple(s.ed.series_description for s in slices),
        qc_flags=tuple(f for f in contracts.QC_FLAGS if f in chosen.flags),
        patient_id=next(iter(ids)) if len(ids) == 1 else "",
        affine_lps=affine,
    )


def _study_affine(
    slices: Sequence[ChosenSlice], shapes: Sequence[tuple[int, ...]], view: geometry.ViewTransform,
    chosen: _Chosen, apex_normal: np.ndarray, source_uri: str, stats: DecodeStats,
) -> acquisition.Affine | None:
    """The decoded grid's affine (``acquisition.decoded_affine_lps``) from the chosen frames' positions
    and the first one's orientation; None when the slices differ in size (no one grid holds them). A
    stack that one affine fits only approximately is noted (the saved NIfTI files place it so)."""
    if len(set(shapes)) != 1:
        return None
    affine, residual_mm = acquisition.decoded_affine_lps(
        orientation=slices[0].ed.orientation,  # type: ignore[arg-type]
        positions_lps=[s.ed.position for s in slices],  # type: ignore[misc]
        pixel_spacing_mm=chosen.pixel_spacing_mm, shape=shapes[0][:2], view=view,  # type: ignore[arg-type]
        slice_positions_mm=chosen.positions, slice_spacing_mm=chosen.spacing_mm, apex_normal=apex_normal)
    if residual_mm > acquisition.AFFINE_FIT_TOL_MM:
        note = (f"the slices do not lie on one regular grid (one is {residual_mm:.1f} mm off): saved NIfTI "
                "files place them approximately")
        stats.notes.append(note)
        logger.info("%s: %s", source_uri, note)
    return acquisition.as_affine_tuple(affine)


def _read_chosen(
    *,
    pixel_members: Sequence[str],
    overlay_members: Sequence[HeaderInfo],
    members: ZipMembers | StreamMembers,
    source_uri: str,
    stats: DecodeStats,
    order: Mapping[str, int] | None,
    use_pydicom: bool,
) -> dict[str, _Frame]:
    """Parse each chosen member once, in zip order: members whose pixels are needed in full (their
    overlay, when they are also an InlineVF frame, comes with them), overlay-only members with just the
    overlay plane and image size (:data:`OVERLAY_TAGS`), read up to their pixel data."""
    pixel_set = set(pixel_members)
    hints = {h.member: h for h in overlay_members}
    needed = pixel_set | set(hints)
    rank = order or {}
    out = {}
    for member in sorted(needed, key=lambda m: (rank.get(m, len(rank)), m)):
        h = hints.get(member)
        hint = None
        if h is not None and h.rows and h.cols and isinstance(members, ZipMembers):
            hint = members.declared_size(member) - 2 * h.rows * h.cols  # the header: all but the pixels
        out[member] = _read_frame(members, member, source_uri, stats, pixels=member in pixel_set,
                                  use_pydicom=use_pydicom, size_hint=hint)
    return out


def _check_budget(slices: Sequence[ChosenSlice], matched: Sequence[HeaderInfo | None],
                  members: ZipMembers | StreamMembers, source_uri: str, budget_bytes: int) -> None:
    """Refuse, before a pixel is read, a participant whose chosen frames would take more memory than
    ``budget_bytes`` (``lvmass.core.budget``): their sizes come from the headers (Rows x Columns), the
    largest read from the zip's declared sizes (a folder's files: up to :data:`MAX_MEMBER_BYTES`)."""
    shapes = [(s.ed.rows or 0, s.ed.cols or 0) for s in slices]
    chosen = [s.ed.member for s in slices] + [vf.member for vf in matched if vf is not None]
    if isinstance(members, ZipMembers):  # a member declaring more than the cap is refused when read
        sizes = {m: min(members.declared_size(m), MAX_MEMBER_BYTES) for m in chosen}
    else:
        sizes = {m: MAX_MEMBER_BYTES for m in chosen}
    largest = max(chosen, key=lambda m: sizes[m])
    rows, cols = max(r for r, _ in shapes), max(c for _, c in shapes)
    try:
        budget.check([r * c for r, c in shapes], sizes[largest], budget=budget_bytes,
                     what=f"{len(shapes)} end-diastolic frames of up to {rows} x {cols} pixels (the largest "
                     f"member read, {largest!r}, up to {sizes[largest] / budget.MIB:.0f} MiB)")
    except budget.ParticipantTooLarge as exc:
        raise DecodeError(source_uri, "budget", str(exc)) from exc


def _check_strategy(strategy: str, ed_rule: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if ed_rule not in ED_RULES:
        raise ValueError(f"unknown ed_rule {ed_rule!r}; expected one of {ED_RULES}")


def decode_dicom_members(
    members: Mapping[str, Callable[[], BinaryIO]],
    source_uri: str,
    *,
    eid: int | None = None,
    instance: int | None = None,
    ed_rule: str = "first_trigger_time",
    stats: DecodeStats | None = None,
    with_inlinevf: bool = True,
    strategy: str = "fast",
    budget_bytes: int = MAX_PARTICIPANT_BYTES,
) -> DecodedStudy:
    """Decode a folder (or any mapping of name -> opener) of cine short-axis DICOMs from any vendor.

    UK Biobank series are used when present; otherwise every image parallel to the dominant slice
    orientation is grouped into slices by position along the normal and into phases by TriggerTime,
    and the base-to-apex direction follows the anatomical rule of :func:`geometry.apex_sign`. Members
    that are not DICOM are skipped unless their name ends in ``.dcm`` (then it is an error).
    ``eid``/``instance`` are taken as given (None: unknown); the study records a PatientID (0010,0020)
    shared by its slices as ``patient_id`` for the caller's last-resort identification. Without
    ``with_inlinevf`` no InlineVF overlay is decoded (outlines are all None). Without a manifest,
    ``fast`` reads like ``all_headers`` (module docstring).
    """
    _check_strategy(strategy, ed_rule)
    stats = stats if stats is not None else DecodeStats()
    counted = StreamMembers({name: _counting_opener(opener, stats) for name, opener in members.items()})
    names = sorted(n for n in members if not is_manifest_name(n))
    stats.members_listed += len(members)
    reader = _HeaderReader(counted, source_uri, stats, require_dicom=lambda n: n.lower().endswith(".dcm"),
                           use_pydicom=strategy == "scan_all_headers")
    return _decode(
        reader,
        counted,
        names,
        (),
        source_uri,
        eid=eid,
        instance=instance,
        ed_rule=ed_rule,
        stats=stats,
        ukbb_required=False,
        with_inlinevf=with_inlinevf,
        budget_bytes=budget_bytes,
    )


def _counting_opener(opener: Callable[[], BinaryIO], stats: DecodeStats) -> Callable[[], BinaryIO]:
    def open_counted() -> BinaryIO:
        return _CountingReader(opener(), stats)  # type: ignore[return-value]

    return open_counted


def decode_participant_zip(
    fileobj: BinaryIO,
    source_uri: str,
    *,
    ed_rule: str = "first_trigger_time",
    stats: DecodeStats | None = None,
    with_inlinevf: bool = True,
    strategy: str = "fast",
    budget_bytes: int = MAX_PARTICIPANT_BYTES,
) -> DecodedStudy:
    """Decode one participant zip, streamed from a seekable file object (never extracted to disk).

    A zip carrying a manifest must hold a UK Biobank short-axis series; any other zip is decoded as UK
    Biobank when its series say so, else as the any-vendor layout. ``eid``/``instance`` come from a
    UK Biobank file name (``{eid}_{field}_{instance}_{array}.zip``), else they are None (the caller
    decides from other names, then from the study's ``patient_id``).

    Members are visited in the zip's order (``infolist()``), never by name, so each pass over the file
    moves forward. Without ``with_inlinevf`` the InlineVF series is neither matched nor its overlays
    decoded, and members the manifest describes as InlineVF are not even read, unless it turns out to
    be the only short-axis series (then its frames supply the images, still without outlines).
    ``strategy`` chooses how headers are read (module docstring); the result does not depend on it.
    ``budget_bytes``: the memory the participant may take (``lvmass.core.budget``); beyond it, a
    ``DecodeError`` at step ``budget`` before any pixel is read.
    """
    _check_strategy(strategy, ed_rule)
    stats = stats if stats is not None else DecodeStats()
    counting = _CountingReader(fileobj, stats)
    try:
        start = counting.tell()
        magic = counting.read(4)
        counting.seek(start)
    except OSError as exc:
        raise DecodeError(source_uri, "read", f"cannot read the file ({_read_error_reason(exc)})") from exc
    try:
        zf = zipfile.ZipFile(counting)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        if magic == b"PK\x03\x04":
            reason = f"truncated or corrupt zip ({_read_error_reason(exc)})"
        elif not magic:
            reason = "empty file, not a zip"
        else:
            reason = f"not a zip file (starts with {magic!r})"
        raise DecodeError(source_uri, "read", reason) from exc
    with zf:
        # Zip order: local headers sorted by offset (the central directory is normally in that order).
        infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.header_offset)
        stats.members_listed += len(infos)
        names = [i.filename for i in infos]
        order = {n: k for k, n in enumerate(names)}
        members = ZipMembers(counting, zf, infos)  # type: ignore[arg-type]
        manifests = [n for n in names if is_manifest_name(n)]
        dcm = [n for n in names if n.lower().endswith(".dcm")]
        parsed_name = parse_ukbb_zip_name(source_uri)
        header_names, deferred = list(dcm), []
        described: dict[str, str] | None = None
        if manifests:
            described = _read_manifest(manifests[0], members, source_uri, stats)
            if described is not None:
                header_names, deferred = _manifest_filter(dcm, described, stats, with_inlinevf=with_inlinevf)
        if not dcm and not manifests:
            # Any-vendor zip: files may have any names; non-DICOM members are skipped.
            header_names = list(names)
        # A manifest marks the UK Biobank layout; without one, another vendor's stack is accepted too
        # (even under a UK Biobank file name).
        ukbb_required = bool(manifests)
        if ukbb_required and not dcm:
            raise DecodeError(
                source_uri, "series", f"zip holds no .dcm members ({len(names)} members: {sorted(names)[:5]})"
            )
        reader = _HeaderReader(members, source_uri, stats, require_dicom=lambda n: n.lower().endswith(".dcm"),
                               use_pydicom=strategy == "scan_all_headers")
        layout = None
        if strategy == "fast" and described is not None and _TrustedLayout.applies(header_names, described):
            sizes = {i.filename: int(i.file_size) for i in infos}
            layout = _TrustedLayout(reader, header_names, described, sizes, stats,
                                    with_inlinevf=with_inlinevf)
        return _decode(
            reader,
            members,
            header_names,
            deferred,
            source_uri,
            eid=parsed_name[0] if parsed_name else None,
            instance=parsed_name[2] if parsed_name else None,
            ed_rule=ed_rule,
            stats=stats,
            ukbb_required=ukbb_required,
            with_inlinevf=with_inlinevf,
            order=order,
            layout=layout,
            budget_bytes=budget_bytes,
        )


def decode_participant_file(
    fileobj: BinaryIO,
    source_uri: str,
    *,
    ed_rule: str = "first_trigger_time",
    stats: DecodeStats | None = None,
    with_inlinevf: bool = True,
    strategy: str = "fast",
    budget_bytes: int = MAX_PARTICIPANT_BYTES,
) -> DecodedStudy:
    """Decode one participant file by its name: a NIfTI short-axis cine or ED volume (``.nii``,
    ``.nii.gz``: ``lvmass.core.nifti.decode_nifti``, which has no InlineVF and no header strategies), else
    a zip of DICOMs (:func:`decode_participant_zip`); either within ``budget_bytes``."""
    _check_strategy(strategy, ed_rule)
    if is_nifti_name(source_uri):
        return decode_nifti(fileobj, source_uri, ed_rule=ed_rule,
                            stats=stats if stats is not None else DecodeStats(), budget_bytes=budget_bytes)
    return decode_participant_zip(fileobj, source_uri, ed_rule=ed_rule, stats=stats,
                                  with_inlinevf=with_inlinevf, strategy=strategy, budget_bytes=budget_bytes)


def _read_manifest(
    manifest_name: str, members: ZipMembers, source_uri: str, stats: DecodeStats
) -> dict[str, str] | None:
    """The manifest's normalised series description of each member (by base name), or None when it
    cannot be used: too large (:data:`MAX_MANIFEST_BYTES`), unreadable from the zip (corrupt,
    encrypted) or unparseable. The manifest is a hint: the reason is recorded in ``stats`` and every
    ``.dcm`` header is read instead."""
    try:
        text = members.read(manifest_name, limit=MAX_MANIFEST_BYTES).decode("utf-8", errors="replace")
        described = series_descriptions(text, source=f"{source_uri} member {manifest_name!r}")
    except MemberError as exc:
        stats.manifest_error = f"{source_uri}: {exc}"
    except ManifestError as exc:
        stats.manifest_error = str(exc)
    else:
        stats.manifest_rows = len(described)
        return {name.rsplit("/", 1)[-1]: normalise_description(desc) for name, desc in described.items()}
    note = f"manifest {manifest_name!r} ignored, every DICOM header is read: {stats.manifest_error}"
    stats.notes.append(note)
    logger.warning("%s", note)
    return None


def _manifest_filter(
    dcm_names: Sequence[str],
    described: Mapping[str, str],
    stats: DecodeStats,
    *,
    with_inlinevf: bool = True,
) -> tuple[list[str], list[str]]:
    """Split ``.dcm`` members into (read headers now, deferred) using the manifest's descriptions.

    Deferred: members the manifest lists with a description that is not short-axis cine, and, without
    ``with_inlinevf``, those it lists as the InlineVF series. ``_decode`` reads deferred headers only when
    the others hold no short-axis image series. Order is kept.
    """
    keep, skip = [], []
    for name in dcm_names:
        desc = described.get(name.rsplit("/", 1)[-1])
        if desc is not None and (
            not desc.startswith(SAX_SERIES_PREFIX) or (not with_inlinevf and desc == INLINEVF_SERIES)
        ):
            skip.append(name)
        else:
            keep.append(name)
    stats.members_skipped_by_manifest = len(skip)
    return keep, skip

