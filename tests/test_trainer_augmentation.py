"""The numpy domain randomisation used by ``trainer.portable``: labels move with the image, the output
keeps the tensor contract (z-scored acquired voxels, zero padding), and a seed reproduces a crop."""

from __future__ import annotations

import numpy as np
import pytest

from beam_pipeline import contracts
from trainer.augmentation import AugmentConfig, augment_crop


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
