"""NIfTI in: a short-axis cine ``.nii.gz`` -> :class:`~lvmass.core.study.DecodedStudy` (the files
``--save_labels`` writes are :mod:`lvmass.core.nifti`'s).

Public cardiac data sets (ACDC, M&Ms) and UK Biobank groups that converted the CMR with the
reference pipeline of Bai et al. (``subjects/{eid}/sa.nii.gz``, a 4-D cine, and its ``sa_ED.nii.gz``) hold
the short-axis stack as NIfTI-1 or NIfTI-2: voxel ``(i, j, k, t)``, ``k`` the slice, ``t`` the cine frame,
placed in the patient by the file's affine (sform when its code is set, else qform; RAS).
:func:`decode_nifti` turns it into the study the DICOM decoder produces for the same acquisition, so
everything downstream is unchanged:

* the end-diastolic frame: the rules of ``--ed_rule`` (``slices.ED_RULES``) both take the cine's first
  frame. A NIfTI cine keeps the acquisition's frame order (time ``toffset + t * pixdim[4]``), so frame 0 has
  the smallest trigger time and the smallest instance number; a 3-D file (``sa_ED.nii.gz``) is the frame.
  ``sa_ES`` files are refused: the mass is measured at end-diastole;
* each slice ``k`` as an image with rows along ``i`` and columns along ``j``: the affine gives the DICOM
  equivalents, ImageOrientationPatient (column direction, row direction) and ImagePositionPatient of voxel
  ``(0, 0, k)`` in LPS, and then the DICOM path's own functions decide the rest (``geometry``: the normal,
  base to apex by anatomy, the slice spacing from the positions, the standard in-plane view), so a NIfTI
  study and its DICOM twin give the same slices, spacings and masses (tested);
* intensities are the stored values times ``scl_slope`` plus ``scl_inter`` (as DICOM's Rescale Slope and
  Intercept). NIfTI has no slice thickness apart from the spacing: ``slice_thickness_mm`` is NaN.
* spacings come from the affine, which the file holds as float32: each is rounded to 7 significant
  digits, what float32 holds (1.8, not 1.7999999523), so a NIfTI study's masses agree with its DICOM
  twin's to about one part in a million (tested).

Only the ED frame is kept in memory, but the whole file is read: gzip's length and CRC are checked at its
end, so a truncated or damaged file is a dead letter, never a study built from part of one. Every failure
is a :class:`~lvmass.core.study.DecodeError` naming the file, the step and the reason (``read``: not
NIfTI, truncated or corrupt gzip; ``header``: a 2-D image, an unsupported layout; ``geometry``: no affine,
a sheared one; ``pixels``: NaN or infinite voxels).
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO, Protocol, SupportsFloat

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from lvmass.core import acquisition, budget, contracts, geometry
from lvmass.core.decode.request import Decoded, DecodeRequest, DecodeStats
from lvmass.core.identity import base_name
from lvmass.core.qc import geometry_qc_flags
from lvmass.core.slices import ED_RULES
from lvmass.core.study import DecodedStudy, DecodeError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
MAX_HEADER_AND_EXTENSIONS_BYTES = 16 * 1024 * 1024  # vox_offset beyond this is not a cine header
# The largest ED frame kept in memory (a UK Biobank frame is ~0.8 MB) and the largest whole file read
# (a 50-frame cine is ~40 MB): a header declaring more is refused before any voxel is read.
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_FILE_BYTES = 4 * 1024 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
# In-plane axes further from perpendicular than this (|cos|) are a sheared grid no DICOM slice has.
MAX_IN_PLANE_COS = 1e-3
END_SYSTOLIC_STEMS = ("sa_es",)
SPACING_SIGNIFICANT_DIGITS = 7  # float32's precision: 1.8269230 stays, 1.8000001 is 1.8
_TIME_UNIT_MS = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}


def _float32_decimal(value: SupportsFloat) -> float:
    """A length computed from the file's float32 affine, rounded to :data:`SPACING_SIGNIFICANT_DIGITS`
    (1.7999999523 or 1.80000011 -> 1.8): digits beyond float32's precision are noise of the float32
    entries and of the sums an oblique affine's length takes."""
    return float(f"{float(value):.{SPACING_SIGNIFICANT_DIGITS}g}")


class _Readable(Protocol):
    """What the reader needs of a stream: ``read`` (the file, :class:`_Counter`, gzip's stream)."""

    def read(self, size: int = -1, /) -> bytes: ...


class _Counter:
    """Counts bytes read from the file (compressed) for ``DecodeStats.bytes_read``."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True


def _read_exactly(stream: _Readable, n: int, source_uri: str, what: str) -> bytes:
    """``n`` bytes or a DecodeError saying the file ends first (truncated)."""
    chunks, left = [], n
    while left > 0:
        chunk = stream.read(min(left, READ_CHUNK_BYTES))
        if not chunk:
            got = n - left
            raise DecodeError(source_uri, "read", f"truncated: the file ends {got} bytes into the {n} bytes "
                              f"of {what}")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _skip_exactly(stream: _Readable, n: int, source_uri: str, what: str) -> None:
    """Read ``n`` bytes and drop them, a chunk at a time (the cine frames around the ED one are read so
    that gzip checks its length and CRC, never held: a 4 GiB cine would otherwise sit in memory); a
    DecodeError when the file ends first."""
    left = n
    while left > 0:
        chunk = stream.read(min(left, READ_CHUNK_BYTES))
        if not chunk:
            raise DecodeError(source_uri, "read", f"truncated: the file ends {n - left} bytes into the {n} "
                              f"bytes of {what}")
        left -= len(chunk)


# Bytes per voxel of the ED frame while it is converted (float64 voxels, scaled float64 voxels, float32
# result and the finite-check mask), beyond its bytes as read: the whole frame at once.
CONVERSION_BYTES_PER_VOXEL = 21


def _header(block: bytes, source_uri: str) -> nib.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header at the start of ``block`` (either byte order)."""
    sizes = {int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")}
    if NIFTI2_HEADER_BYTES in sizes:
        klass: type[nib.Nifti1Header] = nib.Nifti2Header  # a subclass of Nifti1Header
        size = NIFTI2_HEADER_BYTES
    elif NIFTI1_HEADER_BYTES in sizes:
        klass, size = nib.Nifti1Header, NIFTI1_HEADER_BYTES
    else:
        raise DecodeError(source_uri, "read", f"not a NIfTI file (starts with {block[:8]!r})")
    if len(block) < size:
        raise DecodeError(source_uri, "read", f"truncated: {len(block)} bytes, a NIfTI header needs {size}")
    magic = bytes(block[344:348] if size == NIFTI1_HEADER_BYTES else block[4:12])
    if magic[:3] in (b"ni1", b"ni2"):
        raise DecodeError(source_uri, "read", "a .hdr/.img pair: lvmass reads single-file NIfTI "
                          "(.nii or .nii.gz)")
    if magic[:3] not in (b"n+1", b"n+2"):
        raise DecodeError(source_uri, "geometry", f"no NIfTI magic ({magic!r}): an ANALYZE 7.5 header, which "
                          "has no affine to place the slices in the patient")
    try:
        return klass(binaryblock=block[:size], check=True)
    except (HeaderDataError, ValueError) as exc:
        raise DecodeError(source_uri, "header", f"unreadable NIfTI header ({exc})") from exc


def _stack_shape(header: nib.Nifti1Header, source_uri: str) -> tuple[tuple[int, int, int], int]:
    """((x, y, slices), frames) of a 3-D volume or 4-D cine (trailing axes of size 1 allowed)."""
    shape = tuple(int(v) for v in header.get_data_shape())
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3 or shape[2] == 1:
        raise DecodeError(source_uri, "header", f"a 2-D image (shape {shape}): a short-axis stack needs "
                          "several slices along the third axis")
    if len(shape) > 4:
        raise DecodeError(source_uri, "header", f"a {len(shape)}-D image (shape {shape}): expected a 3-D "
                          "volume (x, y, slice) or a 4-D cine (x, y, slice, time)")
    if min(shape) < 1:
        raise DecodeError(source_uri, "header", f"an empty image (shape {shape})")
    slice_dim = header.get_dim_info()[2]
    if slice_dim not in (None, 2):
        raise DecodeError(source_uri, "header", f"dim_info names axis {slice_dim} as the slice axis: lvmass "
                          "reads short-axis stacks along the third axis (k)")
    return (shape[0], shape[1], shape[2]), (shape[3] if len(shape) == 4 else 1)


def _affine_ras(header: nib.Nifti1Header, source_uri: str) -> np.ndarray:
    """The file's affine (sform when its code is set, else qform): RAS mm of voxel (i, j, k)."""
    _, sform_code = header.get_sform(coded=True)
    _, qform_code = header.get_qform(coded=True)
    if not sform_code and not qform_code:
        raise DecodeError(source_uri, "geometry", "no affine: qform_code and sform_code are both 0, so "
                          "nothing places the slices in the patient")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise DecodeError(source_uri, "geometry", f"the affine holds non-finite numbers: {affine.tolist()}")
    e_i, e_j, e_k = (affine[:3, n] for n in range(3))
    norms = [float(np.linalg.norm(v)) for v in (e_i, e_j, e_k)]
    if min(norms) <= 0:
        raise DecodeError(source_uri, "geometry", f"the affine gives a voxel axis of length 0: "
                          f"{affine.tolist()}")
    if abs(float(e_i @ e_j)) / (norms[0] * norms[1]) > MAX_IN_PLANE_COS:
        raise DecodeError(source_uri, "geometry", "the affine's in-plane axes (i, j) are not perpendicular: "
                          f"a sheared grid, not an MR slice ({affine.tolist()})")
    return affine


def _ed_frame_index(n_frames: int, ed_rule: str) -> int:
    """The end-diastolic frame of a NIfTI cine under ``ed_rule``: frame 0 for both rules (module
    docstring: the time axis is the acquisition's frame order)."""
    if ed_rule not in ED_RULES:
        raise ValueError(f"unknown ed_rule {ed_rule!r}; expected one of {ED_RULES}")
    if n_frames < 1:
        raise ValueError(f"a cine needs at least one frame. Received {n_frames}")
    return 0


def _ed_time_ms(header: nib.Nifti1Header) -> float:
    """The ED frame's time (``toffset``) in ms; NaN when the unit is unknown and the offset is not 0."""
    toffset = float(header["toffset"])
    unit = header.get_xyzt_units()[1]
    if toffset == 0.0:
        return 0.0
    return toffset * _TIME_UNIT_MS[unit] if unit in _TIME_UNIT_MS else float("nan")


def _read_frame(stream: _Readable, header: nib.Nifti1Header, xyz: tuple[int, int, int], n_frames: int,
                frame: int, source_uri: str, *,
                budget_bytes: int = budget.MAX_PARTICIPANT_BYTES) -> np.ndarray:
    """The voxels of ``frame`` (x, y, slices) as float32 after scl_slope/scl_inter; the rest of the file
    is read and dropped, so a truncated or corrupt file fails here. A frame that would take more than
    ``budget_bytes`` to convert and resample (``lvmass.core.budget``) is refused before it is read."""
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise DecodeError(source_uri, "header", f"voxels of type {dtype} (complex or RGB): expected a "
                          "grey-scale integer or float image")
    frame_bytes = int(np.prod(xyz)) * dtype.itemsize
    total_bytes = frame_bytes * n_frames
    if frame_bytes > MAX_FRAME_BYTES or total_bytes > MAX_FILE_BYTES:
        raise DecodeError(source_uri, "header", f"the header declares {total_bytes} bytes of voxels "
                          f"({frame_bytes} per frame): beyond the limits of {MAX_FILE_BYTES} per file and "
                          f"{MAX_FRAME_BYTES} per frame")
    n_voxels = int(np.prod(xyz))
    try:
        budget.check([int(xyz[0]) * int(xyz[1])] * int(xyz[2]),
                     frame_bytes + CONVERSION_BYTES_PER_VOXEL * n_voxels, budget=budget_bytes,
                     what=f"an end-diastolic frame of {xyz[0]} x {xyz[1]} x {xyz[2]} voxels of {dtype}")
    except budget.ParticipantTooLarge as exc:
        raise DecodeError(source_uri, "budget", str(exc)) from exc
    _skip_exactly(stream, frame * frame_bytes, source_uri, "the voxels before the end-diastolic frame")
    data = _read_exactly(stream, frame_bytes, source_uri, "the end-diastolic frame")
    _skip_exactly(stream, total_bytes - (frame + 1) * frame_bytes, source_uri, "the other cine frames")
    while stream.read(READ_CHUNK_BYTES):  # trailing bytes: read to the end so gzip checks its CRC
        pass
    voxels = np.frombuffer(data, dtype=dtype).reshape(xyz, order="F").astype(np.float64)
    slope, inter = header.get_slope_inter()
    if slope is not None:
        voxels = voxels * float(slope) + float(inter or 0.0)
    bad = int(np.count_nonzero(~np.isfinite(voxels)))
    if bad:
        raise DecodeError(source_uri, "pixels", f"{bad} of the {voxels.size} voxels of the end-diastolic "
                          "frame are NaN or infinite")
    return voxels.astype(np.float32)


def _open(raw: _Readable, source_uri: str) -> gzip.GzipFile | io.BufferedReader[_Prepended]:
    """A stream of the NIfTI bytes: ``raw`` itself, or its gzip decompression."""
    try:
        start = raw.read(2)
    except OSError as exc:
        raise DecodeError(source_uri, "read", f"cannot read the file ({exc})") from exc
    if not start:
        raise DecodeError(source_uri, "read", "empty file, not NIfTI")
    rest = io.BufferedReader(_Prepended(start, raw))
    return gzip.GzipFile(fileobj=rest, mode="rb") if start == GZIP_MAGIC else rest


class _Prepended(io.RawIOBase):
    """``head`` (already read to sniff the format) followed by the rest of ``raw``."""

    def __init__(self, head: bytes, raw: _Readable):
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view:
            if self._head:
                n = min(len(view), len(self._head))
                view[:n], self._head = self._head[:n], self._head[n:]
                return n
            data = self._raw.read(len(view))
            view[: len(data)] = data
            return len(data)


def decode_nifti(fileobj: BinaryIO, request: DecodeRequest) -> Decoded:
    """Decode one participant's short-axis NIfTI (``.nii`` or ``.nii.gz``, a 4-D cine or its ED volume)
    into the study the DICOM decoder gives for the same acquisition (module docstring), with what was
    read. NIfTI has no InlineVF and no header strategies: ``request.with_inlinevf`` and ``strategy`` change
    nothing. Raises DecodeError naming the file, the step and the reason (its ``stats``: what was read)."""
    source_uri, stats = request.source_uri, DecodeStats()
    stem = base_name(source_uri).split(".", 1)[0].lower()
    if stem in END_SYSTOLIC_STEMS or stem.endswith("_es"):
        raise DecodeError(source_uri, "series", "an end-systolic volume (its name ends in _ES): the mass is "
                          "measured at end-diastole; pass the cine (sa.nii.gz) or sa_ED.nii.gz")
    counted = _Counter(fileobj)
    try:
        stream = _open(counted, source_uri)
        study = _decode_stream(stream, source_uri, ed_rule=request.ed_rule, budget_bytes=request.budget_bytes)
    except EOFError as exc:
        raise DecodeError(source_uri, "read", f"truncated gzip: the compressed stream ends before its end "
                          f"marker ({exc})") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DecodeError(source_uri, "read", f"corrupt gzip ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise DecodeError(source_uri, "read", f"cannot read the file ({type(exc).__name__}: {exc})") from exc
    finally:
        stats.bytes_read += counted.bytes_read
    stats.strategy = "nifti"
    stats.members_listed += 1
    stats.pixel_frames_decoded += study.n_slices
    return Decoded(replace(study, name=request.name), stats)


def _decode_stream(stream: _Readable, source_uri: str, *, ed_rule: str,
                   budget_bytes: int = budget.MAX_PARTICIPANT_BYTES) -> DecodedStudy:
    first = stream.read(NIFTI1_HEADER_BYTES)
    if len(first) >= 4 and NIFTI2_HEADER_BYTES in {int.from_bytes(first[:4], o) for o in ("little", "big")}:
        first += stream.read(NIFTI2_HEADER_BYTES - len(first))
    header = _header(first, source_uri)
    xyz, n_frames = _stack_shape(header, source_uri)
    affine_ras = _affine_ras(header, source_uri)
    offset = int(header["vox_offset"])
    if offset > MAX_HEADER_AND_EXTENSIONS_BYTES:
        raise DecodeError(source_uri, "header", f"vox_offset {offset} is beyond "
                          f"{MAX_HEADER_AND_EXTENSIONS_BYTES} bytes")
    _read_exactly(stream, max(0, offset - len(first)), source_uri, "the header extensions")
    frame = _ed_frame_index(n_frames, ed_rule)
    voxels = _read_frame(stream, header, xyz, n_frames, frame, source_uri, budget_bytes=budget_bytes)
    return study_from_volume(voxels, affine_ras, source_uri, ed_time_ms=_ed_time_ms(header))


def study_from_volume(
    voxels: np.ndarray, affine_ras: np.ndarray, source_uri: str, *, ed_time_ms: float = float("nan"),
) -> DecodedStudy:
    """The study of an ED volume ``voxels`` (i, j, k) placed by ``affine_ras``: each slice ``k`` as a DICOM
    frame (rows along ``i``, columns along ``j``), then the DICOM decoder's geometry (module docstring)."""
    affine_lps = acquisition.lps_to_ras(affine_ras)
    e_i, e_j, e_k, origin = (affine_lps[:3, n] for n in range(4))
    row_mm, col_mm = _float32_decimal(np.linalg.norm(e_i)), _float32_decimal(np.linalg.norm(e_j))
    orientation = [*(e_j / np.linalg.norm(e_j)), *(e_i / np.linalg.norm(e_i))]  # (column dir, row dir)
    normal = geometry.slice_normal(orientation)
    n_slices = int(voxels.shape[2])
    corners = [origin + k * e_k for k in range(n_slices)]
    raw = [geometry.project_position_mm(c, normal) for c in corners]
    if len({round(p, 3) for p in raw}) != n_slices:
        raise DecodeError(source_uri, "geometry", "the affine's slice axis (k) lies in the image plane: all "
                          f"slices at one position along the normal ({affine_ras.tolist()})")
    if geometry.apex_direction_is_clear(normal):
        sign = geometry.apex_sign(normal)
    else:  # too oblique for anatomy to tell: slice k = 0 is the base, as the bK numbering says for DICOM
        sign = geometry.numbering_sign(list(range(n_slices)), raw)
    order = sorted(range(n_slices), key=lambda k: sign * raw[k])
    positions = [sign * raw[k] for k in order]
    try:
        spacing_mm = _float32_decimal(geometry.slice_spacing_mm(
            positions, spacing_between_slices_mm=None, slice_thickness_mm=None))
    except ValueError as exc:
        raise DecodeError(source_uri, "geometry", str(exc)) from exc
    apex_normal = sign * normal
    view = geometry.standard_view_transform(orientation, apex_normal)
    affine, _ = acquisition.decoded_affine_lps(
        orientation=orientation, positions_lps=[corners[k] for k in order], pixel_spacing_mm=(row_mm, col_mm),
        shape=(int(voxels.shape[0]), int(voxels.shape[1])), view=view, slice_positions_mm=positions,
        slice_spacing_mm=spacing_mm, apex_normal=apex_normal)
    flags = set(geometry_qc_flags(positions, spacing_mm))
    return DecodedStudy(
        eid=None,
        instance=None,
        source_uri=source_uri,
        images=tuple(view.apply(voxels[:, :, k]) for k in order),
        outlines=(None,) * n_slices,
        pixel_spacing_mm=view.apply_spacing((row_mm, col_mm)),
        slice_spacing_mm=spacing_mm,
        slice_thickness_mm=float("nan"),
        slice_positions_mm=tuple(float(p) for p in positions),
        end_diastolic_trigger_times_ms=(ed_time_ms,) * n_slices,
        qc_flags=tuple(f for f in contracts.QC_FLAGS if f in flags),
        in_plane_view=view.describe(),
        affine_lps=acquisition.as_affine_tuple(affine),
    )
