"""The decoded study from what was chosen and read: each slice's InlineVF outline (:func:`slice_outlines`),
the one standard in-plane view, the acquisition's affine, and the :class:`~lvmass.core.study.DecodedStudy`
(:func:`assemble_study`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from lvmass.core import acquisition, contracts, geometry
from lvmass.core.decode.choose import Chosen
from lvmass.core.decode.headers import OVERLAY_GROUP
from lvmass.core.decode.pixels import Frame
from lvmass.core.decode.request import DecodeRequest, DecodeStats
from lvmass.core.overlay import overlay_outline
from lvmass.core.slices import ChosenSlice
from lvmass.core.study import DecodedStudy

logger = logging.getLogger(__name__)


def slice_outlines(request: DecodeRequest, chosen: Chosen, images: Sequence[np.ndarray],
                   frames: Mapping[str, Frame], stats: DecodeStats) -> list[np.ndarray | None]:
    """Per slice, the outline of its matched InlineVF frame's overlay (bool, the image's shape), or None.

    An overlay that cannot be read (too few bits for its size, an unsupported bit depth...) or that does not
    fit its slice's image costs that slice its InlineVF contour, as a missing overlay does: InlineVF is then
    measured without it (flagged ``inlinevf_contour_missing``), and the other methods, which never use
    overlays, measure the participant as usual. Each such decision is a note in ``stats``."""
    slices, source_uri = chosen.selection.slices, request.source_uri
    outlines: list[np.ndarray | None] = []
    for k, (image, vf) in enumerate(zip(images, chosen.matched, strict=True)):
        if vf is None:
            outlines.append(None)
            continue
        try:
            outline = overlay_outline(
                frames[vf.member].overlay, OVERLAY_GROUP, source=f"{source_uri} member {vf.member!r}"
            )
        except ValueError as exc:
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
    return outlines


def assemble_study(request: DecodeRequest, chosen: Chosen, images: Sequence[np.ndarray],
                   outlines: Sequence[np.ndarray | None], stats: DecodeStats) -> DecodedStudy:
    """The study in the one standard in-plane view (``contracts.IN_PLANE_VIEW``: mirrored or transposed
    acquisitions of the same plane give the same slices), with its affine. A UK Biobank zip's name gives
    the study's eid and visit (the request's identity)."""
    slices, selection = chosen.selection.slices, chosen.selection
    apex_normal = selection.direction_sign * selection.normal
    orientation = slices[0].ed.orientation
    assert orientation is not None  # select_slices keeps only frames with an orientation
    view = geometry.standard_view_transform(orientation, apex_normal)
    affine = study_affine(request, chosen, [image.shape for image in images], view, apex_normal, stats)
    row_mm, col_mm = view.apply_spacing(chosen.pixel_spacing_mm)
    name = request.name
    ids = {s.ed.patient_id for s in slices}
    return DecodedStudy(
        eid=name.eid if name.ukbb_zip else None,
        instance=name.instance if name.ukbb_zip else None,
        source_uri=request.source_uri,
        images=tuple(view.apply(image) for image in images),
        outlines=tuple(None if o is None else view.apply(o) for o in outlines),
        pixel_spacing_mm=(row_mm, col_mm),
        in_plane_view=view.describe(),
        slice_spacing_mm=chosen.slice_spacing_mm,
        slice_thickness_mm=chosen.thickness_mm,
        slice_positions_mm=tuple(float(p) for p in chosen.positions),
        end_diastolic_trigger_times_ms=tuple(
            float("nan") if s.ed.trigger_time_ms is None else s.ed.trigger_time_ms for s in slices
        ),
        series_descriptions=tuple(s.ed.series_description for s in slices),
        qc_flags=tuple(f for f in contracts.QC_FLAGS if f in chosen.flags),
        patient_id=next(iter(ids)) if len(ids) == 1 else "",
        affine_lps=affine,
        name=name,
    )


def study_affine(request: DecodeRequest, chosen: Chosen, shapes: Sequence[tuple[int, ...]],
                 view: geometry.ViewTransform, apex_normal: np.ndarray,
                 stats: DecodeStats) -> acquisition.Affine | None:
    """The decoded grid's affine (``acquisition.decoded_affine_lps``) from the chosen frames' positions
    and the first one's orientation; None when the slices differ in size (no one grid holds them). A
    stack that one affine fits only approximately is noted (the saved NIfTI files place it so)."""
    if len(set(shapes)) != 1:
        return None
    slices: Sequence[ChosenSlice] = chosen.selection.slices
    orientation = slices[0].ed.orientation
    positions = [s.ed.position for s in slices]
    assert orientation is not None and all(p is not None for p in positions)  # as select_slices keeps them
    affine, residual_mm = acquisition.decoded_affine_lps(
        orientation=orientation, positions_lps=positions,  # type: ignore[arg-type]  # checked just above
        pixel_spacing_mm=chosen.pixel_spacing_mm, shape=(shapes[0][0], shapes[0][1]), view=view,
        slice_positions_mm=chosen.positions, slice_spacing_mm=chosen.slice_spacing_mm,
        apex_normal=apex_normal)
    if residual_mm > acquisition.AFFINE_FIT_TOL_MM:
        note = (f"the slices do not lie on one regular grid (one is {residual_mm:.1f} mm off): saved NIfTI "
                "files place them approximately")
        stats.notes.append(note)
        logger.info("%s: %s", request.source_uri, note)
    return acquisition.as_affine_tuple(affine)
