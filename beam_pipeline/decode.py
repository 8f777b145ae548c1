"""Decode one participant's short-axis cine CMR into a :class:`~beam_pipeline.study.DecodedStudy`.

Reads only what the mass needs (docs/architecture.md, "Read only what is needed"):

1. list the zip's members (central directory) and parse the manifest, a hint used only to skip members
   it clearly describes as something other than short-axis cine;
2. read DICOM *headers* (``stop_before_pixels`` with ``specific_tags``) of the remaining ``.dcm`` members;
3. choose the short-axis series, the stack normal, the end-diastolic (ED) frame of each slice and the
   base-to-apex order: ``beam_pipeline.slices`` (pure, over the parsed headers; docs/ukbb_format.md);
4. decode pixels of the chosen ED frames only, and InlineVF overlays of the matching
   ``CINE_segmented_SAX_InlineVF`` instances only (none at all with ``with_inlinevf=False``).

Members are visited in the zip's own order (central directory order, ``ZipFile.infolist()``): the
header pass and the pixel/overlay pass each sweep the file forward once, so a buffered remote reader
never refetches a block it already passed. Each chosen member is parsed once in the second pass.

:class:`DecodeStats` counts every header read, pixel decode, overlay decode and byte read, so tests can
prove the decoder never touches more than it needs. Every failure raises
:class:`~beam_pipeline.study.DecodeError` naming the file/member and the reason.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from beam_pipeline import contracts, geometry
from beam_pipeline.identity import base_name, parse_ukbb_zip_name
from beam_pipeline.manifest import ManifestError, is_manifest_name, parse_manifest
from beam_pipeline.overlay import overlay_outline
from beam_pipeline.qc import geometry_qc_flags
from beam_pipeline.slices import (
    ED_RULES,
    INLINEVF_SERIES,
    SAX_SERIES_PREFIX,
    HeaderInfo,
    choose_ed_frame,
    is_image_series,
    match_inlinevf,
    normalise_description,
    select_slices,
)
from beam_pipeline.study import DecodedStudy, DecodeError

__all__ = [  # choose_ed_frame and HeaderInfo live in beam_pipeline.slices; decoding callers find them here
    "ED_RULES", "DecodeStats", "HeaderInfo", "ParticipantFolder", "choose_ed_frame", "decode_dicom_members",
    "decode_frame_pixels", "decode_participant_zip", "folder_member_name", "header_info",
    "parse_ukbb_zip_name",
]

OVERLAY_GROUP = 0x6000
PIXEL_SPACING_REL_TOL = 1e-3

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
    (the zip, compressed) or, for loose members, from the member streams."""

    members_listed: int = 0
    headers_read: int = 0
    pixel_frames_decoded: int = 0
    overlay_frames_decoded: int = 0
    bytes_read: int = 0
    members_skipped_by_manifest: int = 0
    manifest_rows: int = 0
    manifest_error: str | None = None



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
    return out if np.isfinite(out) else None


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
    return out if len(out) == n and all(np.isfinite(out)) else None


def header_info(ds: pydicom.Dataset, member: str) -> HeaderInfo:
    """Extract the selection fields from a (header-only) dataset."""
    spacing = _floats(ds.get("PixelSpacing"), 2)
    return HeaderInfo(
        member=member,
        series_description=normalise_description(str(ds.get("SeriesDescription", "") or "")),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        trigger_time_ms=_float_or_none(ds.get("TriggerTime")),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
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
    )


def _read_error_reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _read_headers(
    names: Iterable[str],
    members: Mapping[str, Callable[[], BinaryIO]],
    source_uri: str,
    stats: DecodeStats,
    *,
    require_dicom: Callable[[str], bool],
) -> list[HeaderInfo]:
    """Header-only reads. A member that must be DICOM (``.dcm``) and is not raises; others are skipped."""
    out = []
    for name in names:
        try:
            with members[name]() as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except InvalidDicomError as exc:
            if require_dicom(name):
                raise DecodeError(
                    source_uri, "headers", f"member {name!r} is not a DICOM file ({exc})"
                ) from exc
            continue
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DecodeError(
                source_uri, "read", f"member {name!r} cannot be read from the zip ({_read_error_reason(exc)})"
            ) from exc
        except Exception as exc:
            raise DecodeError(
                source_uri, "headers", f"member {name!r}: unreadable DICOM header ({_read_error_reason(exc)})"
            ) from exc
        stats.headers_read += 1
        out.append(header_info(ds, name))
    return out


# --- selection -------------------------------------------------------------------------------------


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


def _read_full(
    member: str,
    members: Mapping[str, Callable[[], BinaryIO]],
    source_uri: str,
    *,
    stop_before_pixels: bool,
    specific_tags: Sequence[Tag] | None = None,
) -> pydicom.Dataset:
    try:
        with members[member]() as fp:
            ds = pydicom.dcmread(
                fp, stop_before_pixels=stop_before_pixels,
                specific_tags=list(specific_tags) if specific_tags is not None else None,
            )
            if not stop_before_pixels and "PixelData" in ds:
                _ = ds.PixelData  # read the value while the stream is open
            return ds
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DecodeError(
            source_uri, "read", f"member {member!r} cannot be read from the zip ({_read_error_reason(exc)})"
        ) from exc
    except InvalidDicomError as exc:
        raise DecodeError(source_uri, "pixels", f"member {member!r} is not a DICOM file ({exc})") from exc


# --- entry points ----------------------------------------------------------------------------------


def _decode(
    members: Mapping[str, Callable[[], BinaryIO]],
    header_names: Sequence[str],
    deferred_names: Sequence[str],
    source_uri: str,
    *,
    eid: int | None,
    instance: int | None,
    ed_rule: str,
    stats: DecodeStats,
    ukbb_required: bool,
    require_dicom: Callable[[str], bool],
    with_inlinevf: bool,
    order: Mapping[str, int] | None = None,
) -> DecodedStudy:
    """Headers of ``header_names`` (then ``deferred_names`` when those hold no short-axis image series),
    slice selection, then one forward pass over the chosen members in ``order`` (the zip's member order;
    name order without one)."""
    if ed_rule not in ED_RULES:
        raise ValueError(f"unknown ed_rule {ed_rule!r}; expected one of {ED_RULES}")
    headers = _read_headers(header_names, members, source_uri, stats, require_dicom=require_dicom)
    if deferred_names and not any(is_image_series(h.series_description) for h in headers):
        # The manifest is never the authority: if what it let through holds no short-axis image
        # series (it hid them, or InlineVF is the only one), read the deferred headers too.
        headers += _read_headers(deferred_names, members, source_uri, stats, require_dicom=require_dicom)
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
    matched: list[HeaderInfo | None] = (
        match_inlinevf(slices, selection.inlinevf_pool, selection.normal, selection.direction_sign, tol_mm)
        if with_inlinevf else [None] * len(slices)
    )
    datasets = _read_chosen(
        pixel_members=[s.ed.member for s in slices],
        overlay_members=[vf.member for vf in matched if vf is not None],
        members=members,
        source_uri=source_uri,
        order=order,
    )

    images = []
    for s in slices:
        images.append(decode_frame_pixels(datasets[s.ed.member], source_uri=source_uri, member=s.ed.member))
        stats.pixel_frames_decoded += 1

    outlines: list[np.ndarray | None] = []
    for image, vf in zip(images, matched, strict=True):
        if vf is None:
            outlines.append(None)
            continue
        try:
            outline = overlay_outline(
                datasets[vf.member], OVERLAY_GROUP, source=f"{source_uri} member {vf.member!r}"
            )
        except ValueError as exc:
            raise DecodeError(source_uri, "pixels", str(exc)) from exc
        stats.overlay_frames_decoded += 1
        outlines.append(outline if outline is not None and outline.shape == image.shape else None)

    # One standard in-plane view for every acquisition (contracts.IN_PLANE_VIEW): mirrored or transposed
    # acquisitions of the same plane give the same slices.
    view = geometry.standard_view_transform(
        slices[0].ed.orientation, selection.direction_sign * selection.normal)  # type: ignore[arg-type]
    images = [view.apply(image) for image in images]
    outlines = [None if o is None else view.apply(o) for o in outlines]
    row_mm, col_mm = view.apply_spacing((float(ref[0]), float(ref[1])))

    ids = {s.ed.patient_id for s in slices}
    return DecodedStudy(
        eid=eid,
        instance=instance,
        source_uri=source_uri,
        images=tuple(images),
        outlines=tuple(outlines),
        pixel_spacing_mm=(row_mm, col_mm),
        in_plane_view=view.describe(),
        slice_spacing_mm=float(spacing_mm),
        slice_thickness_mm=thickness_mm,
        slice_positions_mm=tuple(float(p) for p in positions),
        end_diastolic_trigger_times_ms=tuple(
            float("nan") if s.ed.trigger_time_ms is None else s.ed.trigger_time_ms for s in slices
        ),
        series_descriptions=tuple(s.ed.series_description for s in slices),
        qc_flags=tuple(f for f in contracts.QC_FLAGS if f in flags),
        patient_id=next(iter(ids)) if len(ids) == 1 else "",
    )


def _read_chosen(
    *,
    pixel_members: Sequence[str],
    overlay_members: Sequence[str],
    members: Mapping[str, Callable[[], BinaryIO]],
    source_uri: str,
    order: Mapping[str, int] | None,
) -> dict[str, pydicom.Dataset]:
    """Parse each chosen member once, in zip order: members whose pixels are needed in full (their
    overlay, when they are also an InlineVF frame, comes with them), overlay-only members with just the
    overlay plane and image size (:data:`OVERLAY_TAGS`)."""
    pixel_set = set(pixel_members)
    needed = pixel_set | set(overlay_members)
    rank = order or {}
    out: dict[str, pydicom.Dataset] = {}
    for member in sorted(needed, key=lambda m: (rank.get(m, len(rank)), m)):
        if member in pixel_set:
            out[member] = _read_full(member, members, source_uri, stop_before_pixels=False)
        else:
            out[member] = _read_full(
                member, members, source_uri, stop_before_pixels=True, specific_tags=OVERLAY_TAGS
            )
    return out


def decode_dicom_members(
    members: Mapping[str, Callable[[], BinaryIO]],
    source_uri: str,
    *,
    eid: int | None = None,
    instance: int | None = None,
    ed_rule: str = "first_trigger_time",
    stats: DecodeStats | None = None,
    with_inlinevf: bool = True,
) -> DecodedStudy:
    """Decode a folder (or any mapping of name -> opener) of cine short-axis DICOMs from any vendor.

    UK Biobank series are used when present; otherwise every image parallel to the dominant slice
    orientation is grouped into slices by position along the normal and into phases by TriggerTime,
    and the base-to-apex direction follows the anatomical rule of :func:`geometry.apex_sign`. Members
    that are not DICOM are skipped unless their name ends in ``.dcm`` (then it is an error).
    ``eid``/``instance`` are taken as given (None: unknown); the study records a PatientID (0010,0020)
    shared by its slices as ``patient_id`` for the caller's last-resort identification. Without
    ``with_inlinevf`` no InlineVF overlay is decoded (outlines are all None).
    """
    stats = stats if stats is not None else DecodeStats()
    counted = {name: _counting_opener(opener, stats) for name, opener in members.items()}
    names = sorted(n for n in counted if not is_manifest_name(n))
    stats.members_listed += len(members)
    return _decode(
        counted,
        names,
        (),
        source_uri,
        eid=eid,
        instance=instance,
        ed_rule=ed_rule,
        stats=stats,
        ukbb_required=False,
        require_dicom=lambda n: n.lower().endswith(".dcm"),
        with_inlinevf=with_inlinevf,
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
    """
    stats = stats if stats is not None else DecodeStats()
    if ed_rule not in ED_RULES:
        raise ValueError(f"unknown ed_rule {ed_rule!r}; expected one of {ED_RULES}")
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
        openers: dict[str, Callable[[], BinaryIO]] = {n: (lambda n=n: zf.open(n)) for n in names}
        manifests = [n for n in names if is_manifest_name(n)]
        dcm = [n for n in names if n.lower().endswith(".dcm")]
        parsed_name = parse_ukbb_zip_name(source_uri)
        header_names, deferred = list(dcm), []
        if manifests:
            header_names, deferred = _manifest_filter(
                manifests[0], dcm, openers, source_uri, stats, with_inlinevf=with_inlinevf
            )
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
        return _decode(
            openers,
            header_names,
            deferred,
            source_uri,
            eid=parsed_name[0] if parsed_name else None,
            instance=parsed_name[2] if parsed_name else None,
            ed_rule=ed_rule,
            stats=stats,
            ukbb_required=ukbb_required,
            require_dicom=lambda n: n.lower().endswith(".dcm"),
            with_inlinevf=with_inlinevf,
            order=order,
        )


def _manifest_filter(
    manifest_name: str,
    dcm_names: Sequence[str],
    openers: Mapping[str, Callable[[], BinaryIO]],
    source_uri: str,
    stats: DecodeStats,
    *,
    with_inlinevf: bool = True,
) -> tuple[list[str], list[str]]:
    """Split ``.dcm`` members into (read headers now, deferred) using the manifest's descriptions.

    Deferred: members the manifest lists with a description that is not short-axis cine, and, without
    ``with_inlinevf``, those it lists as the InlineVF series. ``_decode`` reads deferred headers only when
    the others hold no short-axis image series. An unreadable manifest defers nothing (the headers are
    the authority) and is recorded in ``stats``. Order is kept.
    """
    try:
        with openers[manifest_name]() as fp:
            text = fp.read().decode("utf-8", errors="replace")
        rows = parse_manifest(text, source=f"{source_uri} member {manifest_name!r}")
    except (ManifestError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        stats.manifest_error = str(exc)
        return list(dcm_names), []
    stats.manifest_rows = len(rows)
    described = {r.filename.rsplit("/", 1)[-1]: normalise_description(r.series_description) for r in rows}
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
