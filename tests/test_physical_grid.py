"""The tensor's physical grid and standard view, checked against constructions the code does not make.

* Known contours (a real study's expert endocardial contours, and analytic ellipses standing in for a
  synthetic truth) are rasterised at acquired pixel sizes of 1.3, 1.8 and 2.2 mm and sent through the
  pipeline's own label and image paths onto the model grid: the contoured cavity volume (shoelace area x
  slice spacing) comes back within 3%.
* Mirrored, transposed and apex-first acquisitions of one stack, written as DICOMs with pydicom and read
  back, give the same tensor as the standard acquisition.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon

from lvmass.core import contracts
from lvmass.core.decode import decode_dicom_members
from lvmass.core.mass import measure_label_volume
from lvmass.core.study import DecodedStudy
from lvmass.core.tensor import (
    build_image_tensor,
    build_label_volume,
    resample_slice,
    unplace_label_volume,
)
from tests import dicom_factory as fac

REAL_DIR = Path(__file__).parent / "data" / "real_cmr"
CONTOURS_ZIP = REAL_DIR / "SCD0000501_endocardial_contours.zip"
REAL_PIXEL_MM = 1.3672  # PixelSpacing of the Sunnybrook study the contours were drawn on
REAL_SLICE_MM = 8.0
GRID_MM = 1.86  # the bundled models' grid
ACQUIRED_SIZES_MM = (1.3, 1.8, 2.2)
# 3%: the bound. Nearest-neighbour labels at 2.2 mm measured within 1% here; the bound leaves
# room for the image path's interpolation at the cavity edge.
VOLUME_REL_TOL = 0.03


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a closed polygon (its own units squared)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def expert_ed_contours_mm() -> list[np.ndarray]:
    """The expert's end-diastolic cavity contour of each contoured slice, base to apex, in mm.

    Each slice has two contoured frames (image numbers 20k+9 and 20k+19 of a 20-phase slice): end
    diastole is the one with the larger cavity."""
    by_slice: dict[int, list[tuple[float, np.ndarray]]] = {}
    with zipfile.ZipFile(CONTOURS_ZIP) as archive:
        for name in archive.namelist():
            if not name.endswith(".txt"):
                continue
            image_number = int(name.rsplit("/", 1)[1].split("-")[2])
            points = np.loadtxt(io.BytesIO(archive.read(name))) * REAL_PIXEL_MM  # (x, y) pixels -> mm
            by_slice.setdefault((image_number - 1) // 20, []).append((polygon_area(points), points))
    return [max(frames, key=lambda f: f[0])[1] for _, frames in sorted(by_slice.items())]


def ellipse_contours_mm(n_slices: int = 9) -> list[np.ndarray]:
    """A synthetic cavity: ellipses shrinking to the apex, rotated, off the image centre (mm)."""
    t = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
    contours = []
    for k in range(n_slices):
        a, b = 30.0 - 2.8 * k, 22.0 - 2.0 * k
        angle = 0.4
        x, y = a * np.cos(t), b * np.sin(t)
        xr = x * np.cos(angle) - y * np.sin(angle) + 190.0
        yr = x * np.sin(angle) + y * np.cos(angle) + 160.0
        contours.append(np.stack([xr, yr], axis=1))
    return contours


def rasterise(contours_mm: list[np.ndarray], pixel_mm: float, fov_mm: float = 350.0) -> list[np.ndarray]:
    """Cavity masks (uint8, 1 inside) on a square grid of ``pixel_mm`` pixels whose centres lie at
    ``(col * pixel_mm, row * pixel_mm)``, the contours' own frame."""
    n = round(fov_mm / pixel_mm)
    rows, cols = np.mgrid[0:n, 0:n]
    centres = np.stack([cols.ravel() * pixel_mm, rows.ravel() * pixel_mm], axis=1)
    return [Polygon(c).contains_points(centres).reshape(n, n).astype(np.uint8) for c in contours_mm]


def contoured_volume_ml(contours_mm: list[np.ndarray], slice_mm: float) -> float:
    return sum(polygon_area(c) for c in contours_mm) * slice_mm / 1000.0


def study_of(masks: list[np.ndarray], pixel_mm: float, slice_mm: float) -> DecodedStudy:
    """A decoded study whose images are the masks as intensities (cavity 800, elsewhere 100)."""
    images = tuple(np.where(m > 0, 800.0, 100.0).astype(np.float32) for m in masks)
    return DecodedStudy(
        eid=1, instance=2, source_uri="mem://contours.zip", images=images, outlines=(None,) * len(images),
        pixel_spacing_mm=(pixel_mm, pixel_mm), slice_spacing_mm=slice_mm, slice_thickness_mm=slice_mm,
        slice_positions_mm=tuple(k * slice_mm for k in range(len(images))),
    )


CONTOUR_SETS = {
    "real_expert": (expert_ed_contours_mm, REAL_SLICE_MM),
    "synthetic_ellipses": (ellipse_contours_mm, 10.0),
}


class TestContourRoundTrip:
    @pytest.mark.parametrize("pixel_mm", ACQUIRED_SIZES_MM)
    @pytest.mark.parametrize("name", sorted(CONTOUR_SETS))
    def test_label_path_keeps_the_contoured_volume(self, name, pixel_mm):
        make, slice_mm = CONTOUR_SETS[name]
        contours = make()
        truth_ml = contoured_volume_ml(contours, slice_mm)
        masks = rasterise(contours, pixel_mm)
        volume = build_label_volume(masks, slice_start=0, acquired_pixel_spacing_mm=(pixel_mm, pixel_mm),
                                    grid_pixel_mm=GRID_MM)
        measured = measure_label_volume(volume, (GRID_MM, GRID_MM, slice_mm)).lv_cavity_volume_ml
        assert measured == pytest.approx(truth_ml, rel=VOLUME_REL_TOL)

    @pytest.mark.parametrize("pixel_mm", ACQUIRED_SIZES_MM)
    @pytest.mark.parametrize("name", sorted(CONTOUR_SETS))
    def test_image_path_keeps_the_contoured_volume(self, name, pixel_mm):
        """The image itself, resampled (anti-aliased, linear) onto the grid: thresholding half-way
        between cavity and background recovers the volume, so the grid's scale is physical."""
        make, slice_mm = CONTOUR_SETS[name]
        contours = make()
        truth_ml = contoured_volume_ml(contours, slice_mm)
        tensor = build_image_tensor(study_of(rasterise(contours, pixel_mm), pixel_mm, slice_mm),
                                    grid_pixel_mm=GRID_MM)
        assert tensor.spacing_mm.tolist() == pytest.approx([GRID_MM, GRID_MM, slice_mm])
        assert tensor.in_plane_scale == pytest.approx((pixel_mm / GRID_MM, pixel_mm / GRID_MM))
        image = tensor.image[..., 0]
        n = len(contours)
        acquired = image[:, :, :n]
        inside = acquired > (acquired.max() + np.median(acquired[acquired != 0])) / 2
        measured_ml = float(inside.sum()) * GRID_MM * GRID_MM * slice_mm / 1000.0
        assert measured_ml == pytest.approx(truth_ml, rel=VOLUME_REL_TOL)

    def test_the_heart_lands_in_the_same_place_at_every_acquired_size(self):
        contours = ellipse_contours_mm()
        grids = [build_label_volume(rasterise(contours, p), slice_start=0, acquired_pixel_spacing_mm=(p, p),
                                    grid_pixel_mm=GRID_MM) for p in ACQUIRED_SIZES_MM]
        for other in grids[1:]:
            overlap = np.logical_and(grids[0] > 0, other > 0).sum()
            dice = 2 * overlap / ((grids[0] > 0).sum() + (other > 0).sum())
            assert dice > 0.95  # the same physical place and size on the grid (a shift of 2 px gives ~0.9)

    @pytest.mark.parametrize("pixel_mm", ACQUIRED_SIZES_MM)
    def test_unplace_returns_labels_to_the_acquisition(self, pixel_mm):
        masks = rasterise(ellipse_contours_mm(), pixel_mm)
        volume = build_label_volume(masks, slice_start=0, acquired_pixel_spacing_mm=(pixel_mm, pixel_mm),
                                    grid_pixel_mm=GRID_MM)
        back = unplace_label_volume(volume, (*masks[0].shape, len(masks)), slice_start=0,
                                    acquired_pixel_spacing_mm=(pixel_mm, pixel_mm), grid_pixel_mm=GRID_MM)
        original = np.stack(masks, axis=-1)
        dice = 2 * np.logical_and(back > 0, original > 0).sum() / ((back > 0).sum() + (original > 0).sum())
        assert dice > 0.97  # two nearest-neighbour resamplings move the edge by at most a pixel


class TestResampleSlice:
    def test_same_grid_is_an_unchanged_copy(self):
        arr = np.arange(12, dtype=np.float32).reshape(3, 4)
        out = resample_slice(arr, (1.8, 1.8), (1.8, 1.8))
        np.testing.assert_array_equal(out, arr)
        assert out is not arr

    def test_shrinking_is_anti_aliased(self):
        """A 2-pixel stripe pattern at 1.2 mm cannot be represented at 1.86 mm: linear interpolation
        alone folds it back into stripes of full contrast (sd 300 of 1000 measured, scipy alone); the
        anti-aliasing filter must take most of that out."""
        stripes = np.tile(np.array([0.0, 1000.0], dtype=np.float32), (64, 32))
        out = resample_slice(stripes, (1.2, 1.2), (GRID_MM, GRID_MM))
        centre = out[8:-8, 8:-8]
        assert centre.std() < 0.4 * 300.0
        assert centre.mean() == pytest.approx(500.0, rel=0.02)

    def test_labels_keep_their_values(self):
        labels = np.zeros((50, 50), dtype=np.uint8)
        labels[10:30, 10:30] = 2
        labels[15:25, 15:25] = 1
        out = resample_slice(labels, (1.3, 1.3), (GRID_MM, GRID_MM), labels=True)
        assert set(np.unique(out)) == {0, 1, 2} and out.dtype == np.uint8
        assert out.shape == (round(50 * 1.3 / GRID_MM),) * 2


# --- Orientation: one standard view whatever the acquisition ------------------------------------------


def reacquire(members: dict[str, bytes], *, transpose: bool = False, flip_rows: bool = False,
              flip_cols: bool = False) -> dict[str, bytes]:
    """The same physical acquisition stored another way: pixel arrays transposed / mirrored, with
    ImageOrientationPatient, ImagePositionPatient (the first transmitted pixel) and PixelSpacing
    rewritten to match (DICOM PS3.3 C.7.6.2), so every pixel keeps its place in the patient."""
    out = {}
    for name, data in members.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        pixels = ds.pixel_array
        along_cols = np.array(ds.ImageOrientationPatient[:3], dtype=np.float64)
        along_rows = np.array(ds.ImageOrientationPatient[3:], dtype=np.float64)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        position = np.array(ds.ImagePositionPatient, dtype=np.float64)
        if transpose:
            pixels = pixels.T
            along_cols, along_rows = along_rows, along_cols
            row_mm, col_mm = col_mm, row_mm
        if flip_rows:
            position = position + (pixels.shape[0] - 1) * row_mm * along_rows
            pixels, along_rows = pixels[::-1, :], -along_rows
        if flip_cols:
            position = position + (pixels.shape[1] - 1) * col_mm * along_cols
            pixels, along_cols = pixels[:, ::-1], -along_cols
        pixels = np.ascontiguousarray(pixels)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*along_cols, *along_rows)]
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.PixelSpacing = [row_mm, col_mm]
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out[name] = buffer.getvalue()
    return out


def members_opener(members: dict[str, bytes]):
    return {name: (lambda data=data: io.BytesIO(data)) for name, data in members.items()}


@pytest.fixture(scope="module")
def standard_acquisition():
    return fac.any_vendor_members(n_slices=7, n_phases=3, seed=21).members


ACQUISITIONS = {
    "mirrored_columns": {"flip_cols": True},
    "mirrored_rows": {"flip_rows": True},
    "transposed": {"transpose": True},
    "rotated_quarter_turn": {"transpose": True, "flip_cols": True},
    "rotated_half_turn": {"flip_rows": True, "flip_cols": True},
}


class TestStandardView:
    def test_the_factorys_standard_acquisition_is_kept_as_written(self, standard_acquisition):
        study = decode_dicom_members(members_opener(standard_acquisition), "mem://std")
        assert study.in_plane_view == "none"

    @pytest.mark.parametrize("name", sorted(ACQUISITIONS))
    def test_every_acquisition_of_the_plane_gives_the_standard_tensor(self, standard_acquisition, name):
        standard = decode_dicom_members(members_opener(standard_acquisition), "mem://std")
        other = decode_dicom_members(members_opener(reacquire(standard_acquisition, **ACQUISITIONS[name])),
                                     "mem://other")
        assert other.in_plane_view != "none"
        assert other.pixel_spacing_mm == pytest.approx(standard.pixel_spacing_mm)
        for mine, theirs in zip(standard.images, other.images, strict=True):
            np.testing.assert_array_equal(mine, theirs)
        np.testing.assert_array_equal(build_image_tensor(standard, grid_pixel_mm=GRID_MM).image,
                                      build_image_tensor(other, grid_pixel_mm=GRID_MM).image)

    def test_a_stack_acquired_apex_first_gives_the_same_tensor(self, standard_acquisition):
        """Slices written in the opposite order (InstanceNumbers and file names running apex to base)
        with the normal flipped by a column mirror: the tensor is still base to apex, standard view."""
        mirrored = reacquire(standard_acquisition, flip_cols=True)
        renamed = {f"IM{len(mirrored) - k:04d}": data for k, (_, data) in enumerate(sorted(mirrored.items()))}
        standard = build_image_tensor(decode_dicom_members(members_opener(standard_acquisition), "mem://a"))
        reversed_ = build_image_tensor(decode_dicom_members(members_opener(renamed), "mem://b"))
        np.testing.assert_array_equal(standard.image, reversed_.image)

    def test_base_is_where_anatomy_puts_it_not_a_constant(self, standard_acquisition):
        """Flip the stack through the patient (apex towards +normal): the slice order reverses."""
        geometry_flipped = fac.StackGeometry(apex_sign=1.0)
        flipped = fac.any_vendor_members(n_slices=7, n_phases=3, seed=21, geometry=geometry_flipped)
        a = decode_dicom_members(members_opener(standard_acquisition), "mem://a")
        b = decode_dicom_members(members_opener(flipped.members), "mem://b")
        for mine, theirs in zip(a.images, reversed(b.images), strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_contracts_record_the_view_and_grid():
    assert contracts.IN_PLANE_VIEW == "short_axis_from_apex_anterior_up"
    assert contracts.GRID == "physical_resampled_in_plane"
