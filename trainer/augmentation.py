"""Domain randomisation ranges, and their numpy implementation for backends without TensorFlow.

:class:`AugmentConfig` is the one definition of the ranges. ``trainer.data.augment`` applies them with
TensorFlow ops inside ``tf.data`` (Vertex AI, the TensorFlow trainer); :func:`augment_crop` applies the same
ranges with numpy/scipy, for ``trainer.portable`` on accelerator images that hold JAX or PyTorch but not
TensorFlow. Both randomise geometry (rotation, scale, translation, per-slice misregistration; labels move
with the image) and appearance (gamma, contrast, per-slice gain, a smooth bias field, blur, Rician noise,
slice dropout), then z-score the acquired voxels again, as the tensor contract does.
"""

from __future__ import annotations

import math
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

    ``image`` is ``(rows, cols, slices)`` z-scored with zero padding (``beam_pipeline.contracts``),
    ``labels`` the matching uint8 volume. Appearance is randomised on the whole volume and its z-score
    statistics taken there (what the served model sees), then only the crop is resampled: a rotation and
    scale about the crop centre, a translation, and per-slice shifts. ``config=None`` gives a plain crop.
    """
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image and labels must be equal (rows, cols, slices) shapes. Received: "
                         f"{image.shape} and {labels.shape}")
    rows, cols, n_slices = image.shape
    if not 0 < crop_px <= min(rows, cols):
        raise ValueError(f"crop_px must be in 1..{min(rows, cols)}. Received: {crop_px!r}")
    acquired = image != 0.0
    if not acquired.any():
        raise ValueError("image holds no acquired voxels")
    centre = crop_centre(labels, rng, crop_px, foreground_prob)
    if config is None:
        top = int(np.clip(round(centre[0] - crop_px / 2), 0, rows - crop_px))
        left = int(np.clip(round(centre[1] - crop_px / 2), 0, cols - crop_px))
        window = (slice(top, top + crop_px), slice(left, left + crop_px))
        return image[window].astype(np.float32), labels[window].copy()

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

    # output pixel u (about the crop centre) samples input centre + shift + R(theta) u / scale
    offsets = np.arange(crop_px) - (crop_px - 1) / 2.0
    uu, vv = np.meshgrid(offsets, offsets, indexing="ij")
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    src_r = centre[0] + shift[0] + cos * uu - sin * vv
    src_c = centre[1] + shift[1] + sin * uu + cos * vv
    out_values = np.zeros((crop_px, crop_px, n_slices), np.float32)
    out_mask = np.zeros((crop_px, crop_px, n_slices), bool)
    out_labels = np.zeros((crop_px, crop_px, n_slices), np.uint8)
    for k in range(n_slices):
        if k == drop or not acquired[:, :, k].any():
            continue
        coords = np.stack([src_r + per_slice[k, 0], src_c + per_slice[k, 1]])
        out_values[:, :, k] = ndimage.map_coordinates(values[:, :, k], coords, order=1, cval=0.0)
        out_mask[:, :, k] = ndimage.map_coordinates(acquired[:, :, k].astype(np.uint8), coords, order=0) > 0
        out_labels[:, :, k] = ndimage.map_coordinates(labels[:, :, k], coords, order=0, cval=0)
    kept = acquired.copy()
    if drop >= 0:
        kept[:, :, drop] = False
    mean = float(values[kept].mean())
    sd = float(values[kept].std())
    out = np.where(out_mask, (out_values - mean) / max(sd, 1e-6), 0.0).astype(np.float32)
    out_labels[~out_mask] = 0
    return out, out_labels
