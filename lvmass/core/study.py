"""What decoding one participant produces: the end-diastolic short-axis stack and its geometry.

A ``DecodedStudy`` is the hand-off between decoding (``lvmass.core.decode``) and everything
downstream (tensor building, InlineVF labels, inference, measurement). It holds plain numpy arrays in
the acquisition's own grid; padding to the model's tensor layout happens in ``lvmass.core.tensor``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from lvmass.core.identity import InputIdentity


class DecodeError(ValueError):
    """A participant's files cannot be turned into a short-axis stack.

    ``stage`` names the step that failed (``read``, ``headers``, ``series``, ``pixels``,
    ``geometry``) and the message names the file and the reason; the pipeline turns it into one
    dead-letter row.
    """

    stats: Any = None  # the decoder's DecodeStats up to the failure, where it raised (what was read)

    def __init__(self, source: str, stage: str, reason: str):
        self.source = source
        self.stage = stage
        self.reason = reason
        super().__init__(f"{source}: {stage}: {reason}")


@dataclass(frozen=True)
class DecodedStudy:
    """One participant x instance at end-diastole, slices ordered base to apex.

    ``images[k]`` is slice ``k``'s end-diastolic frame, float32 ``(rows, cols)`` after the DICOM
    Rescale Slope/Intercept (0028,1053)/(0028,1052); ``outlines[k]`` is the InlineVF overlay outline of
    the same slice and frame (bool ``(rows, cols)``) or ``None`` where InlineVF drew none.
    ``slice_positions_mm[k]`` is the slice centre projected on the stack's normal (from
    ImagePositionPatient (0020,0032) and ImageOrientationPatient (0020,0037)), increasing from base to
    apex. Every slice is in the standard in-plane view (``contracts.IN_PLANE_VIEW``; ``in_plane_view``
    says how the acquisition was turned to reach it) and ``pixel_spacing_mm`` is PixelSpacing
    (0028,0030) of that view: (row spacing, column spacing).
    ``eid``/``instance`` are what the file name says (UK Biobank zips), else None; ``patient_id`` is the
    PatientID (0010,0020) shared by the chosen frames ("" when absent or not shared), the last resort
    for identifying a participant (``lvmass.core.identity.participant_identity``). ``name`` is the
    input's :class:`~lvmass.core.identity.InputIdentity`, parsed once where the input was read (None for a
    study built by hand: its ``source_uri`` is parsed when needed).
    ``affine_lps`` maps voxel (row, col, plane) of these slices to the patient (LPS, mm; row-major 4 x 4;
    slice k on plane ``lvmass.core.acquisition.slice_planes(...)[k]``), None where the decoder knew no
    geometry (``lvmass.core.acquisition`` says how it is built).
    """

    eid: int | None
    instance: int | None
    source_uri: str
    images: tuple[np.ndarray, ...]
    outlines: tuple[np.ndarray | None, ...]
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    slice_thickness_mm: float
    slice_positions_mm: tuple[float, ...]
    end_diastolic_trigger_times_ms: tuple[float, ...] = ()
    series_descriptions: tuple[str, ...] = ()
    qc_flags: tuple[str, ...] = field(default_factory=tuple)
    patient_id: str = ""
    in_plane_view: str = "none"  # the geometry.ViewTransform applied to reach contracts.IN_PLANE_VIEW
    affine_lps: tuple[tuple[float, float, float, float], ...] | None = None
    name: InputIdentity | None = None  # what the input's name says, parsed where it was read

    @property
    def n_slices(self) -> int:
        return len(self.images)

    @property
    def has_inlinevf(self) -> bool:
        return any(o is not None for o in self.outlines)
