"""Render a short-axis slice scene as a scanner would, and its targets on the model's grid.

SynthSeg's recipe (Billot et al. 2023) for one cine slice: the label map of :mod:`lvmass.synth.slice_scene`
-> per-label intensities drawn afresh for every sample (mostly in a balanced-SSFP cine's order: bright
blood and fat, grey myocardium and muscle, dark lung; sometimes at random) -> smooth texture per tissue,
flow artefacts in the blood pools, vessels in the lungs, dark chemical-shift lines at fat-water edges ->
partial volume (the heart labelled on a grid ``supersample`` times finer and on ``subplanes`` planes across
the slab, then averaged) -> k-space blur and sometimes Gibbs ringing -> bias field and surface-coil hot spots
-> ghosting, wrap-around and off-resonance dark bands -> Rician noise -> stored integers. Then exactly what
the pipeline does (``lvmass.core.tensor``): z-score over the acquired field of view, resample to the model's
grid (anti-aliased linear), place centred in 256 x 256.

Targets: the class (background, LV cavity, myocardium) holding the largest fraction of each grid pixel, from
the fine labels averaged over the slab (papillary muscles and trabeculae are cavity), and the myocardium
fraction itself, whose sum is the slice's true myocardial area (what ML4H_reg learns to count).

Every sample comes from its seed alone (:func:`draw_sample`): scene, appearance and noise draw from
independent streams.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lvmass.core import contracts
from lvmass.core.tensor import pad_or_crop_slice, resample_slice
from lvmass.synth import slice_scene as ss

GRID = (contracts.TENSOR_ROWS, contracts.TENSOR_COLS)


@dataclass(frozen=True)
class AppearanceRanges:
    """What the appearance and the acquisition are drawn from (uniform unless stated; intensities with
    blood at about 1)."""

    pixel_mm: tuple[float, float] = (1.1, 2.4)  # acquired square pixels, log-uniform
    fov_mm: tuple[float, float] = (280.0, 420.0)  # columns
    fov_aspect: tuple[float, float] = (0.7, 1.0)  # rows / columns
    lv_offset: float = 0.18  # the LV axis up to this fraction of the field of view from its centre
    random_contrast_prob: float = 0.12  # every tissue's intensity at random (else a cine's order)
    snr: tuple[float, float] = (10.0, 100.0)  # blood / noise sd, log-uniform
    blur_px: tuple[float, float] = (0.3, 0.9)  # acquired pixels (k-space truncation)
    gibbs_prob: float = 0.3
    texture: tuple[float, float] = (0.0, 0.25)
    bias_sd: tuple[float, float] = (0.0, 0.45)
    coil_prob: float = 0.5
    ghost_prob: float = 0.25
    wrap_prob: float = 0.15
    band_prob: float = 0.15
    flow_prob: float = 0.5
    chemical_shift_prob: float = 0.5
    supersample: int = 2
    subplanes: int = 4
    # The contouring convention of the targets. 0: the truth as drawn (a pixel is cavity where most of it is
    # blood). > 0: as experts contour a cine, the cavity reaches the wall wherever the blood's signal does,
    # blurred as the image is: a fine pixel whose blurred cavity fraction is at least this is cavity
    # (:func:`experts_cavity`).
    experts_endocardium: float = 0.15

    def __post_init__(self) -> None:
        for name in ("pixel_mm", "fov_mm", "fov_aspect", "snr", "blur_px", "texture", "bias_sd"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{name} must be (low, high) with 0 <= low <= high. Received: {(low, high)!r}"
                )
        if self.pixel_mm[0] <= 0 or self.snr[0] <= 0:
            raise ValueError("pixel_mm and snr must be positive")
        if self.supersample < 1 or self.subplanes < 1:
            raise ValueError("supersample and subplanes must be >= 1")


# Intensity ranges of each scene label in a balanced-SSFP cine at end diastole (blood about 1; fat from a
# little darker than blood to twice as bright, as in the Sunnybrook studies).
CINE_INTENSITY: dict[int, tuple[float, float]] = {
    ss.AIR: (0.0, 0.03),
    ss.LV_BLOOD: (0.6, 1.0),
    ss.LV_MYOCARDIUM: (0.08, 0.42),
    ss.LV_TRABECULAE: (0.08, 0.5),
    ss.RV_BLOOD: (0.5, 1.0),
    ss.RV_WALL: (0.08, 0.42),
    ss.ATRIAL_BLOOD: (0.45, 1.0),
    ss.VESSEL_BLOOD: (0.4, 1.05),
    ss.LUNG: (0.0, 0.2),
    ss.LIVER: (0.15, 0.55),
    ss.ABDOMEN: (0.1, 1.0),
    ss.MUSCLE: (0.08, 0.4),
    ss.SUBCUTANEOUS_FAT: (0.5, 1.8),
    ss.EPICARDIAL_FAT: (0.45, 1.8),
    ss.PERICARDIUM: (0.0, 0.25),
    ss.SOFT_TISSUE: (0.15, 0.7),
    ss.BONE: (0.1, 0.8),
    ss.SPINAL_CANAL: (0.5, 1.5),
    ss.CLUTTER_A: (0.0, 1.0),
    ss.CLUTTER_B: (0.0, 1.0),
}
_FAT = (ss.SUBCUTANEOUS_FAT, ss.EPICARDIAL_FAT)
_WATER = (ss.LV_MYOCARDIUM, ss.RV_WALL, ss.MUSCLE, ss.LIVER, ss.LV_BLOOD, ss.RV_BLOOD, ss.SOFT_TISSUE)


@dataclass(frozen=True)
class Appearance:
    """One sample's intensities and acquisition."""

    means: tuple[float, ...]  # per scene label
    pixel_mm: float
    fov_px: tuple[int, int]
    lv_px: tuple[float, float]  # (row, col) of the LV axis in the acquired field of view
    texture: tuple[float, ...]  # per scene label: amplitude of its smooth texture
    flow: float  # depth of flow artefacts in the blood pools
    lung_vessels: tuple[float, float]  # (density per mm^2, brightness)
    detail: tuple[float, float]  # (density per mm^2, amplitude) of fine specks outside the LV
    chemical_shift: float  # darkening of the fat-water edge pixels
    blur_px: float
    gibbs: float  # fraction of k-space kept (1: none)
    bias_sd: float
    coil: tuple[float, float, float] | None  # (gain, row fraction, col fraction)
    ghost: tuple[float, int, float] | None  # (amplitude, axis, shift fraction)
    wrap: tuple[int, float] | None  # (axis, fraction of the field folded)
    band: tuple[float, float] | None  # (depth, level) of an off-resonance dark band
    snr: float
    signal_max: float


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def draw_appearance(rng: np.random.Generator, ranges: AppearanceRanges) -> Appearance:
    """Intensities and acquisition settings, every one drawn afresh (SynthSeg)."""
    if rng.random() < ranges.random_contrast_prob:
        means = rng.uniform(0.0, 1.0, ss.NUM_LABELS)
        means[ss.AIR] = rng.uniform(0.0, 0.08)
    else:
        means = np.array([rng.uniform(*CINE_INTENSITY[k]) for k in range(ss.NUM_LABELS)])
        if rng.random() < 0.7:  # one acquisition: blood pools alike, fat alike, walls alike
            for k in (ss.RV_BLOOD, ss.ATRIAL_BLOOD, ss.VESSEL_BLOOD):
                means[k] = float(np.clip(means[ss.LV_BLOOD] + rng.normal(0.0, 0.06), 0.3, 1.1))
            means[ss.EPICARDIAL_FAT] = float(
                np.clip(means[ss.SUBCUTANEOUS_FAT] + rng.normal(0.0, 0.1), 0.3, 1.8)
            )
            means[ss.RV_WALL] = float(np.clip(means[ss.LV_MYOCARDIUM] + rng.normal(0.0, 0.03), 0.0, 1.0))
        # in a cine the lung is darker than the wall, however dark the wall
        means[ss.LUNG] = min(means[ss.LUNG], means[ss.LV_MYOCARDIUM] * float(rng.uniform(0.1, 0.75)))
    for _ in range(20):  # the LV must be visible: blood and wall differ
        if abs(means[ss.LV_BLOOD] - means[ss.LV_MYOCARDIUM]) >= 0.15:
            break
        means[ss.LV_MYOCARDIUM] = rng.uniform(0.0, 1.0)
    if rng.random() < 0.8:  # trabeculae and papillary muscles look like the wall
        # as dark as the wall, or a little brighter (blood between fine trabeculae)
        means[ss.LV_TRABECULAE] = float(np.clip(means[ss.LV_MYOCARDIUM] + rng.uniform(-0.03, 0.15), 0.0, 1.0))
    pixel = _log_uniform(rng, ranges.pixel_mm)
    cols_mm = float(rng.uniform(*ranges.fov_mm))
    rows_mm = cols_mm * float(rng.uniform(*ranges.fov_aspect))
    fov = (max(64, round(rows_mm / pixel)), max(64, round(cols_mm / pixel)))
    lv = tuple(float((n - 1) / 2.0 + rng.uniform(-ranges.lv_offset, ranges.lv_offset) * n) for n in fov)
    texture = rng.uniform(*ranges.texture, ss.NUM_LABELS) * (rng.random(ss.NUM_LABELS) < 0.7)
    coil = None
    if rng.random() < ranges.coil_prob:
        edge = int(rng.integers(0, 4))
        along = float(rng.uniform(0.1, 0.9))
        row, col = [(-0.05, along), (1.05, along), (along, -0.05), (along, 1.05)][edge]
        coil = (float(rng.uniform(0.3, 1.6)), row, col)
    ghost = None
    if rng.random() < ranges.ghost_prob:
        ghost = (float(rng.uniform(0.03, 0.2)), int(rng.integers(0, 2)), float(rng.uniform(0.15, 0.5)))
    wrap = None
    if rng.random() < ranges.wrap_prob:
        wrap = (int(rng.integers(0, 2)), float(rng.uniform(0.05, 0.25)))
    band = None
    if rng.random() < ranges.band_prob:
        band = (float(rng.uniform(0.4, 0.95)), float(rng.normal(0.0, 0.8)))
    return Appearance(
        means=tuple(float(m) for m in means),
        pixel_mm=pixel,
        fov_px=fov,
        lv_px=lv,  # type: ignore[arg-type]
        texture=tuple(float(t) for t in texture),
        flow=float(rng.uniform(0.1, 0.6)) if rng.random() < ranges.flow_prob else 0.0,
        lung_vessels=(float(rng.uniform(0.0, 0.006)), float(rng.uniform(0.15, 0.7))),
        detail=(float(rng.uniform(0.0, 0.01)), float(rng.uniform(0.1, 0.6))),
        chemical_shift=float(rng.uniform(0.3, 0.9)) if rng.random() < ranges.chemical_shift_prob else 0.0,
        blur_px=float(rng.uniform(*ranges.blur_px)),
        gibbs=float(rng.uniform(0.55, 0.85)) if rng.random() < ranges.gibbs_prob else 1.0,
        bias_sd=float(rng.uniform(*ranges.bias_sd)),
        coil=coil,
        ghost=ghost,
        wrap=wrap,
        band=band,
        snr=_log_uniform(rng, ranges.snr),
        signal_max=_log_uniform(rng, (150.0, 3000.0)),
    )


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], knots: int) -> np.ndarray:
    """A smooth standard-normal-ish field: noise on a ``knots x knots`` lattice, cubic-interpolated."""
    coarse = rng.standard_normal((knots, knots))
    zoom = (shape[0] / knots, shape[1] / knots)
    return ndimage.zoom(coarse, zoom, order=1, mode="reflect", grid_mode=True)[: shape[0], : shape[1]].astype(
        np.float32
    )


@dataclass(frozen=True)
class SliceSample:
    """One rendered slice in the pipeline's tensor layout, with its targets.

    ``image`` float32 (256, 256): z-scored and on the grid, as ``lvmass.core.tensor`` builds a slice;
    ``labels`` uint8 (256, 256) in ``contracts.LABEL_MAP``; ``myocardium_fraction`` float32 (256, 256),
    whose sum x grid pixel area is the true myocardial area; ``lv_centre_px`` (row, col) of the LV axis on the
    256 grid; the acquisition's pixel size and the slice's height as a fraction of the LV (0 base plane, 1
    epicardial apex; NaN without a heart)."""

    image: np.ndarray
    labels: np.ndarray
    myocardium_fraction: np.ndarray
    lv_centre_px: tuple[float, float]
    grid_mm: float
    acquired_pixel_mm: float
    z_fraction: float
    seed: tuple[int, ...]

    @property
    def myocardium_area_mm2(self) -> float:
        return float(self.myocardium_fraction.sum(dtype=np.float64)) * self.grid_mm**2


def _pixel_mm_coords(rows: np.ndarray, cols: np.ndarray, app: Appearance) -> tuple[np.ndarray, np.ndarray]:
    """Image-frame mm (origin on the LV axis) of acquired pixel coordinates (centres at integers)."""
    return (cols - app.lv_px[1]) * app.pixel_mm, (rows - app.lv_px[0]) * app.pixel_mm


def _chemical_shift_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of fat next to water (both ways: the dark line straddles the edge)."""
    fat = np.isin(labels, _FAT)
    water = np.isin(labels, _WATER)
    return (fat & ndimage.binary_dilation(water)) | (water & ndimage.binary_dilation(fat))


def render(
    scene: ss.SliceScene,
    app: Appearance,
    rng: np.random.Generator,
    *,
    supersample: int = 2,
    subplanes: int = 4,
    experts_endocardium: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The stored image (float32, acquired grid) and the fine targets.

    Returns ``(image, fine_fractions, box_origin)``: ``fine_fractions`` float32 (2, h, w) holds the LV cavity
    and myocardium fractions of the fine grid around the heart (averaged over the slab's planes), whose pixel
    ``(i, j)`` is centred at acquired pixel ``box_origin + (i + 0.5) / supersample - 0.5``."""
    rows, cols = app.fov_px
    wrap_extra = 0
    if app.wrap is not None:
        wrap_extra = round(app.wrap[1] * (rows, cols)[app.wrap[0]])
    pad = (wrap_extra, 0) if app.wrap is not None and app.wrap[0] == 0 else (0, wrap_extra)
    # coarse: the whole field (and what folds into it) at the acquired pixels, the slice's centre plane
    rr, cc = np.mgrid[-pad[0] : rows + pad[0], -pad[1] : cols + pad[1]].astype(np.float64)
    x, y = _pixel_mm_coords(rr, cc, app)
    [coarse], coarse_chest = ss.scene_labels(scene, x, y)
    means = np.asarray(app.means, dtype=np.float32)
    image = means[coarse]
    # fine: the heart's box, supersampled, on planes across the slab
    extent_px = ss.heart_extent_mm(scene) / app.pixel_mm
    r0 = int(max(0, math.floor(app.lv_px[0] + pad[0] - extent_px)))
    c0 = int(max(0, math.floor(app.lv_px[1] + pad[1] - extent_px)))
    r1 = int(min(image.shape[0], math.ceil(app.lv_px[0] + pad[0] + extent_px)))
    c1 = int(min(image.shape[1], math.ceil(app.lv_px[1] + pad[1] + extent_px)))
    k = supersample
    fractions = np.zeros((2, max(r1 - r0, 0) * k, max(c1 - c0, 0) * k), dtype=np.float32)
    if r1 > r0 and c1 > c0 and scene.heart is not None:
        fr = (np.arange((r1 - r0) * k) + 0.5) / k - 0.5 + r0 - pad[0]
        fc = (np.arange((c1 - c0) * k) + 0.5) / k - 0.5 + c0 - pad[1]
        fx, fy = _pixel_mm_coords(fr[:, None] + 0 * fc[None, :], fc[None, :] + 0 * fr[:, None], app)
        offsets = tuple(((p + 0.5) / subplanes - 0.5) * scene.slab_mm for p in range(subplanes))
        chest = np.repeat(np.repeat(coarse_chest[r0:r1, c0:c1], k, axis=0), k, axis=1)
        planes, _ = ss.scene_labels(scene, fx, fy, offsets, chest=chest)
        fine = np.mean([means[p] for p in planes], axis=0)
        image[r0:r1, c0:c1] = fine.reshape(r1 - r0, k, c1 - c0, k).mean(axis=(1, 3))
        target = ss.TARGET_OF_LABEL
        fractions[0] = np.mean([target[p] == contracts.LV_CAVITY for p in planes], axis=0)
        fractions[1] = np.mean([target[p] == contracts.MYOCARDIUM for p in planes], axis=0)
        if experts_endocardium > 0:
            # a fixed reach in mm: the convention must not depend on the acquisition's pixel size
            fractions = experts_cavity(fractions, EXPERTS_BLUR_MM / app.pixel_mm * k, experts_endocardium)
    shape = image.shape
    # tissue texture, blood flow, lung vessels, chemical shift
    if any(t > 0 for t in app.texture):
        fields = [smooth_field(rng, shape, int(rng.integers(4, 24))) for _ in range(3)]
        which = rng.integers(0, 3, ss.NUM_LABELS)
        amp = np.asarray(app.texture, dtype=np.float32)
        mod = np.ones(shape, dtype=np.float32)
        for f in range(3):
            weights = np.where(which == f, amp, 0.0).astype(np.float32)[coarse]
            mod += weights * fields[f]
        image *= np.clip(mod, 0.2, None)
    if app.flow > 0:
        blood = np.isin(coarse, ss.BLOOD_LABELS)
        jets = np.clip(smooth_field(rng, shape, int(rng.integers(8, 30))), 0.0, None)
        image *= np.where(blood, 1.0 - app.flow * np.clip(jets, 0.0, 1.0) ** 1.5, 1.0).astype(np.float32)
    density, brightness = app.lung_vessels
    if density > 0:
        dots = (rng.random(shape) < density * app.pixel_mm**2).astype(np.float32)
        dots = ndimage.gaussian_filter(dots, float(rng.uniform(0.5, 1.8)) / app.pixel_mm * 1.5)
        dots *= brightness / max(float(dots.max()), 1e-6)
        image += np.where(coarse == ss.LUNG, dots, 0.0).astype(np.float32)
    if app.detail[0] > 0:
        # fine detail everywhere but the LV: small vessels, nodes, fat planes, as bright and dark specks
        specks = rng.random(shape) < app.detail[0] * app.pixel_mm**2
        signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
        detail = ndimage.gaussian_filter(specks * signs, float(rng.uniform(0.6, 2.0)) / app.pixel_mm)
        detail *= app.detail[1] / max(float(np.abs(detail).max()), 1e-6)
        outside_lv = ~np.isin(coarse, ss.LV_LABELS)
        image = np.where(outside_lv, np.clip(image + detail, 0.0, None), image).astype(np.float32)
    if app.chemical_shift > 0:
        image *= np.where(_chemical_shift_edges(coarse), 1.0 - app.chemical_shift, 1.0).astype(np.float32)
    # acquisition: blur and ringing, bias and coil, ghosting, fold-over, dark band
    image = ndimage.gaussian_filter(image, app.blur_px, mode="nearest")
    if app.gibbs < 1.0:
        spectrum = np.fft.fftshift(np.fft.fft2(image))
        keep = [int(n * app.gibbs / 2) for n in shape]
        mask = np.zeros(shape, dtype=bool)
        mask[
            shape[0] // 2 - keep[0] : shape[0] // 2 + keep[0],
            shape[1] // 2 - keep[1] : shape[1] // 2 + keep[1],
        ] = True
        image = np.abs(np.fft.ifft2(np.fft.ifftshift(np.where(mask, spectrum, 0)))).astype(np.float32)
    bias = np.exp(np.float32(app.bias_sd) * smooth_field(rng, shape, 3))
    if app.coil is not None:
        gain, row_f, col_f = app.coil
        yy = np.arange(shape[0], dtype=np.float32)[:, None] / shape[0] - row_f
        xx = np.arange(shape[1], dtype=np.float32)[None, :] / shape[1] - col_f
        bias *= np.exp(np.float32(gain) * np.exp(-(yy * yy + xx * xx) / np.float32(2 * 0.22**2)) - 0.3 * gain)
    image = image * bias
    if app.ghost is not None:
        amplitude, axis, shift = app.ghost
        image = image + np.float32(amplitude) * np.roll(image, round(shape[axis] * shift), axis=axis)
    if app.wrap is not None:
        axis, _ = app.wrap
        if axis == 0 and pad[0] > 0:
            core = image[pad[0] : pad[0] + rows].copy()
            core[-pad[0] :] += image[: pad[0]]
            core[: pad[0]] += image[pad[0] + rows :]
            image = core
        elif axis == 1 and pad[1] > 0:
            core = image[:, pad[1] : pad[1] + cols].copy()
            core[:, -pad[1] :] += image[:, : pad[1]]
            core[:, : pad[1]] += image[:, pad[1] + cols :]
            image = core
    if app.band is not None:
        depth, level = app.band
        phase = smooth_field(rng, image.shape, 3)
        image = image * (1.0 - depth * np.exp(-(((phase - level) / 0.08) ** 2))).astype(np.float32)
    sigma = np.float32(1.0 / app.snr)
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * sigma
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    stored = np.rint(image * np.float32(app.signal_max)).astype(np.float32)
    origin = (r0 - pad[0], c0 - pad[1])
    return stored, fractions, origin


# The blur (mm, Gaussian sd) of the blood's signal over which experts' endocardium reaches the wall: a cine's
# in-plane resolution and partial volume, fixed so that the targets do not depend on the acquisition.
EXPERTS_BLUR_MM = 1.8
# The most of the local wall that the experts' endocardium takes from the drawn wall. Why: the fixed reach
# (about 1.9 mm at the 0.15 threshold) was fitted to walls of 7-9 mm, where it is a fifth to a quarter of the
# wall; applied unchanged to a 3.5 mm wall it left a band one fine pixel wide, thinner than the dark band any
# reader sees on the image, and a 40-80% error that no segmenter could learn (the synthetic evaluation's
# dilated thin-walled hearts; docs/training.md).
EXPERTS_MAX_WALL_FRACTION = 0.25


def experts_cavity(
    fractions: np.ndarray,
    blur_px: float,
    threshold: float,
    max_wall_fraction: float = EXPERTS_MAX_WALL_FRACTION,
) -> np.ndarray:
    """Cavity and myocardium fractions ``(2, h, w)`` with the endocardium drawn as experts draw it on a cine:
    where the blood's signal reaches, blurred as a cine blurs it (``blur_px``, in these pixels; the renderer
    passes :data:`EXPERTS_BLUR_MM`), the pixel is cavity (its myocardium fraction moves to the cavity), so
    the cavity extends over the blurred blood-to-wall transition to the wall's dark plateau. The LV (cavity
    and myocardium) is unchanged, so is the epicardium. Why: on the real studies the experts' endocardium
    lies where the intensity has fallen to the wall's (``docs/training.md``); the drawn truth put it halfway,
    and a model learning it made walls 20-40% thicker than the experts'. The reach never takes more than
    ``max_wall_fraction`` of the local wall (its distance from the cavity over the wall's local thickness,
    the sum of the distances to the cavity and to outside the LV), so a thin wall stays a wall."""
    cavity, myocardium = fractions
    reach = ndimage.gaussian_filter(cavity, max(blur_px, 0.5), mode="constant") >= threshold
    inside_cavity = cavity >= 0.5
    outside_lv = (cavity + myocardium) < 0.5
    if inside_cavity.any() and outside_lv.any():
        from_cavity = ndimage.distance_transform_edt(~inside_cavity)
        from_outside = ndimage.distance_transform_edt(~outside_lv)
        reach &= from_cavity <= max_wall_fraction * (from_cavity + from_outside)
    out = fractions.copy()
    out[0] = np.where(reach, cavity + myocardium, cavity)
    out[1] = np.where(reach, 0.0, myocardium)
    return out


def fractions_on_grid(
    fractions: np.ndarray,
    box_origin: tuple[int, int],
    acquired_shape: tuple[int, int],
    app: Appearance,
    grid_mm: float,
    supersample: int,
) -> np.ndarray:
    """The fine fractions carried to the resampled grid of ``lvmass.core.tensor.resample_slice``
    (centres aligned; anti-aliased like an image), shape ``(2, round(rows a / g), round(cols a / g))``."""
    out_shape = tuple(max(1, round(n * app.pixel_mm / grid_mm)) for n in acquired_shape)
    out = np.zeros((2, *out_shape), dtype=np.float32)
    if fractions.shape[1] == 0 or fractions.shape[2] == 0:
        return out
    k = supersample
    step = grid_mm / app.pixel_mm * k  # fine pixels per grid pixel
    sigma = math.sqrt(step * step - 1.0) / 2.0 if step > 1.0 else 0.0
    # grid pixel g -> acquired a = (g - (n_out - 1) / 2) * grid / pixel + (n_in - 1) / 2
    # acquired a -> fine f = (a - origin + 0.5) * k - 0.5
    offsets = [
        ((n_in - 1) / 2.0 - (n_out - 1) / 2.0 * grid_mm / app.pixel_mm - o + 0.5) * k - 0.5
        for n_in, n_out, o in zip(acquired_shape, out_shape, box_origin, strict=True)
    ]
    for c in range(2):
        frac = ndimage.gaussian_filter(fractions[c], sigma, mode="constant") if sigma > 0 else fractions[c]
        out[c] = ndimage.affine_transform(
            frac, (step, step), offset=offsets, output_shape=out_shape, order=1, mode="constant", cval=0.0
        )
    return out


def grid_sample(
    stored: np.ndarray,
    fractions: np.ndarray,
    origin: tuple[int, int],
    app: Appearance,
    grid_mm: float,
    supersample: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """What the pipeline makes of the stored slice (z-score, grid, 256 placement), and the targets placed
    alike: ``(image, labels, myocardium fraction, LV axis (row, col) on the 256 grid)``."""
    values = stored.astype(np.float64)
    on_grid = resample_slice(values.astype(np.float32), (app.pixel_mm, app.pixel_mm), (grid_mm, grid_mm))
    placed, _ = pad_or_crop_slice(on_grid)
    n_rows, n_cols = on_grid.shape
    dr = (GRID[0] - n_rows) // 2 if n_rows <= GRID[0] else -((n_rows - GRID[0]) // 2)
    dc = (GRID[1] - n_cols) // 2 if n_cols <= GRID[1] else -((n_cols - GRID[1]) // 2)
    window = (
        slice(max(dr, 0), max(dr, 0) + min(n_rows, GRID[0])),
        slice(max(dc, 0), max(dc, 0) + min(n_cols, GRID[1])),
    )
    acquired = placed[window].astype(np.float64)
    sd = float(acquired.std()) or 1.0
    image = np.zeros(GRID, dtype=np.float32)
    image[window] = ((acquired - acquired.mean()) / sd).astype(np.float32)
    frac = fractions_on_grid(fractions, origin, stored.shape, app, grid_mm, supersample)
    cavity, _ = pad_or_crop_slice(frac[0])
    myo, _ = pad_or_crop_slice(frac[1])
    labels = np.argmax(np.stack([1.0 - cavity - myo, cavity, myo]), axis=0).astype(np.uint8)
    scale = app.pixel_mm / grid_mm
    centre = tuple(
        float((p - (n_in - 1) / 2.0) * scale + (n_out - 1) / 2.0 + d)
        for p, n_in, n_out, d in zip(app.lv_px, stored.shape, on_grid.shape, (dr, dc), strict=True)
    )
    return image, labels, myo.astype(np.float32), centre  # type: ignore[return-value]


def with_pixel_size(app: Appearance, pixel_mm: float) -> Appearance:
    """The same acquisition at another pixel size: the same field of view in mm, the LV at the same place."""
    ratio = app.pixel_mm / float(pixel_mm)
    fov = (max(64, round(app.fov_px[0] * ratio)), max(64, round(app.fov_px[1] * ratio)))
    lv = (
        (app.lv_px[0] - (app.fov_px[0] - 1) / 2.0) * ratio + (fov[0] - 1) / 2.0,
        (app.lv_px[1] - (app.fov_px[1] - 1) / 2.0) * ratio + (fov[1] - 1) / 2.0,
    )
    return dataclasses.replace(app, pixel_mm=float(pixel_mm), fov_px=fov, lv_px=lv)


def sample_rngs(seed: Sequence[int]) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """(scene, appearance, noise) generators of one sample: independent streams from its seed."""
    children = np.random.SeedSequence([int(s) for s in seed]).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)  # type: ignore[return-value]


def draw_sample(
    seed: Sequence[int],
    *,
    grid_mm: float,
    scene_ranges: ss.SceneRanges | None = None,
    appearance_ranges: AppearanceRanges | None = None,
    pixel_mm: float | None = None,
    z_fraction: float | None = None,
) -> SliceSample:
    """One random slice and its targets, from its seed alone. ``pixel_mm`` fixes the acquired pixel size and
    ``z_fraction`` the slice's height (the rest of the sample stays the seed's)."""
    ranges = appearance_ranges or AppearanceRanges()
    scene_rng, app_rng, noise_rng = sample_rngs(seed)
    scene = ss.draw_scene(scene_rng, scene_ranges, z_fraction=z_fraction)
    app = draw_appearance(app_rng, ranges)
    if pixel_mm is not None:
        app = with_pixel_size(app, pixel_mm)
    stored, fractions, origin = render(
        scene,
        app,
        noise_rng,
        supersample=ranges.supersample,
        subplanes=ranges.subplanes,
        experts_endocardium=ranges.experts_endocardium,
    )
    image, labels, myo, centre = grid_sample(stored, fractions, origin, app, grid_mm, ranges.supersample)
    z_fraction_drawn = (scene.z_mm / scene.heart.epi_apex_z_mm) if scene.heart is not None else float("nan")
    return SliceSample(
        image=image,
        labels=labels,
        myocardium_fraction=myo,
        lv_centre_px=centre,
        grid_mm=grid_mm,
        acquired_pixel_mm=app.pixel_mm,
        z_fraction=float(z_fraction_drawn),
        seed=tuple(seed),
    )
