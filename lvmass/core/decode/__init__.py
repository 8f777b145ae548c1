"""Decode one participant's short-axis cine CMR into a :class:`~lvmass.core.study.DecodedStudy`.

Reads only what the mass needs (docs/architecture.md, "Read only what is needed"):

1. list the zip's members (central directory) and parse the manifest, a hint used only to skip members
   it clearly describes as something other than short-axis cine (:mod:`.ukbb_layout`);
2. read the DICOM *headers* of the remaining ``.dcm`` members, as far as the tags slice selection needs
   (:mod:`.headers`);
3. choose the short-axis series, the stack normal, the end-diastolic (ED) frame of each slice and the
   base-to-apex order: ``lvmass.core.slices`` (pure, over the parsed headers; docs/ukbb_format.md), check
   the geometry, match the InlineVF contours and the memory budget (:mod:`.choose`);
4. decode pixels of the chosen ED frames only, and InlineVF overlays of the matching
   ``CINE_segmented_SAX_InlineVF`` instances only, none at all without ``with_inlinevf`` (:mod:`.pixels`);
5. put the slices in the standard view with their affine and outlines (:mod:`.assemble`).

One module per concern; a decode is asked for with one frozen :class:`DecodeRequest` and returns one
:class:`Decoded` (the study and its :class:`DecodeStats`), from the entry points of :mod:`.entry`
(:func:`decode_zip`, :func:`decode_folder`, :func:`decode_file`; ``decode_participant_zip`` and its two
siblings for the study alone). A NIfTI input is :mod:`.nifti`'s.

How step 2 reads headers is the request's ``strategy`` (:data:`STRATEGIES`); all three give the same study
on a UK Biobank zip (tested on the synthetic cohorts and a real study):

``fast`` (default)
    On a UK Biobank zip whose manifest lists every ``.dcm`` member and names ``bK`` series, trust the
    layout (``ukbb_layout.TrustedLayout``): each run of consecutive members with one manifest description
    is one series stored in InstanceNumber order, its first member the ED frame, and the InlineVF series
    holds one block of frames per slice in the same order. A few headers of every run verify it (series,
    numbering, trigger times, positions); a run that fails is read in full, and a manifest that disagrees
    with a header drops the trust altogether. Everything else (no manifest, other layouts, other vendors)
    is read as ``all_headers``.
``all_headers``
    every candidate header, with the minimal tag reader of :mod:`lvmass.core.dicom_headers` (pydicom
    for a member it cannot read), up to PixelSpacing (0028,0030); for an InlineVF frame on through the
    Siemens CSA group to the overlay group.
``scan_all_headers``
    every candidate header, and the chosen frames, parsed by pydicom (``dcmread``, ``pixel_array``): the
    decoder before the minimal reader, kept as the reference the others are tested against.

With ``fast`` and ``all_headers`` the chosen frames are parsed by the minimal reader too, and a native
16-bit grey-scale image is unpacked with numpy exactly as pydicom unpacks it (``pixels.native_pixels``);
anything else goes to pydicom. Every member is read through :mod:`lvmass.core.zip_members`, which
refuses members beyond a size limit (``MAX_MEMBER_BYTES``, ``MAX_MANIFEST_BYTES``, ``MAX_HEADER_BYTES``),
never inflates a member past its declared size and names encrypted members. Each chosen member is
inflated once. :class:`DecodeStats` counts what was read, so tests can prove the decoder never touches
more than it needs. Every failure raises :class:`~lvmass.core.study.DecodeError` naming the file/member and
the reason, with the stats up to it (``exc.stats``).
"""

from lvmass.core.decode.entry import (
    decode_dicom_members,
    decode_file,
    decode_folder,
    decode_participant_file,
    decode_participant_zip,
    decode_study,
    decode_zip,
)
from lvmass.core.decode.request import STRATEGIES, Decoded, DecodeRequest, DecodeStats
from lvmass.core.decode.sources import ParticipantFolder, folder_member_name

__all__ = [
    "STRATEGIES", "DecodeRequest", "DecodeStats", "Decoded", "ParticipantFolder", "decode_dicom_members",
    "decode_file", "decode_folder", "decode_participant_file", "decode_participant_zip", "decode_study",
    "decode_zip", "folder_member_name",
]
