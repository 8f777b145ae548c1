"""The real cine studies with expert contours (Sunnybrook Cardiac Data, GE 1.5 T, CC0): reading and reference.

Why a module of its own: every change to decode, tensor, mass, QC or a model is checked on these studies
(``benchmarks/evaluate_real.py``, ``benchmarks/synthetic_gap.py``, the tests); the contour format, the
end-diastolic frame and the reference mass are defined here once.

Layout of a study folder (``../shared/data/real_cmr/``; one of the studies is also in
``tests/data/real_cmr/``): ``SCD0000N01.zip`` holds ``K.dcm`` images, image number ``K = 20 s + p`` for
slice ``s`` and phase ``p`` (1-20). Contours come as ``SCD0000N01_contours.zip`` (``i-contours/`` and
``o-contours/``) or as the pair ``_endocardial_contours.zip`` / ``_epicardial_contours.zip``; each file
``IM-0001-NNNN-{i,o}contour-manual.txt`` holds one ``x y`` point per line in pixel units of image NNNN.

**Rasterisation convention.** A pixel belongs to a contour when its centre lies inside the polygon, and the
centre of pixel (row r, column c) is the point ``x = c, y = r`` (the contour files' origin is the centre of
the first pixel). With this convention the reference masses computed here equal the published ones in the
data's README (118.2, 143.5, 133.5, 116.4, 133.1 g) to 0.1 g; a half-pixel shift of the contours (origin at
the first pixel's corner) moves a study's myocardium Dice by 0.02-0.05, so every Dice of this project uses
this one convention.

**End diastole.** The experts contoured two phases per slice; end diastole is the one phase whose
endocardial contours enclose the larger cavity in total (per slice the larger contour is not always it).

**Reference mass.** On each end-diastolic image with both contours: myocardium = epicardial mask minus
endocardial mask (papillary muscles inside the endocardial contour count as cavity), pixels x pixel area x
the slice spacing (from ImagePositionPatient) x 1.05 g/mL, summed over those slices only. A model's mass
is compared on the same slices.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from matplotlib.path import Path as Polygon

from lvmass.core import contracts
from lvmass.core.geometry import ViewTransform
from lvmass.core.study import DecodedStudy

REPO = Path(__file__).resolve().parent.parent
# The five studies live beside the repository (the workplace's shared data); one is in the repo's tests.
SHARED_DATA_DIR = REPO.parent / "shared" / "data" / "real_cmr"
TESTS_DATA_DIR = REPO / "tests" / "data" / "real_cmr"
PHASES_PER_SLICE = 20
# The published reference masses (the data's README), to check this module's reading against.
PUBLISHED_REFERENCE_MASS_G = {
    "SCD0000101": 118.2,
    "SCD0000201": 143.5,
    "SCD0000301": 133.5,
    "SCD0000401": 116.4,
    "SCD0000501": 133.1,
}
ENDOCARDIAL, EPICARDIAL = "i", "o"


def default_data_dir() -> Path:
    """The shared folder with all five studies when it is there, else the repository's one study."""
    return SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else TESTS_DATA_DIR


@dataclass(frozen=True)
class ExpertContour:
    """One expert contour: its image number, kind (``i`` endocardial, ``o`` epicardial) and points
    (x = column, y = row) in pixels."""

    image_number: int
    kind: str
    points_px: np.ndarray

    @property
    def slice_index(self) -> int:
        """The slice of the acquisition (0-based, in image-number order)."""
        return (self.image_number - 1) // PHASES_PER_SLICE

    @property
    def phase(self) -> int:
        """The cine phase (0-based) of the contoured image."""
        return (self.image_number - 1) % PHASES_PER_SLICE

    @property
    def area_px(self) -> float:
        x, y = self.points_px[:, 0], self.points_px[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@dataclass(frozen=True)
class RealStudy:
    """A study zip and its contour zips."""

    study_id: str
    zip_path: Path
    contour_zips: tuple[Path, ...]


def find_studies(data_dir: Path | None = None) -> list[RealStudy]:
    """Every ``SCD*.zip`` study of ``data_dir`` that has contours, in name order."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    studies = []
    for path in sorted(folder.glob("SCD*.zip")):
        if "contours" in path.stem:
            continue
        contours = tuple(sorted(folder.glob(f"{path.stem}_*contours.zip")))
        if contours:
            studies.append(RealStudy(path.stem, path, contours))
    return studies


def read_contours(paths: Sequence[Path]) -> list[ExpertContour]:
    """Every endocardial and epicardial contour in the zips (papillary contours are not used)."""
    contours = []
    for path in paths:
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                base = name.rsplit("/", 1)[-1]
                if not base.endswith("contour-manual.txt"):
                    continue
                parts = base.split("-")
                kind = parts[3][0]
                if kind not in (ENDOCARDIAL, EPICARDIAL):
                    continue
                points = np.loadtxt(io.BytesIO(archive.read(name)), ndmin=2)
                contours.append(ExpertContour(int(parts[2]), kind, points))
    return contours


def end_diastolic_phase(contours: Sequence[ExpertContour]) -> int:
    """The contoured phase whose endocardial contours hold the larger cavity in total (module docstring)."""
    totals: dict[int, float] = {}
    for contour in contours:
        if contour.kind == ENDOCARDIAL:
            totals[contour.phase] = totals.get(contour.phase, 0.0) + contour.area_px
    if not totals:
        raise ValueError("no endocardial contours")
    return max(totals, key=lambda p: totals[p])


def rasterise_contour(points_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool mask of the pixels whose centres (x = column, y = row) lie inside the contour."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    return Polygon(points_px).contains_points(centres).reshape(shape)


def view_transform(description: str) -> ViewTransform:
    """The :class:`ViewTransform` a decoded study records as ``in_plane_view`` (``"none"`` or steps)."""
    steps = set() if description == "none" else set(description.split("+"))
    unknown = steps - {"transpose", "flip_rows", "flip_cols"}
    if unknown:
        raise ValueError(f"unknown in-plane view steps {sorted(unknown)} in {description!r}")
    return ViewTransform("transpose" in steps, "flip_rows" in steps, "flip_cols" in steps)


@dataclass(frozen=True)
class ExpertSlice:
    """The expert's end-diastolic labels of one decoded slice, in the decoded (standard) view: the
    cavity mask, and the myocardium mask where the slice also has an epicardial contour (else None)."""

    slice_index: int
    cavity: np.ndarray
    myocardium: np.ndarray | None

    def label_map(self) -> np.ndarray:
        """uint8 labels in ``contracts.LABEL_MAP`` (myocardium only where it was contoured)."""
        out = np.where(self.cavity, contracts.LV_CAVITY, contracts.BACKGROUND).astype(np.uint8)
        if self.myocardium is not None:
            out[self.myocardium] = contracts.MYOCARDIUM
        return out


@dataclass(frozen=True)
class ExpertStudy:
    """A real study decoded at the expert's end diastole, with the expert's labels per decoded slice."""

    study_id: str
    study: DecodedStudy
    slices: dict[int, ExpertSlice]
    image_numbers: tuple[int, ...]
    members: Mapping[str, bytes]

    @property
    def myocardium_slices(self) -> list[int]:
        """The decoded slices with both contours (where the reference mass is measured)."""
        return sorted(k for k, s in self.slices.items() if s.myocardium is not None)

    def reference_mass_g(self) -> float:
        """Expert myocardium on the slices with both contours x voxel x 1.05 g/mL (module docstring)."""
        row_mm, col_mm = self.study.pixel_spacing_mm
        voxel_ml = row_mm * col_mm * self.study.slice_spacing_mm / 1000.0
        pixels = sum(int(self.slices[k].myocardium.sum()) for k in self.myocardium_slices)  # type: ignore[union-attr]
        return pixels * voxel_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML


def _openers(members: Mapping[str, bytes]) -> dict[str, Callable[[], BinaryIO]]:
    return {name: (lambda data=data: io.BytesIO(data)) for name, data in members.items()}


def decode_frames(members: Mapping[str, bytes], image_numbers: Sequence[int], source: str) -> DecodedStudy:
    """The pipeline's decode of the given images only (one frame per slice: the ED rule has no choice)."""
    from lvmass.core.decode import decode_dicom_members

    chosen = {f"{n}.dcm": members[f"{n}.dcm"] for n in image_numbers}
    return decode_dicom_members(_openers(chosen), source)


def decode_pipeline_frame(source: Path) -> DecodedStudy:
    """The pipeline's decode of the whole zip with its default ED rule (first trigger time)."""
    from lvmass.core.decode import decode_participant_zip

    with open(source, "rb") as handle:
        return decode_participant_zip(handle, str(source))


def _match_slice(study: DecodedStudy, pixels: np.ndarray) -> int | None:
    """The decoded slice holding these pixels (as the decoder turned them), or None."""
    scaled = (pixels - pixels.mean()) / (pixels.std() + 1e-9)
    matches = [
        k
        for k, image in enumerate(study.images)
        if image.shape == pixels.shape
        and np.allclose((image - image.mean()) / (image.std() + 1e-9), scaled, atol=1e-4)
    ]
    return matches[0] if len(matches) == 1 else None


def load_expert_study(real: RealStudy) -> ExpertStudy:
    """Decode the expert's end-diastolic frame of every slice and rasterise the contours on it.

    Each contour's image is found among the decoded slices by its pixels (as the decoder turned them to
    the standard view), so neither slice order nor orientation is assumed."""
    import pydicom

    with zipfile.ZipFile(real.zip_path) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name.endswith(".dcm")}
    contours = read_contours(real.contour_zips)
    phase = end_diastolic_phase(contours)
    ed = [c for c in contours if c.phase == phase]
    n_slices = len(members) // PHASES_PER_SLICE
    numbers = tuple(s * PHASES_PER_SLICE + phase + 1 for s in range(n_slices))
    study = decode_frames(members, numbers, f"{real.zip_path.name}#expert_ed")
    transform = view_transform(study.in_plane_view)
    by_image: dict[int, dict[str, ExpertContour]] = {}
    for contour in ed:
        by_image.setdefault(contour.image_number, {})[contour.kind] = contour
    slices: dict[int, ExpertSlice] = {}
    for number, kinds in sorted(by_image.items()):
        if ENDOCARDIAL not in kinds:
            continue
        ds = pydicom.dcmread(io.BytesIO(members[f"{number}.dcm"]))
        shape = ds.pixel_array.shape
        k = _match_slice(study, transform.apply(ds.pixel_array.astype(np.float32)))
        if k is None:
            raise ValueError(f"{real.study_id}: image {number} matches no decoded slice")
        cavity = transform.apply(rasterise_contour(kinds[ENDOCARDIAL].points_px, shape))
        myocardium = None
        if EPICARDIAL in kinds:
            epicardium = transform.apply(rasterise_contour(kinds[EPICARDIAL].points_px, shape))
            myocardium = epicardium & ~cavity
        slices[k] = ExpertSlice(k, cavity, myocardium)
    return ExpertStudy(real.study_id, study, slices, numbers, members)


def slices_by_position(study: DecodedStudy, reference: DecodedStudy) -> dict[int, int]:
    """Reference slice index -> the index of the slice at the same position in another decode of the same
    acquisition (another frame of each slice)."""
    if study.in_plane_view != reference.in_plane_view:
        raise ValueError(
            f"two decodes of one study in different views: {study.in_plane_view!r}, "
            f"{reference.in_plane_view!r}"
        )
    out = {}
    for k, position in enumerate(reference.slice_positions_mm):
        gaps = np.abs(np.asarray(study.slice_positions_mm) - position)
        if gaps.min() < 0.5:
            out[k] = int(np.argmin(gaps))
    return out
