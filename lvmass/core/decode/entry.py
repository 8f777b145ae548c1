"""The decoder's entry points: a participant zip (:func:`decode_zip`), a folder of DICOMs or any mapping of
name -> opener (:func:`decode_folder`), or either by its name, NIfTI included (:func:`decode_file`). Each
takes one :class:`~lvmass.core.decode.request.DecodeRequest` and returns one
:class:`~lvmass.core.decode.request.Decoded` (the study and its stats); :func:`decode_study` is the pass
they share. ``decode_participant_zip`` and its two siblings are the same for callers that want the study
alone."""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from lvmass.core.decode import assemble
from lvmass.core.decode.choose import Chosen, check_budget, choose
from lvmass.core.decode.headers import HeaderReader
from lvmass.core.decode.nifti import decode_nifti
from lvmass.core.decode.pixels import read_chosen
from lvmass.core.decode.plan import MemberPlan, Reading
from lvmass.core.decode.request import Decoded, DecodeRequest, DecodeStats
from lvmass.core.decode.sources import CountingReader, counting_opener, read_error_reason
from lvmass.core.decode.ukbb_layout import LayoutNotAsDescribed, TrustedLayout, manifest_filter, read_manifest
from lvmass.core.identity import is_nifti_name
from lvmass.core.manifest import is_manifest_name
from lvmass.core.study import DecodedStudy, DecodeError
from lvmass.core.zip_members import StreamMembers, ZipMembers

logger = logging.getLogger(__name__)


def _is_dcm(name: str) -> bool:
    return name.lower().endswith(".dcm")


def decode_study(request: DecodeRequest, reading: Reading, plan: MemberPlan,
                 layout: TrustedLayout | None = None) -> DecodedStudy:
    """Choose the slices and contours (``choose.choose``; with a ``layout``, from the headers it asks for,
    falling back to every header when a header contradicts the manifest), check that decoding them fits
    the request's budget (``choose.check_budget``), then one forward pass over the chosen members in the
    plan's order, and the study (``assemble``)."""
    chosen = _choose_trusting(request, reading, plan, layout) if layout is not None else None
    if chosen is None:
        chosen = choose(request, reading, plan, None)
    check_budget(request, reading, chosen)
    slices, stats = chosen.selection.slices, reading.stats
    frames = read_chosen(
        pixel_members=[s.ed.member for s in slices],
        overlay_members=[vf for vf in chosen.matched if vf is not None],
        members=reading.members,
        source_uri=request.source_uri,
        stats=stats,
        order=plan.order,
        use_pydicom=request.use_pydicom,
    )
    images = []
    for s in slices:
        image = frames[s.ed.member].image
        assert image is not None  # pixel members are read in full
        images.append(image)
        stats.pixel_frames_decoded += 1
    outlines = assemble.slice_outlines(request, chosen, images, frames, stats)
    return assemble.assemble_study(request, chosen, images, outlines, stats)


def _choose_trusting(request: DecodeRequest, reading: Reading, plan: MemberPlan,
                     layout: TrustedLayout) -> Chosen | None:
    """``choose`` with the trusted layout; None (noted) when a header contradicts the manifest."""
    try:
        return choose(request, reading, plan, layout)
    except LayoutNotAsDescribed as exc:
        note = f"member {exc.args[0]!r}: its header contradicts the manifest; every header is read"
        reading.stats.notes.append(note)
        logger.info("%s: %s", request.source_uri, note)
        return None


def _counted(stats: DecodeStats, decode: Callable[[], DecodedStudy]) -> Decoded:
    """``decode()``'s study with ``stats``; a ``DecodeError`` leaves with them too (``exc.stats``)."""
    try:
        return Decoded(decode(), stats)
    except DecodeError as exc:
        exc.stats = stats
        raise


def decode_folder(members: Mapping[str, Callable[[], BinaryIO]], request: DecodeRequest) -> Decoded:
    """Decode a folder (or any mapping of name -> opener) of cine short-axis DICOMs from any vendor.

    UK Biobank series are used when present; otherwise every image parallel to the dominant slice
    orientation is grouped into slices by position along the normal and into phases by TriggerTime,
    and the base-to-apex direction follows the anatomical rule of ``geometry.apex_sign``. Members that are
    not DICOM are skipped unless their name ends in ``.dcm`` (then it is an error). The study records a
    PatientID (0010,0020) shared by its slices as ``patient_id`` for the caller's last-resort
    identification. Without a manifest, the ``fast`` strategy reads like ``all_headers``."""
    stats = DecodeStats()
    counted = StreamMembers({name: counting_opener(opener, stats) for name, opener in members.items()})
    stats.members_listed += len(members)
    reading = Reading(counted, HeaderReader(counted, request.source_uri, stats, require_dicom=_is_dcm,
                                            use_pydicom=request.use_pydicom), stats)
    plan = MemberPlan(header_names=tuple(sorted(n for n in members if not is_manifest_name(n))))
    return _counted(stats, lambda: decode_study(request, reading, plan))


def decode_zip(fileobj: BinaryIO, request: DecodeRequest) -> Decoded:
    """Decode one participant zip, streamed from a seekable file object (never extracted to disk).

    A zip carrying a manifest must hold a UK Biobank short-axis series; any other zip is decoded as UK
    Biobank when its series say so, else as the any-vendor layout. The study's ``eid``/``instance`` come
    from a UK Biobank file name (``{eid}_{field}_{instance}_{array}.zip``, the request's identity), else
    they are None (the caller decides from other names, then from the study's ``patient_id``).

    Members are visited in the zip's order (``infolist()``), never by name, so each pass over the file
    moves forward. Without ``with_inlinevf`` the InlineVF series is neither matched nor its overlays
    decoded, and members the manifest describes as InlineVF are not even read, unless it turns out to be
    the only short-axis series (then its frames supply the images, still without outlines).
    """
    stats = DecodeStats()
    counting = CountingReader(fileobj, stats)
    return _counted(stats, lambda: _decode_open_zip(_open_zip(counting, request.source_uri), counting,
                                                    request, stats))


def _open_zip(counting: CountingReader, source_uri: str) -> zipfile.ZipFile:
    """The zip's central directory; ``DecodeError`` (step ``read``) saying what the file is instead."""
    try:
        start = counting.tell()
        magic = counting.read(4)
        counting.seek(start)
    except OSError as exc:
        raise DecodeError(source_uri, "read", f"cannot read the file ({read_error_reason(exc)})") from exc
    try:
        return zipfile.ZipFile(counting)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        if magic == b"PK\x03\x04":
            reason = f"truncated or corrupt zip ({read_error_reason(exc)})"
        elif not magic:
            reason = "empty file, not a zip"
        else:
            reason = f"not a zip file (starts with {magic!r})"
        raise DecodeError(source_uri, "read", reason) from exc


def _decode_open_zip(zf: zipfile.ZipFile, counting: CountingReader, request: DecodeRequest,
                     stats: DecodeStats) -> DecodedStudy:
    """Plan the reads from the member list and the manifest, trust the UK Biobank layout where it
    applies (``fast``), and decode."""
    with zf:
        # Zip order: local headers sorted by offset (the central directory is normally in that order).
        infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.header_offset)
        stats.members_listed += len(infos)
        members = ZipMembers(counting, zf, infos)  # type: ignore[arg-type]  # duck-typed file object
        plan, described = _zip_plan([i.filename for i in infos], members, request, stats)
        reader = HeaderReader(members, request.source_uri, stats, require_dicom=_is_dcm,
                              use_pydicom=request.use_pydicom)
        layout = None
        if (request.strategy == "fast" and described is not None
                and TrustedLayout.applies(plan.header_names, described)):
            sizes = {i.filename: int(i.file_size) for i in infos}
            layout = TrustedLayout(reader, plan.header_names, described, sizes,
                                   with_inlinevf=request.with_inlinevf)
        return decode_study(request, Reading(members, reader, stats), plan, layout)


def _zip_plan(names: list[str], members: ZipMembers, request: DecodeRequest,
              stats: DecodeStats) -> tuple[MemberPlan, dict[str, str] | None]:
    """Whose headers to read, from the member list and the manifest (a hint: the members it describes as
    something else are deferred), and the manifest's descriptions (None without a usable one)."""
    manifests = [n for n in names if is_manifest_name(n)]
    dcm = [n for n in names if _is_dcm(n)]
    header_names: list[str] = list(dcm)
    deferred: list[str] = []
    described: dict[str, str] | None = None
    if manifests:
        described = read_manifest(manifests[0], members, request.source_uri, stats)
        if described is not None:
            header_names, deferred = manifest_filter(dcm, described, stats,
                                                     with_inlinevf=request.with_inlinevf)
    if not dcm and not manifests:
        # Any-vendor zip: files may have any names; non-DICOM members are skipped.
        header_names = list(names)
    # A manifest marks the UK Biobank layout; without one, another vendor's stack is accepted too
    # (even under a UK Biobank file name).
    ukbb_required = bool(manifests)
    if ukbb_required and not dcm:
        raise DecodeError(
            request.source_uri, "series",
            f"zip holds no .dcm members ({len(names)} members: {sorted(names)[:5]})")
    plan = MemberPlan(tuple(header_names), tuple(deferred), ukbb_required,
                      {n: k for k, n in enumerate(names)})
    return plan, described


def decode_file(fileobj: BinaryIO, request: DecodeRequest) -> Decoded:
    """Decode one participant file by its name: a NIfTI short-axis cine or ED volume (``.nii``,
    ``.nii.gz``: ``decode.nifti.decode_nifti``, which has no InlineVF and no header strategies), else a zip
    of DICOMs (:func:`decode_zip`)."""
    if is_nifti_name(request.source_uri):
        return decode_nifti(fileobj, request)
    return decode_zip(fileobj, request)


# --- the study alone ----------------------------------------------------------------------------------


def decode_participant_zip(fileobj: BinaryIO, source_uri: str, **options: Any) -> DecodedStudy:
    """:func:`decode_zip`'s study; ``options`` are :class:`DecodeRequest`'s (``ed_rule``, ``strategy``...)."""
    return decode_zip(fileobj, DecodeRequest(source_uri, **options)).study


def decode_dicom_members(members: Mapping[str, Callable[[], BinaryIO]], source_uri: str,
                         **options: Any) -> DecodedStudy:
    """:func:`decode_folder`'s study; ``options`` are :class:`DecodeRequest`'s."""
    return decode_folder(members, DecodeRequest(source_uri, **options)).study


def decode_participant_file(fileobj: BinaryIO, source_uri: str, **options: Any) -> DecodedStudy:
    """:func:`decode_file`'s study; ``options`` are :class:`DecodeRequest`'s."""
    return decode_file(fileobj, DecodeRequest(source_uri, **options)).study
