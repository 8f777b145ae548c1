"""A corpus of broken and unusual participant inputs, made by mutating good ones, with what must happen to
each (docs/reliability.md lists the same cases).

``build_corpus(folder)`` writes every case into ``folder`` (zips, and folders of DICOMs) and returns
``{input name: Expected}``. Mutations work on real file bytes: pydicom rewrites DICOM members, the zip's
own headers are edited for encryption and sizes, and pydicom-data's real MR files stand in for other
vendors. Nothing here calls the pipeline's code.
"""

from __future__ import annotations

import io
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from tests.dicom_factory import StackGeometry, ukbb_participant_zip


@dataclass(frozen=True)
class Expected:
    """``written`` with at least ``flags`` on its rows (``qc_pass`` as given when not None), or an error
    at ``stage`` whose message contains ``says``."""

    outcome: str  # "written" | "error"
    stage: str = ""
    says: str = ""
    flags: tuple[str, ...] = ()
    qc_pass: bool | None = None
    error_type: str = ""
    extra: dict = field(default_factory=dict)


def written(*flags: str, qc_pass: bool | None = None) -> Expected:
    return Expected("written", flags=flags, qc_pass=qc_pass)


def error(stage: str, says: str, error_type: str = "") -> Expected:
    return Expected("error", stage=stage, says=says, error_type=error_type)


# --- zip and DICOM mutations ---------------------------------------------------------------------------


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def rewrite_dicoms(data: bytes, change: Callable[[pydicom.Dataset], None],
                   only: Callable[[pydicom.Dataset], bool] = lambda ds: True) -> bytes:
    members = members_of(data)
    for name, raw in list(members.items()):
        if not name.endswith(".dcm"):
            continue
        ds = pydicom.dcmread(io.BytesIO(raw))
        if not only(ds):
            continue
        change(ds)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        members[name] = buffer.getvalue()
    return zip_of(members)


def set_encrypted_flag(data: bytes, member_index: int = 0) -> bytes:
    """Mark one member as encrypted (general purpose bit 0) in its local header and the central
    directory, as a zip written with a password says; the bytes themselves stay as they were."""
    buffer = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.infolist()[member_index]
    local = info.header_offset
    assert buffer[local:local + 4] == b"PK\x03\x04"
    flags = struct.unpack_from("<H", buffer, local + 6)[0]
    struct.pack_into("<H", buffer, local + 6, flags | 0x1)
    position = 0
    while True:
        position = buffer.find(b"PK\x01\x02", position)
        if position < 0:
            break
        offset = struct.unpack_from("<I", buffer, position + 42)[0]
        if offset == local:
            flags = struct.unpack_from("<H", buffer, position + 8)[0]
            struct.pack_into("<H", buffer, position + 8, flags | 0x1)
            break
        position += 4
    return bytes(buffer)


def declare_huge_size(data: bytes, name_suffix: str, declared: int = 1 << 30) -> bytes:
    """Declare a member's uncompressed size as ``declared`` bytes in the central directory (a zip
    bomb's promise) without changing its content."""
    buffer = bytearray(data)
    position = 0
    while True:
        position = buffer.find(b"PK\x01\x02", position)
        if position < 0:
            raise ValueError(f"no member ending in {name_suffix!r}")
        name_length = struct.unpack_from("<H", buffer, position + 28)[0]
        name = bytes(buffer[position + 46:position + 46 + name_length]).decode()
        if name.endswith(name_suffix):
            struct.pack_into("<I", buffer, position + 24, declared)
            return bytes(buffer)
        position += 4


def synthetic_zip(eid: int) -> bytes:
    from lvmass.synth import render_participant
    from lvmass.synth.config import SynthConfig

    return render_participant(eid, eid % 991, config=SynthConfig(fidelity="lite")).zip_bytes


def _noise(ds: pydicom.Dataset) -> None:
    rng = np.random.default_rng(int(ds.InstanceNumber))
    ds.PixelData = rng.integers(0, 4096, (ds.Rows, ds.Columns), dtype=np.uint16).tobytes()


def _is_image(ds: pydicom.Dataset) -> bool:
    return "PixelData" in ds and ds.get("SeriesDescription", "").startswith("CINE_segmented_SAX_b")


def _drop(keyword: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        if keyword in ds:
            delattr(ds, keyword)

    return change


def _set(keyword: str, value) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        setattr(ds, keyword, value)

    return change


def _wrong_overlay_size(ds: pydicom.Dataset) -> None:
    if (0x6000, 0x0010) in ds:
        ds[0x6000, 0x0010].value = int(ds.Rows) // 2


def _same_position(ds: pydicom.Dataset) -> None:
    if "ImagePositionPatient" in ds:
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]


def _truncate_pixels(data: bytes) -> bytes:
    """Every short-axis image member cut 1000 bytes short: each ends inside its Pixel Data."""
    members = members_of(data)
    for name, raw in list(members.items()):
        if name.endswith(".dcm") and _is_image(pydicom.dcmread(io.BytesIO(raw))):
            members[name] = raw[:-1000]
    return zip_of(members)


def _overlay_too_few_bits(ds: pydicom.Dataset) -> None:
    """OverlayData (6000,3000) a quarter of what OverlayRows x OverlayColumns needs."""
    if (0x6000, 0x3000) in ds:
        value = ds[0x6000, 0x3000].value
        ds[0x6000, 0x3000].value = value[: len(value) // 4]


def large_stack_zip(eid: int, *, n_slices: int, rows: int, cols: int, spacing_mm: float) -> bytes:
    """A zip of ``n_slices`` short-axis slices of ``rows`` x ``cols`` pixels (uniform, so it deflates to
    little): a participant whose decoding would exceed the memory budget (``lvmass.core.budget``)."""
    from tests.dicom_factory import stack_frame

    g = StackGeometry(rows=rows, cols=cols, pixel_spacing_mm=(spacing_mm, spacing_mm))
    return zip_of({f"slice{k:02d}.dcm": stack_frame(g, k, pixels=np.full((rows, cols), 1000, np.uint16))
                   for k in range(n_slices)})


def _folder_of(folder: Path, name: str, files: dict[str, bytes]) -> None:
    (folder / name).mkdir()
    for file_name, data in files.items():
        (folder / name / file_name).write_bytes(data)


def _testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data lacks {name}"
    return Path(path).read_bytes()


# --- the corpus ------------------------------------------------------------------------------------------


def build_corpus(folder: Path) -> dict[str, Expected]:
    """Write every case into ``folder``; return ``{input name: Expected}``."""
    cases: dict[str, Expected] = {}

    def put(name: str, data: bytes, expected: Expected) -> None:
        (folder / name).write_bytes(data)
        cases[name] = expected

    good = synthetic_zip(3000001)
    # (its unzipped folder, 3000001_20209_2_0, comes first in sort order: it is the one processed)
    put("3000001_20209_2_0.zip", good, error("read", "also", "DuplicateInput"))
    put("3000002_20209_2_0.zip", synthetic_zip(3000002), written())
    # the manifest is a hint: broken ones do not cost a participant whose DICOMs are intact
    members = members_of(synthetic_zip(3000003))
    manifest = next(n for n in members if n.startswith("manifest"))
    members[manifest] = b"x" * 200_000  # one 200 KB line
    put("3000003_20209_2_0.zip", zip_of(members), written())
    put("3000004_20209_2_0.zip", set_encrypted_flag(synthetic_zip(3000004), member_index=_manifest_index(
        synthetic_zip(3000004))), written())
    members = members_of(synthetic_zip(3000005))
    del members[next(n for n in members if n.startswith("manifest"))]
    put("3000005_20209_2_0.zip", zip_of(members), written())
    # InlineVF overlays the wrong size: measured without them, flagged
    put("3000006_20209_2_0.zip", rewrite_dicoms(synthetic_zip(3000006), _wrong_overlay_size),
        written("inlinevf_contour_missing", qc_pass=False))
    put("3000007_20209_2_0.zip", ukbb_participant_zip(3000007, n_slices=7, n_phases=2, seed=7,
                                                      duplicate_slice=3).data,
        written("duplicate_slice_acquisition"))
    # nonsense images: written, never passing QC
    put("3000008_20209_2_0.zip", rewrite_dicoms(synthetic_zip(3000008), _noise, _is_image),
        written("image_implausible", qc_pass=False))
    put("3000009_20209_2_0.zip", ukbb_participant_zip(3000009, n_slices=7, n_phases=2, seed=9,
                                                      geometry=StackGeometry(rows=8, cols=8)).data,
        written("image_implausible", qc_pass=False))

    # unreadable files
    put("3000010_20209_2_0.zip", b"", error("read", "empty"))
    put("3000011_20209_2_0.zip", b"%PDF-1.4 not a zip", error("read", "not a zip"))
    put("3000012_20209_2_0.zip", good[: len(good) // 2], error("read", "zip"))
    put("3000013_20209_2_0.zip", set_encrypted_flag(synthetic_zip(3000013), member_index=_first_dicom_index(
        synthetic_zip(3000013))), error("", "3000013_20209_2_0.zip"))
    put("3000014_20209_2_0.zip", declare_huge_size(synthetic_zip(3000014), ".cvs"), written())
    put("3000015_20209_2_0.zip", declare_huge_size(synthetic_zip(3000015), ".dcm"),
        error("", "3000015_20209_2_0.zip"))
    # no short-axis data
    put("3000016_20209_2_0.zip", zip_of({"readme.txt": b"hello", "notes.csv": b"a,b\n"}),
        error("decode", "series"))
    put("3000017_20209_2_0.zip", zip_of({"manifest.cvs": b"filename,patientid\n"}), error("decode", "series"))
    members = {name: (b"not a DICOM file at all" * 10 if name.endswith(".dcm") else data)
               for name, data in members_of(good).items()}
    put("3000018_20209_2_0.zip", zip_of(members), error("decode", "not a DICOM file"))
    # broken geometry or pixels
    put("3000019_20209_2_0.zip", rewrite_dicoms(good, _drop("PixelData"), _is_image),
        error("decode", "Pixel"))
    put("3000020_20209_2_0.zip", rewrite_dicoms(good, _drop("ImagePositionPatient"), _is_image),
        error("decode", "ImagePositionPatient"))
    put("3000021_20209_2_0.zip", rewrite_dicoms(good, _set("PixelSpacing", ["nan", "nan"]), _is_image),
        error("decode", "PixelSpacing"))
    put("3000022_20209_2_0.zip", rewrite_dicoms(good, _set("PixelSpacing", [-1.8, -1.8]), _is_image),
        error("tensor", "PixelSpacing"))
    put("3000023_20209_2_0.zip", rewrite_dicoms(good, _same_position, _is_image), error("decode", "position"))
    # names that cannot identify a participant
    put("99999999999999999999_20209_2_0.zip", synthetic_zip(3000024), error("read", "int64"))
    put("abc_20209_2_0.zip", synthetic_zip(3000025), error("read", "is not a number"))
    # the same participant twice: a zip and its unzipped folder
    _folder_of(folder, "3000001_20209_2_0", members_of(good))
    cases["3000001_20209_2_0"] = written()
    # a folder named like a zip: read as the folder of DICOMs it holds; empty, a dead letter
    _folder_of(folder, "3000026_20209_2_0.zip", members_of(synthetic_zip(3000026)))
    cases["3000026_20209_2_0.zip"] = written()
    (folder / "3000027_20209_2_0.zip").mkdir()
    cases["3000027_20209_2_0.zip"] = error("read", "an empty folder named like a zip")
    # messages that name the zip and the member
    put("3000028_20209_2_0.zip", _truncate_pixels(good),
        error("decode", "Pixel Data (7FE0,0010) is truncated"))
    put("3000029_20209_2_0.zip", rewrite_dicoms(good, _set("ImageOrientationPatient", [0, 0, 0, 0, 0, 0]),
                                                _is_image), error("decode", "zero-length row or column"))
    # an InlineVF overlay with too few bits: that contour is lost, the participant measured
    put("3000030_20209_2_0.zip", rewrite_dicoms(synthetic_zip(3000030), _overlay_too_few_bits),
        written("inlinevf_contour_missing", qc_pass=False))
    # 20 slices of 1800 x 1800 pixels: beyond one participant's memory budget, refused before decoding
    put("3000031_20209_2_0.zip", large_stack_zip(3000031, n_slices=20, rows=1800, cols=1800, spacing_mm=0.2),
        error("decode", "one participant may use"))
    # other vendors' real files (pydicom-data): one image is no short-axis stack; enhanced and
    # compressed files fail with their reason
    for name in ("MR_small.dcm", "emri_small.dcm", "MR2_J2KI.dcm"):
        stem = "pydicom_" + name.removesuffix(".dcm").replace("-", "_")
        _folder_of(folder, stem, {name: _testdata(name)})
        cases[stem] = error("decode", "")
    return cases


def _manifest_index(data: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return next(i for i, info in enumerate(archive.infolist()) if info.filename.startswith("manifest"))


def _first_dicom_index(data: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return next(i for i, info in enumerate(archive.infolist()) if info.filename.endswith(".dcm"))


def copy_corpus(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
