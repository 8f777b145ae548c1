"""A minimal DICOM tag reader for the header pass: the few tags slice selection needs, from a prefix.

pydicom parses a whole header, element by element, from a stream; for ~1,000 members per participant
that parsing was nearly all of the decoder's time (docs/ukbb_format.md, "How much is read"). This reader
walks the elements of a bytes prefix of the file (Part 10 preamble, ``DICM``, the file meta group, then the
data set, PS3.5 7.1 and PS3.10 7.1), keeps the raw values of the wanted tags and stops at the first tag
past the last one wanted, so a header is inflated only as far as that tag: the Siemens CSA blocks
(0029,xxxx), the overlay data and the pixel data are never reached unless asked for.

It handles what UK Biobank and most vendors write: Explicit VR Little Endian data sets (the native syntax
and the encapsulated ones) and Implicit VR Little Endian, elements of defined length, and sequences or
items of undefined length before the stop (skipped). Anything else raises :class:`Unsupported` and the
caller reads that member with pydicom instead: Big Endian or deflated data sets, a data set that does not
match its transfer syntax, a wanted tag with an unexpected VR, tags out of ascending order, a truncated
file. Values are converted only where the result is certain to equal what pydicom returns
(:func:`text`, :func:`decimal`, :func:`integer_string`, :func:`unsigned_short`); any other value also
raises :class:`Unsupported`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

PREAMBLE_BYTES = 128
MAGIC = b"DICM"
META_START = PREAMBLE_BYTES + len(MAGIC)
TRANSFER_SYNTAX_UID = 0x00020010
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # pydicom's stop_before_pixels
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
# VRs with a 2-byte reserved field and a 4-byte length in Explicit VR (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                      b"UV"})
SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                       b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})

_EXPLICIT_HEAD = struct.Struct("<HH2sH")
_IMPLICIT_HEAD = struct.Struct("<HHI")
_LONG_LENGTH = struct.Struct("<I")
_NOT_PLAIN_TEXT = re.compile(rb"[\x80-\xff\x1b\\]")
_NOT_ASCII = re.compile(rb"[\x80-\xff\x1b]")


class Unsupported(ValueError):
    """This member is outside what the minimal reader handles; read it with pydicom."""


class NotDicom(ValueError):
    """No ``DICM`` prefix after the 128-byte preamble: not a DICOM Part 10 file (pydicom's rule without
    ``force``)."""


class NeedMore(Exception):
    """The prefix ends before the reader could decide; ``needed`` bytes would let it go on.

    Pass it back as ``resume`` to :func:`read_elements` with the longer prefix: the walk goes on from the
    last element boundary it reached instead of starting over.
    """

    def __init__(self, needed: int, state: tuple | None = None):
        super().__init__(needed)
        self.needed = needed
        self.state = state  # (position, previous tag, values so far, implicit, native) of the data set walk


@dataclass(frozen=True)
class Elements:
    """What :func:`read_elements` found: the wanted ``values`` (``{tag: (VR, value bytes)}``) and where it
    stopped: ``stop_pos``, the offset of the first element not read (the file's length at its end), and
    that element's ``stop_tag`` and declared ``stop_length`` (None at the end of the file)."""

    values: dict[int, tuple[str, bytes]]
    stop_pos: int
    stop_tag: int | None = None
    stop_length: int | None = None
    last_tag: int = -1
    implicit: bool = False
    native: bool = False  # Implicit or Explicit VR Little Endian: pixel data neither compressed nor deflated

    def resume(self) -> NeedMore:
        """A ``resume`` for :func:`read_elements` that reads on from where this walk stopped (new values
        only), e.g. with a later ``stop_after``."""
        return NeedMore(self.stop_pos + 8, (self.stop_pos, self.last_tag, {}, self.implicit, self.native))


def _little_endian_dataset_is_implicit(transfer_syntax: str) -> bool:
    """Implicit (True) or Explicit (False) VR Little Endian data set; Unsupported for any other encoding."""
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return False
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return True
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    if uid.is_transfer_syntax and uid.is_encapsulated and uid.is_little_endian and not uid.is_deflated:
        return False  # compressed pixel data, Explicit VR Little Endian data set
    raise Unsupported(f"transfer syntax {transfer_syntax!r}")


def read_elements(
    buf: bytes,
    wanted: Collection[int],
    stop_after: int,
    *,
    complete: bool,
    expected_vrs: dict[int, str] | None = None,
    resume: NeedMore | None = None,
) -> Elements:
    """Raw values of the ``wanted`` data set tags present in the file (:class:`Elements`).

    ``buf`` is the file's first bytes (all of it when ``complete``). Reading stops at the first tag
    greater than ``stop_after`` or at the pixel data. Raises :class:`NeedMore` when ``buf`` is too short
    to get there, :class:`NotDicom` without the ``DICM`` prefix, :class:`Unsupported` for anything this
    reader leaves to pydicom. ``expected_vrs`` gives the VR of each wanted tag: required to read an
    Implicit VR data set, and in Explicit VR a wanted element with another VR is Unsupported. ``resume``:
    the NeedMore of the previous call on a shorter prefix of the same file, with the same arguments.
    """
    expected_vrs = expected_vrs or {}
    if resume is not None and resume.state is not None:
        pos, previous, values, implicit, native = resume.state
        return _walk(buf, pos, frozenset(wanted), stop_after, complete=complete, implicit=implicit,
                     native=native, expected_vrs=expected_vrs, out=values, previous=previous)
    size = len(buf)
    if size < META_START:
        if complete:
            raise NotDicom("file is shorter than the 128-byte preamble and the 'DICM' prefix")
        raise NeedMore(META_START)
    if buf[PREAMBLE_BYTES:META_START] != MAGIC:
        raise NotDicom("the 'DICM' prefix is missing after the 128-byte preamble")
    # File meta information: Explicit VR Little Endian, group 0002 (PS3.10 7.1).
    pos = META_START
    transfer_syntax = None
    while True:
        if pos + 8 > size:
            if complete:
                raise Unsupported("file ends inside the file meta information")
            raise NeedMore(pos + 8)
        group, element, vr, length = _EXPLICIT_HEAD.unpack_from(buf, pos)
        if group != 0x0002:
            break
        if vr in LONG_VRS:
            if pos + 12 > size:
                raise NeedMore(pos + 12)
            (length,) = _LONG_LENGTH.unpack_from(buf, pos + 8)
            head = 12
        elif vr in SHORT_VRS:
            head = 8
        else:
            raise Unsupported(f"file meta element ({group:04X},{element:04X}) has VR {vr!r}")
        if length == UNDEFINED_LENGTH:
            raise Unsupported("undefined length in the file meta information")
        end = pos + head + length
        if end > size:
            if complete:
                raise Unsupported("file ends inside the file meta information")
            raise NeedMore(end + 8)
        if (group << 16 | element) == TRANSFER_SYNTAX_UID:
            transfer_syntax = buf[pos + head:end].decode("ascii", "replace").rstrip("\x00 ")
        pos = end
    if transfer_syntax is None:
        raise Unsupported("no TransferSyntaxUID (0002,0010)")
    implicit = _little_endian_dataset_is_implicit(transfer_syntax)
    if implicit and any(tag not in expected_vrs for tag in wanted):
        raise Unsupported("Implicit VR data set and a wanted tag of unknown VR")
    native = transfer_syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
    return _walk(buf, pos, frozenset(wanted), stop_after, complete=complete, implicit=implicit, native=native,
                 expected_vrs=expected_vrs, out={}, previous=-1)


def _walk(
    buf: bytes, pos: int, wanted: frozenset[int], stop_after: int, *, complete: bool, implicit: bool,
    native: bool, expected_vrs: dict[int, str], out: dict[int, tuple[str, bytes]], previous: int,
) -> Elements:
    size = len(buf)
    explicit_head = _EXPLICIT_HEAD.unpack_from
    implicit_head = _IMPLICIT_HEAD.unpack_from
    while True:
        if pos + 8 > size:
            if pos == size and complete:
                return Elements(out, pos, last_tag=previous, implicit=implicit, native=native)  # the end
            if complete:
                raise Unsupported("file ends inside an element header")
            raise NeedMore(pos + 8, (pos, previous, out, implicit, native))
        if implicit:
            group, element, length = implicit_head(buf, pos)
            tag = group << 16 | element
            vr_text = expected_vrs.get(tag, "")
            head = 8
        else:
            group, element, vr, length = explicit_head(buf, pos)
            tag = group << 16 | element
            if vr in LONG_VRS:
                if pos + 12 > size:
                    if complete:
                        raise Unsupported("file ends inside an element header")
                    raise NeedMore(pos + 12, (pos, previous, out, implicit, native))
                (length,) = _LONG_LENGTH.unpack_from(buf, pos + 8)
                head = 12
            elif vr in SHORT_VRS:
                head = 8
            else:
                raise Unsupported(f"element ({group:04X},{element:04X}) has VR {vr!r}")
            vr_text = vr.decode("ascii")
        if tag > stop_after or tag in PIXEL_DATA_TAGS:
            return Elements(out, pos, tag, length, last_tag=previous, implicit=implicit, native=native)
        if tag <= previous:
            raise Unsupported(f"element ({group:04X},{element:04X}) out of ascending order")
        previous_before, previous = previous, tag
        if length == UNDEFINED_LENGTH:
            if tag in wanted:
                raise Unsupported(f"wanted element ({group:04X},{element:04X}) has undefined length")
            if not implicit and vr_text not in ("SQ",):
                raise Unsupported(f"element ({group:04X},{element:04X}) {vr_text} of undefined length")
            try:
                pos = _skip_sequence(buf, pos + head, complete=complete, implicit=implicit)
            except NeedMore as more:
                raise NeedMore(more.needed, (pos, previous_before, out, implicit, native)) from None
            continue
        end = pos + head + length
        if end > size:
            if complete:
                raise Unsupported(f"file ends inside element ({group:04X},{element:04X})")
            raise NeedMore(end + 8, (pos, previous_before, out, implicit, native))
        if tag in wanted:
            expected = expected_vrs.get(tag)
            if expected is not None and vr_text != expected:
                raise Unsupported(
                    f"element ({group:04X},{element:04X}) has VR {vr_text}, expected {expected}")
            out[tag] = (vr_text, buf[pos + head:end])
        pos = end


def _item_header(buf: bytes, pos: int, complete: bool) -> tuple[int, int]:
    if pos + 8 > len(buf):
        if complete:
            raise Unsupported("file ends inside a sequence")
        raise NeedMore(pos + 8)
    group, element, length = _IMPLICIT_HEAD.unpack_from(buf, pos)
    return group << 16 | element, length


def _skip_sequence(buf: bytes, pos: int, *, complete: bool, implicit: bool) -> int:
    """Past the sequence delimitation item of an undefined-length sequence whose items start at ``pos``."""
    while True:
        tag, length = _item_header(buf, pos, complete)
        if tag == SEQUENCE_DELIMITER:
            return pos + 8
        if tag != ITEM:
            raise Unsupported(f"tag {tag:08X} inside a sequence of undefined length")
        if length == UNDEFINED_LENGTH:
            pos = _skip_item(buf, pos + 8, complete=complete, implicit=implicit)
        else:
            pos += 8 + length
            if pos > len(buf):
                if complete:
                    raise Unsupported("file ends inside a sequence item")
                raise NeedMore(pos + 8)


def _skip_item(buf: bytes, pos: int, *, complete: bool, implicit: bool) -> int:
    """Past the item delimitation of an undefined-length item whose elements start at ``pos``."""
    size = len(buf)
    while True:
        tag, _ = _item_header(buf, pos, complete)
        if tag == ITEM_DELIMITER:
            return pos + 8
        if implicit:
            _, _, length = _IMPLICIT_HEAD.unpack_from(buf, pos)
            head, is_sequence = 8, True
        else:
            _, _, vr, length = _EXPLICIT_HEAD.unpack_from(buf, pos)
            if vr in LONG_VRS:
                if pos + 12 > size:
                    if complete:
                        raise Unsupported("file ends inside a sequence item")
                    raise NeedMore(pos + 12)
                (length,) = _LONG_LENGTH.unpack_from(buf, pos + 8)
                head = 12
            elif vr in SHORT_VRS:
                head = 8
            else:
                raise Unsupported(f"element in a sequence item has VR {vr!r}")
            is_sequence = vr == b"SQ"
        if length == UNDEFINED_LENGTH:
            if not is_sequence:
                raise Unsupported("element of undefined length inside a sequence item")
            pos = _skip_sequence(buf, pos + head, complete=complete, implicit=implicit)
            continue
        pos += head + length
        if pos > size:
            if complete:
                raise Unsupported("file ends inside a sequence item")
            raise NeedMore(pos + 8)


# --- values, exactly as pydicom converts them (or Unsupported) ------------------------------------


def _plain(value: bytes) -> str:
    """ASCII without backslashes (the value delimiter) or escapes: then every character set pydicom
    knows decodes it to the same text."""
    if _NOT_PLAIN_TEXT.search(value):
        raise Unsupported(f"text value {value[:40]!r} is not plain ASCII")
    return value.decode("ascii")


def text(value: bytes) -> str:
    """A single-valued string (LO, SH, CS, UI, DA, TM, ...) as pydicom returns it: trailing spaces and
    NULs removed. A value with several items (backslash) or non-ASCII bytes is Unsupported."""
    return _plain(value).rstrip("\x00 ")


_DECIMAL_CHARACTERS = str.maketrans("", "", "0123456789.+-eE ")
_INTEGER_CHARACTERS = str.maketrans("", "", "0123456789+- ")


_Number = TypeVar("_Number", int, float)


def _number(item: str, characters: dict[int, int | None], convert: Callable[[str], _Number]) -> _Number:
    """``convert(item)`` (``float`` or ``int``, as pydicom's DSfloat and IS do) when ``item`` holds only
    ``characters`` and converts; Unsupported otherwise (no "nan", "inf", underscores, tabs or NULs)."""
    if not item or item.translate(characters):
        raise Unsupported(f"number {item!r}")
    try:
        return convert(item)
    except ValueError:
        raise Unsupported(f"number {item!r}") from None


def decimal(value: bytes) -> float | None:
    """A single DS value as a float (None when empty), as ``float(pydicom's DSfloat)``."""
    if not value:
        return None
    return _number(_plain(value), _DECIMAL_CHARACTERS, float)


def decimals(value: bytes) -> float | list[float] | None:
    """A DS value of any multiplicity: one float, a list of them (backslash-separated), or None when
    empty; as pydicom's DSfloat or MultiValue of them, converted with ``float``."""
    if not value:
        return None
    if _NOT_ASCII.search(value):
        raise Unsupported(f"DS value {value[:40]!r} is not plain ASCII")
    out = [_number(item, _DECIMAL_CHARACTERS, float) for item in value.decode("ascii").strip().split("\\")]
    return out[0] if len(out) == 1 else out


def integer_string(value: bytes) -> int | None:
    """A single IS value as an int (None when empty)."""
    if not value:
        return None
    return _number(_plain(value), _INTEGER_CHARACTERS, int)


def unsigned_short(value: bytes) -> int | None:
    """A single US value (None when empty)."""
    if not value:
        return None
    if len(value) != 2:
        raise Unsupported(f"US value of {len(value)} bytes")
    return int.from_bytes(value, "little")
