"""Pixels and overlay planes of the chosen frames, each member parsed once, in zip order.

A native, little-endian, single-frame, 16-bit grey-scale image is unpacked with numpy exactly as pydicom
unpacks it (:func:`native_pixels`); anything else, and everything under the ``scan_all_headers`` strategy,
goes to pydicom (:func:`decode_frame_pixels`). An overlay-only member (an InlineVF frame that is not also an
ED frame) is read only up to its pixel data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from lvmass.core import dicom_headers as dh
from lvmass.core.decode.headers import OVERLAY_TAGS, float_or_none, int_or_none, walk_prefix
from lvmass.core.decode.request import DecodeStats
from lvmass.core.decode.sources import member_error, read_error_reason
from lvmass.core.slices import HeaderInfo
from lvmass.core.study import DecodeError
from lvmass.core.zip_members import MAX_MEMBER_BYTES, MemberError, Prefix, StreamMembers, ZipMembers

_Value = TypeVar("_Value")

# PixelData (7FE0,0010) may declare at most this much more than Rows x Columns x SamplesPerPixel x
# BitsAllocated/8 x NumberOfFrames (odd-length padding, vendors' trailing bytes) before it is refused.
PIXEL_DATA_SLACK_BYTES = 64 * 1024


def decode_frame_pixels(ds: pydicom.Dataset, *, source_uri: str, member: str) -> np.ndarray:
    """Pixel data (7FE0,0010) of one single-frame image as float32 after RescaleSlope (0028,1053) and
    RescaleIntercept (0028,1052)."""
    if "PixelData" not in ds:
        raise DecodeError(source_uri, "pixels", f"member {member!r} has no Pixel Data (7FE0,0010)")
    frames = int_or_none(ds.get("NumberOfFrames")) or 1
    if frames != 1:
        raise DecodeError(
            source_uri,
            "pixels",
            f"member {member!r} is multi-frame ({frames} frames); one frame per file expected",
        )
    _check_pixel_data_length(ds, source_uri=source_uri, member=member)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DecodeError(
            source_uri,
            "pixels",
            f"member {member!r}: pixel data cannot be decoded ({read_error_reason(exc)})",
        ) from exc
    if arr.ndim != 2:
        raise DecodeError(
            source_uri, "pixels", f"member {member!r}: expected a 2-D image, got shape {arr.shape}"
        )
    slope = float_or_none(ds.get("RescaleSlope"))
    intercept = float_or_none(ds.get("RescaleIntercept"))
    out = arr.astype(np.float32)
    if slope is not None and slope != 1.0:
        out = out * np.float32(slope)
    if intercept is not None and intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def _check_pixel_data_length(ds: pydicom.Dataset, *, source_uri: str, member: str) -> None:
    """Refuse native PixelData whose declared length is far beyond Rows x Columns x SamplesPerPixel x
    BitsAllocated/8 x NumberOfFrames, before any array is allocated from it."""
    element = ds.get_item(0x7FE00010)
    declared = getattr(element, "length", None)
    if declared is None or declared == dh.UNDEFINED_LENGTH:
        return  # encapsulated (compressed) frames, or a value set in memory
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        frames = int_or_none(ds.get("NumberOfFrames")) or 1
    except (AttributeError, TypeError, ValueError):
        return  # pydicom's decoder reports what is missing
    expected = math.ceil(rows * cols * samples * frames * bits / 8)
    if declared > expected + PIXEL_DATA_SLACK_BYTES:
        raise DecodeError(
            source_uri, "pixels",
            f"member {member!r}: Pixel Data (7FE0,0010) declares {declared} bytes, more than Rows x Columns "
            f"x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames = {rows} x {cols} x {samples} x {bits}/8 "
            f"x {frames} = {expected} (+{PIXEL_DATA_SLACK_BYTES} slack); refused",
        )


# Pixel attributes the native fast path reads with the pixel data (the rest goes to pydicom).
_PIXEL_VRS: dict[int, str] = {
    0x00280002: "US",  # SamplesPerPixel
    0x00280004: "CS",  # PhotometricInterpretation
    0x00280008: "IS",  # NumberOfFrames
    0x00280010: "US", 0x00280011: "US",  # Rows, Columns
    0x00280100: "US", 0x00280101: "US", 0x00280102: "US",  # BitsAllocated, BitsStored, HighBit
    0x00280103: "US",  # PixelRepresentation
    0x00281052: "DS", 0x00281053: "DS",  # RescaleIntercept, RescaleSlope
}
_OVERLAY_VRS: dict[int, str] = {
    0x00280010: "US", 0x00280011: "US",
    0x60000010: "US", 0x60000011: "US", 0x60000015: "IS", 0x60000040: "CS", 0x60000050: "SS",
    0x60000100: "US", 0x60000102: "US", 0x60003000: "OW",
}
_NATIVE_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class Frame:
    """A chosen member, parsed once: its image (pixel members) and the dataset its overlay is read from."""

    image: np.ndarray | None
    overlay: pydicom.Dataset


def overlay_dataset(elements: dh.Elements) -> pydicom.Dataset:
    """A pydicom dataset of the raw overlay elements, converted by pydicom exactly as ``dcmread`` would."""
    return pydicom.Dataset({
        Tag(tag): RawDataElement(Tag(tag), None if elements.implicit else vr, len(value), value, 0,
                                 elements.implicit, True)
        for tag, (vr, value) in elements.values.items() if tag in _OVERLAY_VRS
    })


def native_pixels(elements: dh.Elements, data: bytes) -> np.ndarray | None:
    """The image of a native, little-endian, single-frame, 16-bit grey-scale file, exactly as pydicom's
    ``pixel_array`` and :func:`decode_frame_pixels` give it (unused high bits cleared, or the sign extended,
    from BitsStored; then RescaleSlope and RescaleIntercept); None for anything else (pydicom decides)."""
    if (not elements.native or elements.stop_tag != 0x7FE00010
            or elements.stop_length in (None, dh.UNDEFINED_LENGTH)):
        return None
    values = elements.values

    def number(tag: int, convert: Callable[[bytes], _Value]) -> _Value | None:
        element = values.get(tag)
        return None if element is None else convert(element[1])

    try:
        rows, cols = number(0x00280010, dh.unsigned_short), number(0x00280011, dh.unsigned_short)
        samples, frames = number(0x00280002, dh.unsigned_short), number(0x00280008, dh.integer_string)
        allocated, stored = number(0x00280100, dh.unsigned_short), number(0x00280101, dh.unsigned_short)
        high_bit, signed = number(0x00280102, dh.unsigned_short), number(0x00280103, dh.unsigned_short)
        photometric = number(0x00280004, dh.text)
        intercept, slope = number(0x00281052, dh.decimal), number(0x00281053, dh.decimal)
    except dh.Unsupported:
        return None
    if (samples != 1 or frames not in (None, 1) or allocated != 16 or stored is None
            or not 1 <= stored <= 16 or high_bit not in (None, stored - 1) or signed not in (0, 1)
            or photometric not in _NATIVE_PHOTOMETRIC or not rows or not cols
            or elements.stop_length != rows * cols * 2):
        return None
    head = 8 if elements.implicit else 12
    available = len(data) - (elements.stop_pos + head)
    if available < rows * cols * 2:
        raise ValueError(f"Pixel Data (7FE0,0010) is truncated: the file ends {max(available, 0)} bytes into "
                         f"the {rows * cols * 2} bytes of its {rows} x {cols} 16-bit image")
    arr = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=rows * cols,
                        offset=elements.stop_pos + head).reshape(rows, cols)
    if stored < 16:
        if signed:
            shift = 16 - stored
            arr = np.left_shift(arr, shift) >> shift
        else:
            arr = arr & np.uint16((1 << stored) - 1)
    out = arr.astype(np.float32)
    slope, intercept = float_or_none(slope), float_or_none(intercept)
    if slope is not None and slope != 1.0:
        out = out * np.float32(slope)
    if intercept is not None and intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def read_frame(members: ZipMembers | StreamMembers, member: str, source_uri: str, stats: DecodeStats, *,
                pixels: bool, use_pydicom: bool, size_hint: int | None = None) -> Frame:
    """A chosen member parsed once: in full (``pixels``), or only its overlay plane and image size read up
    to its pixel data. The minimal reader and :func:`native_pixels` handle the common encodings; pydicom
    the rest, and everything with ``use_pydicom`` (the reference path)."""
    prefix: Prefix | None = None
    try:
        if pixels:
            data = members.read(member, limit=MAX_MEMBER_BYTES)
        else:
            prefix = members.prefix(member, limit=MAX_MEMBER_BYTES)
            data = b""
        stats.members_decoded.append(member)
        if not use_pydicom:
            try:
                if pixels:
                    elements = dh.read_elements(data, _PIXEL_VRS.keys() | _OVERLAY_VRS.keys(), 0xFFFFFFFF,
                                                complete=True, expected_vrs={**_PIXEL_VRS, **_OVERLAY_VRS})
                    try:
                        image = native_pixels(elements, data)
                    except ValueError as exc:  # the member ends inside its pixel data
                        raise DecodeError(source_uri, "pixels", f"member {member!r}: {exc}") from exc
                    if image is not None:
                        return Frame(image, overlay_dataset(elements))
                else:
                    assert prefix is not None, "opened above for an overlay-only read"
                    elements = walk_prefix(prefix, frozenset(_OVERLAY_VRS), 0xFFFFFFFF, size_hint=size_hint,
                                            expected_vrs=_OVERLAY_VRS)
                    return Frame(None, overlay_dataset(elements))
            except (dh.Unsupported, dh.NotDicom):
                pass
        if not pixels:
            assert prefix is not None, "opened above for an overlay-only read"
            data = prefix_before_pixels(prefix)
    except MemberError as exc:
        raise member_error(source_uri, exc) from exc
    finally:
        if prefix is not None:
            prefix.close()
    try:
        if pixels:
            ds = pydicom.dcmread(io.BytesIO(data))  # PixelData stays raw, its length as declared
        else:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=OVERLAY_TAGS)
    except InvalidDicomError as exc:
        raise DecodeError(source_uri, "pixels", f"member {member!r} is not a DICOM file ({exc})") from exc
    except Exception as exc:
        raise DecodeError(
            source_uri, "pixels", f"member {member!r}: unreadable DICOM ({read_error_reason(exc)})"
        ) from exc
    image = decode_frame_pixels(ds, source_uri=source_uri, member=member) if pixels else None
    return Frame(image, ds)


def prefix_before_pixels(prefix: Prefix) -> bytes:
    """The member up to its pixel data (the whole member when the minimal reader cannot tell where that
    is): what pydicom reads with ``stop_before_pixels``."""
    try:
        elements = walk_prefix(prefix, frozenset(), 0xFFFFFFFF)
        if elements.stop_tag is None:
            return prefix.data[: elements.stop_pos]
        return prefix.need(elements.stop_pos + 12)[: elements.stop_pos + 12]
    except (dh.Unsupported, dh.NotDicom):
        while not prefix.complete:
            prefix.need(2 * len(prefix.data) + 65536)
        return prefix.data



def read_chosen(
    *,
    pixel_members: Sequence[str],
    overlay_members: Sequence[HeaderInfo],
    members: ZipMembers | StreamMembers,
    source_uri: str,
    stats: DecodeStats,
    order: Mapping[str, int] | None,
    use_pydicom: bool,
) -> dict[str, Frame]:
    """Parse each chosen member once, in zip order: members whose pixels are needed in full (their
    overlay, when they are also an InlineVF frame, comes with them), overlay-only members with just the
    overlay plane and image size (:data:`OVERLAY_TAGS`), read up to their pixel data."""
    pixel_set = set(pixel_members)
    hints = {h.member: h for h in overlay_members}
    needed = pixel_set | set(hints)
    rank = order or {}
    out = {}
    for member in sorted(needed, key=lambda m: (rank.get(m, len(rank)), m)):
        h = hints.get(member)
        hint = None
        if h is not None and h.rows and h.cols and isinstance(members, ZipMembers):
            hint = members.declared_size(member) - 2 * h.rows * h.cols  # the header: all but the pixels
        out[member] = read_frame(members, member, source_uri, stats, pixels=member in pixel_set,
                                  use_pydicom=use_pydicom, size_hint=hint)
    return out
