"""Choose the short-axis slices and their end-diastolic frames from parsed DICOM headers (pure).

Slice selection is separate from zip streaming (``lvmass.core.decode``): it takes the header fields of
every candidate member (:class:`HeaderInfo`) and returns a :class:`SliceSelection`: the slices ordered
base to apex with their end-diastolic (ED) frames, the stack normal, the InlineVF candidates and the QC
flags. One function per layout (docs/ukbb_format.md, "Series"):

==========================  ==========================================================================
layout                      slices come from
==========================  ==========================================================================
``ukbb_bk``                 one ``CINE_segmented_SAX_bK`` series per slice, K = 1 at the base
``ukbb_mixed``              one ``CINE_segmented_SAX`` series holding every slice, grouped by position
``ukbb_inlinevf_only``      the ``CINE_segmented_SAX_InlineVF`` series alone (its long-axis images left out)
``any_vendor``              every image parallel to the dominant orientation, grouped by position
==========================  ==========================================================================
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lvmass.core import contracts, geometry
from lvmass.core.study import DecodeError

ED_RULES = ("first_trigger_time", "first_instance")
BK_SERIES = re.compile(r"^cine_segmented_sax_b(\d+)$")
INLINEVF_SERIES = "cine_segmented_sax_inlinevf"
MIXED_SAX_SERIES = "cine_segmented_sax"
SAX_SERIES_PREFIX = "cine_segmented_sax"
# Any-vendor layout: series whose (normalised) description contains one of these are not short-axis cine.
NON_SAX_DESCRIPTION_WORDS = (
    "lax",
    "2ch",
    "3ch",
    "4ch",
    "lvot",
    "localizer",
    "localiser",
    "scout",
    "survey",
    "inline_vf",
    "flow",
)
# The scanner's mitral-valve (long-axis) images inside the InlineVF series have 6 mm slices.
MITRAL_VALVE_SLICE_THICKNESS_MM = 6.0
LAYOUT_UKBB_BK = "ukbb_bk"
LAYOUT_UKBB_MIXED = "ukbb_mixed"
LAYOUT_UKBB_INLINEVF_ONLY = "ukbb_inlinevf_only"
LAYOUT_ANY_VENDOR = "any_vendor"
LAYOUTS = (LAYOUT_UKBB_BK, LAYOUT_UKBB_MIXED, LAYOUT_UKBB_INLINEVF_ONLY, LAYOUT_ANY_VENDOR)


@dataclass(frozen=True)
class HeaderInfo:
    """The header fields of one DICOM member that slice selection needs."""

    member: str
    series_description: str  # ml4h-normalised: lower case, spaces -> "_"
    series_uid: str
    series_number: int | None
    instance_number: int | None
    trigger_time_ms: float | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    spacing_between_slices_mm: float | None
    rows: int | None
    cols: int | None
    acquisition_key: tuple[str, str, str, str]  # (AcquisitionDate, AcquisitionTime, SeriesDate, SeriesTime)
    has_overlay: bool | None  # OverlayRows (6000,0010) present; None: not read yet (see match_inlinevf)
    patient_id: str
    number_of_frames: int
    # Geometry tags present but unusable, each as "<name (gggg,eeee)> <why>" (e.g. not a finite number):
    # reported instead of "lacks" when the frame is chosen.
    geometry_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChosenSlice:
    """One chosen slice before pixel decoding."""

    ed: HeaderInfo
    number: int | None
    position_mm: float


@dataclass(frozen=True)
class SliceSelection:
    """What slice selection decided for one participant.

    ``slices`` are ordered base to apex (``position_mm`` increases towards the apex); ``normal`` is the
    stack's unit normal and ``direction_sign`` the sign that turns positions along it into base-to-apex
    positions; ``inlinevf_pool`` holds the InlineVF instances that may carry a slice's contour.
    """

    layout: str
    slices: tuple[ChosenSlice, ...]
    normal: np.ndarray
    direction_sign: float
    inlinevf_pool: tuple[HeaderInfo, ...] = ()
    qc_flags: frozenset[str] = field(default_factory=frozenset)


def normalise_description(description: str) -> str:
    """ml4h's matching form of SeriesDescription (0008,103E): lower case, spaces replaced by ``_``."""
    return description.strip().lower().replace(" ", "_")



def is_image_series(description: str) -> bool:
    """A UK Biobank series that can supply the short-axis images (bK, mixed, or InlineVF)."""
    return bool(BK_SERIES.match(description)) or description in (MIXED_SAX_SERIES, INLINEVF_SERIES)



def _orientation(h: HeaderInfo) -> tuple[float, ...]:
    """ImageOrientationPatient (0020,0037) of a frame that :func:`_require_geometry` accepted."""
    assert h.orientation is not None, f"member {h.member!r}: geometry not checked"
    return h.orientation


def _position(h: HeaderInfo) -> tuple[float, float, float]:
    """ImagePositionPatient (0020,0032) of a frame that :func:`_require_geometry` accepted."""
    assert h.position is not None, f"member {h.member!r}: geometry not checked"
    return h.position


def _normal(h: HeaderInfo, source_uri: str) -> np.ndarray:
    """The slice normal of ``h`` (``geometry.slice_normal``); an ImageOrientationPatient that gives none
    (all zeros, parallel cosines) is a ``DecodeError`` naming the input and the member."""
    try:
        return geometry.slice_normal(_orientation(h))
    except ValueError as exc:
        raise DecodeError(source_uri, "geometry", f"member {h.member!r}: {exc}") from exc


def _require_geometry(h: HeaderInfo, source_uri: str) -> None:
    labels = [
        label
        for label, value in (
            ("ImagePositionPatient (0020,0032)", h.position),
            ("ImageOrientationPatient (0020,0037)", h.orientation),
            ("PixelSpacing (0028,0030)", h.pixel_spacing_mm),
        )
        if value is None
    ]
    # A tag that is present but unusable (geometry_problems) is named with its problem, not as missing.
    problems = [p for p in h.geometry_problems if any(p.startswith(label) for label in labels)]
    missing = [label for label in labels if not any(p.startswith(label) for p in problems)]
    if problems:
        reason = "; ".join(problems) + (f"; it lacks {', '.join(missing)}" if missing else "")
        raise DecodeError(source_uri, "geometry", f"member {h.member!r}: {reason}")
    if missing:
        raise DecodeError(source_uri, "geometry", f"member {h.member!r} lacks {', '.join(missing)}")
    _normal(h, source_uri)


def choose_ed_frame(frames: Sequence[HeaderInfo], rule: str = "first_trigger_time") -> HeaderInfo:
    """The end-diastolic frame of one slice.

    ``first_trigger_time`` (default, UK Biobank and ml4h): smallest TriggerTime (0018,1060), ties and
    missing values broken by InstanceNumber then member name. ``first_instance``: smallest
    InstanceNumber (0020,0013).
    """
    if rule not in ED_RULES:
        raise ValueError(f"unknown ED rule {rule!r}; expected one of {ED_RULES}")
    if not frames:
        raise ValueError("no frames to choose an end-diastolic frame from")
    return min(frames, key=_by_trigger_time if rule == "first_trigger_time" else _by_instance_number)


_INF = float("inf")


def _by_trigger_time(h: HeaderInfo) -> tuple[float, float, str]:
    """``first_trigger_time`` order: TriggerTime, then InstanceNumber, then member name (missing: last)."""
    tt = _INF if h.trigger_time_ms is None else h.trigger_time_ms
    num = _INF if h.instance_number is None else h.instance_number
    return (tt, num, h.member)


def _by_instance_number(h: HeaderInfo) -> tuple[float, float, str]:
    """``first_instance`` order: InstanceNumber, then TriggerTime, then member name (missing: last)."""
    tt = _INF if h.trigger_time_ms is None else h.trigger_time_ms
    num = _INF if h.instance_number is None else h.instance_number
    return (num, tt, h.member)


def _latest_series(frames: Sequence[HeaderInfo]) -> tuple[list[HeaderInfo], bool]:
    """Keep the frames of the latest-acquired series (AcquisitionDate/Time, then SeriesDate/Time, then
    SeriesNumber, then UID); True when more than one series was present."""
    by_uid: dict[str, list[HeaderInfo]] = defaultdict(list)
    for h in frames:
        by_uid[h.series_uid].append(h)
    if len(by_uid) == 1:
        return list(frames), False

    def key(uid: str) -> tuple[tuple[str, str, str, str], int, str]:
        hs = by_uid[uid]
        acq = max(h.acquisition_key for h in hs)
        number = max((h.series_number or -1) for h in hs)
        return (acq, number, uid)

    return by_uid[max(by_uid, key=key)], True


def _group_by_position(frames: Sequence[HeaderInfo], normal: np.ndarray) -> list[list[HeaderInfo]]:
    """Group frames into slices by their projected position (tolerance: a quarter of the smallest
    plausible slice gap, 1 mm)."""
    positions = [geometry.project_position_mm(_position(h), normal) for h in frames]
    return [[frames[i] for i in idx] for idx in geometry.cluster_positions_mm(positions, tol_mm=1.0)]


def _descriptions(headers: Sequence[HeaderInfo]) -> list[str]:
    return sorted({h.series_description or "<empty>" for h in headers})


def _is_mitral_valve(h: HeaderInfo) -> bool:
    return (
        h.slice_thickness_mm is not None
        and abs(h.slice_thickness_mm - MITRAL_VALVE_SLICE_THICKNESS_MM) < 0.01
    )


def _series_by_kind(
    headers: Sequence[HeaderInfo],
) -> tuple[dict[int, list[HeaderInfo]], list[HeaderInfo], list[HeaderInfo]]:
    """UK Biobank series of the headers: bK frames by K, the mixed series' frames, the InlineVF frames."""
    bk: dict[int, list[HeaderInfo]] = defaultdict(list)
    mixed: list[HeaderInfo] = []
    inlinevf: list[HeaderInfo] = []
    for h in headers:
        match = BK_SERIES.match(h.series_description)
        if match:
            bk[int(match.group(1))].append(h)
        elif h.series_description == MIXED_SAX_SERIES:
            mixed.append(h)
        elif h.series_description == INLINEVF_SERIES:
            inlinevf.append(h)
    return bk, mixed, inlinevf


def _slices_of_bk_series(
    bk: dict[int, list[HeaderInfo]], flags: set[str]
) -> list[tuple[int | None, list[HeaderInfo]]]:
    """Layout ``ukbb_bk``: one slice per ``CINE_segmented_SAX_bK`` series (the later of a repeated one)."""
    groups: list[tuple[int | None, list[HeaderInfo]]] = []
    for number in sorted(bk):
        frames, duplicated = _latest_series(bk[number])
        if duplicated:
            flags.add(contracts.QC_DUPLICATE_SLICE_ACQUISITION)
        groups.append((number, frames))
    return groups


def _slices_by_position(
    image_pool: Sequence[HeaderInfo], normal: np.ndarray, flags: set[str], *, numbered: bool
) -> list[tuple[int | None, list[HeaderInfo]]]:
    """Layouts without a series per slice: images parallel to the stack grouped by position along its
    normal (the later series where one position was acquired twice). ``numbered``: number each slice
    by its smallest InstanceNumber (the InlineVF series counts slices that way)."""
    parallel = [h for h in image_pool if geometry.is_parallel(geometry.slice_normal(_orientation(h)), normal)]
    groups: list[tuple[int | None, list[HeaderInfo]]] = []
    for cluster in _group_by_position(parallel, normal):
        frames, duplicated = _latest_series(cluster)
        if duplicated:
            flags.add(contracts.QC_DUPLICATE_SLICE_ACQUISITION)
        number = None
        if numbered:
            nums = [h.instance_number for h in frames if h.instance_number is not None]
            number = min(nums) if nums else None
        groups.append((number, frames))
    return groups


def _image_pool_without_bk(
    headers: Sequence[HeaderInfo], mixed: list[HeaderInfo], inlinevf: list[HeaderInfo], source_uri: str,
    *, ukbb_required: bool,
) -> tuple[str, list[HeaderInfo]]:
    """(layout, images) when there is no bK series: the mixed series, else the InlineVF series, else
    (outside UK Biobank) any vendor's images that are not obviously another view."""
    if mixed:
        layout, image_pool = LAYOUT_UKBB_MIXED, mixed
    elif inlinevf:
        layout, image_pool = LAYOUT_UKBB_INLINEVF_ONLY, [h for h in inlinevf if not _is_mitral_valve(h)]
    elif not ukbb_required:
        layout = LAYOUT_ANY_VENDOR
        image_pool = [
            h
            for h in headers
            if not any(word in h.series_description for word in NON_SAX_DESCRIPTION_WORDS)
            and h.position is not None
            and h.orientation is not None
        ]
    else:
        raise DecodeError(
            source_uri,
            "series",
            f"no short-axis cine series (CINE_segmented_SAX_b*, CINE_segmented_SAX or "
            f"CINE_segmented_SAX_InlineVF) among {len(headers)} DICOM headers; "
            f"series found: {_descriptions(headers)}",
        )
    if not image_pool:
        raise DecodeError(
            source_uri,
            "series",
            f"no short-axis cine images with geometry among {len(headers)} DICOM headers; "
            f"series found: {_descriptions(headers)}",
        )
    return layout, image_pool


def _order_base_to_apex(
    groups: Sequence[tuple[int | None, list[HeaderInfo]]], normal: np.ndarray, source_uri: str,
    flags: set[str], *, ed_rule: str,
) -> tuple[list[ChosenSlice], float]:
    """The ED frame of each slice, ordered base to apex; returns (slices, direction sign).

    The direction comes from anatomy (:func:`geometry.apex_sign`) whenever the stack's normal is clearly
    along the LV long axis, as in every short-axis stack; only for a stack too oblique to tell does the
    slice numbering (b1 = base) decide. A stack acquired apex first therefore comes out base first."""
    chosen: list[tuple[int | None, HeaderInfo]] = []
    for number, frames in groups:
        ed = choose_ed_frame(frames, ed_rule)
        if not geometry.is_parallel(geometry.slice_normal(_orientation(ed)), normal):
            flags.add(contracts.QC_MISSING_SLICES)  # an off-axis "slice" is dropped; the stack has a hole
            continue
        chosen.append((number, ed))
    if not chosen:
        raise DecodeError(source_uri, "series", "no short-axis slice is parallel to the stack")

    raw_positions = [geometry.project_position_mm(_position(ed), normal) for _, ed in chosen]
    numbers = [n for n, _ in chosen]
    known_numbers = [n for n in numbers if n is not None]
    if geometry.apex_direction_is_clear(normal):
        sign = geometry.apex_sign(normal)  # anatomy: patient coordinates do not depend on the numbering
    elif len(known_numbers) == len(numbers) and len(set(known_numbers)) > 1:
        sign = geometry.numbering_sign(known_numbers, raw_positions)
    else:
        sign = geometry.apex_sign(normal)
    slices = sorted(
        (
            ChosenSlice(ed=ed, number=n, position_mm=sign * p)
            for (n, ed), p in zip(chosen, raw_positions, strict=True)
        ),
        key=lambda s: (s.position_mm, s.ed.member),
    )
    return slices, sign


def select_slices(
    headers: Sequence[HeaderInfo], source_uri: str, *, ukbb_required: bool, ed_rule: str
) -> SliceSelection:
    """Choose the slices, their ED frames and the base-to-apex order (module docstring: the layouts).

    ``ukbb_required`` (a zip with a UK Biobank manifest): only UK Biobank series may supply images.
    Raises ``DecodeError`` naming ``source_uri`` when no short-axis stack can be found."""
    flags: set[str] = set()
    bk, mixed, inlinevf = _series_by_kind(headers)
    if bk:
        layout = LAYOUT_UKBB_BK
        groups = _slices_of_bk_series(bk, flags)
        image_pool = [h for _, frames in groups for h in frames]
    else:
        layout, image_pool = _image_pool_without_bk(headers, mixed, inlinevf, source_uri,
                                                    ukbb_required=ukbb_required)
    for h in image_pool:
        _require_geometry(h, source_uri)

    normals_pool = [frames for _, frames in groups] if bk else [[h] for h in image_pool]
    normal = geometry.stack_normal(
        [geometry.slice_normal(_orientation(frames[0])) for frames in normals_pool])

    if not bk:
        groups = _slices_by_position(image_pool, normal, flags,
                                     numbered=layout == LAYOUT_UKBB_INLINEVF_ONLY)
        if layout == LAYOUT_ANY_VENDOR and len(groups) < 2:
            raise DecodeError(
                source_uri,
                "series",
                f"no short-axis stack: the images parallel to the dominant orientation lie at {len(groups)} "
                f"position(s); series found: {_descriptions(headers)}",
            )

    slices, sign = _order_base_to_apex(groups, normal, source_uri, flags, ed_rule=ed_rule)
    if layout == LAYOUT_UKBB_BK:
        present = sorted(s.number for s in slices if s.number is not None)
        if present != list(range(1, len(present) + 1)):
            flags.add(contracts.QC_MISSING_SLICES)
    return SliceSelection(layout=layout, slices=tuple(slices), normal=normal, direction_sign=float(sign),
                          inlinevf_pool=tuple(inlinevf_pool(inlinevf)), qc_flags=frozenset(flags))


def inlinevf_pool(inlinevf: Sequence[HeaderInfo]) -> list[HeaderInfo]:
    """The InlineVF frames that may carry a slice's contour: not the mitral-valve images, with geometry."""
    return [h for h in inlinevf if not _is_mitral_valve(h) and h.position and h.orientation]


def inlinevf_positions(
    vf_pool: Sequence[HeaderInfo], normal: np.ndarray, sign: float
) -> list[tuple[float, HeaderInfo]]:
    """(base-to-apex position, frame) of the InlineVF frames parallel to the stack (long-axis images inside
    the InlineVF series are left out)."""
    out = []
    for h in vf_pool:
        if h.orientation is None or h.position is None:
            continue
        try:
            vf_normal = geometry.slice_normal(h.orientation)
        except ValueError:  # an InlineVF frame without a usable orientation matches no slice
            continue
        if not geometry.is_parallel(vf_normal, normal):
            continue
        out.append((sign * geometry.project_position_mm(h.position, normal), h))
    return out


def match_inlinevf(
    slices: Sequence[ChosenSlice], vf_pool: Sequence[HeaderInfo], normal: np.ndarray, sign: float,
    tol_mm: float, *, has_overlay: Callable[[HeaderInfo], bool] | None = None,
) -> list[HeaderInfo | None]:
    """For each slice, the InlineVF instance at the same position (within ``tol_mm``) that carries an
    overlay plane and whose TriggerTime is nearest the slice's ED frame; None when there is none.

    Only frames with an overlay (OverlayRows (6000,0010) present) compete: which phases carry InlineVF
    contours is unverified (docs/ukbb_format.md), so a slice whose ED-phase instance lacks one keeps the
    contour of the nearest phase that has one rather than losing it. ``has_overlay`` answers for frames
    whose ``has_overlay`` is None (not read in the header pass); it is asked about the candidates in order
    of preference only, until one has an overlay.
    """
    candidates = inlinevf_positions(vf_pool, normal, sign)

    def overlay(h: HeaderInfo) -> bool:
        if h.has_overlay is not None:
            return h.has_overlay
        if has_overlay is None:
            raise ValueError(f"frame {h.member!r}: overlay presence not read and no way to read it given")
        return has_overlay(h)

    matched: list[HeaderInfo | None] = []
    for s in slices:
        near = [h for p, h in candidates if abs(p - s.position_mm) <= tol_mm]
        if near:
            near, _ = _latest_series(near)  # the latest InlineVF acquisition of this position
        ed_tt = s.ed.trigger_time_ms
        if ed_tt is None:
            # choose_ed_frame's order (first_trigger_time): the first frame with an overlay in it
            ranked = sorted(near, key=_by_trigger_time)
        else:
            ranked = sorted(
                near,
                key=lambda h: (
                    abs(h.trigger_time_ms - ed_tt) if h.trigger_time_ms is not None else float("inf"),
                    h.instance_number if h.instance_number is not None else 0,
                    h.member,
                ),
            )
        matched.append(next((h for h in ranked if overlay(h)), None))
    return matched
