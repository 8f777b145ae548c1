"""Domain randomisation: the one definition, in numpy/scipy, used by both training stacks.

:class:`AugmentConfig` holds the ranges; :func:`augment_crop` (a randomised in-plane training crop) and
:func:`augment_volume` (the whole tensor) apply them. ``trainer.portable`` calls them on its CPU workers,
without TensorFlow; ``trainer.data.augment`` calls the very same functions inside ``tf.data`` through
``tf.numpy_function``, so ``trainer.task`` on Vertex AI trains on the same randomisation. Both functions
randomise appearance (gamma, contrast, per-slice gain, a smooth bias field, blur, Rician noise) and geometry
(rotation, scale, translation, per-slice misregistration; labels move with the image, nearest neighbour),
drop a slice (image and labels), and z-score the acquired voxels again, as the tensor contract does.

Every random number of one call comes from the one ``numpy.random.Generator`` passed in, in a fixed order,
so a seed reproduces the result exactly; :func:`example_rng` seeds one generator per example from
``(run seed, example index)``, the way ``tf.data`` does. Arrays are ``(rows, cols, slices)``: the tensor of
``lvmass.core.contracts`` without its channel axis. Inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the domain randomisation (all uniform unless stated). Angles in degrees, shifts in pixels."""

    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.85, 1.2)
    translation_px: float = 16.0
    misregistration_px: float = 3.0
    misregistration_prob: float = 0.5
    gamma_range: tuple[float, float] = (0.6, 1.7)
    contrast_range: tuple[float, float] = (0.7, 1.4)
    slice_gain_sd: float = 0.1
    bias_field_sd: float = 0.3
    blur_sigma_px: tuple[float, float] = (0.0, 1.2)
    blur_prob: float = 0.3
    noise_sd_range: tuple[float, float] = (0.0, 0.06)
    slice_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        for name in ("scale_range", "gamma_range", "contrast_range", "blur_sigma_px", "noise_sd_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high), 0 <= low <= high. Received: {(low, high)!r}")
        for name in ("misregistration_prob", "blur_prob", "slice_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {value!r}")


def example_rng(seed: int | Sequence[int] | np.ndarray) -> np.random.Generator:
    """The generator of one example, e.g. from ``(run seed, example index)`` as ``trainer.data`` passes it.

    Negative values wrap to unsigned 64 bit (``numpy.random.SeedSequence`` takes non-negative entropy), so
    every integer seed works and equal seeds give equal generators."""
    return np.random.default_rng([int(s) % 2**64 for s in np.ravel(seed)])


def crop_centre(
    labels: np.ndarray, rng: np.random.Generator, crop_px: int, foreground_prob: float
) -> np.ndarray:
    """(row, col) centre of a ``crop_px`` crop: near the labelled LV with ``foreground_prob`` (jittered by
    up to a quarter crop), else uniform over the image (so the model also sees heart-free fields)."""
    rows, cols = labels.shape[:2]
    foreground = np.argwhere(labels.max(axis=2) > 0)
    if foreground.size and rng.random() < foreground_prob:
        return foreground.mean(axis=0) + rng.uniform(-crop_px / 4, crop_px / 4, 2)
    half = crop_px / 2
    return np.array([rng.uniform(half, rows - half), rng.uniform(half, cols - half)])


def _intensity(volume: np.ndarray, acquired: np.ndarray, rng: np.random.Generator, config: AugmentConfig):
    """Appearance randomisation of a whole (rows, cols, slices) volume; returns new values (not z-scored)."""
    rows, cols, n_slices = volume.shape
    values = volume[acquired]
    low, high = float(values.min()), float(values.max())
    v = np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0)
    v = np.power(v + np.float32(1e-6), np.float32(rng.uniform(*config.gamma_range)))
    mean = np.float32(v[acquired].mean())
    v = np.clip(mean + (v - mean) * np.float32(rng.uniform(*config.contrast_range)), 0.0, 1.5)
    gain = np.exp(rng.normal(0.0, config.slice_gain_sd, n_slices))
    coarse = rng.normal(0.0, config.bias_field_sd, (4, 4))
    field = np.exp(ndimage.zoom(coarse, (rows / 4, cols / 4), order=3, mode="nearest"))
    v = v * (gain[None, None, :] * field[:, :, None]).astype(np.float32)
    if rng.random() < config.blur_prob:
        sigma = rng.uniform(*config.blur_sigma_px)
        if sigma > 0:
            v = ndimage.gaussian_filter(v, (sigma, sigma, 0.0), truncate=3.0 / max(sigma, 1e-3))
    noise_sd = rng.uniform(*config.noise_sd_range)
    if noise_sd > 0:
        real = v + noise_sd * rng.standard_normal(v.shape, dtype=np.float32)
        imaginary = noise_sd * rng.standard_normal(v.shape, dtype=np.float32)
        v = np.sqrt(real * real + imaginary * imaginary)
    return v


def _check_shapes(image: np.ndarray, labels: np.ndarray | None) -> None:
    if image.ndim != 3 or (labels is not None and image.shape != labels.shape):
        raise ValueError(f"image and labels must be equal (rows, cols, slices) shapes. Received: "
                         f"{image.shape} and {None if labels is None else labels.shape}")


def _acquired(image: np.ndarray) -> np.ndarray:
    """The acquired-voxel mask (the contract pads with exact zeros); raises when there is none."""
    acquired = image != 0.0
    if not acquired.any():
        raise ValueError("image holds no acquired voxels")
    return acquired


def _randomise(
    image: np.ndarray,
    labels: np.ndarray | None,
    acquired: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
    *,
    centre: np.ndarray,
    out_shape: tuple[int, int],
    slice_dropout: bool,
    zscore_over_output: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Appearance on the whole volume, then resample an ``out_shape`` window about ``centre`` (row, col).

    Output pixel ``u`` (about the window centre) samples input ``centre + shift + R(theta) u / scale``, plus
    its slice's misregistration shift. The z-score statistics are those of the whole randomised volume:
    taken on the output when it is the whole frame (``zscore_over_output``), else on the volume before the
    warp, since a crop samples only part of it."""
    n_slices = image.shape[2]
    values = _intensity(image.astype(np.float32), acquired, rng, config)
    theta = rng.uniform(-1.0, 1.0) * math.radians(config.rotation_deg)
    scale = rng.uniform(*config.scale_range)
    shift = rng.uniform(-config.translation_px, config.translation_px, 2)
    misregister = rng.random() < config.misregistration_prob
    per_slice = rng.uniform(-1.0, 1.0, (n_slices, 2)) * config.misregistration_px * misregister
    drop = -1
    n_acquired = int(acquired.any(axis=(0, 1)).sum())
    if slice_dropout and n_acquired > 2 and rng.random() < config.slice_dropout_prob:
        drop = int(np.flatnonzero(acquired.any(axis=(0, 1)))[rng.integers(n_acquired)])

    out_rows, out_cols = out_shape
    row_offsets = np.arange(out_rows) - (out_rows - 1) / 2.0
    col_offsets = np.arange(out_cols) - (out_cols - 1) / 2.0
    uu, vv = np.meshgrid(row_offsets, col_offsets, indexing="ij")
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    src_r = centre[0] + shift[0] + cos * uu - sin * vv
    src_c = centre[1] + shift[1] + sin * uu + cos * vv
    out_values = np.zeros((out_rows, out_cols, n_slices), np.float32)
    out_mask = np.zeros((out_rows, out_cols, n_slices), bool)
    out_labels = None if labels is None else np.zeros((out_rows, out_cols, n_slices), np.uint8)
    for k in range(n_slices):
        if k == drop or not acquired[:, :, k].any():
            continue
        coords = np.stack([src_r + per_slice[k, 0], src_c + per_slice[k, 1]])
        out_values[:, :, k] = ndimage.map_coordinates(values[:, :, k], coords, order=1, cval=0.0)
        out_mask[:, :, k] = ndimage.map_coordinates(acquired[:, :, k].astype(np.uint8), coords, order=0) > 0
        if out_labels is not None:
            out_labels[:, :, k] = ndimage.map_coordinates(labels[:, :, k], coords, order=0, cval=0)
    if zscore_over_output:
        kept_values = out_values[out_mask]
    else:
        kept = acquired.copy()
        if drop >= 0:
            kept[:, :, drop] = False
        kept_values = values[kept]
    # (an output with no acquired voxel left, everything moved out of the frame, stays all zero)
    mean, sd = (float(kept_values.mean()), float(kept_values.std())) if kept_values.size else (0.0, 1.0)
    out = np.where(out_mask, (out_values - mean) / max(sd, 1e-6), 0.0).astype(np.float32)
    if out_labels is not None:
        out_labels[~out_mask] = 0
    return out, out_labels


def augment_crop(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None,
    *,
    crop_px: int,
    foreground_prob: float = 0.67,
    slice_dropout: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One randomised ``(crop_px, crop_px, slices)`` training crop of a contract tensor and its labels.

    ``image`` is ``(rows, cols, slices)`` z-scored with zero padding (``lvmass.core.contracts``),
    ``labels`` the matching uint8 volume. The crop is centred near the labelled LV with ``foreground_prob``
    (:func:`crop_centre`). Appearance is randomised on the whole volume and its z-score statistics taken
    there (what the served model sees), then only the crop is resampled: a rotation and scale about the crop
    centre, a translation, and per-slice shifts. ``config=None`` gives a plain crop.
    """
    _check_shapes(image, labels)
    rows, cols, _ = image.shape
    if not 0 < crop_px <= min(rows, cols):
        raise ValueError(f"crop_px must be in 1..{min(rows, cols)}. Received: {crop_px!r}")
    acquired = _acquired(image)
    centre = crop_centre(labels, rng, crop_px, foreground_prob)
    if config is None:
        top = int(np.clip(round(centre[0] - crop_px / 2), 0, rows - crop_px))
        left = int(np.clip(round(centre[1] - crop_px / 2), 0, cols - crop_px))
        window = (slice(top, top + crop_px), slice(left, left + crop_px))
        return image[window].astype(np.float32), labels[window].copy()
    return _randomise(image, labels, acquired, rng, config, centre=centre, out_shape=(crop_px, crop_px),
                      slice_dropout=slice_dropout, zscore_over_output=False)


def augment_volume(
    image: np.ndarray,
    labels: np.ndarray | None,
    rng: np.random.Generator,
    config: AugmentConfig,
    *,
    slice_dropout: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole ``(rows, cols, slices)`` tensor randomised (``labels`` may be None, as for ML4H_reg).

    The same randomisation as :func:`augment_crop`, with the rotation and scale about the frame centre and
    the output z-scored over its own acquired voxels (the tensor contract). ``slice_dropout=False`` keeps
    every slice (ML4H_reg: a dropped slice would change its target).
    """
    _check_shapes(image, labels)
    acquired = _acquired(image)
    rows, cols, _ = image.shape
    centre = np.array([(rows - 1) / 2.0, (cols - 1) / 2.0])
    return _randomise(image, labels, acquired, rng, config, centre=centre, out_shape=(rows, cols),
                      slice_dropout=slice_dropout, zscore_over_output=True)
