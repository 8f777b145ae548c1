"""Balanced-SSFP short-axis cine appearance: tissues, the beating heart, coil bias, Rician noise.

Coordinates. Patient coordinates are DICOM LPS (mm). A slice is the plane of pixel centres
``P(i, j) = IPP + j * col_mm * u + i * row_mm * v`` with ``u``/``v`` the row/column direction cosines of
ImageOrientationPatient (0020,0037), ``col_mm``/``row_mm`` = PixelSpacing (0028,0030) [1]/[0], and the
slice normal ``n = u x v`` pointing from the base towards the apex. The LV (``anatomy.py``) lives in heart
coordinates whose origin ``origin_lps`` is the centre of the base plane.

Rendering is analytic with partial volume: every boundary is a soft ramp one blurred pixel wide, and the
LV is averaged over sub-planes of the 8 mm slab. Signal levels are relative to blood = 1 (bright blood,
dark myocardium, bright fat, dark lungs), scaled per participant into 12-bit stored values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from beam_pipeline.contracts import BACKGROUND, LV_CAVITY, MYOCARDIUM
from lvmass.synth.anatomy import (
    SLICE_THICKNESS_MM,
    TRUTH_SUBPLANES,
    LVAnatomy,
    contraction,
    ed_height_mm,
    harmonic_factor,
    profile_mm,
    radii_mm,
    slab_offsets_mm,
)

RENDER_SUBPLANES = 3
MAX_STORED_VALUE = 4095  # BitsStored (0028,0101) = 12


@dataclass(frozen=True)
class Appearance:
    """Per-participant image appearance; ``draw_appearance`` widens every spread by ``scale``."""

    blood_signal: float  # stored value of blood before bias/noise
    myocardium: float  # relative to blood
    fat: float
    liver: float
    muscle: float
    lung: float
    tissue: float
    rv_blood: float
    snr: float  # blood signal / noise sigma
    bias_gradient: tuple[float, float, float]  # per 100 mm, log-scale
    bias_curvature: float  # per (100 mm)^2, log-scale
    edge_blur: float  # edge ramp width, pixels
    texture: float  # relative amplitude of the smooth tissue texture
    slice_gain_sd: float  # slice-to-slice signal variation


def draw_appearance(rng: np.random.Generator, scale: float = 1.0) -> Appearance:
    """Random contrasts, noise, bias and blur; ``scale`` multiplies every spread around the centre."""
    if scale < 0:
        raise ValueError(f"appearance_scale must be >= 0. Received {scale}")

    def around(centre: float, spread: float, lo: float, hi: float) -> float:
        return float(np.clip(centre + scale * spread * rng.uniform(-1.0, 1.0), lo, hi))

    return Appearance(
        blood_signal=around(700.0, 250.0, 120.0, 2600.0),
        myocardium=around(0.30, 0.08, 0.08, 0.7),
        fat=around(0.85, 0.12, 0.4, 1.3),
        liver=around(0.34, 0.08, 0.1, 0.8),
        muscle=around(0.24, 0.06, 0.05, 0.6),
        lung=around(0.05, 0.03, 0.0, 0.2),
        tissue=around(0.40, 0.08, 0.1, 0.8),
        rv_blood=around(0.95, 0.06, 0.6, 1.2),
        snr=float(
            np.exp(
                np.clip(math.log(28.0) + scale * 0.35 * rng.uniform(-1, 1), math.log(4.0), math.log(150.0))
            )
        ),
        bias_gradient=tuple(float(g) for g in scale * rng.normal(0.0, 0.18, 3)),
        bias_curvature=float(-abs(scale * rng.normal(0.0, 0.12))),
        edge_blur=around(1.2, 0.3, 0.7, 3.0),
        texture=around(0.06, 0.03, 0.0, 0.25),
        slice_gain_sd=around(0.03, 0.02, 0.0, 0.15),
    )


@dataclass(frozen=True)
class Body:
    """Tissues around the heart, in patient coordinates relative to the heart origin (mm)."""

    centre_xy: tuple[float, float]
    semi_axes_xy: tuple[float, float]
    fat_mm: float
    muscle_mm: float
    lungs: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]  # (centre, semi axes)
    liver_dome_z: float
    aorta_xy: tuple[float, float]
    aorta_radius_mm: float
    spine_xy: tuple[float, float]
    spine_radius_mm: float


def draw_body(rng: np.random.Generator, body_size: float) -> Body:
    """A chest around a heart at the origin: the heart sits anterior-left of the body's centre."""
    ax = 165.0 * body_size * rng.uniform(0.92, 1.08)
    ay = 118.0 * body_size * rng.uniform(0.9, 1.1)
    return Body(
        centre_xy=(float(rng.uniform(-45, -20)), float(rng.uniform(40, 65))),
        semi_axes_xy=(float(ax), float(ay)),
        fat_mm=float(rng.uniform(8, 28) * body_size),
        muscle_mm=float(rng.uniform(6, 14)),
        lungs=(
            ((float(rng.uniform(60, 80)), 35.0, 35.0), (55.0, 70.0, 125.0)),
            ((float(rng.uniform(-95, -75)), 35.0, 45.0), (62.0, 72.0, 125.0)),
        ),
        liver_dome_z=float(rng.uniform(-70, -45)),
        aorta_xy=(float(rng.uniform(10, 30)), float(rng.uniform(65, 85))),
        aorta_radius_mm=float(rng.uniform(9, 13)),
        spine_xy=(float(rng.uniform(-10, 5)), float(rng.uniform(100, 115))),
        spine_radius_mm=18.0,
    )


def _soft(distance_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Partial-volume fraction of a boundary at signed distance d (positive inside)."""
    return np.clip(0.5 + distance_mm / width_mm, 0.0, 1.0)


def _lerp(img: np.ndarray, value: float | np.ndarray, frac: np.ndarray) -> None:
    img += frac * (value - img)


def plane_points(
    ipp: np.ndarray, u: np.ndarray, v: np.ndarray, rows: int, cols: int, pixel_spacing_mm: tuple[float, float]
) -> np.ndarray:
    """LPS coordinates (rows, cols, 3) of a plane's pixel centres (IPP is pixel (0, 0))."""
    i = np.arange(rows, dtype=np.float32)[:, None, None] * pixel_spacing_mm[0]
    j = np.arange(cols, dtype=np.float32)[None, :, None] * pixel_spacing_mm[1]
    return ipp.astype(np.float32) + j * u.astype(np.float32) + i * v.astype(np.float32)


def render_background(
    points_rel: np.ndarray, body: Body, app: Appearance, width_mm: float, texture: np.ndarray | None = None
) -> np.ndarray:
    """Relative signal (blood = 1) of everything but the heart at points given relative to the heart
    origin (LPS, mm): air, subcutaneous fat, chest-wall muscle, mediastinal tissue, lungs, liver,
    descending aorta, spine."""
    x, y, z = points_rel[..., 0], points_rel[..., 1], points_rel[..., 2]
    bx, by = x - body.centre_xy[0], y - body.centre_xy[1]
    ax, ay = body.semi_axes_xy
    rho = np.sqrt((bx / ax) ** 2 + (by / ay) ** 2)
    depth = (1.0 - rho) * min(ax, ay)  # approximate depth below the skin
    img = np.zeros(x.shape, np.float32)
    _lerp(img, app.fat, _soft(depth, width_mm))
    _lerp(img, app.muscle, _soft(depth - body.fat_mm, width_mm))
    _lerp(img, app.tissue, _soft(depth - body.fat_mm - body.muscle_mm, width_mm))
    for centre, semi in body.lungs:
        r = np.sqrt(
            ((x - centre[0]) / semi[0]) ** 2
            + ((y - centre[1]) / semi[1]) ** 2
            + ((z - centre[2]) / semi[2]) ** 2
        )
        _lerp(img, app.lung, _soft((1.0 - r) * min(semi), width_mm) * _soft(depth - body.fat_mm, width_mm))
    dome = body.liver_dome_z + 0.0025 * (x + 40.0) ** 2 - z  # positive below the right hemidiaphragm dome
    _lerp(img, app.liver, _soft(dome, width_mm) * _soft(depth - body.fat_mm - body.muscle_mm, width_mm))
    _lerp(
        img, 1.0, _soft(body.aorta_radius_mm - np.hypot(x - body.aorta_xy[0], y - body.aorta_xy[1]), width_mm)
    )
    _lerp(
        img, 0.5, _soft(body.spine_radius_mm - np.hypot(x - body.spine_xy[0], y - body.spine_xy[1]), width_mm)
    )
    if texture is not None:
        img *= texture
    return img


def _upsample_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along an axis from its knots to n_out evenly spread samples."""
    n_in = a.shape[axis]
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(pos.astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    shape = [1, 1]
    shape[axis] = n_out
    frac = frac.reshape(shape)
    return np.take(a, lo, axis=axis) * (1.0 - frac) + np.take(a, lo + 1, axis=axis) * frac


def smooth_texture(rng: np.random.Generator, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """A smooth multiplicative texture 1 +/- amplitude (coarse noise, bilinearly upsampled)."""
    coarse = rng.standard_normal((shape[0] // 12 + 2, shape[1] // 12 + 2)).astype(np.float32)
    fine = _upsample_axis(_upsample_axis(coarse, shape[0], 0), shape[1], 1)
    return (1.0 + np.float32(amplitude) * fine).astype(np.float32)


def bias_field(points_rel: np.ndarray, app: Appearance) -> np.ndarray:
    """Smooth multiplicative coil sensitivity, exp(g.p/100 + c |p|^2/100^2), p relative to the heart."""
    g = np.asarray(app.bias_gradient, np.float32)
    p = points_rel / np.float32(100.0)
    return np.exp(p @ g + np.float32(app.bias_curvature) * np.sum(p * p, axis=-1)).astype(np.float32)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the complex signal plus white Gaussian noise in both channels (Rician)."""
    n = rng.standard_normal((2, *signal.shape), dtype=np.float32)
    n *= np.float32(sigma)
    n[0] += signal
    return np.sqrt(n[0] * n[0] + n[1] * n[1])


def quantise(image: np.ndarray) -> np.ndarray:
    """Round to uint16 stored values within BitsStored 12 (0..4095)."""
    return np.clip(np.rint(image), 0, MAX_STORED_VALUE).astype(np.uint16)


class HeartSlice:
    """One short-axis slice: its static background and bias, and the heart at any phase.

    ``centre_px`` is the (row, col) of the LV centre in this slice (heart offset, breath-hold
    misregistration and axis drift included); ``z_mm`` the slice centre's height in heart coordinates.
    """

    def __init__(
        self,
        anatomy: LVAnatomy,
        app: Appearance,
        background: np.ndarray,
        bias: np.ndarray,
        z_mm: float,
        centre_px: tuple[float, float],
        pixel_spacing_mm: tuple[float, float],
        texture_phase: float,
    ):
        self.anatomy, self.app, self.z_mm = anatomy, app, z_mm
        self.background, self.bias = background, bias
        self.centre_px = centre_px
        self.spacing = pixel_spacing_mm
        self.width_mm = app.edge_blur * max(pixel_spacing_mm)
        rows, cols = background.shape
        extent_mm = anatomy.epi.radius_mm * 1.2 + 2.2 * anatomy.rv_radial_mm + 12.0
        self.box = self._box(extent_mm, rows, cols)
        lv_extent = anatomy.epi.radius_mm * 1.25 + 8.0
        self.lv_box = self._box(lv_extent, rows, cols)
        self.x_mm, self.y_mm = self._coords(self.box)
        self.r_mm = np.hypot(self.x_mm, self.y_mm)
        self.theta = np.arctan2(self.y_mm, self.x_mm)
        (r0, _r1, c0, _c1), (lr0, lr1, lc0, lc1) = self.box, self.lv_box
        self.lv_sl = (slice(lr0 - r0, lr1 - r0), slice(lc0 - c0, lc1 - c0))
        th = self.theta[self.lv_sl]
        z_ed_c = max(z_mm, 0.0)
        self.h_endo = harmonic_factor(anatomy.endo, th, z_ed_c, anatomy.twist_rad_per_mm).astype(np.float32)
        self.h_epi = harmonic_factor(anatomy.epi, th, z_ed_c, anatomy.twist_rad_per_mm).astype(np.float32)
        self.trab_pattern = (0.5 + 0.5 * np.cos(17.0 * th + 2.0 * np.sin(5.0 * th + texture_phase))).astype(
            np.float32
        )
        d_rv = anatomy.rv_angle_rad
        self.rv_par = (self.x_mm * math.cos(d_rv) + self.y_mm * math.sin(d_rv)).astype(np.float32)
        self.rv_perp = (-self.x_mm * math.sin(d_rv) + self.y_mm * math.cos(d_rv)).astype(np.float32)
        fat_w = (
            anatomy.fat_thickness_mm * np.maximum(0.0, np.cos(self.theta - anatomy.fat_angle_rad)) ** 2 + 1.0
        )
        self.fat_w = fat_w.astype(np.float32)

    def _box(self, extent_mm: float, rows: int, cols: int) -> tuple[int, int, int, int]:
        ci, cj = self.centre_px
        hi, hj = extent_mm / self.spacing[0], extent_mm / self.spacing[1]
        r0, r1 = max(0, int(ci - hi)), min(rows, math.ceil(ci + hi) + 1)
        c0, c1 = max(0, int(cj - hj)), min(cols, math.ceil(cj + hj) + 1)
        return max(r0, 0), max(r1, r0), max(c0, 0), max(c1, c0)

    def _coords(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        r0, r1, c0, c1 = box
        y = (np.arange(r0, r1, dtype=np.float32) - np.float32(self.centre_px[0])) * np.float32(
            self.spacing[0]
        )
        x = (np.arange(c0, c1, dtype=np.float32) - np.float32(self.centre_px[1])) * np.float32(
            self.spacing[1]
        )
        return np.broadcast_to(x[None, :], (r1 - r0, c1 - c0)), np.broadcast_to(
            y[:, None], (r1 - r0, c1 - c0)
        )

    def _ellipse(self, par: np.ndarray, perp: np.ndarray, a: float, b: float) -> np.ndarray:
        """Partial-volume fraction inside an ellipse with semi-axes a (along par), b (along perp)."""
        if a <= 0.1 or b <= 0.1:
            return np.zeros(par.shape, np.float32)
        rho = np.sqrt((par / a) ** 2 + (perp / b) ** 2) + 1e-6
        grad = np.sqrt((par / (a * a)) ** 2 + (perp / (b * b)) ** 2) / rho + 1e-6
        return _soft((1.0 - rho) / grad, self.width_mm)

    def heart_signal(self, phase: int) -> np.ndarray:
        """Relative signal of the whole slice at a phase (noise-free, before bias)."""
        a = self.anatomy
        s, lam = contraction(phase, a)
        img = self.background.copy()
        r0, r1, c0, c1 = self.box
        if r1 <= r0 or c1 <= c0:
            return img
        crop = img[r0:r1, c0:c1]
        r_lv = self.r_mm[self.lv_sl]
        th_lv = self.theta[self.lv_sl]
        # --- LV (or atrium above the base), averaged over the slab's sub-planes
        outer = np.zeros(r_lv.shape, np.float32)
        inner = np.zeros(r_lv.shape, np.float32)
        lv_weight = 0.0
        z_ed_centre = ed_height_mm(a, self.z_mm, lam)
        for dz in slab_offsets_mm(RENDER_SUBPLANES, SLICE_THICKNESS_MM):
            z_ed = ed_height_mm(a, self.z_mm + dz, lam)
            if z_ed < 0.0:  # left atrium: thin wall, blood
                la = a.la_radius_mm
                outer += _soft(la + 2.0 - r_lv, self.width_mm)
                inner += _soft(la - r_lv, self.width_mm)
                continue
            ri = float(profile_mm(a.endo, a.centre_z_mm, z_ed))
            re = float(profile_mm(a.epi, a.centre_z_mm, z_ed))
            endo = (s * ri) * self.h_endo
            epi = np.sqrt(endo * endo + ((re * self.h_epi) ** 2 - (ri * self.h_endo) ** 2) / lam)
            outer += _soft(epi - r_lv, self.width_mm)
            if ri > 0.0:
                inner += _soft(endo - r_lv, self.width_mm)
            lv_weight += 1.0
        outer /= RENDER_SUBPLANES
        inner /= RENDER_SUBPLANES
        # --- cavity content: trabeculae in the endocardial band, papillary muscles
        z_c = max(z_ed_centre, 0.0)
        ri_c = s * float(profile_mm(a.endo, a.centre_z_mm, z_c))
        re_c = float(profile_mm(a.epi, a.centre_z_mm, z_c)) * (1.0 + 0.12 * (1.0 - s))
        if z_ed_centre < 0.0:
            re_c = a.la_radius_mm + 2.0
        muscle_in = np.zeros(r_lv.shape, np.float32)
        if ri_c > 1.0 and lv_weight > 0:
            band = np.clip((r_lv / (ri_c * self.h_endo) - 0.78) / 0.22, 0.0, 1.0) ** 1.5
            apical = 0.6 + 0.8 * min(z_c / max(a.endo_apex_z_mm, 1.0), 1.0)
            muscle_in += (a.trabeculation * apical) * band * self.trab_pattern
            for p in a.papillaries:
                if p.z_start_mm < z_c < p.z_end_mm:
                    taper = math.sin(math.pi * (z_c - p.z_start_mm) / (p.z_end_mm - p.z_start_mm)) ** 0.4
                    rad = p.radius_mm * taper / math.sqrt(lam)
                    pr = p.radial_fraction * ri_c
                    px, py = pr * math.cos(p.angle_rad), pr * math.sin(p.angle_rad)
                    d = np.hypot(self.x_mm[self.lv_sl] - px, self.y_mm[self.lv_sl] - py)
                    muscle_in += _soft(rad - d, self.width_mm)
            del th_lv
        np.clip(muscle_in, 0.0, 1.0, out=muscle_in)
        # --- pericardial fat, RV, then the LV over them
        _lerp(crop, self.app.fat, _soft(re_c + self.fat_w - self.r_mm, self.width_mm))
        rho_rv = 1.0 if z_c <= 0.0 else math.sqrt(max(0.0, 1.0 - (z_c / a.rv_length_mm) ** 2))
        s_rv = 1.0 - 0.8 * (1.0 - s)
        ra, rb = a.rv_radial_mm * rho_rv * s_rv, a.rv_tangential_mm * rho_rv * (0.85 + 0.15 * s_rv)
        if ra > 1.0:
            par = self.rv_par - np.float32(re_c + 0.25 * ra)
            _lerp(crop, self.app.myocardium, self._ellipse(par, self.rv_perp, ra + 3.0, rb + 3.0))
            _lerp(crop, self.app.rv_blood, self._ellipse(par, self.rv_perp, ra, rb))
        lv = crop[self.lv_sl]
        _lerp(lv, self.app.myocardium, outer)
        cavity_signal = 1.0 + muscle_in * (self.app.myocardium - 1.0)
        _lerp(lv, cavity_signal, inner)
        return img

    def labels_ed(self) -> np.ndarray:
        """End-diastolic truth labels on the pixel grid: the class with the largest partial-volume fraction
        (slab-averaged over TRUTH_SUBPLANES planes, one-pixel ramps); papillary muscles and trabeculae are
        cavity."""
        a = self.anatomy
        rows, cols = self.background.shape
        labels = np.zeros((rows, cols), np.uint8)
        lr0, lr1, lc0, lc1 = self.lv_box
        if lr1 <= lr0 or lc1 <= lc0:
            return labels
        x, y = self._coords(self.lv_box)
        r, th = np.hypot(x, y), np.arctan2(y, x) % (2.0 * math.pi)
        width = max(self.spacing)
        f_epi = np.zeros(r.shape)
        f_endo = np.zeros(r.shape)
        grid = np.linspace(0.0, 2.0 * math.pi, 721)
        for dz in slab_offsets_mm(TRUTH_SUBPLANES, SLICE_THICKNESS_MM):
            z = self.z_mm + dz
            if z < 0.0:
                continue
            endo_g, epi_g = radii_mm(a, grid, z)  # radii on a fine angle grid, interpolated per pixel
            endo, epi = np.interp(th, grid, endo_g), np.interp(th, grid, epi_g)
            f_epi += _soft(epi - r, width)
            if np.any(endo > 0.0):
                f_endo += _soft(endo - r, width) * (endo > 0.0)
        f_epi /= TRUTH_SUBPLANES
        f_endo /= TRUTH_SUBPLANES
        f_myo, f_bg = f_epi - f_endo, 1.0 - f_epi
        cls = np.where(
            (f_myo >= f_endo) & (f_myo > f_bg),
            MYOCARDIUM,
            np.where((f_endo > f_myo) & (f_endo > f_bg), LV_CAVITY, BACKGROUND),
        )
        labels[lr0:lr1, lc0:lc1] = cls.astype(np.uint8)
        return labels
