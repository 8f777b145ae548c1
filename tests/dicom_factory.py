"""Small real DICOMs and participant zips for the decode tests, written with pydicom.

Independent of the synthetic cohort generator: each builder returns the bytes plus what a correct
decoder must find (slice order, ED frame values, outlines), so tests compare against construction.

Pixel values encode where they come from: ``stored = 1000 + 100 * base_index + 10 * phase + (r + c) % 7``
(``base_index`` 0 at the base), so a test can tell which slice and which phase was decoded.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
UID_ROOT = "1.2.826.0.1.3680043.10.999."


def rotation(a_deg: float, b_deg: float, c_deg: float) -> np.ndarray:
    """Rotation matrix Rz(a) Rx(b) Ry(c); its columns are row cosines, column cosines, normal."""
    a, b, c = np.deg2rad([a_deg, b_deg, c_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class StackGeometry:
    """A tilted short-axis stack. Slice ``k`` (0 = base) has its centre at
    ``centre_mm + k * slice_spacing_mm * apex_sign * normal``."""

    rows: int = 40
    cols: int = 36
    pixel_spacing_mm: tuple[float, float] = (1.8, 1.9)
    slice_spacing_mm: float = 10.0
    slice_thickness_mm: float = 8.0
    # A tilted standard short-axis acquisition (contracts.IN_PLANE_VIEW): the column cosines run
    # posterior (anterior wall at the top), the apex lies towards -normal (left, anterior, inferior), so
    # the image is seen from the apex and the decoder keeps the pixels as written.
    angles_deg: tuple[float, float, float] = (-15.0, -15.0, -45.0)
    centre_mm: tuple[float, float, float] = (12.0, -40.0, 55.0)
    apex_sign: float = -1.0

    @property
    def axes(self) -> np.ndarray:
        return rotation(*self.angles_deg)

    @property
    def orientation(self) -> list[float]:
        r = self.axes
        return [*r[:, 0].tolist(), *r[:, 1].tolist()]

    @property
    def normal(self) -> np.ndarray:
        return self.axes[:, 2]

    def slice_centre(self, k: float) -> np.ndarray:
        return np.asarray(self.centre_mm) + k * self.slice_spacing_mm * self.apex_sign * self.normal

    def position(self, k: float) -> list[float]:
        """ImagePositionPatient: centre of the first transmitted pixel (top-left)."""
        r = self.axes
        row_mm, col_mm = self.pixel_spacing_mm
        # Moving along a row steps columns (col spacing); moving down a column steps rows (row spacing).
        top_left = (
            self.slice_centre(k)
            - (self.cols - 1) / 2 * col_mm * r[:, 0]
            - (self.rows - 1) / 2 * row_mm * r[:, 1]
        )
        return top_left.tolist()


def stored_pixels(rows: int, cols: int, base_index: int, phase: int) -> np.ndarray:
    """The stored (pre-rescale) values of one frame, encoding slice and phase."""
    r, c = np.indices((rows, cols))
    return (1000 + 100 * base_index + 10 * phase + (r + c) % 7).astype(np.uint16)


def ring_outline(rows: int, cols: int, outer_radius: float, inner_radius: float) -> np.ndarray:
    """Two concentric 1-pixel-wide closed curves (epicardium, endocardium) centred in the image."""
    return circle_outline(rows, cols, outer_radius) | circle_outline(rows, cols, inner_radius)


def circle_outline(
    rows: int, cols: int, radius: float, centre: tuple[float, float] | None = None
) -> np.ndarray:
    """The boundary pixels of a digital disk: inside the disk, with a 4-neighbour outside it."""
    cy, cx = centre if centre is not None else ((rows - 1) / 2, (cols - 1) / 2)
    y, x = np.indices((rows, cols))
    disk = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    padded = np.pad(disk, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return disk & ~interior


def pack_overlay_lsb_first(outline: np.ndarray) -> bytes:
    """OverlayData (60xx,3000): 1 bit per pixel, row-major, least significant bit first, even length."""
    data = np.packbits(outline.astype(np.uint8).ravel(), bitorder="little").tobytes()
    return data + b"\x00" if len(data) % 2 else data


def mr_dicom(
    *,
    rows: int,
    cols: int,
    pixels: np.ndarray | None,
    series_description: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    trigger_time_ms: float | None,
    position: list[float] | None,
    orientation: list[float] | None,
    pixel_spacing_mm: tuple[float, float] | None = (1.8, 1.9),
    slice_thickness_mm: float = 8.0,
    spacing_between_slices_mm: float | None = None,
    rescale: tuple[float, float] | None = None,
    outline: np.ndarray | None = None,
    acquisition_time: str = "101500",
    patient_id: str = "ANON",
    sop_class: str = MR_IMAGE_STORAGE,
) -> bytes:
    """One single-frame MR image (Explicit VR Little Endian, 16-bit unsigned, 12 stored) as file bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid(prefix=UID_ROOT)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.MagneticFieldStrength = 1.5
    ds.PatientID = patient_id
    ds.StudyInstanceUID = UID_ROOT + "1"
    ds.AcquisitionDate = "20150830"
    ds.AcquisitionTime = acquisition_time
    ds.SeriesDate = "20150830"
    ds.SeriesTime = acquisition_time
    ds.SeriesDescription = series_description
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.CardiacNumberOfImages = 50
    if trigger_time_ms is not None:
        ds.TriggerTime = trigger_time_ms
    if position is not None:
        ds.ImagePositionPatient = [round(v, 6) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [round(v, 8) for v in orientation]
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = list(pixel_spacing_mm)
    ds.SliceThickness = slice_thickness_mm
    if spacing_between_slices_mm is not None:
        ds.SpacingBetweenSlices = spacing_between_slices_mm
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope = rescale[0]
        ds.RescaleIntercept = rescale[1]
    if outline is not None:
        ds.add_new((0x6000, 0x0010), "US", outline.shape[0])
        ds.add_new((0x6000, 0x0011), "US", outline.shape[1])
        ds.add_new((0x6000, 0x0015), "IS", 1)
        ds.add_new((0x6000, 0x0040), "CS", "G")
        ds.add_new((0x6000, 0x0050), "SS", [1, 1])
        ds.add_new((0x6000, 0x0100), "US", 1)
        ds.add_new((0x6000, 0x0102), "US", 0)
        ds.add_new((0x6000, 0x3000), "OW", pack_overlay_lsb_first(outline))
    if pixels is not None:
        ds.PixelData = np.asarray(pixels, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


MANIFEST_HEADER = "filename,patientid,studyid,studydescription,date,seriesid,series discription,aet,host"


def plain_frame(*, rows: int = 8, cols: int = 8, **fields) -> bytes:
    """A blank single frame at the origin with the identity orientation; ``fields`` override any
    :func:`mr_dicom` argument (tests that need one image with one thing set)."""
    defaults = dict(rows=rows, cols=cols, pixels=np.zeros((rows, cols)), series_description="x",
                    series_uid="1.2.3", series_number=1, instance_number=1, trigger_time_ms=0.0,
                    position=[0, 0, 0], orientation=[1, 0, 0, 0, 1, 0])
    return mr_dicom(**{**defaults, **fields})


def stack_frame(g: StackGeometry, k: int, **fields) -> bytes:
    """Slice ``k`` of stack ``g`` as the first frame of its own ``CINE_segmented_SAX_b{k+1}`` series;
    ``fields`` override any :func:`mr_dicom` argument (one defect per test)."""
    defaults = dict(rows=g.rows, cols=g.cols, pixels=stored_pixels(g.rows, g.cols, k, 0),
                    series_description=f"CINE_segmented_SAX_b{k + 1}", series_uid=f"1.2.{k}", series_number=k,
                    instance_number=1, trigger_time_ms=0.0, position=g.position(k), orientation=g.orientation,
                    pixel_spacing_mm=g.pixel_spacing_mm, slice_thickness_mm=g.slice_thickness_mm)
    return mr_dicom(**{**defaults, **fields})


def manifest_text(entries: list[tuple[str, str]], *, patient_id: str = "1000001") -> str:
    """A manifest with the real defect: the date holds an unquoted comma."""
    lines = [MANIFEST_HEADER]
    for k, (name, description) in enumerate(entries):
        lines.append(
            f"{name},{patient_id},1.3.12.{k % 3},CardiacMRI,Aug 30, 2015 10:12:33,1.3.12.2.{k},{description},"
            "AET_UKB,host01"
        )
    return "\r\n".join(lines) + "\r\n"


@dataclass
class FactoryZip:
    """A participant zip and what a correct decoder must find in it."""

    data: bytes
    name: str
    n_slices: int
    n_phases: int
    geometry: StackGeometry
    rescale: tuple[float, float]
    base_indices: list[int]  # expected slice order (base index of each decoded slice, base to apex)
    ed_outlines: list[np.ndarray | None]  # expected outline per decoded slice
    n_dicoms: int = 0
    members: dict[str, bytes] = field(default_factory=dict)

    def expected_image(self, base_index: int, phase: int = 0) -> np.ndarray:
        g = self.geometry
        stored = stored_pixels(g.rows, g.cols, base_index, phase).astype(np.float64)
        return (stored * self.rescale[0] + self.rescale[1]).astype(np.float32)

    def opener_mapping(self) -> dict[str, Callable[[], io.BytesIO]]:
        return {name: (lambda data=data: io.BytesIO(data)) for name, data in self.members.items()}


def _uid_name(rng: random.Random) -> str:
    return f"1.3.12.2.1107.5.2.18.{rng.randrange(10**5, 10**6)}.{rng.randrange(10**11, 10**12)}.dcm"


def ukbb_participant_zip(
    eid: int = 1000001,
    *,
    n_slices: int = 8,
    n_phases: int = 4,
    geometry: StackGeometry | None = None,
    seed: int = 0,
    rescale: tuple[float, float] = (2.0, -100.0),
    with_inlinevf: bool = True,
    outline_slices: set[int] | None = None,
    outline_phases: set[int] | None = None,
    lax_in_inlinevf: int = 2,
    duplicate_slice: int | None = None,
    mixed_series: bool = False,
    missing_pixels_slice: int | None = None,
    swap_numbers: tuple[int, int] | None = None,
    drop_slice: int | None = None,
    extras: bool = True,
    with_manifest: bool = True,
    spacing_between_slices_mm: float | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> FactoryZip:
    """A UK Biobank-layout 20209 zip: bK series (or one mixed series), the InlineVF series with
    overlays on every phase of the outlined slices, long-axis mitral-valve images (6 mm) inside it,
    an ``Inline_VF_Results`` capture, a ``manifest.cvs`` with the unquoted-comma date, a non-DICOM
    member, UID-like shuffled names.

    ``outline_phases`` limits the overlays to those phases (default: every phase); the expected
    outline of a slice is then that of the outlined phase nearest end-diastole (phase 0).

    ``swap_numbers=(i, j)`` gives base slices i and j each other's bK number (positions stay true);
    ``duplicate_slice`` adds an earlier acquisition of that slice (stored values + 2000);
    ``drop_slice`` omits that slice's bK series; ``missing_pixels_slice`` removes Pixel Data from that
    slice's ED frame.
    """
    g = geometry or StackGeometry()
    rng = random.Random(seed)
    outline_slices = set(range(1, n_slices - 1)) if outline_slices is None else outline_slices
    members: dict[str, bytes] = {}
    manifest_entries: list[tuple[str, str]] = []
    rr_ms = 1000.0

    def add(data: bytes, description: str) -> None:
        name = _uid_name(rng)
        members[name] = data
        manifest_entries.append((name, description))

    def outline_for(k: int, phase: int) -> np.ndarray | None:
        if k not in outline_slices or (outline_phases is not None and phase not in outline_phases):
            return None
        outer = min(g.rows, g.cols) / 2 - 4 - 0.6 * k - phase
        return ring_outline(g.rows, g.cols, outer, outer - 5)

    numbers = list(range(1, n_slices + 1))
    if swap_numbers is not None:
        i, j = swap_numbers
        numbers[i], numbers[j] = numbers[j], numbers[i]
    mixed_uid = generate_uid(prefix=UID_ROOT)
    for k in range(n_slices):
        if k == drop_slice:
            continue
        acquisitions = [("101500", 0)]
        if k == duplicate_slice:
            acquisitions.insert(0, ("100500", 2000))  # the earlier, superseded acquisition
        for acq_time, offset in acquisitions:
            uid = mixed_uid if mixed_series else generate_uid(prefix=UID_ROOT)
            description = "CINE_segmented_SAX" if mixed_series else f"CINE_segmented_SAX_b{numbers[k]}"
            for phase in range(n_phases):
                pixels = stored_pixels(g.rows, g.cols, k, phase) + offset
                if k == missing_pixels_slice and phase == 0:
                    pixels = None
                data = mr_dicom(
                    rows=g.rows,
                    cols=g.cols,
                    pixels=pixels,
                    series_description=description,
                    series_uid=uid,
                    series_number=100 if mixed_series else 10 + numbers[k] + (50 if offset == 0 else 0),
                    instance_number=(k * n_phases + phase + 1) if mixed_series else phase + 1,
                    trigger_time_ms=phase * rr_ms / 50,
                    position=g.position(k),
                    orientation=g.orientation,
                    pixel_spacing_mm=g.pixel_spacing_mm,
                    slice_thickness_mm=g.slice_thickness_mm,
                    spacing_between_slices_mm=spacing_between_slices_mm,
                    rescale=rescale,
                    acquisition_time=acq_time,
                )
                add(data, description)
    if with_inlinevf:
        vf_uid = generate_uid(prefix=UID_ROOT)
        for k in range(n_slices):
            for phase in range(n_phases):
                add(
                    mr_dicom(
                        rows=g.rows,
                        cols=g.cols,
                        pixels=stored_pixels(g.rows, g.cols, k, phase),
                        series_description="CINE_segmented_SAX_InlineVF",
                        series_uid=vf_uid,
                        series_number=200,
                        instance_number=k * n_phases + phase + 1,
                        trigger_time_ms=phase * rr_ms / 50,
                        position=g.position(k),
                        orientation=g.orientation,
                        pixel_spacing_mm=g.pixel_spacing_mm,
                        slice_thickness_mm=g.slice_thickness_mm,
                        rescale=rescale,
                        outline=outline_for(k, phase),
                    ),
                    "CINE_segmented_SAX_InlineVF",
                )
        # Long-axis mitral-valve images: 6 mm, orientation containing the stack normal, at the base.
        axes = g.axes
        lax_orientation = [*axes[:, 0].tolist(), *axes[:, 2].tolist()]
        for j in range(lax_in_inlinevf):
            add(
                mr_dicom(
                    rows=g.rows,
                    cols=g.cols,
                    pixels=stored_pixels(g.rows, g.cols, 50, j),
                    series_description="CINE_segmented_SAX_InlineVF",
                    series_uid=vf_uid,
                    series_number=200,
                    instance_number=n_slices * n_phases + j + 1,
                    trigger_time_ms=0.0,
                    position=g.position(0),
                    orientation=lax_orientation,
                    pixel_spacing_mm=g.pixel_spacing_mm,
                    slice_thickness_mm=6.0,
                    outline=ring_outline(g.rows, g.cols, 8, 4),
                ),
                "CINE_segmented_SAX_InlineVF",
            )
    if extras:
        add(
            mr_dicom(
                rows=16,
                cols=16,
                pixels=np.zeros((16, 16), dtype=np.uint16),
                series_description="Inline_VF_Results",
                series_uid=generate_uid(prefix=UID_ROOT),
                series_number=300,
                instance_number=1,
                trigger_time_ms=None,
                position=None,
                orientation=None,
                pixel_spacing_mm=None,
                sop_class=SECONDARY_CAPTURE_STORAGE,
            ),
            "Inline_VF_Results",
        )
    n_dicoms = len(members)
    names = list(members)
    rng.shuffle(names)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        if with_manifest:
            zf.writestr("manifest.cvs", manifest_text(manifest_entries, patient_id=str(eid)))
        for name in names:
            zf.writestr(name, members[name])
        if extras:
            zf.writestr("notes.txt", "not a DICOM; must be ignored\n")
    kept = [k for k in range(n_slices) if k != drop_slice]
    return FactoryZip(
        data=buf.getvalue(),
        name=f"{eid}_20209_2_0.zip",
        n_slices=len(kept),
        n_phases=n_phases,
        geometry=g,
        rescale=rescale,
        base_indices=kept,
        ed_outlines=(
            [outline_for(k, min(outline_phases) if outline_phases else 0) for k in kept]
            if with_inlinevf else [None] * len(kept)
        ),
        n_dicoms=n_dicoms,
        members=members,
    )


def any_vendor_members(
    *,
    n_slices: int = 7,
    n_phases: int = 5,
    geometry: StackGeometry | None = None,
    seed: int = 1,
    one_series: bool = True,
    rescale: tuple[float, float] = (1.0, 0.0),
    ed_phase_offset: int = 0,
    patient_id: str = "ANON",
) -> FactoryZip:
    """Cine short-axis DICOMs from "another vendor": no manifest, names without meaning or extension,
    shuffled InstanceNumbers, all slices in one series (or one per slice), trigger times rotated by
    ``ed_phase_offset`` (so phase ``ed_phase_offset`` has the smallest TriggerTime). The expected base
    follows the anatomical rule (apex left, anterior, inferior)."""
    g = geometry or StackGeometry()
    rng = random.Random(seed)
    instance_numbers = list(range(1, n_slices * n_phases + 1))
    rng.shuffle(instance_numbers)
    series_uid = generate_uid(prefix=UID_ROOT)
    members: dict[str, bytes] = {}
    count = 0
    for k in range(n_slices):
        uid = series_uid if one_series else generate_uid(prefix=UID_ROOT)
        for phase in range(n_phases):
            trigger = ((phase - ed_phase_offset) % n_phases) * 25.0
            data = mr_dicom(
                rows=g.rows,
                cols=g.cols,
                pixels=stored_pixels(g.rows, g.cols, k, phase),
                series_description="sa cine retro" if one_series else f"SA_{rng.randrange(1000)}",
                series_uid=uid,
                series_number=7 if one_series else 20 + k,
                instance_number=instance_numbers[count],
                trigger_time_ms=trigger,
                position=g.position(k),
                orientation=g.orientation,
                pixel_spacing_mm=g.pixel_spacing_mm,
                slice_thickness_mm=g.slice_thickness_mm,
                rescale=rescale,
                patient_id=patient_id,
            )
            members[f"IM{rng.randrange(10**6, 10**7)}"] = data
            count += 1
    return FactoryZip(
        data=b"",
        name="vendor_study",
        n_slices=n_slices,
        n_phases=n_phases,
        geometry=g,
        rescale=rescale,
        base_indices=list(range(n_slices)),
        ed_outlines=[None] * n_slices,
        n_dicoms=len(members),
        members=members,
    )


def zip_members(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip holding ``members`` at its root."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


class BlockFetchingReader(io.RawIOBase):
    """A read-only, seekable stream over ``data`` that fetches like a remote object's buffered reader.

    Beam's GCS reader (google-cloud-storage ``BlobReader``, 16 MiB chunks) keeps one buffer: a read
    inside it is free, a read anywhere else (after a backward seek, or past its end) fetches
    ``block_size`` bytes from there; ``read(-1)`` fetches the rest in one request. ``bytes_fetched`` and
    ``fetches`` count what went over the "network".
    """

    def __init__(self, data: bytes, block_size: int):
        super().__init__()
        self._data = data
        self._block_size = block_size
        self._pos = 0
        self._buffer_start = 0
        self._buffer = b""
        self.bytes_fetched = 0
        self.fetches = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _fetch(self, start: int, size: int) -> None:
        self._buffer_start = start
        self._buffer = self._data[start:start + size]
        self.bytes_fetched += len(self._buffer)
        self.fetches += 1

    def _buffered(self) -> bool:
        return self._buffer_start <= self._pos < self._buffer_start + len(self._buffer)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = len(self._data) - self._pos
            if not self._buffered():
                self._fetch(self._pos, size)
        out = bytearray()
        while len(out) < size and self._pos < len(self._data):
            if not self._buffered():
                self._fetch(self._pos, self._block_size)
            offset = self._pos - self._buffer_start
            chunk = self._buffer[offset:offset + size - len(out)]
            out += chunk
            self._pos += len(chunk)
        return bytes(out)

    def readinto(self, b) -> int:  # io.RawIOBase's own read() would come here
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)
