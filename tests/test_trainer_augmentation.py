"""The domain randomisation of both training stacks (``trainer.augmentation``; ``trainer.data`` runs it
inside ``tf.data``, ``trainer.portable`` on its workers): labels move with the image, the output keeps the
tensor contract (z-scored acquired voxels, zero padding), and a seed reproduces a crop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from lvmass.core import contracts
from trainer import portable
from trainer.augmentation import AugmentConfig, augment_crop, augment_volume, example_rng

# Geometry only: every appearance range collapsed to the identity, so the intensity step is an affine map
# that the final z-score undoes, and the output values can be predicted from the input alone.
GEOMETRY_ONLY = AugmentConfig(gamma_range=(1.0, 1.0), contrast_range=(1.0, 1.0), slice_gain_sd=0.0,
                              bias_field_sd=0.0, blur_prob=0.0, noise_sd_range=(0.0, 0.0),
                              slice_dropout_prob=0.0, misregistration_prob=1.0)
IDENTITY = dataclasses.replace(GEOMETRY_ONLY, rotation_deg=0.0, scale_range=(1.0, 1.0), translation_px=0.0,
                               misregistration_px=0.0)


def _phantom(rows: int = 96, cols: int = 96, slices: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (cavity) in a darker ring (myocardium) on a textured field; zero padding at the
    bottom rows, as a padded contract tensor has."""
    rr, cc = np.mgrid[:rows, :cols]
    radius = np.hypot(rr - 40, cc - 52)
    labels2d = np.where(radius < 9, contracts.LV_CAVITY, np.where(radius < 14, contracts.MYOCARDIUM, 0))
    inside = np.where(labels2d == contracts.MYOCARDIUM, 0.5, 1.5)
    image2d = np.where(labels2d == contracts.LV_CAVITY, 3.0, inside)
    image2d = image2d + 0.1 * np.sin(rr / 3.0)
    image = np.repeat(image2d[:, :, None], slices, axis=2).astype(np.float32)
    labels = np.repeat(labels2d[:, :, None], slices, axis=2).astype(np.uint8)
    image[80:] = 0.0
    labels[80:] = 0
    return image, labels


def test_plain_crop_is_a_window_of_the_input():
    image, labels = _phantom()
    crop, crop_labels = augment_crop(image, labels, np.random.default_rng(0), None, crop_px=48,
                                     foreground_prob=1.0)
    assert crop.shape == (48, 48, 5) and crop.dtype == np.float32 and crop_labels.dtype == np.uint8
    # find the window and compare exactly
    hits = [(r, c) for r in range(96 - 47) for c in range(96 - 47)
            if np.array_equal(image[r:r + 48, c:c + 48], crop)]
    assert hits
    r, c = hits[0]
    np.testing.assert_array_equal(labels[r:r + 48, c:c + 48], crop_labels)
    assert (crop_labels == contracts.MYOCARDIUM).any()  # centred near the labelled LV


def test_labels_move_with_the_image_and_the_contract_holds():
    image, labels = _phantom()
    config = AugmentConfig(noise_sd_range=(0.0, 0.0), blur_prob=0.0, slice_dropout_prob=0.0,
                           bias_field_sd=0.0, slice_gain_sd=0.0)
    for seed in range(6):
        crop, crop_labels = augment_crop(image, labels, np.random.default_rng(seed), config, crop_px=64,
                                         foreground_prob=1.0)
        acquired = crop != 0.0
        assert set(np.unique(crop_labels)) <= set(contracts.LABEL_MAP.values())
        assert not crop_labels[~acquired].any()  # no labels where nothing was acquired
        # the cavity stays the brightest class, the myocardium the darkest, after warping
        cavity = crop[crop_labels == contracts.LV_CAVITY].mean()
        myocardium = crop[crop_labels == contracts.MYOCARDIUM].mean()
        background = crop[(crop_labels == 0) & acquired].mean()
        assert cavity > background > myocardium
        # roughly the whole heart survives a rotation / scale (scale range 0.85-1.2: area within ~0.6-1.5x)
        ratio = (crop_labels == contracts.MYOCARDIUM).sum() / (labels == contracts.MYOCARDIUM).sum()
        assert 0.5 < ratio < 1.6


def test_same_seed_same_crop_and_different_seeds_differ():
    image, labels = _phantom()
    a = augment_crop(image, labels, np.random.default_rng(7), AugmentConfig(), crop_px=64)
    b = augment_crop(image, labels, np.random.default_rng(7), AugmentConfig(), crop_px=64)
    c = augment_crop(image, labels, np.random.default_rng(8), AugmentConfig(), crop_px=64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    image_before = image.copy()
    augment_crop(image, labels, np.random.default_rng(9), AugmentConfig(), crop_px=64)
    np.testing.assert_array_equal(image, image_before)  # inputs are not modified


def test_slice_dropout_blanks_image_and_labels_together():
    image, labels = _phantom()
    config = AugmentConfig(slice_dropout_prob=1.0)
    crop, crop_labels = augment_crop(image, labels, np.random.default_rng(1), config, crop_px=64,
                                     foreground_prob=1.0)
    blank = [k for k in range(crop.shape[2]) if not crop[:, :, k].any()]
    assert len(blank) == 1
    assert not crop_labels[:, :, blank[0]].any()


def test_bad_inputs_are_named():
    image, labels = _phantom()
    with pytest.raises(ValueError, match="shapes"):
        augment_crop(image, labels[:, :, :3], np.random.default_rng(0), None, crop_px=32)
    with pytest.raises(ValueError, match="crop_px"):
        augment_crop(image, labels, np.random.default_rng(0), None, crop_px=200)
    with pytest.raises(ValueError, match="no acquired"):
        augment_crop(np.zeros_like(image), labels, np.random.default_rng(0), None, crop_px=32)


def _zscored(image: np.ndarray) -> np.ndarray:
    acquired = image != 0.0
    out = np.zeros_like(image)
    out[acquired] = (image[acquired] - image[acquired].mean()) / image[acquired].std()
    return out


def _flat_phantom(slices: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant classes (cavity 3, myocardium 0.5, background 1.5) with a wide ring, z-scored, with
    zero padding at the bottom: every voxel's value is a function of its label alone."""
    rows, cols = 128, 128
    rr, cc = np.mgrid[:rows, :cols]
    radius = np.hypot(rr - 56, cc - 64)
    labels2d = np.where(radius < 12, contracts.LV_CAVITY, np.where(radius < 26, contracts.MYOCARDIUM, 0))
    image2d = np.select([labels2d == contracts.LV_CAVITY, labels2d == contracts.MYOCARDIUM], [3.0, 0.5], 1.5)
    image = np.repeat(image2d[:, :, None], slices, axis=2).astype(np.float32)
    labels = np.repeat(labels2d[:, :, None], slices, axis=2).astype(np.uint8)
    image[112:] = 0.0
    labels[112:] = 0
    return _zscored(image).astype(np.float32), labels


def _interior(labels: np.ndarray, label: int) -> np.ndarray:
    """Voxels three pixels inside a labelled region, in-plane (away from any interpolated edge)."""
    structure = np.zeros((3, 3, 3), bool)
    structure[:, :, 1] = True
    return ndimage.binary_erosion(labels == label, structure, iterations=3)


def _class_values(image: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {label: float(image[labels == label][0]) for label in (contracts.LV_CAVITY, contracts.MYOCARDIUM)}


def test_identity_ranges_give_back_the_input_volume():
    image, labels = _flat_phantom()
    out, out_labels = augment_volume(image, labels, example_rng([0, 1]), IDENTITY)
    np.testing.assert_allclose(out, image, atol=1e-4)
    np.testing.assert_array_equal(out_labels, labels)


@pytest.mark.parametrize("seed", range(4))
def test_geometry_moves_image_and_labels_together_and_the_crop_keeps_the_volumes_zscore(seed):
    image, labels = _flat_phantom()
    expected = _class_values(image, labels)
    crop, crop_labels = augment_crop(image, labels, example_rng([seed, 0]), GEOMETRY_ONLY, crop_px=96,
                                     foreground_prob=1.0)
    for label, value in expected.items():
        inside = _interior(crop_labels, label)
        assert inside.any()
        # where the warped labels say cavity (myocardium), the warped image holds the input's cavity
        # (myocardium) value: the z-score statistics are the whole volume's, which was already z-scored
        np.testing.assert_allclose(crop[inside], value, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_geometry_moves_image_and_labels_together_and_the_volume_is_zscored_afterwards(seed):
    image, labels = _flat_phantom()
    out, out_labels = augment_volume(image, labels, example_rng([seed, 0]), GEOMETRY_ONLY)
    acquired = out != 0.0
    assert abs(out[acquired].mean()) < 1e-4 and abs(out[acquired].std() - 1.0) < 1e-4
    assert not out_labels[~acquired].any()
    assert not np.array_equal(out_labels, labels)  # the geometry did move things
    # each class interior holds one value, ordered as in the input (cavity > background > myocardium)
    values = {}
    for label in (contracts.LV_CAVITY, contracts.MYOCARDIUM):
        inside = _interior(out_labels, label)
        assert inside.any()
        assert np.ptp(out[inside]) < 1e-4
        values[label] = float(out[inside][0])
    assert values[contracts.LV_CAVITY] > 0 > values[contracts.MYOCARDIUM]


def test_volume_without_labels_is_the_labelled_draw():
    image, labels = _flat_phantom()
    config = AugmentConfig()
    with_labels, _ = augment_volume(image, labels, example_rng([3, 4]), config, slice_dropout=False)
    alone, none = augment_volume(image, None, example_rng([3, 4]), config, slice_dropout=False)
    np.testing.assert_array_equal(with_labels, alone)
    assert none is None


def test_example_rng_takes_any_integer_seed():
    a = example_rng([-1, 5]).random(3)
    np.testing.assert_array_equal(a, example_rng(np.array([-1, 5])).random(3))
    assert not np.array_equal(a, example_rng([1, 5]).random(3))


def test_portable_crops_are_augment_crop_draws():
    image, labels = _flat_phantom(contracts.TENSOR_SLICES)
    images = np.stack([image, image[:, ::-1]]).astype(np.float16)  # portable keeps tensors in float16
    label_volumes = np.stack([labels, labels[:, ::-1]])
    config = AugmentConfig()
    crops, crop_labels = portable.augmented_crops(images, label_volumes, per_example=2, crop_px=48,
                                                  augment=config, seed=11, workers=1)
    seeds = np.random.SeedSequence(11).generate_state(4)
    for slot in range(4):
        expected = augment_crop(images[slot % 2].astype(np.float32), label_volumes[slot % 2],
                                np.random.default_rng(int(seeds[slot])), config, crop_px=48)
        np.testing.assert_array_equal(crops[slot], expected[0].astype(np.float16))
        np.testing.assert_array_equal(crop_labels[slot], expected[1])
