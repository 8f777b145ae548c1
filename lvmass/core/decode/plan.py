"""What one decode reads through (:class:`Reading`) and which members it reads, decided from the member list
and the manifest before any header (:class:`MemberPlan`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lvmass.core.decode.headers import HeaderReader
from lvmass.core.decode.request import DecodeStats
from lvmass.core.zip_members import StreamMembers, ZipMembers


@dataclass(frozen=True)
class Reading:
    """One participant's members, the reader of their headers and the stats every read is counted in."""

    members: ZipMembers | StreamMembers
    reader: HeaderReader
    stats: DecodeStats


@dataclass(frozen=True)
class MemberPlan:
    """Whose headers to read: ``header_names`` now, ``deferred_names`` (members the manifest describes as
    something else) only when the others hold no short-axis image series. ``ukbb_required``: the input
    carries a manifest, so it must hold a UK Biobank short-axis series. ``order``: the zip's member order,
    in which the chosen members are read (name order without one)."""

    header_names: tuple[str, ...]
    deferred_names: tuple[str, ...] = ()
    ukbb_required: bool = False
    order: Mapping[str, int] = field(default_factory=dict)
