"""From headers to a decision, before any pixel is read: slice selection (``lvmass.core.slices``), the
geometry checks, InlineVF matching (:func:`choose`) and the participant's memory budget
(:func:`check_budget`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lvmass.core import budget, geometry
from lvmass.core.decode.plan import MemberPlan, Reading
from lvmass.core.decode.request import DecodeRequest
from lvmass.core.decode.ukbb_layout import TrustedLayout
from lvmass.core.qc import geometry_qc_flags
from lvmass.core.slices import (
    ChosenSlice,
    HeaderInfo,
    SliceSelection,
    is_image_series,
    match_inlinevf,
    select_slices,
)
from lvmass.core.study import DecodeError
from lvmass.core.zip_members import MAX_MEMBER_BYTES, ZipMembers

PIXEL_SPACING_REL_TOL = 1e-3


@dataclass(frozen=True)
class Chosen:
    """What slice selection and InlineVF matching decided, before any pixel is read: the slices, their
    geometry (positions along the normal, slice spacing and thickness, PixelSpacing (0028,0030) as
    acquired), the QC flags so far and, per slice, the InlineVF frame whose contour it takes (or None)."""

    selection: SliceSelection
    flags: frozenset[str]
    positions: list[float]
    slice_spacing_mm: float
    thickness_mm: float
    pixel_spacing_mm: tuple[float, float]
    matched: list[HeaderInfo | None]


def choose(request: DecodeRequest, reading: Reading, plan: MemberPlan,
           layout: TrustedLayout | None) -> Chosen:
    """Headers (those ``layout`` asks for, else the plan's), slice selection, geometry checks and InlineVF
    matching. Raises ``DecodeError`` (steps ``series``, ``geometry``) naming the input, and
    ``ukbb_layout.LayoutNotAsDescribed`` when a header contradicts the manifest the layout trusted."""
    headers = _headers(reading, plan, layout)
    if not headers:
        raise DecodeError(request.source_uri, "series",
                          f"no DICOM files among {reading.stats.members_listed} members")
    selection = select_slices(headers, request.source_uri, ukbb_required=plan.ukbb_required,
                              ed_rule=request.ed_rule)
    slices = selection.slices
    pixel_spacing_mm = _shared_pixel_spacing(slices, request.source_uri)
    positions, spacing_mm, thickness_mm = _slice_geometry(slices, request.source_uri)
    flags = {*selection.qc_flags, *geometry_qc_flags(positions, spacing_mm)}
    matched: list[HeaderInfo | None] = [None] * len(slices)
    if request.with_inlinevf:
        matched = _match_contours(reading, selection, layout, tol_mm=max(0.5, 0.25 * spacing_mm))
    if layout is not None:
        reading.stats.headers_not_read = len(plan.header_names) - reading.reader.members_read
    return Chosen(selection, frozenset(flags), positions, float(spacing_mm), thickness_mm, pixel_spacing_mm,
                  matched)


def _headers(reading: Reading, plan: MemberPlan, layout: TrustedLayout | None) -> list[HeaderInfo]:
    """The headers selection works on: the trusted layout's samples, else every planned header, then the
    deferred ones when those hold no short-axis image series."""
    reader, stats = reading.reader, reading.stats
    if layout is not None:
        stats.strategy = "trusted_ukbb_layout"
        return layout.headers()
    stats.strategy = "scan_all_headers" if reader.use_pydicom else "all_headers"
    headers = reader.read_many(plan.header_names)
    if plan.deferred_names and not any(is_image_series(h.series_description) for h in headers):
        # The manifest is never the authority: if what it let through holds no short-axis image
        # series (it hid them, or InlineVF is the only one), read the deferred headers too.
        headers += reader.read_many(plan.deferred_names)
    return headers


def _shared_pixel_spacing(slices: Sequence[ChosenSlice], source_uri: str) -> tuple[float, float]:
    """PixelSpacing (0028,0030) of the first slice; ``DecodeError`` when another slice's differs by more
    than :data:`PIXEL_SPACING_REL_TOL`."""
    spacings: set[tuple[float, float]] = set()
    for s in slices:
        assert s.ed.pixel_spacing_mm is not None  # select_slices keeps only frames with a PixelSpacing
        spacings.add(s.ed.pixel_spacing_mm)
    ref = slices[0].ed.pixel_spacing_mm
    assert ref is not None
    for sp in spacings:
        if any(abs(a - b) > PIXEL_SPACING_REL_TOL * max(abs(b), 1e-6) for a, b in zip(sp, ref, strict=True)):
            raise DecodeError(
                source_uri, "geometry", f"PixelSpacing (0028,0030) differs between slices: {sorted(spacings)}"
            )
    return float(ref[0]), float(ref[1])


def _slice_geometry(slices: Sequence[ChosenSlice], source_uri: str) -> tuple[list[float], float, float]:
    """(positions along the normal, slice spacing, slice thickness) in mm: the spacing from
    ``geometry.slice_spacing_mm`` (SpacingBetweenSlices (0018,0088), else the positions, else
    SliceThickness (0018,0050)), the thickness the median SliceThickness (NaN without one)."""
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
    return positions, spacing_mm, thickness_mm


def _match_contours(reading: Reading, selection: SliceSelection, layout: TrustedLayout | None, *,
                    tol_mm: float) -> list[HeaderInfo | None]:
    """Per chosen slice, the InlineVF frame whose overlay is its contour (``slices.match_inlinevf``)."""
    slices = selection.slices
    pool = (layout.inlinevf_pool(selection, slices, tol_mm) if layout is not None
            else list(selection.inlinevf_pool))  # InlineVF frames: overlay presence read with the header
    return match_inlinevf(slices, pool, selection.normal, selection.direction_sign, tol_mm,
                          has_overlay=reading.reader.has_overlay)


def check_budget(request: DecodeRequest, reading: Reading, chosen: Chosen) -> None:
    """Refuse, before a pixel is read, a participant whose chosen frames would take more memory than the
    request's ``budget_bytes`` (``lvmass.core.budget``): their sizes come from the headers (Rows x
    Columns), the largest read from the zip's declared sizes (a folder's files: up to
    :data:`~lvmass.core.zip_members.MAX_MEMBER_BYTES`)."""
    slices, members = chosen.selection.slices, reading.members
    shapes = [(s.ed.rows or 0, s.ed.cols or 0) for s in slices]
    names = [s.ed.member for s in slices] + [vf.member for vf in chosen.matched if vf is not None]
    if isinstance(members, ZipMembers):  # a member declaring more than the cap is refused when read
        sizes = {m: min(members.declared_size(m), MAX_MEMBER_BYTES) for m in names}
    else:
        sizes = {m: MAX_MEMBER_BYTES for m in names}
    largest = max(names, key=lambda m: sizes[m])
    rows, cols = max(r for r, _ in shapes), max(c for _, c in shapes)
    try:
        budget.check([r * c for r, c in shapes], sizes[largest], budget=request.budget_bytes,
                     what=f"{len(shapes)} end-diastolic frames of up to {rows} x {cols} pixels (the largest "
                     f"member read, {largest!r}, up to {sizes[largest] / budget.MIB:.0f} MiB)")
    except budget.ParticipantTooLarge as exc:
        raise DecodeError(request.source_uri, "budget", str(exc)) from exc
