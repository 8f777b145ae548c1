"""NIfTI in and out (``lvmass.core.nifti``, ``lvmass.core.acquisition``): files written here with nibabel,
of known geometry (oblique, mirrored, transposed, apex first), decoded to the same study as their DICOM
twins; every bad file a DecodeError naming it and the reason; label and image volumes written on the
acquisition grid and mapped back onto the decoded slices through their affine."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from lvmass.core import acquisition, contracts
from lvmass.core.decode import DecodeRequest, decode_dicom_members
from lvmass.core.decode.nifti import decode_nifti
from lvmass.core.geometry import APEX_DIRECTION_LPS
from lvmass.core.identity import input_key, parse_input_name
from lvmass.core.measure import acquisition_label_volume, participant_from_study
from lvmass.core.nifti import image_volume, nifti_bytes, read_nifti_volume, voxel_volume_ml
from lvmass.core.study import DecodeError
from lvmass.core.tensor import build_label_volume
from tests.decoding import file_with_stats
from tests.dicom_factory import StackGeometry, any_vendor_members, mr_dicom
from tests.nifti_factory import LAYOUTS, LPS_RAS, nifti_twin, plain_nifti

GEOMETRIES = {  # the factory's tilted standard stack, a transposed one, one mirrored in both axes
    "standard": StackGeometry(),
    "transposed": StackGeometry(angles_deg=(80.0, 20.0, 30.0), apex_sign=1.0),
    "mirrored": StackGeometry(angles_deg=(170.0, -30.0, 100.0)),
}
SOURCE = "subjects/1000123_2/sa.nii.gz"
SHEAR = np.array([[1, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # i and j 73 degrees apart


def _decode(data: bytes, uri: str = SOURCE, **kwargs):
    return decode_nifti(io.BytesIO(data), DecodeRequest(uri, **kwargs)).study


def _oblique_affine_ras() -> tuple[np.ndarray, np.ndarray]:
    """An oblique short-axis affine (RAS) of 1.5 x 1.7 mm pixels and 9 mm slices whose k runs base to
    apex, and its apex direction (unit, LPS)."""
    axes = StackGeometry(angles_deg=(-15.0, -15.0, -45.0)).axes  # row cosines, column cosines, normal
    apex_lps = -axes[:, 2]  # the factory's standard stack has its apex towards -normal
    affine_lps = np.eye(4)
    affine_lps[:3, 0], affine_lps[:3, 1] = axes[:, 1] * 1.5, axes[:, 0] * 1.7
    affine_lps[:3, 2] = apex_lps * 9.0
    affine_lps[:3, 3] = (20.0, -30.0, 40.0)
    return LPS_RAS @ affine_lps, apex_lps


class TestDecodeNifti:
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("name", sorted(GEOMETRIES))
    def test_a_nifti_twin_decodes_to_the_dicom_study(self, name, layout):
        dicom = any_vendor_members(n_slices=7, n_phases=3, geometry=GEOMETRIES[name], rescale=(2.0, -100.0))
        expected = decode_dicom_members(dicom.opener_mapping(), "x/1000123", with_inlinevf=False)
        study = _decode(nifti_twin(dicom.members.values(), layout=layout))
        assert study.n_slices == expected.n_slices
        for got, want in zip(study.images, expected.images, strict=True):
            np.testing.assert_array_equal(got, want)  # same pixels, same view, same order
            assert got.dtype == np.float32
        assert study.pixel_spacing_mm == expected.pixel_spacing_mm  # 1.8 and 1.9, not float32's 1.7999999
        assert study.slice_spacing_mm == pytest.approx(expected.slice_spacing_mm, abs=1e-5)
        np.testing.assert_allclose(study.slice_positions_mm, expected.slice_positions_mm, atol=1e-4)
        np.testing.assert_allclose(study.affine_lps, expected.affine_lps, atol=1e-3)
        assert study.outlines == (None,) * study.n_slices and np.isnan(study.slice_thickness_mm)

    def test_the_affine_places_each_voxel_where_its_dicom_pixel_lies(self):
        """Distinct random pixels, so a wrong flip, transpose or slice order cannot go unseen: the decoded
        voxel at (r, c, plane) carries the value of the DICOM pixel at the same patient position."""
        g = GEOMETRIES["mirrored"]
        rng = np.random.default_rng(5)
        frames = {k: rng.integers(0, 4000, (g.rows, g.cols)).astype(np.uint16) for k in range(6)}
        members = {f"IM{k}": mr_dicom(rows=g.rows, cols=g.cols, pixels=frames[k], series_description="sa",
                                      series_uid="1.2.3", series_number=1, instance_number=k + 1,
                                      trigger_time_ms=0.0, position=g.position(k), orientation=g.orientation,
                                      pixel_spacing_mm=g.pixel_spacing_mm) for k in frames}
        for study in (decode_dicom_members({n: (lambda d=d: io.BytesIO(d)) for n, d in members.items()},
                                           "x/1000123", with_inlinevf=False),
                      _decode(nifti_twin(members.values(), layout="cols_i_flipped"))):
            assert study.in_plane_view != "none"
            inverse_world = {}
            for k in frames:  # acquired pixel index of a patient position, per acquired slice
                inverse_world[k] = np.linalg.inv(np.column_stack([
                    g.axes[:, 1] * g.pixel_spacing_mm[0], g.axes[:, 0] * g.pixel_spacing_mm[1],
                    g.normal]))
            planes = acquisition.slice_planes(study.slice_positions_mm, study.slice_spacing_mm)
            for k, plane in enumerate(planes):
                for r, c in ((0, 0), (3, 17), (g.cols - 1, 5)):
                    if r >= study.images[k].shape[0] or c >= study.images[k].shape[1]:
                        continue
                    world = (np.asarray(study.affine_lps) @ [r, c, plane, 1.0])[:3]
                    hits = []
                    for b, inverse in inverse_world.items():
                        row, col, off = inverse @ (world - np.asarray(g.position(b)))
                        if abs(off) < 1e-3:
                            hits.append((b, round(row), round(col)))
                            assert abs(row - round(row)) < 1e-3 and abs(col - round(col)) < 1e-3
                    (b, row, col), = hits
                    assert study.images[k][r, c] == frames[b][row, col]

    def test_known_oblique_geometry_without_dicom(self):
        affine_ras, apex_lps = _oblique_affine_ras()
        voxels = np.arange(20 * 24 * 5, dtype=np.float32).reshape(20, 24, 5, order="F")
        study = _decode(plain_nifti(voxels, affine_ras))
        assert study.pixel_spacing_mm == (1.5, 1.7) or study.pixel_spacing_mm == (1.7, 1.5)
        assert study.slice_spacing_mm == 9.0
        np.testing.assert_allclose(np.diff(study.slice_positions_mm), 9.0, atol=1e-4)
        # base to apex: the apex lies left, anterior and inferior (APEX_DIRECTION_LPS)
        step = np.asarray(study.affine_lps)[:3, 2]
        assert float(step @ APEX_DIRECTION_LPS) > 0 and np.allclose(step, apex_lps * 9.0, atol=1e-4)
        for k, image in enumerate(study.images):  # k runs base to apex here, so slice k is plane k
            assert {float(v) for v in image.ravel()} == {float(v) for v in voxels[:, :, k].ravel()}

    def test_a_stack_written_apex_first_comes_out_base_first(self):
        affine_ras, _ = _oblique_affine_ras()
        flipped = affine_ras.copy()
        flipped[:3, 3] = affine_ras[:3, 3] + 4 * affine_ras[:3, 2]
        flipped[:3, 2] = -affine_ras[:3, 2]
        voxels = np.stack([np.full((12, 12), k + 1, dtype=np.float32) for k in range(5)], axis=-1)
        base_first = _decode(plain_nifti(voxels, affine_ras))
        apex_first = _decode(plain_nifti(voxels[:, :, ::-1], flipped))
        assert [float(i[0, 0]) for i in base_first.images] == [1, 2, 3, 4, 5]
        assert [float(i[0, 0]) for i in apex_first.images] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(apex_first.affine_lps, base_first.affine_lps, atol=1e-4)

    @pytest.mark.parametrize("ed_rule", ["first_trigger_time", "first_instance"])
    def test_the_ed_frame_is_the_cines_first_for_both_rules_and_sa_ed_is_the_same(self, ed_rule):
        dicom = any_vendor_members(n_slices=6, n_phases=4)
        cine = _decode(nifti_twin(dicom.members.values()), ed_rule=ed_rule)
        ed_only = _decode(nifti_twin(dicom.members.values(), frames=1), "subjects/1000123_2/sa_ED.nii.gz",
                          ed_rule=ed_rule)
        # the DICOM twin's ED frame by TriggerTime (its InstanceNumbers are shuffled; a NIfTI has none)
        dicom_study = decode_dicom_members(dicom.opener_mapping(), "x/1", with_inlinevf=False)
        for a, b, c in zip(cine.images, ed_only.images, dicom_study.images, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)

    def test_uncompressed_nii_and_the_entry_point_count_what_was_read(self):
        dicom = any_vendor_members(n_slices=6, n_phases=2)
        data = nifti_twin(dicom.members.values(), gz=False)
        study, stats = file_with_stats(io.BytesIO(data), "subjects/1000123/sa.nii")
        assert study.n_slices == 6 and stats.strategy == "nifti" and stats.bytes_read == len(data)
        assert stats.pixel_frames_decoded == 6

    @pytest.mark.parametrize("kind", ["nifti2", "big_endian"])
    def test_nifti2_and_big_endian_files_decode_alike(self, kind):
        dicom = any_vendor_members(n_slices=6, n_phases=2)
        expected = decode_dicom_members(dicom.opener_mapping(), "x/1", with_inlinevf=False)
        twin = nib.Nifti1Image.from_bytes(nifti_twin(dicom.members.values(), gz=False))
        voxels = np.asarray(twin.dataobj)
        if kind == "nifti2":
            image = nib.Nifti2Image(voxels.astype(np.float32), twin.affine)
        else:
            header = nib.Nifti1Header().as_byteswapped(">")
            image = nib.Nifti1Image(voxels.astype(">f4"), twin.affine, header=header)
        image.header.set_qform(twin.affine, code=1)
        study = _decode(image.to_bytes())
        for got, want in zip(study.images, expected.images, strict=True):
            np.testing.assert_array_equal(got, want)

    def test_scaling_is_applied_and_the_input_is_not_changed(self):
        affine_ras, _ = _oblique_affine_ras()
        voxels = np.full((8, 8, 3), 7, dtype=np.int16)
        image = nib.Nifti1Image(voxels, affine_ras)
        image.header.set_slope_inter(0.5, 3.0)
        image.header.set_qform(affine_ras, code=1)
        study = _decode(image.to_bytes())
        assert {float(v) for img in study.images for v in img.ravel()} == {6.5}
        assert np.all(voxels == 7)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _corrupt_crc(data: bytes) -> bytes:
    return data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]


class TestBadNiftiFiles:
    @pytest.fixture(scope="class")
    def good(self):
        affine_ras, _ = _oblique_affine_ras()
        return affine_ras, np.random.default_rng(1).normal(100, 20, (16, 16, 4, 3)).astype(np.float32)

    @pytest.mark.parametrize("make, step, reason", [
        (lambda a, v: _truncated(plain_nifti(v, a)), "read", "truncated gzip: the compressed stream ends"),
        (lambda a, v: _truncated(plain_nifti(v, a, gz=False)), "read", "truncated: the file ends"),
        (lambda a, v: _corrupt_crc(plain_nifti(v, a)), "read", "corrupt gzip"),
        (lambda a, v: b"%PDF-1.4 not an image" * 30, "read", "not a NIfTI file"),
        (lambda a, v: b"", "read", "empty file"),
        (lambda a, v: plain_nifti(v[:, :, 0, 0], a), "header", r"a 2-D image \(shape \(16, 16\)\)"),
        (lambda a, v: plain_nifti(v[:, :, :1], a), "header", "a 2-D image"),
        (lambda a, v: plain_nifti(v, a, qform_code=0, sform_code=0), "geometry",
         "no affine: qform_code and sform_code are both 0"),
        (lambda a, v: plain_nifti(np.where(np.arange(16)[:, None, None, None] == 3, np.nan, v), a), "pixels",
         "64 of the 1024 voxels of the end-diastolic frame are NaN or infinite"),
        (lambda a, v: plain_nifti(v, a @ SHEAR), "geometry", "not perpendicular"),
        (lambda a, v: plain_nifti(v, np.diag([1.0, 1.0, 0.0, 1.0]), qform_code=0), "geometry",
         "axis of length 0"),
    ], ids=["truncated_gzip", "truncated_nii", "corrupt_crc", "not_nifti", "empty", "2d", "one_slice",
            "no_affine", "nan_voxels", "sheared", "flat_affine"])
    def test_a_bad_file_is_a_decode_error_naming_it_and_the_reason(self, good, make, step, reason):
        affine_ras, voxels = good
        with pytest.raises(DecodeError, match=reason) as info:
            _decode(make(affine_ras, voxels))
        assert info.value.source == SOURCE and info.value.stage == step
        assert str(info.value).startswith(f"{SOURCE}: {step}: ")

    def test_a_nan_outside_the_ed_frame_does_not_matter(self, good):
        affine_ras, voxels = good
        later = voxels.copy()
        later[0, 0, 0, 2] = np.nan
        assert _decode(plain_nifti(later, affine_ras)).n_slices == 4

    def test_the_end_systolic_volume_is_refused_by_name(self, good):
        affine_ras, voxels = good
        with pytest.raises(DecodeError, match="an end-systolic volume") as info:
            _decode(plain_nifti(voxels, affine_ras), "subjects/1000123/sa_ES.nii.gz")
        assert info.value.stage == "series"

    def test_an_analyze_pair_header_is_refused(self, good):
        affine_ras, voxels = good
        raw = bytearray(gzip.decompress(plain_nifti(voxels, affine_ras)))
        raw[344:348] = b"ni1\x00"
        with pytest.raises(DecodeError, match=r"a \.hdr/\.img pair"):
            _decode(bytes(raw))


class TestNiftiNames:
    @pytest.mark.parametrize("uri, key", [
        ("subjects/1000123/sa.nii.gz", ("1000123", 0)),
        ("gs://b/subjects/1000123_3/sa_ED.nii.gz", ("1000123", 3)),
        ("data/SCD0000501/sa.nii", ("SCD0000501", 0)),
        ("data/1000124_2.nii.gz", ("1000124", 2)),
        ("data/patient001_4d.nii.gz", ("patient001_4d", 0)),
    ])
    def test_the_participant_is_named_by_the_folder_of_an_image_named_file(self, uri, key):
        assert input_key(uri) == key

    def test_a_file_named_after_the_image_without_a_folder_names_itself(self):
        assert parse_input_name("sa.nii.gz") is None and input_key("sa.nii.gz") == ("sa", 0)


class TestWritingOnTheAcquisitionGrid:
    def test_labels_and_image_map_back_onto_the_decoded_slices(self):
        dicom = any_vendor_members(n_slices=6, n_phases=2, geometry=GEOMETRIES["transposed"])
        study = decode_dicom_members(dicom.opener_mapping(), "x/1000123", with_inlinevf=False)
        grid = acquisition.acquisition_grid(study)
        assert grid is not None and grid.located and grid.shape == (*study.images[0].shape, 6)
        rows, cols = grid.slice_shape
        native = np.zeros(grid.shape, dtype=np.uint8)
        native[rows // 4: rows // 2, cols // 4: cols // 2, 1:5] = contracts.MYOCARDIUM
        native[rows // 3: rows // 2 - 2, cols // 3: cols // 2 - 2, 1:5] = contracts.LV_CAVITY
        participant = participant_from_study(study, with_inlinevf=False, grid_pixel_mm=None, n_slots=None)
        tensor = build_label_volume([native[:, :, k] for k in range(6)], slice_start=0, n_slots=None)
        on_grid = acquisition_label_volume(participant, tensor)
        np.testing.assert_array_equal(on_grid, native)  # as-acquired grid: placement is undone exactly

        label_data = nifti_bytes(on_grid, grid, labels=True, description="test")
        assert label_data == nifti_bytes(on_grid, grid, labels=True, description="test")  # deterministic
        labels, label_affine = read_nifti_volume(label_data, "labels.nii.gz")
        image_data = nifti_bytes(image_volume(study.images, grid), grid)
        image, image_affine = read_nifti_volume(image_data, "image.nii.gz")
        assert labels.dtype == np.uint8 and image.dtype == np.int16  # whole scanner values: int16
        np.testing.assert_allclose(label_affine, image_affine)
        np.testing.assert_allclose(acquisition.lps_to_ras(label_affine), study.affine_lps, atol=1e-4)
        for k in range(study.n_slices):
            np.testing.assert_array_equal(image[:, :, k], study.images[k])
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(gzip.decompress(label_data)))
        assert header.get_intent()[0] == "label" and header.get_qform(coded=True)[1] == 1
        # the myocardium's volume from the file alone, by its affine
        assert voxel_volume_ml(label_affine) == pytest.approx(
            np.prod(study.pixel_spacing_mm) * study.slice_spacing_mm / 1000.0)

    def test_a_missing_slice_leaves_an_empty_plane(self):
        positions = (0.0, 10.0, 30.0, 40.0)
        assert acquisition.slice_planes(positions, 10.0) == (0, 1, 3, 4)
        grid = acquisition.AcquisitionGrid(acquisition.as_affine_tuple(np.eye(4)), (2, 2), (0, 1, 3, 4))
        volume = grid.on_planes(np.ones((2, 2, 4), dtype=np.uint8))
        assert volume.shape == (2, 2, 5) and volume[:, :, 2].sum() == 0 and volume.sum() == 16
        assert acquisition.slice_planes((0.0, 12.0, 19.0), 10.0) == (0, 1, 2)  # not increasing: as numbered

    def test_a_stack_off_one_grid_reports_how_far(self):
        origins = [np.array([0.0, 0, 0]), np.array([0.0, 0, 10]), np.array([3.0, 0, 20])]
        _, residual = acquisition.stack_affine_lps(origins, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]),
                                                   (0, 1, 2), np.array([0, 0, 10.0]))
        assert residual == pytest.approx(1.5)
