"""What one decode is asked to do (:class:`DecodeRequest`), what it counted (:class:`DecodeStats`) and what
it returns (:class:`Decoded`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lvmass.core.budget import MAX_PARTICIPANT_BYTES
from lvmass.core.identity import InputIdentity, input_identity
from lvmass.core.slices import ED_RULES
from lvmass.core.study import DecodedStudy

# How headers are read (the package docstring); all three give the same study on a UK Biobank zip.
STRATEGIES = ("fast", "all_headers", "scan_all_headers")


@dataclass(frozen=True)
class DecodeRequest:
    """One participant input to decode, and how.

    ``source_uri`` names the input in every message and row; ``identity`` is what its name says, parsed
    where the input was read (the pipeline's ``SelectInputs``); left out, it is parsed from ``source_uri``
    here, once. ``ed_rule``: the end-diastolic frame of each slice (``slices.ED_RULES``).
    ``with_inlinevf``: match and decode the InlineVF overlays (without it, members the manifest describes as
    InlineVF are not even read, unless they are the only short-axis series). ``strategy``: how headers are
    read (:data:`STRATEGIES`); the result does not depend on it. ``budget_bytes``: the memory the
    participant may take (``lvmass.core.budget``); beyond it, a ``DecodeError`` at step ``budget`` before
    any pixel is read. Raises ValueError for an unknown strategy or rule."""

    source_uri: str
    ed_rule: str = ED_RULES[0]
    with_inlinevf: bool = True
    strategy: str = STRATEGIES[0]
    budget_bytes: int = MAX_PARTICIPANT_BYTES
    identity: InputIdentity | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.ed_rule not in ED_RULES:
            raise ValueError(f"unknown ed_rule {self.ed_rule!r}; expected one of {ED_RULES}")
        if self.identity is None:
            object.__setattr__(self, "identity", input_identity(self.source_uri))

    @property
    def name(self) -> InputIdentity:
        """The input's identity (always set after construction)."""
        assert self.identity is not None
        return self.identity

    @property
    def use_pydicom(self) -> bool:
        """Whether every header and frame goes through pydicom (the reference strategy)."""
        return self.strategy == "scan_all_headers"


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


@dataclass(frozen=True)
class Decoded:
    """A decode's result: the study and what was read to make it."""

    study: DecodedStudy
    stats: DecodeStats
