"""ML4H_seg trained on synthetic anatomy only, for any scanner: SynthSeg's recipe for the heart.

Why: the bundled ML4H_seg learned one generator's appearance and InlineVF outlines, and depends on both: on
a real GE study it undersizes the cavity (``benchmarks/results/real_study_evaluation.md``). SynthSeg (Billot
et al., Medical Image Analysis 2023) segments real brain MRI of any contrast and resolution with a network
that only ever saw images synthesised from label maps with every appearance parameter drawn afresh at each
step. Here the label maps come from
:mod:`lvmass.synth.labelmaps` (the LV and everything around it) and this module draws the images:

* per-label Gaussian intensities (means and spreads drawn per sample; sometimes in the bSSFP order of a
  cine, more often at random), a smooth multiplicative texture;
* partial volume: the LV is labelled on a grid twice as fine and on three planes across the slab, and the
  image is their average, then blurred;
* a smooth bias field (and sometimes a surface-coil hot spot), per-slice gain, gamma, ghosting along the
  phase-encoding direction, Rician noise, a circular or cropped field of view with zero fill;
* acquired pixels of 1.2-2.2 mm, then the pipeline's own tensor function
  (:func:`beam_pipeline.tensor.build_image_tensor`: resampling to the model's grid, placement, z-score), so
  the model sees exactly what the pipeline hands it. The labels are the true anatomy on that very grid
  (:func:`grid_labels`), never InlineVF outlines: the model card says ``label_source = "true_anatomy"``.

Every sample is drawn from ``(seed, purpose, index)`` alone (:func:`sample_seed`). Training samples are made
on the fly by forked workers (:class:`SampleStream`) so the network rarely sees an image twice; with
``--workers 0`` everything runs in this process and a run draws the same samples in the same order.

    python -m trainer.synthseg fit --out run --steps 20000 --preset compact --workers 15   # GPU machine
    python -m trainer.synthseg export --run_dir run --export_dir my_seg                    # TensorFlow here
    python -m trainer.synthseg evaluate --model_seg my_seg --samples 200 --record          # synthetic truth
    python -m trainer.synthseg preview --out previews --samples 6                          # look at samples
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import mmap
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from beam_pipeline import contracts
from beam_pipeline.study import DecodedStudy
from beam_pipeline.tensor import build_image_tensor, pad_or_crop_slice
from lvmass.synth import labelmaps as lm

LOG = logging.getLogger("trainer.synthseg")
ROWS, COLS, SLICES = contracts.TENSOR_SHAPE[:3]
WEIGHTS_FILENAME = "weights.npz"
FIT_FILENAME = "fit.json"
LOG_FILENAME = "training_log.csv"
RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
# Purposes of the sample streams: a training run, its validation samples and an evaluation never share one.
PURPOSE_TRAIN, PURPOSE_VALIDATION, PURPOSE_EVALUATION = 0, 1, 2
# The grid of the bundled models and of this model: UK Biobank's pixels are 1.8-1.9 mm.
DEFAULT_GRID_MM = 1.86
# A tiny architecture for tests and smoke runs (the others are trainer.models' presets).
TINY_PRESET: dict[str, Any] = {
    "stem_filters": 4,
    "stem_kernel": (3, 3, 1),
    "dense_blocks": (4, 8),
    "convs_per_block": 1,
    "kernel_size": (3, 3, 3),
    "pool_size": (2, 2, 1),
}
PRESETS = ("tiny", "cpu", "compact", "paper")


# --- Appearance -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppearanceRanges:
    """Ranges of the appearance drawn per sample (uniform unless stated; intensities on a 0-1 scale)."""

    pixel_mm: tuple[float, float] = (1.2, 2.2)  # acquired square pixels
    bssfp_prob: float = 0.35  # intensities in a cine's order (bright blood and fat, dark lung), else random
    shared_blood_prob: float = 0.6  # every blood pool one intensity (as in one acquisition)
    papillary_like_myocardium_prob: float = 0.7
    min_blood_myocardium_contrast: float = 0.08
    intensity_sd: tuple[float, float] = (0.0, 0.1)  # within-label spread
    texture_amplitude: tuple[float, float] = (0.0, 0.15)  # smooth multiplicative texture
    # acquired pixels, after the partial volume: at least a k-space truncation's worth, so that every edge
    # is soft, not only the LV's (whose partial volume is finer)
    blur_sigma_px: tuple[float, float] = (0.35, 1.0)
    bias_sd: tuple[float, float] = (0.0, 0.5)  # log-scale sd of the smooth bias field
    coil_prob: float = 0.35  # a surface-coil hot spot near the edge
    coil_gain: tuple[float, float] = (0.3, 1.5)
    slice_gain_sd: tuple[float, float] = (0.0, 0.15)
    gamma: tuple[float, float] = (0.6, 1.6)  # log-uniform
    snr: tuple[float, float] = (4.0, 80.0)  # brightest tissue / noise sd, log-uniform
    ghost_prob: float = 0.3
    ghost_amplitude: tuple[float, float] = (0.02, 0.2)
    fov_circle_prob: float = 0.2
    fov_crop_prob: float = 0.35
    signal_max: tuple[float, float] = (150.0, 3000.0)  # stored value of intensity 1, log-uniform

    def __post_init__(self) -> None:
        for name in (
            "pixel_mm",
            "intensity_sd",
            "texture_amplitude",
            "blur_sigma_px",
            "bias_sd",
            "coil_gain",
            "slice_gain_sd",
            "gamma",
            "snr",
            "ghost_amplitude",
            "signal_max",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{name} must be (low, high) with 0 <= low <= high. Received: {(low, high)!r}"
                )
        if self.pixel_mm[0] <= 0 or self.gamma[0] <= 0 or self.snr[0] <= 0 or self.signal_max[0] <= 0:
            raise ValueError("pixel_mm, gamma, snr and signal_max must be positive")
        for name in (
            "bssfp_prob",
            "shared_blood_prob",
            "papillary_like_myocardium_prob",
            "coil_prob",
            "ghost_prob",
            "fov_circle_prob",
            "fov_crop_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {getattr(self, name)!r}")


# Intensity ranges of each scene label in a balanced-SSFP cine at end diastole (0-1, blood about 0.9).
BSSFP_INTENSITY: dict[int, tuple[float, float]] = {
    lm.AIR: (0.0, 0.03),
    lm.LV_BLOOD: (0.75, 1.0),
    lm.LV_MYOCARDIUM: (0.12, 0.35),
    lm.LV_PAPILLARY: (0.12, 0.4),
    lm.RV_BLOOD: (0.7, 1.0),
    lm.RV_WALL: (0.12, 0.35),
    lm.ATRIA: (0.65, 1.0),
    lm.GREAT_VESSELS: (0.55, 1.0),
    lm.LUNG: (0.0, 0.1),
    lm.LIVER: (0.2, 0.45),
    lm.CHEST_WALL: (0.12, 0.35),
    lm.FAT: (0.55, 1.0),
    lm.SOFT_TISSUE: (0.2, 0.5),
    lm.ABDOMEN: (0.2, 0.7),
    lm.BONE: (0.15, 0.5),
    lm.CSF: (0.6, 1.0),
}


@dataclass(frozen=True)
class Appearance:
    """One sample's appearance: per-label mean and spread, and the acquisition's settings."""

    means: tuple[float, ...]  # per scene label, lm.LABEL_NAMES order
    sds: tuple[float, ...]
    bssfp: bool
    texture_amplitude: float
    blur_sigma_px: tuple[float, float]
    bias_sd: float
    coil: tuple[float, float, float] | None  # (gain, row fraction, col fraction) of a hot spot
    slice_gain_sd: float
    gamma: float
    snr: float
    ghost: tuple[float, int, int] | None  # (amplitude, axis, shift as a fraction of 1000 of the FOV)
    fov_mask: str  # "none", "circle", "crop"
    fov_mask_params: tuple[float, ...]
    signal_max: float


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def draw_appearance(rng: np.random.Generator, ranges: AppearanceRanges) -> Appearance:
    """Intensities and acquisition settings of one sample, every one drawn afresh (SynthSeg)."""
    bssfp = bool(rng.random() < ranges.bssfp_prob)
    if bssfp:
        means = np.array([_uniform(rng, BSSFP_INTENSITY[k]) for k in range(lm.NUM_LABELS)])
    else:
        means = rng.uniform(0.0, 1.0, lm.NUM_LABELS)
        if rng.random() < 0.85:  # air is dark in nearly every MR image
            means[lm.AIR] = rng.uniform(0.0, 0.1)
    if rng.random() < ranges.shared_blood_prob:
        for k in lm.BLOOD_LABELS:
            means[k] = float(np.clip(means[lm.LV_BLOOD] + rng.normal(0.0, 0.03), 0.0, 1.0))
    for _ in range(20):  # the LV must be visible at all: some contrast between blood and wall
        if abs(means[lm.LV_BLOOD] - means[lm.LV_MYOCARDIUM]) >= ranges.min_blood_myocardium_contrast:
            break
        means[lm.LV_MYOCARDIUM] = rng.uniform(0.0, 1.0)
    if rng.random() < ranges.papillary_like_myocardium_prob:
        means[lm.LV_PAPILLARY] = float(np.clip(means[lm.LV_MYOCARDIUM] + rng.normal(0.0, 0.04), 0.0, 1.0))
    sds = rng.uniform(*ranges.intensity_sd, lm.NUM_LABELS)
    sigma = _uniform(rng, ranges.blur_sigma_px)
    coil = None
    if rng.random() < ranges.coil_prob:
        edge = rng.integers(0, 4)
        along = float(rng.uniform(0.1, 0.9))
        row, col = [(0.0, along), (1.0, along), (along, 0.0), (along, 1.0)][int(edge)]
        coil = (_uniform(rng, ranges.coil_gain), row, col)
    ghost = None
    if rng.random() < ranges.ghost_prob:
        ghost = (_uniform(rng, ranges.ghost_amplitude), int(rng.integers(0, 2)), int(rng.integers(150, 850)))
    mask, params = "none", ()
    pick = rng.random()
    if pick < ranges.fov_circle_prob:
        mask, params = (
            "circle",
            (float(rng.uniform(0.42, 0.7)), float(rng.normal(0, 0.04)), float(rng.normal(0, 0.04))),
        )
    elif pick < ranges.fov_circle_prob + ranges.fov_crop_prob:
        # a superellipse (curved edges of a distortion-corrected field) and straight cuts at the borders
        mask, params = (
            "crop",
            (
                float(rng.uniform(0.45, 0.65)),
                float(rng.uniform(0.45, 0.65)),
                float(rng.uniform(2.0, 6.0)),
                *(float(v) for v in rng.uniform(0.0, 0.12, 4)),
            ),
        )
    return Appearance(
        means=tuple(float(m) for m in means),
        sds=tuple(float(s) for s in sds),
        bssfp=bssfp,
        texture_amplitude=_uniform(rng, ranges.texture_amplitude),
        blur_sigma_px=(sigma * float(rng.uniform(0.7, 1.3)), sigma * float(rng.uniform(0.7, 1.3))),
        bias_sd=_uniform(rng, ranges.bias_sd),
        coil=coil,
        slice_gain_sd=_uniform(rng, ranges.slice_gain_sd),
        gamma=_log_uniform(rng, ranges.gamma),
        snr=_log_uniform(rng, ranges.snr),
        ghost=ghost,
        fov_mask=mask,
        fov_mask_params=params,
        signal_max=_log_uniform(rng, ranges.signal_max),
    )


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], knots: int) -> np.ndarray:
    """A smooth field: standard-normal noise on a ``knots x knots`` grid, interpolated to ``shape``."""
    coarse = rng.standard_normal((knots, knots))
    zoom = ((shape[0] - 1) / (knots - 1) + 1e-9, (shape[1] - 1) / (knots - 1) + 1e-9)
    field_ = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=False)
    return field_[: shape[0], : shape[1]].astype(np.float32)


def fov_mask(shape: tuple[int, int], app: Appearance) -> np.ndarray:
    """True where the acquisition has signal: the whole field, a circle, or a field cut by curved edges and
    straight borders (zero filled elsewhere, as reconstructions and distortion correction leave it)."""
    rows, cols = shape
    if app.fov_mask == "none":
        return np.ones(shape, dtype=bool)
    yy = (np.arange(rows, dtype=np.float32)[:, None] - (rows - 1) / 2.0) / rows
    xx = (np.arange(cols, dtype=np.float32)[None, :] - (cols - 1) / 2.0) / cols
    p = app.fov_mask_params
    if app.fov_mask == "circle":
        radius, dy, dx = p
        return (yy - dy) ** 2 + (xx - dx) ** 2 < radius**2
    ay, ax, power, top, bottom, left, right = p
    inside = np.abs(yy / ay) ** power + np.abs(xx / ax) ** power < 1.0
    inside &= (yy > -0.5 + top) & (yy < 0.5 - bottom) & (xx > -0.5 + left) & (xx < 0.5 - right)
    return inside


def _block_mean(fine: np.ndarray, k: int) -> np.ndarray:
    """(planes, k h, k w) -> (h, w): the mean over the planes and each k x k block (partial volume)."""
    _, rows, cols = fine.shape
    return fine.mean(axis=0).reshape(rows // k, k, cols // k, k).mean(axis=(1, 3))


def render_slices(stack: lm.LabelStack, app: Appearance, rng: np.random.Generator) -> list[np.ndarray]:
    """The acquired images (float32, stored-value scale) of every slice of ``stack`` under ``app``."""
    means = np.asarray(app.means, dtype=np.float32)
    sds = np.asarray(app.sds, dtype=np.float32)
    shape = stack.shape
    k = stack.supersample
    bias = np.exp(np.float32(app.bias_sd) * _smooth_field(rng, shape, 4))
    if app.coil is not None:
        gain, row_f, col_f = app.coil
        yy = np.arange(shape[0], dtype=np.float32)[:, None] / shape[0] - row_f
        xx = np.arange(shape[1], dtype=np.float32)[None, :] / shape[1] - col_f
        bias *= np.exp(np.float32(gain) * np.exp(-(yy * yy + xx * xx) / np.float32(2 * 0.2**2)))
    mask = fov_mask(shape, app)
    sigma_noise = np.float32(1.0 / app.snr)
    images = []
    for sl in stack.slices:
        mean, spread = means[sl.coarse], sds[sl.coarse]
        r0, c0, r1, c1 = sl.roi
        if r1 > r0:  # the LV's box: its fine labels' average (partial volume); the same noise as outside
            mean[r0:r1, c0:c1] = _block_mean(means[sl.fine], k)
            spread[r0:r1, c0:c1] = _block_mean(sds[sl.fine], k)
        img = mean + spread * rng.standard_normal(shape, dtype=np.float32)
        if app.texture_amplitude > 0:
            img *= 1.0 + np.float32(app.texture_amplitude) * _smooth_field(rng, shape, 12)
        if max(app.blur_sigma_px) > 0:
            img = ndimage.gaussian_filter(img, app.blur_sigma_px, mode="nearest")
        img = np.clip(img, 0.0, None) ** np.float32(app.gamma)
        if app.ghost is not None:
            amplitude, axis, shift = app.ghost
            img = img + np.float32(amplitude) * np.roll(img, round(shape[axis] * shift / 1000), axis=axis)
        img = img * bias * np.float32(1.0 + app.slice_gain_sd * rng.standard_normal())
        noise = rng.standard_normal((2, *shape), dtype=np.float32) * sigma_noise
        img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
        img = np.rint(np.where(mask, img, 0.0) * np.float32(app.signal_max))
        images.append(img.astype(np.float32))
    return images


# --- Samples in the tensor contract ------------------------------------------------------------------


@dataclass(frozen=True)
class SampleConfig:
    """What a sample is drawn from: label-map geometry, appearance, the model's grid, label-map detail."""

    grid_pixel_mm: float = DEFAULT_GRID_MM
    geometry: lm.GeometryRanges = field(default_factory=lm.GeometryRanges)
    appearance: AppearanceRanges = field(default_factory=AppearanceRanges)
    supersample: int = 2
    subplanes: int = 3

    def __post_init__(self) -> None:
        if not self.grid_pixel_mm > 0:
            raise ValueError(f"grid_pixel_mm must be > 0. Received: {self.grid_pixel_mm!r}")


@dataclass(frozen=True)
class Sample:
    """A (tensor, labels) pair in the contract layout with its truth: ``image`` float32 (256, 256, 13),
    ``labels`` uint8 (256, 256, 13) (contracts.LABEL_MAP), ``spacing_mm`` (row, col, slice) of the grid, the
    true LV mass over the placed slices, and how it was drawn."""

    image: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    true_lv_mass_g: float
    true_cavity_volume_ml: float
    n_slices_used: int
    acquired_pixel_mm: float
    seed: tuple[int, ...]
    bssfp: bool


def sample_seed(seed: int, purpose: int, index: int) -> tuple[int, int, int]:
    """The seed of one sample: a run's seed, its purpose (train / validation / evaluation) and the index."""
    return (int(seed) % 2**63, int(purpose), int(index))


def sample_rngs(seed: Sequence[int]) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """(scene, appearance, noise) generators of a sample: independent streams, so the same scene can be
    drawn again with another pixel size or appearance."""
    children = np.random.SeedSequence([int(s) for s in seed]).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)  # type: ignore[return-value]


def grid_labels(
    sl: lm.SliceLabels, shape: tuple[int, int], pixel_mm: float, supersample: int, grid_mm: float
) -> np.ndarray:
    """The slice's target labels on the model grid, before placement: the class with the largest fraction
    of each grid pixel (cavity and myocardium fractions of the fine, slab-averaged labels, carried to the
    grid the way ``beam_pipeline.tensor.resample_slice`` carries an image: Gaussian anti-aliasing, then linear
    interpolation with the field-of-view centres aligned). Shape ``(round(rows * pixel / grid), ...)``."""
    out_shape = tuple(max(1, round(n * pixel_mm / grid_mm)) for n in shape)
    r0, c0, r1, _ = sl.roi
    if r1 <= r0:
        return np.zeros(out_shape, dtype=np.uint8)
    fine_mm = pixel_mm / supersample
    factor = grid_mm / fine_mm  # fine pixels per grid pixel
    sigma = math.sqrt(factor * factor - 1.0) / 2.0 if factor > 1.0 else 0.0
    offsets = [
        (n * supersample - 1) / 2.0 - (n_out - 1) / 2.0 * factor - start * supersample
        for n, n_out, start in zip(shape, out_shape, (r0, c0), strict=True)
    ]
    fractions = []
    for frac in sl.target_fractions():
        if sigma > 0:
            frac = ndimage.gaussian_filter(frac, sigma, mode="constant")
        fractions.append(
            ndimage.affine_transform(
                frac,
                (factor, factor),
                offset=offsets,
                output_shape=out_shape,
                order=1,
                mode="constant",
                cval=0.0,
            )
        )
    cavity, myocardium = fractions
    background = 1.0 - cavity - myocardium
    return np.argmax(np.stack([background, cavity, myocardium]), axis=0).astype(np.uint8)


def decoded_study(stack: lm.LabelStack, images: Sequence[np.ndarray], source: str) -> DecodedStudy:
    """The images as the decoder would hand them over: standard view, base to apex, no InlineVF."""
    return DecodedStudy(
        eid=None,
        instance=None,
        source_uri=source,
        images=tuple(images),
        outlines=(None,) * len(images),
        pixel_spacing_mm=(stack.pixel_spacing_mm, stack.pixel_spacing_mm),
        slice_spacing_mm=stack.slice_spacing_mm,
        slice_thickness_mm=stack.slice_thickness_mm,
        slice_positions_mm=stack.positions_mm,
    )


def sample_from_stack(
    stack: lm.LabelStack,
    app: Appearance,
    noise_rng: np.random.Generator,
    *,
    grid_mm: float,
    seed: tuple[int, ...] = (),
) -> Sample:
    """Render ``stack`` under ``app`` and hand it to the pipeline's tensor function; the labels follow the
    tensor's placement exactly (same grid, same slice window, same padding)."""
    images = render_slices(stack, app, noise_rng)
    tensor = build_image_tensor(decoded_study(stack, images, f"synthseg:{seed}"), grid_pixel_mm=grid_mm)
    labels = np.zeros(contracts.LABEL_VOLUME_SHAPE, dtype=np.uint8)
    start, used = tensor.slice_start, tensor.n_slices_used
    for k in range(used):
        on_grid = grid_labels(
            stack.slices[start + k], stack.shape, stack.pixel_spacing_mm, stack.supersample, grid_mm
        )
        labels[:, :, k], _ = pad_or_crop_slice(on_grid)
    myo_areas = stack.myocardium_area_mm2[start : start + used]
    cav_areas = stack.cavity_area_mm2[start : start + used]
    scale = stack.slice_spacing_mm / 1000.0
    return Sample(
        image=tensor.image[..., 0],
        labels=labels,
        spacing_mm=tuple(float(s) for s in tensor.spacing_mm),  # type: ignore[arg-type]
        true_lv_mass_g=float(sum(myo_areas)) * scale * contracts.MYOCARDIAL_DENSITY_G_PER_ML,
        true_cavity_volume_ml=float(sum(cav_areas)) * scale,
        n_slices_used=used,
        acquired_pixel_mm=stack.pixel_spacing_mm,
        seed=tuple(seed),
        bssfp=app.bssfp,
    )


def make_sample(seed: Sequence[int], config: SampleConfig, *, pixel_mm: float | None = None) -> Sample:
    """One random (tensor, labels) pair from its seed alone; ``pixel_mm`` overrides the acquired pixel size
    (the scene and the appearance stay those of the seed)."""
    scene_rng, app_rng, noise_rng = sample_rngs(seed)
    scene = lm.draw_label_scene(scene_rng, config.geometry)
    app = draw_appearance(app_rng, config.appearance)
    acquired = _uniform(app_rng, config.appearance.pixel_mm) if pixel_mm is None else float(pixel_mm)
    stack = lm.rasterise_scene(
        scene,
        acquired,
        supersample=config.supersample,
        subplanes=config.subplanes,
        texture_phase=float(app_rng.uniform(0.0, 2.0 * math.pi)),
    )
    return sample_from_stack(stack, app, noise_rng, grid_mm=config.grid_pixel_mm, seed=tuple(seed))


def lv_centre_px(labels: np.ndarray) -> tuple[float, float]:
    """(row, col) of the LV's centroid in a label volume; the tensor's centre when it holds no LV."""
    rows, cols = np.nonzero(labels.any(axis=2))
    if rows.size == 0:
        return (ROWS - 1) / 2.0, (COLS - 1) / 2.0
    return float(rows.mean()), float(cols.mean())


def crop_at(
    image: np.ndarray,
    labels: np.ndarray,
    centre: tuple[float, float],
    rng: np.random.Generator,
    crop_px: int,
    *,
    lv_prob: float = 0.85,
) -> tuple[np.ndarray, np.ndarray]:
    """An in-plane crop (all slices) around the LV (``lv_prob``; up to a quarter crop off centre) or
    anywhere, so the network also learns what is not a heart."""
    if crop_px >= ROWS:
        return image, labels
    if rng.random() < lv_prob:
        row = centre[0] + rng.uniform(-0.25, 0.25) * crop_px
        col = centre[1] + rng.uniform(-0.25, 0.25) * crop_px
    else:
        row, col = rng.uniform(0, ROWS), rng.uniform(0, COLS)
    r0 = int(np.clip(round(row - crop_px / 2), 0, ROWS - crop_px))
    c0 = int(np.clip(round(col - crop_px / 2), 0, COLS - crop_px))
    return image[r0 : r0 + crop_px, c0 : c0 + crop_px], labels[r0 : r0 + crop_px, c0 : c0 + crop_px]


# --- On-the-fly training samples ---------------------------------------------------------------------


def _shared(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in anonymous shared memory (forked workers write, the parent reads)."""
    count = int(np.prod(shape))
    return np.frombuffer(
        mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1)), dtype=dtype, count=count
    ).reshape(shape)


def _produce(worker: int, n_workers: int, stream: SampleStream) -> None:
    """A worker's loop: refill its free slots with new samples until told to stop."""
    while not stream.stop_flag[0]:
        idle = True
        for slot in range(worker, stream.n_slots, n_workers):
            if stream.state[slot] != 0 or stream.stop_flag[0]:
                continue
            with stream.counter.get_lock():
                index = int(stream.counter.value)
                stream.counter.value += 1
            stream.fill(slot, index)
            idle = False
        if idle:
            time.sleep(0.005)


class SampleStream:
    """Training batches of crops from samples drawn on the fly.

    ``workers`` forked processes fill ``slots`` with whole samples (float16 tensor, labels, LV centre); the
    parent takes random crops of ready slots, uses each sample at most ``max_uses`` times and then frees its
    slot for a new one. Fork before Keras starts its threads (:meth:`start` first). With ``workers=0``
    samples are made in this process, in index order: the same batches every time, each sample used once.
    """

    def __init__(
        self,
        config: SampleConfig,
        *,
        seed: int,
        batch_size: int,
        crop_px: int,
        workers: int,
        slots: int = 0,
        max_uses: int = 4,
    ):
        if batch_size < 1 or crop_px < 8 or crop_px > ROWS or max_uses < 1 or workers < 0:
            raise ValueError(
                f"need batch_size >= 1, 8 <= crop_px <= {ROWS}, max_uses >= 1, workers >= 0. "
                f"Received: {batch_size}, {crop_px}, {max_uses}, {workers}"
            )
        self.config, self.seed, self.batch_size, self.crop_px = config, seed, batch_size, crop_px
        self.workers, self.max_uses = workers, max_uses
        self.n_slots = max(slots, 2 * batch_size, 4 * workers) if workers else 0
        self.rng = np.random.default_rng([seed, 99])
        self.next_index = 0
        self.samples_made = 0
        self.waited_s = 0.0
        self._processes: list[Any] = []
        if workers:
            self.images = _shared((self.n_slots, ROWS, COLS, SLICES), np.float16)
            self.labels = _shared((self.n_slots, ROWS, COLS, SLICES), np.uint8)
            self.centres = _shared((self.n_slots, 2), np.float32)
            self.state = _shared((self.n_slots,), np.int8)  # 0 free, 1 ready
            self.stop_flag = _shared((1,), np.int8)
            self.uses = np.zeros(self.n_slots, dtype=np.int64)
            self.counter = mp.get_context("fork").Value("q", 0)

    def fill(self, slot: int, index: int) -> None:
        sample = make_sample(sample_seed(self.seed, PURPOSE_TRAIN, index), self.config)
        self.images[slot] = sample.image.astype(np.float16)
        self.labels[slot] = sample.labels
        self.centres[slot] = lv_centre_px(sample.labels)
        self.state[slot] = 1  # written last: the parent reads a slot only once it is ready

    def start(self) -> SampleStream:
        ctx = mp.get_context("fork")
        for w in range(self.workers):
            process = ctx.Process(target=_produce, args=(w, self.workers, self), daemon=True)
            process.start()
            self._processes.append(process)
        return self

    def close(self) -> None:
        if self.workers:
            self.stop_flag[0] = 1
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        self._processes = []

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images (B, crop, crop, 13, 1) float32, labels (B, crop, crop, 13) int32)``."""
        images, labels = [], []
        if not self.workers:
            for _ in range(self.batch_size):
                sample = make_sample(sample_seed(self.seed, PURPOSE_TRAIN, self.next_index), self.config)
                self.next_index += 1
                self.samples_made += 1
                image, label = crop_at(
                    sample.image, sample.labels, lv_centre_px(sample.labels), self.rng, self.crop_px
                )
                images.append(image)
                labels.append(label)
        else:
            chosen = self._ready_slots()
            for slot in chosen:
                image, label = crop_at(
                    self.images[slot], self.labels[slot], tuple(self.centres[slot]), self.rng, self.crop_px
                )
                images.append(image.astype(np.float32))
                labels.append(label.copy())
                self.uses[slot] += 1
                if self.uses[slot] == 1:
                    self.samples_made += 1
                if self.uses[slot] >= self.max_uses:
                    self.uses[slot] = 0
                    self.state[slot] = 0
        return (np.stack(images)[..., None].astype(np.float32), np.stack(labels).astype(np.int32))

    def _ready_slots(self) -> np.ndarray:
        began = time.perf_counter()
        while True:
            ready = np.flatnonzero(self.state == 1)
            if len(ready) >= self.batch_size:
                break
            if not any(p.is_alive() for p in self._processes):
                raise RuntimeError("every sample worker has stopped")
            time.sleep(0.005)
        self.waited_s += time.perf_counter() - began
        # the least-used first, so fresh samples enter and used ones leave
        order = ready[np.lexsort((self.rng.random(len(ready)), self.uses[ready]))]
        return order[: self.batch_size]


# --- Keras: loss, fit, validation ----------------------------------------------------------------------


def seg_config(preset: str) -> Any:
    """The ML4H_seg configuration of a preset (``tiny`` here; the others are ``trainer.models``')."""
    from trainer import models

    if preset == "tiny":
        return models.seg_config("cpu", **TINY_PRESET)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}. Received: {preset!r}")
    return models.seg_config(preset)


def segmentation_loss(dice_weight: float = 1.0) -> Callable[[Any, Any], Any]:
    """Per-voxel cross-entropy plus ``dice_weight`` x (1 - soft Dice of the cavity and myocardium), per
    example: the cross-entropy learns every voxel, the Dice term keeps the small myocardium from drowning
    in background (SynthSeg trains on soft Dice)."""
    import keras
    from keras import ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        labels = ops.cast(y_true, "int32")
        ce = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        ce = ops.mean(ops.reshape(ce, (ops.shape(ce)[0], -1)), axis=-1)
        onehot = ops.one_hot(labels, contracts.NUM_CLASSES, dtype=y_pred.dtype)
        axes = tuple(range(1, len(y_pred.shape) - 1))
        intersection = ops.sum(onehot * y_pred, axis=axes)
        total = ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes)
        dice = (2.0 * intersection + 1.0) / (total + 1.0)
        return ce + dice_weight * (1.0 - ops.mean(dice[:, 1:], axis=-1))

    return loss


def dice(predicted: np.ndarray, reference: np.ndarray, label: int) -> float:
    """2|A and B| / (|A| + |B|) of one label; 1.0 when both are empty."""
    a, b = predicted == label, reference == label
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def mass_agreement(predicted_g: Sequence[float], true_g: Sequence[float]) -> dict[str, float]:
    """Pearson r, MAE, mean error (bias) and the largest absolute error of predicted against true masses."""
    p, t = np.asarray(predicted_g, dtype=np.float64), np.asarray(true_g, dtype=np.float64)
    r = float(np.corrcoef(p, t)[0, 1]) if len(p) > 2 and p.std() > 0 and t.std() > 0 else float("nan")
    err = p - t
    return {
        "n": len(p),
        "pearson_r": r,
        "mae_g": float(np.abs(err).mean()),
        "bias_g": float(err.mean()),
        "max_abs_error_g": float(np.abs(err).max()) if len(err) else float("nan"),
    }


def measured_mass_g(labels: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """The pipeline's raw mass of a label volume (``beam_pipeline.mass``)."""
    from beam_pipeline.mass import measure_label_volume

    return float(measure_label_volume(labels, spacing_mm).lv_mass_raw_g)


def score_samples(samples: Sequence[Sample], predict: Callable[[Sample], np.ndarray]) -> dict[str, Any]:
    """Dice (cavity, myocardium) and mass agreement of ``predict``'s argmax labels against the samples'
    truth; also the mass of the target labels themselves (what a perfect learner of the targets gets)."""
    rows = []
    for sample in samples:
        began = time.perf_counter()
        predicted = predict(sample)
        rows.append(
            {
                "seed": list(sample.seed),
                "acquired_pixel_mm": sample.acquired_pixel_mm,
                "bssfp": sample.bssfp,
                "true_lv_mass_g": sample.true_lv_mass_g,
                "target_labels_mass_g": measured_mass_g(sample.labels, sample.spacing_mm),
                "predicted_mass_g": measured_mass_g(predicted, sample.spacing_mm),
                "cavity_dice": dice(predicted, sample.labels, contracts.LV_CAVITY),
                "myocardium_dice": dice(predicted, sample.labels, contracts.MYOCARDIUM),
                "seconds": time.perf_counter() - began,
            }
        )
    return {
        "n": len(rows),
        "cavity_dice_mean": float(np.mean([r["cavity_dice"] for r in rows])),
        "myocardium_dice_mean": float(np.mean([r["myocardium_dice"] for r in rows])),
        "mass_vs_truth": mass_agreement(
            [r["predicted_mass_g"] for r in rows], [r["true_lv_mass_g"] for r in rows]
        ),
        "target_labels_vs_truth": mass_agreement(
            [r["target_labels_mass_g"] for r in rows], [r["true_lv_mass_g"] for r in rows]
        ),
        "rows": rows,
    }


def _make_one(task: tuple[tuple[int, ...], SampleConfig, float | None]) -> Sample:
    seed, config, pixel_mm = task
    return make_sample(seed, config, pixel_mm=pixel_mm)


def draw_samples(
    seeds: Sequence[tuple[int, ...]],
    config: SampleConfig,
    *,
    workers: int,
    pixel_mm: Sequence[float | None] | None = None,
) -> list[Sample]:
    """Samples of the given seeds (and acquired pixel sizes), in order, on ``workers`` forked processes
    (call it before TensorFlow or JAX start their threads) or in this process when ``workers`` < 2."""
    tasks = [(tuple(s), config, None if pixel_mm is None else pixel_mm[i]) for i, s in enumerate(seeds)]
    if workers < 2 or len(tasks) < 2:
        return [_make_one(t) for t in tasks]
    with mp.get_context("fork").Pool(min(workers, len(tasks))) as pool:
        return pool.map(_make_one, tasks, chunksize=1)


def validation_samples(config: SampleConfig, seed: int, n: int, workers: int = 0) -> list[Sample]:
    """The run's held-out samples: purpose "validation", never drawn for training."""
    return draw_samples([sample_seed(seed, PURPOSE_VALIDATION, i) for i in range(n)], config, workers=workers)


def _keras_predictor(model: Any) -> Callable[[Sample], np.ndarray]:
    def predict(sample: Sample) -> np.ndarray:
        batch = sample.image[None, ..., None].astype(np.float32)
        probabilities = model.predict({contracts.SIGNATURE_INPUT_IMAGE: batch}, verbose=0)
        return np.argmax(np.asarray(probabilities)[0], axis=-1).astype(np.uint8)

    return predict


def save_weights(model: Any, path: str) -> None:
    """``model.get_weights()`` as ``arr_0, arr_1, ...`` (any backend; the fixed-shape twin loads them)."""
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, *model.get_weights())
    os.replace(tmp, path)


def load_weights(model: Any, path: str) -> None:
    with np.load(path) as stored:
        model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])


def sample_config_from_args(args: argparse.Namespace) -> SampleConfig:
    appearance = AppearanceRanges(pixel_mm=(args.min_pixel_mm, args.max_pixel_mm))
    low = lm.GeometryRanges().n_slices[0]
    geometry = lm.GeometryRanges(n_slices=(min(low, args.max_slices), args.max_slices))
    return SampleConfig(
        grid_pixel_mm=args.grid_pixel_mm,
        geometry=geometry,
        appearance=appearance,
        supersample=args.supersample,
        subplanes=args.subplanes,
    )


def _config_dict(config: SampleConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=list))


def fit(args: argparse.Namespace) -> dict[str, Any]:
    """Start the sample workers (before Keras), fit, validate on held-out samples, save weights, fit.json."""
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    config = sample_config_from_args(args)
    held_out = validation_samples(config, args.seed, args.validation_samples, args.workers)
    stream = SampleStream(
        config,
        seed=args.seed,
        batch_size=args.batch_size,
        crop_px=args.crop_px,
        workers=args.workers,
        slots=args.slots,
        max_uses=args.max_uses,
    ).start()
    try:
        return _fit(args, config, stream, started, held_out)
    finally:
        stream.close()


def _fit(
    args: argparse.Namespace,
    config: SampleConfig,
    stream: SampleStream,
    started: float,
    held_out: Sequence[Sample],
) -> dict[str, Any]:
    import keras

    from trainer import models

    keras.utils.set_random_seed(args.seed)
    arch = seg_config(args.preset)
    model = models.build_ml4h_seg(arch, fully_convolutional=True)
    if args.initial_weights:
        load_weights(model, args.initial_weights)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        args.learning_rate, decay_steps=args.lr_decay_steps, decay_rate=args.lr_decay_rate
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=segmentation_loss(args.dice_weight))
    steps_per_epoch = max(1, min(args.steps, args.steps_per_epoch))
    epochs = math.ceil(args.steps / steps_per_epoch)

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return steps_per_epoch

        def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
            image, labels = stream.batch()
            return {contracts.SIGNATURE_INPUT_IMAGE: image}, labels

    weights_path = os.path.join(args.out, WEIGHTS_FILENAME)
    stop_at = min(args.train_until, time.time() + args.max_train_seconds)
    total_steps = args.steps

    class SaveAndStop(keras.callbacks.Callback):
        """Stop at ``total_steps`` or ``stop_at`` (steps counted here: reading the optimizer's counter
        every batch would wait for the accelerator); save the weights after every epoch."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.done = 0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.done += 1
            if time.time() > stop_at or self.done >= total_steps:
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            save_weights(self.model, weights_path)

    fit_started = time.perf_counter()
    history = model.fit(
        Batches(),
        epochs=epochs,
        verbose=2,
        callbacks=[keras.callbacks.CSVLogger(os.path.join(args.out, LOG_FILENAME)), SaveAndStop()],
    )
    train_seconds = time.perf_counter() - fit_started
    save_weights(model, weights_path)
    steps_run = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    validation: dict[str, Any] = {}
    if held_out:
        validation = score_samples(held_out, _keras_predictor(model))
    summary = {
        "kind": contracts.MODEL_KIND_SEG,
        "trainer": "trainer.synthseg",
        "backend": keras.backend.backend(),
        "preset": args.preset,
        "architecture": models.config_to_dict(arch),
        "sample_config": _config_dict(config),
        "training_data": {
            "source": "lvmass.synth.labelmaps + trainer.synthseg appearance randomisation, drawn on the fly",
            "labels": "true anatomy (label maps), papillary muscles and trabeculae as cavity",
            "seed": args.seed,
            "samples_made": stream.samples_made,
            "max_uses_per_sample": args.max_uses,
            "workers": args.workers,
        },
        "hyperparameters": {
            "optimizer": "adam",
            "learning_rate": args.learning_rate,
            "lr_decay_steps": args.lr_decay_steps,
            "lr_decay_rate": args.lr_decay_rate,
            "batch_size": args.batch_size,
            "crop_px": args.crop_px,
            "loss": f"cross-entropy + {args.dice_weight} x (1 - soft Dice of cavity and myocardium)",
            "steps_requested": args.steps,
            "steps_run": steps_run,
            "steps_per_epoch": steps_per_epoch,
            "initial_weights": args.initial_weights,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "steps_per_second": round(steps_run / max(train_seconds, 1e-9), 4),
            "waited_for_samples_seconds": round(stream.waited_s, 1),
        },
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "validation": {k: v for k, v in validation.items() if k != "rows"},
        "machine": machine(),
        "command": " ".join(["python -m trainer.synthseg", *sys.argv[1:]]),
    }
    with open(os.path.join(args.out, FIT_FILENAME), "w") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True, default=_jsonable)
    LOG.info(
        "fit done: %d steps in %.0f s; validation %s",
        steps_run,
        train_seconds,
        json.dumps(summary["validation"], default=_jsonable),
    )
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}


# --- export, evaluate, preview ---------------------------------------------------------------------


def export(args: argparse.Namespace) -> str:
    """Rebuild the fixed-shape model from fit.json, load the weights, write the pipeline's SavedModel,
    ``model.keras`` and a card that says ``label_source = "true_anatomy"``, the grid and the pixel range."""
    from beam_pipeline.model_card import LABEL_SOURCE_TRUE_ANATOMY, ModelCard
    from lvmass import __version__
    from trainer import export as exporter
    from trainer import models

    with open(os.path.join(args.run_dir, FIT_FILENAME)) as handle:
        summary = json.load(handle)
    if summary.get("trainer") != "trainer.synthseg":
        raise ValueError(f"{args.run_dir}: {FIT_FILENAME} is not a trainer.synthseg run")
    model = models.build_ml4h_seg(models.SegConfig(**summary["architecture"]))
    load_weights(model, os.path.join(args.run_dir, WEIGHTS_FILENAME))
    sample_config = summary["sample_config"]
    card = ModelCard(
        kind=contracts.MODEL_KIND_SEG,
        version=args.version or f"{__version__}+synthseg",
        training_data={**summary["training_data"], "sample_config": sample_config},
        hyperparameters={
            "architecture": summary["architecture"],
            "preset": summary["preset"],
            "trainer": f"trainer.synthseg on Keras/{summary['backend']}",
            **summary["hyperparameters"],
        },
        metrics={"history": summary["history"], "validation_on_synthetic_truth": summary["validation"]},
        calibration={},
        trained_on_synthetic_data=True,
        notes=(
            "Trained only on synthetic label maps (lvmass.synth.labelmaps) with randomised appearance "
            "(trainer.synthseg, SynthSeg-style); it learned the true anatomy, not InlineVF outlines, so its "
            "raw mass is an estimate that needs no sex centering. Papillary muscles and trabeculae are "
            "cavity."
        ),
        pixel_spacing_mm=float(sample_config["grid_pixel_mm"]),
        training_pixel_spacing_mm=[float(v) for v in sample_config["appearance"]["pixel_mm"]],
        label_source=LABEL_SOURCE_TRUE_ANATOMY,
    )
    exporter.export_model(model, kind=contracts.MODEL_KIND_SEG, export_dir=args.export_dir, card=card)
    log = os.path.join(args.run_dir, LOG_FILENAME)
    if os.path.exists(log):
        with open(log) as src, open(os.path.join(args.export_dir, LOG_FILENAME), "w") as dst:
            dst.write(src.read())
    return args.export_dir


def handler_predictor(model_dir: str) -> tuple[Callable[[Sample], np.ndarray], Any]:
    """The pipeline's own handler (``beam_pipeline.inference.SavedModelHandler``) as a predictor, and the
    model's card."""
    from beam_pipeline.inference import ModelInput, SavedModelHandler

    handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG)
    loaded = handler.load_model()

    def predict(sample: Sample) -> np.ndarray:
        example = ModelInput(
            sample.image[..., None].astype(np.float32), np.asarray(sample.spacing_mm, np.float32)
        )
        [result] = handler.run_inference([example], loaded)
        return np.asarray(result.inference, dtype=np.uint8)

    return predict, loaded.card


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Score a SavedModel on synthetic samples never used in training (purpose "evaluation", its own seed):
    Dice and raw mass against the true mass; and one scene rendered at several acquired pixel sizes with one
    appearance, whose masses must agree."""
    from beam_pipeline.inference import bundled_model_dir, read_model_card

    model_dir = args.model_seg or bundled_model_dir(contracts.MODEL_KIND_SEG)
    if model_dir is None:
        raise ValueError("no --model_seg and no bundled ML4H_seg")
    card = read_model_card(model_dir, expected_kind=contracts.MODEL_KIND_SEG)
    grid = float(card.pixel_spacing_mm or contracts.DEFAULT_TENSOR_PIXEL_SPACING_MM)
    config = SampleConfig(
        grid_pixel_mm=grid, appearance=AppearanceRanges(pixel_mm=(args.min_pixel_mm, args.max_pixel_mm))
    )
    began = time.perf_counter()
    sizes = [float(v) for v in args.resolution_pixel_mm.split(",")]
    # every sample before TensorFlow starts (workers are forked)
    samples = draw_samples(
        [sample_seed(args.seed, PURPOSE_EVALUATION, i) for i in range(args.samples)],
        config,
        workers=args.workers,
    )
    scene_seeds = [sample_seed(args.seed + 1, PURPOSE_EVALUATION, i) for i in range(args.resolution_scenes)]
    renders = draw_samples(
        [s for s in scene_seeds for _ in sizes],
        config,
        workers=args.workers,
        pixel_mm=[p for _ in scene_seeds for p in sizes],
    )
    predict, _ = handler_predictor(model_dir)
    cohort = score_samples(samples, predict)
    resolution = []
    for i, seed in enumerate(scene_seeds):
        masses = [
            measured_mass_g(predict(s), s.spacing_mm) for s in renders[i * len(sizes) : (i + 1) * len(sizes)]
        ]
        spread = (max(masses) - min(masses)) / max(np.mean(masses), 1e-9)
        resolution.append({"seed": list(seed), "masses_g": masses, "relative_spread": spread})
    seconds = [r["seconds"] for r in cohort["rows"]]
    result = {
        "model_seg": model_dir,
        "model_version": card.version,
        "label_source": card.label_source,
        "grid_pixel_mm": grid,
        "seed": args.seed,
        "acquired_pixel_mm": [args.min_pixel_mm, args.max_pixel_mm],
        "cohort": {k: v for k, v in cohort.items() if k != "rows"},
        "resolution": {
            "pixel_mm": sizes,
            "scenes": resolution,
            "max_relative_spread": max((r["relative_spread"] for r in resolution), default=float("nan")),
            "within_5_percent": sum(r["relative_spread"] <= 0.05 for r in resolution),
        },
        "inference_seconds_per_participant_median": float(np.median(seconds)) if seconds else float("nan"),
        "rows": cohort["rows"],
        "seconds": round(time.perf_counter() - began, 1),
        "command": " ".join(["python -m trainer.synthseg", *sys.argv[1:]]),
        "machine": machine(),
    }
    if args.record:
        name = args.name or Path(model_dir.rstrip("/")).name.replace(":", "_")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"synthseg_evaluation_{name}.json").write_text(
            json.dumps(result, indent=2, sort_keys=True, default=_jsonable) + "\n"
        )
        (RESULTS_DIR / f"synthseg_evaluation_{name}.md").write_text(evaluation_markdown(name, result))
    LOG.info(
        "evaluation: %s", json.dumps({k: result[k] for k in ("cohort", "resolution")}, default=_jsonable)
    )
    return result


def report(args: argparse.Namespace) -> list[str]:
    """Record a run (its fit.json, with the command) as ``benchmarks/results/synthseg_training_<name>.*``."""
    with open(os.path.join(args.run_dir, FIT_FILENAME)) as handle:
        summary = json.load(handle)
    if args.command_line:
        summary["command"] = args.command_line
    hyper, history = summary["hyperparameters"], summary["history"]["loss"]
    validation = summary.get("validation") or {}
    mass = validation.get("mass_vs_truth", {})
    tenth = max(1, len(history) // 10)
    crops_per_second = hyper["steps_per_second"] * hyper["batch_size"]
    lines = [
        f"# trainer.synthseg run `{args.name}`",
        "",
        f"- command: `{summary.get('command', '(not recorded)')}`",
        f"- machine: {summary['machine']}, Keras backend {summary['backend']}",
        f"- preset `{summary['preset']}`, batch {hyper['batch_size']}, crop {hyper['crop_px']} px, "
        f"{summary['training_data']['workers']} sample workers, each sample used at most "
        f"{summary['training_data']['max_uses_per_sample']} times",
        f"- {hyper['steps_run']} steps in {hyper['train_seconds']:.0f} s: "
        f"{hyper['steps_per_second']:.3f} steps/s ({crops_per_second:.2f} crops/s); "
        f"{summary['training_data']['samples_made']} samples drawn; "
        f"{hyper['waited_for_samples_seconds']:.0f} s waiting for samples",
        f"- loss (per epoch of {hyper['steps_per_epoch']} steps): first {history[0]:.3f}, "
        f"mean of the first tenth {float(np.mean(history[:tenth])):.3f}, "
        f"mean of the last tenth {float(np.mean(history[-tenth:])):.3f}, last {history[-1]:.3f}",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    if validation:
        lines.append(
            f"- validation ({validation['n']} held-out samples, full tensors): cavity Dice "
            f"{validation['cavity_dice_mean']:.3f}, myocardium Dice "
            f"{validation['myocardium_dice_mean']:.3f}, "
            f"raw mass vs truth r {mass.get('pearson_r', float('nan')):.3f}, "
            f"MAE {mass.get('mae_g', float('nan')):.1f} g"
        )
    lines.append("")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = [
        RESULTS_DIR / f"synthseg_training_{args.name}.json",
        RESULTS_DIR / f"synthseg_training_{args.name}.md",
    ]
    paths[0].write_text(json.dumps(summary, indent=2, sort_keys=True, default=_jsonable) + "\n")
    paths[1].write_text("\n".join(lines))
    return [str(p) for p in paths]


def evaluation_markdown(name: str, result: dict[str, Any]) -> str:
    """The recorded synthetic evaluation, readable, with the issue's targets beside it."""
    cohort, res = result["cohort"], result["resolution"]
    mass, targets = cohort["mass_vs_truth"], cohort["target_labels_vs_truth"]
    low, high = result["acquired_pixel_mm"]
    return "\n".join(
        [
            f"# {name} against the synthetic truth (trainer.synthseg evaluate)",
            "",
            f"- model: `{result['model_seg']}` (version {result['model_version']}, label_source "
            f"`{result['label_source']}`, grid {result['grid_pixel_mm']} mm)",
            f"- command: `{result['command']}`",
            f"- machine: {result['machine']}",
            f"- samples: {cohort['n']} never used in training (seed {result['seed']}, purpose evaluation), "
            f"acquired pixels {low}-{high} mm, the widest appearance and geometry of trainer.synthseg and "
            "lvmass.synth.labelmaps",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| raw mass vs true mass, Pearson r | {mass['pearson_r']:.3f} | >= 0.95 |",
            f"| raw mass vs true mass, MAE (g) | {mass['mae_g']:.1f} | <= 6 |",
            f"| raw mass - true mass, mean (g) | {mass['bias_g']:+.1f} | |",
            f"| myocardium Dice vs true labels | {cohort['myocardium_dice_mean']:.3f} | |",
            f"| LV cavity Dice vs true labels | {cohort['cavity_dice_mean']:.3f} | |",
            f"| one scene at {', '.join(str(p) for p in res['pixel_mm'])} mm: largest relative mass spread "
            f"over {len(res['scenes'])} scenes | {res['max_relative_spread']:.3f} | <= 0.05 |",
            f"| scenes within 5% | {res['within_5_percent']} / {len(res['scenes'])} | all |",
            f"| inference, median s per participant (this machine, the pipeline's handler) | "
            f"{result['inference_seconds_per_participant_median']:.2f} | <= today's |",
            f"| the target labels themselves vs true mass: r, MAE (g) | "
            f"{targets['pearson_r']:.3f}, {targets['mae_g']:.1f} | (the ceiling of the grid) |",
            "",
        ]
    )


def preview(args: argparse.Namespace) -> list[str]:
    """PNG pictures of a few samples (image and labels, every placed slice) for a human to look at."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.use("Agg")
    config = sample_config_from_args(args)
    os.makedirs(args.out, exist_ok=True)
    paths = []
    for i in range(args.samples):
        sample = make_sample(sample_seed(args.seed, PURPOSE_TRAIN, i), config)
        n = sample.n_slices_used
        fig = Figure(figsize=(2 * n, 4.2))
        axes = fig.subplots(2, n, squeeze=False)
        for k in range(n):
            axes[0, k].imshow(sample.image[:, :, k], cmap="gray")
            axes[1, k].imshow(sample.labels[:, :, k], vmin=0, vmax=2, interpolation="nearest")
            for ax in axes[:, k]:
                ax.set_axis_off()
        fig.suptitle(
            f"seed {list(sample.seed)}: acquired {sample.acquired_pixel_mm:.2f} mm, "
            f"true mass {sample.true_lv_mass_g:.0f} g, {'bSSFP-like' if sample.bssfp else 'random'}"
        )
        path = os.path.join(args.out, f"sample_{i:03d}.png")
        fig.savefig(path, dpi=60)
        paths.append(path)
    return paths


# --- command line --------------------------------------------------------------------------------------


def _sample_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grid_pixel_mm",
        type=float,
        default=DEFAULT_GRID_MM,
        help="the model grid's pixel size (the card's pixel_spacing_mm)",
    )
    parser.add_argument("--min_pixel_mm", type=float, default=1.2, help="smallest acquired pixel drawn")
    parser.add_argument("--max_pixel_mm", type=float, default=2.2, help="largest acquired pixel drawn")
    parser.add_argument(
        "--max_slices",
        type=int,
        default=lm.GeometryRanges().n_slices[1],
        help="most slices in a stack (fewer: cheaper samples, for smoke tests)",
    )
    parser.add_argument("--supersample", type=int, default=2, help="LV label grid, times finer than acquired")
    parser.add_argument("--subplanes", type=int, default=3, help="LV label planes across each slab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.synthseg", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit_p = sub.add_parser("fit", help="train ML4H_seg on synthetic label maps with random appearance")
    fit_p.add_argument("--out", required=True, help="run folder: weights.npz, fit.json, training_log.csv")
    fit_p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    fit_p.add_argument("--preset", default="compact", choices=PRESETS)
    fit_p.add_argument("--batch_size", type=int, default=8)
    fit_p.add_argument("--crop_px", type=int, default=128, help="in-plane crop (256: whole tensors)")
    fit_p.add_argument("--steps_per_epoch", type=int, default=200)
    fit_p.add_argument("--learning_rate", type=float, default=1e-3)
    fit_p.add_argument("--lr_decay_steps", type=int, default=2000)
    fit_p.add_argument("--lr_decay_rate", type=float, default=0.8)
    fit_p.add_argument("--dice_weight", type=float, default=1.0)
    fit_p.add_argument(
        "--workers",
        type=int,
        default=max(0, (os.cpu_count() or 1) - 1),
        help="processes drawing samples (0: in this process, reproducible)",
    )
    fit_p.add_argument("--slots", type=int, default=0, help="samples held ready (default: enough)")
    fit_p.add_argument("--max_uses", type=int, default=4, help="crops taken from one sample at most")
    fit_p.add_argument("--validation_samples", type=int, default=16)
    fit_p.add_argument("--seed", type=int, default=1)
    fit_p.add_argument("--initial_weights", default=None, help="weights.npz of an earlier run (same preset)")
    fit_p.add_argument("--max_train_seconds", type=float, default=float("inf"))
    fit_p.add_argument("--train_until", type=float, default=float("inf"), help="stop at this Unix time")
    _sample_options(fit_p)
    exp_p = sub.add_parser("export", help="(TensorFlow) write the SavedModel, model.keras and model card")
    exp_p.add_argument("--run_dir", required=True)
    exp_p.add_argument("--export_dir", required=True)
    exp_p.add_argument("--version", default="")
    ev_p = sub.add_parser("evaluate", help="(TensorFlow) score a SavedModel on synthetic samples with truth")
    ev_p.add_argument("--model_seg", default=None, help="SavedModel folder (default: the bundled ML4H_seg)")
    ev_p.add_argument("--samples", type=int, default=100)
    ev_p.add_argument("--seed", type=int, default=20260101, help="never a training seed")
    ev_p.add_argument("--resolution_scenes", type=int, default=10)
    ev_p.add_argument("--resolution_pixel_mm", default="1.3,1.8,2.2")
    ev_p.add_argument("--min_pixel_mm", type=float, default=1.2)
    ev_p.add_argument("--max_pixel_mm", type=float, default=2.2)
    ev_p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing samples")
    ev_p.add_argument(
        "--record", action="store_true", help="write benchmarks/results/synthseg_evaluation_<name>.json"
    )
    ev_p.add_argument("--name", default="", help="the recorded file's name (default: the model folder's)")
    rp_p = sub.add_parser("report", help="record a run as benchmarks/results/synthseg_training_<name>.*")
    rp_p.add_argument("--run_dir", required=True)
    rp_p.add_argument("--name", required=True)
    rp_p.add_argument("--command_line", default="", help="the fit command, when fit.json lacks it")
    rp_p.add_argument("--note", default="", help="a line on the conditions of the run (load, nice)")
    pv_p = sub.add_parser("preview", help="PNG pictures of a few training samples")
    pv_p.add_argument("--out", required=True)
    pv_p.add_argument("--samples", type=int, default=4)
    pv_p.add_argument("--seed", type=int, default=1)
    _sample_options(pv_p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fit":
            fit(args)
        elif args.command == "export":
            print(export(args))
        elif args.command == "evaluate":
            result = evaluate(args)
            print(json.dumps({k: result[k] for k in ("cohort", "resolution")}, indent=2, default=_jsonable))
        elif args.command == "report":
            print("\n".join(report(args)))
        else:
            print("\n".join(preview(args)))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
