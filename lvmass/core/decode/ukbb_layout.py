"""The UK Biobank layout, trusted where the manifest and a few headers show it (the ``fast`` strategy):
:class:`TrustedLayout`; and the manifest itself (:func:`read_manifest`, :func:`manifest_filter`), a hint
used only to skip members it clearly describes as something other than short-axis cine."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lvmass.core.decode.headers import HeaderReader
from lvmass.core.decode.request import DecodeStats
from lvmass.core.manifest import ManifestError, series_descriptions
from lvmass.core.slices import (
    BK_SERIES,
    INLINEVF_SERIES,
    MIXED_SAX_SERIES,
    SAX_SERIES_PREFIX,
    ChosenSlice,
    HeaderInfo,
    SliceSelection,
    inlinevf_pool,
    inlinevf_positions,
    normalise_description,
)
from lvmass.core.zip_members import MAX_MANIFEST_BYTES, MemberError, ZipMembers

logger = logging.getLogger(__name__)


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
    known = [v for v in values if v is not None]
    return len(known) == len(values) and all(a < b for a, b in itertools.pairwise(known))


class LayoutNotAsDescribed(Exception):
    """A header contradicts the manifest: the trusted layout is dropped for the whole zip."""


@dataclass
class _Block:
    """One slice's frames in the InlineVF series: consecutive members, first and last read."""

    names: list[str]
    first: HeaderInfo
    last: HeaderInfo


class TrustedLayout:
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

    def __init__(self, reader: HeaderReader, names: Sequence[str], description: Mapping[str, str],
                 sizes: Mapping[str, int], *, with_inlinevf: bool):
        self._reader = reader
        self._sizes = sizes
        self._names = list(names)
        self._description = description
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
                raise LayoutNotAsDescribed(name)
            out.append(h)
        return out

    def headers(self) -> list[HeaderInfo]:
        """Headers for slice selection (bK samples, InlineVF samples). Raises LayoutNotAsDescribed when a
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
            # ignored: _increasing() just found no InstanceNumber None, which mypy cannot see
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
            # ignored: _increasing() just found no InstanceNumber None, which mypy cannot see
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
            if (base is not None and footprint is not None and k
                    and abs(self._sizes[name] - base) < footprint / 2):
                continue
            h = self._read((name,), INLINEVF_SERIES, with_overlay=True)[0]
            out.append(h)
            if until_overlay and self._reader.has_overlay(h):
                break
        return out



# --- the manifest -----------------------------------------------------------------------------------


def read_manifest(
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


def manifest_filter(
    dcm_names: Sequence[str],
    described: Mapping[str, str],
    stats: DecodeStats,
    *,
    with_inlinevf: bool = True,
) -> tuple[list[str], list[str]]:
    """Split ``.dcm`` members into (read headers now, deferred) using the manifest's descriptions.

    Deferred: members the manifest lists with a description that is not short-axis cine, and, without
    ``with_inlinevf``, those it lists as the InlineVF series. ``choose.choose`` reads deferred headers only
    when the others hold no short-axis image series. Order is kept.
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
