"""Writing Siemens-like MR DICOMs fast, and the participant zip with its (defective) manifest.

A series' instances differ only in a handful of elements (SOP Instance UID, Instance Number, Trigger
Time, pixel and overlay data), so each kind of instance is encoded once with pydicom as an
``InstanceTemplate``: the fixed elements are pre-encoded in tag order and the per-instance elements are
encoded by hand (Explicit VR Little Endian, PS3.5 7.1.2) between them. The output is byte-for-byte what
pydicom would write for the full dataset; tests read it back with pydicom.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
IMPLEMENTATION_UID = "1.3.12.2.1107.5.2"
_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN", "UR", "UT"}
_TAG_SOP_INSTANCE_UID = 0x00080018
MANIFEST_HEADER = (
    "filename",
    "patientid",
    "studyid",
    "studydescription",
    "date",
    "seriesid",
    "series discription",
    "aet",
    "host",
)
MANIFEST_HEADER_WITH_MODALITY = (*MANIFEST_HEADER[:7], "modality", *MANIFEST_HEADER[7:])


def encode_element(tag: int, vr: str, value: bytes | str) -> bytes:
    """One data element in Explicit VR Little Endian: tag, VR, length, value padded to even length
    (UI with NUL, text with space, binary with 0)."""
    raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
    if len(raw) % 2:
        raw += b"\x00" if vr in {"UI", "OB", "OW", "UN"} else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(raw)) + raw
    if len(raw) > 0xFFFF:
        raise ValueError(
            f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr}: value too long ({len(raw)} bytes)"
        )
    return head + struct.pack("<H", len(raw)) + raw


def _encode_dataset(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _element_spans(encoded: bytes) -> dict[int, tuple[int, int]]:
    """Byte span of each top-level element of an Explicit VR Little Endian dataset with defined lengths
    (what pydicom writes for datasets without sequences)."""
    spans, pos = {}, 0
    while pos < len(encoded):
        group, elem = struct.unpack_from("<HH", encoded, pos)
        vr = encoded[pos + 4 : pos + 6].decode("ascii")
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", encoded, pos + 8)
            head = 12
        else:
            (length,) = struct.unpack_from("<H", encoded, pos + 6)
            head = 8
        if length == 0xFFFFFFFF:
            raise ValueError("templates cannot hold undefined-length elements (sequences)")
        spans[(group << 16) | elem] = (pos, pos + head + length)
        pos += head + length
    return spans


class InstanceTemplate:
    """A dataset encoded once; ``encode`` fills in the per-instance elements.

    ``dataset`` must hold every element (placeholders for the variable ones, whose VR is taken from it);
    SOP Instance UIDs of one template must all have the placeholder's length (the file meta group
    length does not change).
    """

    def __init__(self, file_meta: FileMetaDataset, dataset: Dataset, variable_tags: Iterable[int]):
        self.variable = sorted(set(variable_tags) | {_TAG_SOP_INSTANCE_UID})
        missing = [t for t in self.variable if t not in dataset]
        if missing:
            raise ValueError(f"template lacks placeholder elements {[f'{t:08X}' for t in missing]}")
        self.vrs = {t: dataset[t].VR for t in self.variable}
        self.uid_placeholder = str(dataset.SOPInstanceUID)
        meta = FileMetaDataset(file_meta)
        meta.MediaStorageSOPInstanceUID = self.uid_placeholder
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        meta_bytes = fp.getvalue()
        padded = self.uid_placeholder.encode("ascii")
        padded += b"\x00" * (len(padded) % 2)
        if meta_bytes.count(padded) != 1:
            raise ValueError("template: the SOP Instance UID placeholder must appear once in the file meta")
        self.meta_head, self.meta_tail = meta_bytes.split(padded)
        self.uid_len = len(padded)
        encoded = _encode_dataset(dataset)
        spans = _element_spans(encoded)
        chunks, start = [], 0
        for tag in self.variable:
            begin, end = spans[tag]
            chunks.append(encoded[start:begin])
            start = end
        chunks.append(encoded[start:])
        self.chunks = chunks

    def encode(self, values: Mapping[int, bytes | str]) -> bytes:
        """The file bytes with the given per-instance values (every variable tag must be given)."""
        uid = values[_TAG_SOP_INSTANCE_UID]
        uid_raw = uid.encode("ascii") if isinstance(uid, str) else uid
        uid_raw += b"\x00" * (len(uid_raw) % 2)
        if len(uid_raw) != self.uid_len:
            raise ValueError(f"SOP Instance UID {uid!r} must have the template's length {self.uid_len}")
        out = [self.meta_head, uid_raw, self.meta_tail, self.chunks[0]]
        for tag, chunk in zip(self.variable, self.chunks[1:], strict=True):
            out.append(encode_element(tag, self.vrs[tag], values[tag]))
            out.append(chunk)
        return b"".join(out)


class UidFactory:
    """Siemens-like UIDs of one fixed length: ``1.3.12.2.1107.5.2.18.<station>.<timestamp><counter>``."""

    def __init__(self, station: int, when: dt.datetime, rng: np.random.Generator):
        stamp = when.strftime("%Y%m%d%H%M%S") + f"{int(rng.integers(1000, 10000))}"
        self.root = f"1.3.12.2.1107.5.2.18.{station}.{stamp}"
        self.counter = 0

    def next(self) -> str:
        self.counter += 1
        return f"{self.root}{self.counter:08d}"


def ds_str(value: float) -> str:
    """A DICOM DS string (<= 16 characters) for a float."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6e}"
    return text


def ds_multi(values: Iterable[float]) -> str:
    return "\\".join(ds_str(float(v)) for v in values)


def pack_overlay(bitmap: np.ndarray) -> bytes:
    """(6000,3000) OverlayData: 1 bit per pixel, row-major, least-significant bit first, even length."""
    packed = np.packbits(bitmap.astype(bool).ravel(), bitorder="little").tobytes()
    return packed + b"\x00" * (len(packed) % 2)


def add_overlay_placeholders(ds: Dataset, rows: int, cols: int) -> None:
    """The overlay plane group 6000 (PS3.3 C.9.2) with an empty OverlayData placeholder."""
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", cols)
    ds.add_new(0x60000015, "IS", "1")
    ds.add_new(0x60000022, "LO", "Siemens InlineVF contours")
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000051, "US", 1)
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", b"\x00\x00")


def siemens_csa(ds: Dataset) -> None:
    """Siemens private CSA header block (0029,xx..): creator and two small SV10 headers."""
    csa = b"SV10\x04\x03\x02\x01" + struct.pack("<II", 0, 77)
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")
    ds.add_new(0x00291009, "LO", "20100114")
    ds.add_new(0x00291010, "OB", csa)
    ds.add_new(0x00291018, "CS", "MR")
    ds.add_new(0x00291019, "LO", "20100114")
    ds.add_new(0x00291020, "OB", csa)


def file_meta(sop_class_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID + ".0.1"
    meta.ImplementationVersionName = "MR_VD13A"
    return meta


@dataclass(frozen=True)
class ManifestRow:
    filename: str
    series_uid: str
    series_description: str


def manifest_text(
    rows: list[ManifestRow],
    *,
    patient_id: str,
    study_id: str,
    study_description: str,
    when: dt.datetime,
    aet: str,
    host: str,
    with_modality: bool,
) -> str:
    """``manifest.cvs`` as UK Biobank writes it: the ``series discription`` header and the date's
    unquoted comma (``Aug 30, 2015 10:12:33``), which shifts a naive CSV parse by one column."""
    header = MANIFEST_HEADER_WITH_MODALITY if with_modality else MANIFEST_HEADER
    date = f"{when.strftime('%b')} {when.day}, {when.year} {when.strftime('%H:%M:%S')}"
    lines = [",".join(header)]
    for row in rows:
        fields = [
            row.filename,
            patient_id,
            study_id,
            study_description,
            date,
            row.series_uid,
            row.series_description,
        ]
        if with_modality:
            fields.append("MR")
        fields += [aet, host]
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def write_zip(members: list[tuple[str, bytes]], when: dt.datetime, compresslevel: int = 1) -> bytes:
    """A deterministic deflated zip (fixed timestamps, member order as given)."""
    buf = io.BytesIO()
    stamp = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=compresslevel)
    return buf.getvalue()
