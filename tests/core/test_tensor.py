"""The (256, 256, 13, 1) tensor layout: centred padding, order, normalisation, crop and >13 slices."""

from __future__ import annotations

import numpy as np
import pytest

from lvmass.core import contracts
from lvmass.core.study import DecodedStudy
from lvmass.core.tensor import build_image_tensor, build_label_volume, pad_or_crop_slice, slice_window_start


def study_of(images, outlines=None, spacing=(1.8, 1.9), slice_mm=10.0) -> DecodedStudy:
    n = len(images)
    return DecodedStudy(
        eid=1,
        instance=2,
        source_uri="s.zip",
        images=tuple(images),
        outlines=tuple(outlines) if outlines is not None else (None,) * n,
        pixel_spacing_mm=spacing,
        slice_spacing_mm=slice_mm,
        slice_thickness_mm=8.0,
        slice_positions_mm=tuple(10.0 * k for k in range(n)),
    )


class TestPadOrCropSlice:
    def test_centred_padding_odd_remainder_bottom_right(self):
        arr = np.arange(1, 7, dtype=np.int16).reshape(2, 3)
        out, cropped = pad_or_crop_slice(arr, rows=5, cols=6)
        assert not cropped and out.dtype == np.int16
        # rows: (5-2)//2 = 1 above, 2 below; cols: (6-3)//2 = 1 left, 2 right
        expected = np.zeros((5, 6), np.int16)
        expected[1:3, 1:4] = arr
        np.testing.assert_array_equal(out, expected)

    def test_crop_centred_and_flagged(self):
        arr = np.arange(7 * 4).reshape(7, 4)
        out, cropped = pad_or_crop_slice(arr, rows=4, cols=4)
        assert cropped
        np.testing.assert_array_equal(out, arr[1:5, :])  # (7-4)//2 = 1 row removed on top

    def test_default_size_and_input_not_mutated(self):
        arr = np.ones((192, 208), np.float32)
        before = arr.copy()
        out, cropped = pad_or_crop_slice(arr)
        assert out.shape == (256, 256) and not cropped
        assert out[32:224, 24:232].all() and out.sum() == arr.sum()
        np.testing.assert_array_equal(arr, before)

    def test_rejects_3d(self):
        with pytest.raises(ValueError, match=r"slice must be 2-D \(rows, cols\), got shape \(1, 2, 3\)"):
            pad_or_crop_slice(np.zeros((1, 2, 3)))


class TestSliceWindowStart:
    def test_short_stack(self):
        assert slice_window_start([True] * 5) == 0

    def test_most_outlined_window_basal_tie(self):
        has = [False, False, True, True, True, True, True, True, True, True, True, True, True, True, False]
        # outlined: slices 2..13; windows starting at 0, 1, 2 hold 11, 12, 12: the most basal 12 wins
        assert slice_window_start(has, 13) == 1
        assert slice_window_start([False] * 15, 13) == 0


class TestBuildImageTensor:
    def test_layout_order_and_normalisation(self):
        rng = np.random.default_rng(1)
        images = [rng.normal(100 + 10 * k, 5, size=(192, 208)).astype(np.float32) for k in range(9)]
        tensor = build_image_tensor(study_of(images))
        assert tensor.image.shape == contracts.TENSOR_SHAPE and tensor.image.dtype == np.float32
        assert tensor.n_slices_used == 9 and tensor.qc_flags == () and tensor.slice_start == 0
        np.testing.assert_array_equal(tensor.spacing_mm, np.array([1.8, 1.9, 10.0], np.float32))
        acquired = tensor.image[32:224, 24:232, :9, 0]
        assert acquired.mean() == pytest.approx(0.0, abs=1e-5)
        assert acquired.std() == pytest.approx(1.0, abs=1e-5)
        # padding exactly zero: outside the slice window and the apical empty slices
        mask = np.ones(contracts.TENSOR_SHAPE, bool)
        mask[32:224, 24:232, :9, 0] = False
        assert np.count_nonzero(tensor.image[mask]) == 0
        # slice order kept and the z-score is a single affine map of the acquired values
        all_values = np.concatenate([i.ravel() for i in images]).astype(np.float64)
        expected_k3 = (images[3].astype(np.float64) - all_values.mean()) / all_values.std()
        np.testing.assert_allclose(tensor.image[32:224, 24:232, 3, 0], expected_k3, rtol=1e-5, atol=1e-5)

    def test_a_crop_of_a_few_mm_is_not_flagged_one_beyond_the_tolerance_is(self):
        """UK Biobank's 208 px at 1.86 mm on a 1.5 mm grid: 258 px, 1 px (1.5 mm) cut per side: no flag.
        300 px at 1.8 mm: 22 px = 39.6 mm cut per side (more than IMAGE_CROP_TOLERANCE_MM): flagged."""
        rng = np.random.default_rng(0)
        small = build_image_tensor(study_of([rng.random((208, 200), np.float32)] * 6, spacing=(1.86, 1.86)),
                                   grid_pixel_mm=1.5)
        assert contracts.QC_IMAGE_CROPPED not in small.qc_flags
        large = build_image_tensor(study_of([rng.random((300, 200), np.float32)] * 6, spacing=(1.8, 1.8)))
        assert large.qc_flags == (contracts.QC_IMAGE_CROPPED,)

    def test_crop_over_256_flagged(self):
        """Rows 260 -> 256 (2 cropped at the top, 2 at the bottom), cols 250 -> 256 (3 zeros each side).
        Bugs caught: the cropped-away row entering the mean and sd, an off-centre crop or pad."""
        images = [np.full((260, 250), float(k + 1), np.float32) for k in range(6)]
        images[0][0, :] = 1000.0  # the cropped-away top row must not enter the normalisation
        tensor = build_image_tensor(study_of(images, spacing=(12.0, 1.9)))  # 2 px of 12 mm cut per side
        assert tensor.qc_flags == (contracts.QC_IMAGE_CROPPED,)
        # what lands in the tensor: 256 x 250 pixels of 1, 2, ..., 6, equally many of each, so mean 3.5 and
        # sd sqrt(mean((v - 3.5)^2)) = sqrt((6.25 + 2.25 + 0.25) x 2 / 6) = sqrt(35 / 12)
        expected = np.zeros(contracts.TENSOR_SHAPE, np.float32)
        for k in range(6):
            expected[:, 3:253, k, 0] = (k + 1 - 3.5) / np.sqrt(35.0 / 12.0)
        np.testing.assert_allclose(tensor.image, expected, rtol=0, atol=1e-6)

    def test_more_than_13_slices_truncated_and_flagged(self):
        """Slices 2..14 (the outlined window) fill the 13 slots in order, z-scored over those 13 only.
        Bugs caught: the 13 most basal kept instead, slices reversed, the dropped slices normalised."""
        images = [np.full((20, 20), float(k), np.float32) + np.eye(20, dtype=np.float32) for k in range(15)]
        outlines = [None, None] + [np.ones((20, 20), bool)] * 13
        tensor = build_image_tensor(study_of(images, outlines))
        assert tensor.qc_flags == (contracts.QC_TOO_MANY_SLICES_TRUNCATED,)
        assert tensor.n_slices_used == 13 and tensor.slice_start == 2 and tensor.n_slices_acquired == 15
        kept = np.stack([images[k] for k in range(2, 15)], axis=-1).astype(np.float64)
        expected = np.zeros(contracts.TENSOR_SHAPE, np.float32)
        expected[118:138, 118:138, :, 0] = (kept - kept.mean()) / kept.std()  # (256 - 20) // 2 = 118
        np.testing.assert_allclose(tensor.image, expected, rtol=0, atol=1e-6)

    def test_per_slice_models_get_every_slice(self):
        """``n_slots=None`` (a per-slice model): all 15 slices, in order, z-scored over all of them, no
        padding slot and no truncation flag; the labels are placed alike. Bug caught: apical slices lost
        past 13."""
        from lvmass.core.tensor import build_label_volume

        images = [np.full((20, 20), float(k), np.float32) + np.eye(20, dtype=np.float32) for k in range(15)]
        tensor = build_image_tensor(study_of(images, [None] * 15), n_slots=None)
        assert tensor.qc_flags == () and tensor.image.shape == (256, 256, 15, 1)
        assert tensor.n_slices_used == 15 and tensor.slice_start == 0
        kept = np.stack(images, axis=-1).astype(np.float64)
        expected = np.zeros((256, 256, 15, 1), np.float32)
        expected[118:138, 118:138, :, 0] = (kept - kept.mean()) / kept.std()
        np.testing.assert_allclose(tensor.image, expected, rtol=0, atol=1e-6)
        labels = [np.full((20, 20), k % 3, np.uint8) for k in range(15)]
        volume = build_label_volume(labels, slice_start=0, n_slots=None)
        assert volume.shape == (256, 256, 15)
        assert [int(volume[128, 128, k]) for k in range(15)] == [k % 3 for k in range(15)]

    def test_per_slice_tensor_is_capped_and_flagged(self):
        images = [np.full((8, 8), float(k), np.float32) + np.eye(8, dtype=np.float32)
                  for k in range(contracts.MAX_PER_SLICE_SLICES + 2)]
        tensor = build_image_tensor(study_of(images, [None] * len(images)), n_slots=None)
        assert tensor.image.shape[2] == contracts.MAX_PER_SLICE_SLICES
        assert tensor.qc_flags == (contracts.QC_TOO_MANY_SLICES_TRUNCATED,)

    def test_constant_image_rejected(self):
        with pytest.raises(ValueError, match=r"s.zip: all 800 acquired pixels equal 5.0; cannot normalise"):
            build_image_tensor(study_of([np.full((20, 20), 5.0, np.float32)] * 2))

    def test_input_not_mutated(self):
        images = [np.arange(400, dtype=np.float32).reshape(20, 20) + k for k in range(3)]
        before = [i.copy() for i in images]
        build_image_tensor(study_of(images))
        for a, b in zip(images, before, strict=True):
            np.testing.assert_array_equal(a, b)


class TestBuildLabelVolume:
    def test_same_placement_as_images(self):
        images = [np.random.default_rng(k).random((192, 208)).astype(np.float32) for k in range(7)]
        labels = [np.zeros((192, 208), np.uint8) for _ in range(7)]
        labels[4][100, 50] = 2
        volume = build_label_volume(labels)
        tensor = build_image_tensor(study_of(images))
        assert volume.shape == contracts.LABEL_VOLUME_SHAPE and volume.dtype == np.uint8
        # (100, 50) + ((256 - 192) // 2, (256 - 208) // 2) = (132, 74), in both
        assert volume[132, 74, 4] == 2 and volume.sum() == 2
        acquired = np.stack(images, axis=-1).astype(np.float64)
        expected = (acquired[100, 50, 4] - acquired.mean()) / acquired.std()
        assert tensor.image[132, 74, 4, 0] == pytest.approx(expected, abs=1e-6)

    def test_window_follows_labelled_slices(self):
        labels = [np.zeros((10, 10), np.uint8) for _ in range(15)]
        for k in range(2, 15):
            labels[k][5, 5] = 1
        volume = build_label_volume(labels)
        assert volume[:, :, :13].sum() == 13
        volume0 = build_label_volume(labels, slice_start=0)
        assert volume0.sum() == 11

    def test_rejects_values_outside_label_map(self):
        with pytest.raises(ValueError, match=r"label slice 0 holds values outside the label map"):
            build_label_volume([np.full((4, 4), 3, np.uint8)])

    def test_rejects_bad_start(self):
        with pytest.raises(ValueError, match=r"slice_start 5 outside 0..1"):
            build_label_volume([np.zeros((4, 4), np.uint8)] * 2, slice_start=5)


class TestUnplaceLabelVolume:
    """``unplace_label_volume`` inverts ``build_label_volume`` (the one padding contract)."""

    @pytest.mark.parametrize(
        ("shape", "slice_start"),
        [((192, 208, 9), 0), ((41, 36, 5), 0), ((203, 197, 15), 2), ((260, 250, 4), 0)],
    )
    def test_round_trip(self, shape, slice_start):
        from lvmass.core.tensor import unplace_label_volume

        rng = np.random.default_rng(sum(shape))
        acquired = rng.integers(0, contracts.NUM_CLASSES, size=shape).astype(np.uint8)
        before = acquired.copy()
        volume = build_label_volume([acquired[..., k] for k in range(shape[2])], slice_start=slice_start)
        back = unplace_label_volume(volume, shape, slice_start=slice_start)
        assert back.shape == shape and back.dtype == np.uint8
        kept = slice(slice_start, slice_start + contracts.TENSOR_SLICES)
        rows, cols = (slice((s - min(s, 256)) // 2, (s - min(s, 256)) // 2 + min(s, 256)) for s in shape[:2])
        np.testing.assert_array_equal(back[rows, cols, kept], acquired[rows, cols, kept])
        # what the tensor could not hold comes back as background: slices outside the window, and the
        # border a larger-than-256 acquisition lost to the centre crop
        outside = np.ones(shape, bool)
        outside[rows, cols, kept] = False
        assert not back[outside].any()
        np.testing.assert_array_equal(acquired, before)
        again = build_label_volume([back[..., k] for k in range(shape[2])], slice_start=slice_start)
        np.testing.assert_array_equal(again, volume)

    def test_rejects_bad_arguments(self):
        from lvmass.core.tensor import unplace_label_volume

        volume = np.zeros(contracts.LABEL_VOLUME_SHAPE, np.uint8)
        with pytest.raises(ValueError, match=r"slice_start 4 outside 0..3"):
            unplace_label_volume(volume, (10, 10, 4), slice_start=4)
        with pytest.raises(ValueError, match=r"must be 3-D \(rows, cols, slices\), got shape \(4, 4\)"):
            unplace_label_volume(np.zeros((4, 4)), (10, 10, 4))
        with pytest.raises(ValueError, match=r"shape must be 3 positive sizes .* got \(10, 0, 4\)"):
            unplace_label_volume(volume, (10, 0, 4))
