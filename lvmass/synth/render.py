"""Balanced-SSFP short-axis cine appearance: tissues, the beating heart, coil bias, Rician noise.

Coordinates. Patient coordinates are DICOM LPS (mm). A slice is the plane of pixel centres
``P(i, j) = IPP + j * col_mm * u + i * row_mm * v`` with ``u``/``v`` the row/column direction cosines of
ImageOrientationPatient (0020,0037) and ``col_mm``/``row_mm`` = PixelSpacing (0028,0030) [1]/[0]. The
stack runs along the LV long axis ``n`` from the base towards the apex; the images are in the usual
short-axis display, seen from the apex (``u x v = -n``): anterior wall at the top, the RV on the
viewer's left. The LV (``anatomy.py``) lives in heart coordinates whose origin is the centre of the base
plane; the chest around it (``Body``) is placed relative to the same origin.

Rendering is analytic with partial volume: every boundary is a soft ramp one blurred pixel wide, and the
LV is averaged over sub-planes of the 8 mm slab. Signal levels are relative to blood = 1 (bright blood,
dark myocardium, bright fat, dark lungs), scaled per participant into 12-bit stored values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lvmass.core.contracts import BACKGROUND, LV_CAVITY, MYOCARDIUM
from lvmass.synth.anatomy import (
    SLICE_THICKNESS_MM,
    TRUTH_SUBPLANES,
    AngleGrid,
    LVAnatomy,
    contraction,
    ed_height_mm,
    harmonic_factor,
    profile_mm,
    radii_mm,
    slab_offsets_mm,
)

RENDER_SUBPLANES = 3
_LABEL_GRID = AngleGrid.of(np.linspace(0.0, 2.0 * math.pi, 721))  # truth labels: radii every 0.5 degree
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
class Trunk:
    """The body outline: a vertical superelliptic cylinder ``|dx/ax|^p + |dy/ay|^p <= 1`` (LPS x, y in
    mm relative to the heart origin; p = 2 is an ellipse, larger p squarer)."""

    centre_xy: tuple[float, float]
    semi_axes_xy: tuple[float, float]
    exponent: float

    def depth_mm(self, x_mm: np.ndarray, y_mm: np.ndarray) -> np.ndarray:
        """Depth below the skin (mm; negative outside): the first-order distance to the outline,
        ``(1 - rho) / |grad rho|`` with ``rho = (|dx/ax|^p + |dy/ay|^p)^(1/p)``; exact along the axes and
        within a few percent near the skin, where the fat and muscle layers are."""
        ax, ay = self.semi_axes_xy
        p = self.exponent
        qx = np.abs(x_mm - np.float32(self.centre_xy[0])) * np.float32(1.0 / ax)
        qy = np.abs(y_mm - np.float32(self.centre_xy[1])) * np.float32(1.0 / ay)
        a, b = qx**p, qy**p
        s = a + b
        rho = s ** (1.0 / p)
        # grad rho = rho^(1-p) (qx^(p-1)/ax, qy^(p-1)/ay), with rho^(1-p) = rho / s and q^(p-1) = q^p / q
        gx = a / np.maximum(qx, np.float32(1e-6)) * np.float32(1.0 / ax)
        gy = b / np.maximum(qy, np.float32(1e-6)) * np.float32(1.0 / ay)
        grad = rho / np.maximum(s, np.float32(1e-12)) * np.sqrt(gx * gx + gy * gy)
        return (1.0 - rho) / np.maximum(grad, np.float32(0.5 / max(ax, ay)))


@dataclass(frozen=True)
class Diaphragm:
    """The diaphragm as a height z = f(x, y) (LPS mm relative to the heart origin): the central tendon under
    the heart at ``tendon_z_mm``, falling by ``slope`` mm per mm towards the back from ``ref_y_mm``, with
    paraboloid domes ``(x, y, height, half width x, half width y)`` (right, then left) that fall away to
    the front and back as well as to the sides."""

    tendon_z_mm: float
    domes: tuple[tuple[float, float, float, float, float], ...]
    slope: float
    ref_y_mm: float

    def z_mm(self, x_mm: np.ndarray, y_mm: np.ndarray) -> np.ndarray:
        z = np.float32(self.tendon_z_mm) - np.float32(self.slope) * (y_mm - np.float32(self.ref_y_mm))
        for x0, y0, height, wx, wy in self.domes:
            tx = (x_mm - np.float32(x0)) * np.float32(1.0 / wx)
            ty = (y_mm - np.float32(y0)) * np.float32(1.0 / wy)
            z = z + np.float32(height) * np.maximum(np.float32(0.0), 1.0 - tx * tx - ty * ty)
        return z


@dataclass(frozen=True)
class Body:
    """The thorax and upper abdomen around the heart, in patient LPS coordinates (mm) relative to the heart
    origin (the centre of the LV base plane).

    From the skin inwards: subcutaneous fat, chest-wall muscle and the ribs (depths below the ``trunk``
    outline). Inside: the lungs (two ellipsoids clipped by the ribs, the diaphragm and the mediastinum),
    the mediastinum around the heart (an ellipsoid along the LV long axis), the ``diaphragm`` with the
    liver below it on the right and other abdominal tissue on the left, the descending aorta, the
    vertebral body and the spinal canal (vertical cylinders).
    """

    trunk: Trunk
    fat_mm: float
    muscle_mm: float
    ribs_mm: float
    lungs: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]  # (centre, semi axes)
    mediastinum_centre: tuple[float, float, float]  # at the base plane, shifted towards the RV
    mediastinum_axis: tuple[float, float, float]  # unit vector: the LV long axis
    mediastinum_semi_mm: tuple[float, float]  # along the axis (past the apex), across it
    diaphragm: Diaphragm
    liver_edge_x_mm: float  # the liver lies to the patient's right (smaller x) of this, under the diaphragm
    aorta_xy: tuple[float, float]
    aorta_radius_mm: float
    spine_xy: tuple[float, float]
    spine_radius_mm: float
    canal_xy: tuple[float, float]
    canal_radius_mm: float

    @property
    def chest_wall_mm(self) -> float:
        """Skin depth of the chest wall's inner surface (fat + muscle + ribs), where the lungs may start."""
        return self.fat_mm + self.muscle_mm + self.ribs_mm


def skin_depth_mm(points_rel: np.ndarray, body: Body) -> np.ndarray:
    """Depth below the skin (mm; negative outside the body) of LPS points (..., 3) relative to the heart
    origin."""
    return body.trunk.depth_mm(points_rel[..., 0], points_rel[..., 1])


def lv_surface_points_mm(
    anatomy: LVAnatomy, u: np.ndarray, v: np.ndarray, n: np.ndarray, *, step_mm: float = 4.0
) -> np.ndarray:
    """(N, 3) LPS points (mm, relative to the heart origin) on the end-diastolic epicardium from the base
    plane to the apex, the axis drift included. In-plane heart coordinates run along ``u`` (x) and ``v``
    (y), the long axis along ``n`` (``anatomy.py``)."""
    theta = np.linspace(0.0, 2.0 * math.pi, 36, endpoint=False)
    out = []
    for z in np.append(np.arange(0.0, anatomy.epi_apex_z_mm, step_mm), anatomy.epi_apex_z_mm):
        _, epi = radii_mm(anatomy, theta, float(z))
        x = anatomy.axis_drift_mm_per_mm[0] * z + epi * np.cos(theta)
        y = anatomy.axis_drift_mm_per_mm[1] * z + epi * np.sin(theta)
        out.append(x[:, None] * u + y[:, None] * v + z * n)
    return np.concatenate(out)


def draw_body(
    rng: np.random.Generator,
    *,
    body_size: float,
    bmi_kg_m2: float,
    anatomy: LVAnatomy,
    orientation: tuple[np.ndarray, np.ndarray, np.ndarray],
    lv_clearance_mm: float = 14.0,
) -> Body:
    """A chest around the participant's heart (``orientation`` = the image's u, v and the LV axis n).

    Placement (adult anatomy, each with a per-participant spread): the mid-LV lies 30-55 mm left of the
    midline with the anterior skin 90-110 mm in front of it; the vertebral body 72-92 mm behind the LV
    base centre, the descending aorta left-anterior of it; the lungs fill each hemithorax around the
    mediastinum; the diaphragm runs 4-12 mm under the heart's inferior wall, its right dome (over the
    liver) higher than the left. Subcutaneous fat grows with BMI, the chest with body size. The LV
    epicardium is then kept at least ``lv_clearance_mm`` deeper than the fat and muscle (the chest is
    enlarged where needed) and clear of the diaphragm and the aorta: the heart always sits in the thorax.
    """
    u, v, n = (np.asarray(a, dtype=np.float64) for a in orientation)
    pts = lv_surface_points_mm(anatomy, u, v, n)
    length = anatomy.epi_apex_z_mm
    axis = n + anatomy.axis_drift_mm_per_mm[0] * u + anatomy.axis_drift_mm_per_mm[1] * v
    mid = 0.5 * length * axis
    rv_dir = math.cos(anatomy.rv_angle_rad) * u + math.sin(anatomy.rv_angle_rad) * v

    fat = float(np.clip(1.2 * (bmi_kg_m2 - 15.0) * rng.uniform(0.7, 1.3), 4.0, 35.0))
    muscle = float(rng.uniform(6.0, 14.0))
    ribs = float(rng.uniform(4.0, 9.0))
    exponent = float(rng.uniform(2.2, 3.0))
    ax = 170.0 * body_size * float(rng.uniform(0.92, 1.08))
    cx = float(mid[0] - rng.uniform(30.0, 55.0))
    front_mm = float(rng.uniform(90.0, 110.0))  # anterior skin in front of the mid-LV
    spine_xy = (cx + float(np.clip(rng.normal(0.0, 4.0), -10.0, 10.0)), float(rng.uniform(72.0, 92.0)))
    spine_r = float(rng.uniform(15.0, 19.0))
    back_mm = float(rng.uniform(55.0, 80.0)) * body_size  # vertebral centre to the skin of the back
    aorta_r = float(rng.uniform(9.0, 13.0))
    aorta_offset = (float(rng.uniform(15.0, 28.0)), float(rng.uniform(20.0, 30.0)))
    canal_gap, canal_r = float(rng.uniform(5.0, 9.0)), float(rng.uniform(6.0, 8.0))
    lung_draws = rng.uniform(0.0, 1.0, (2, 5))
    lv_margin, rv_margin, apex_margin = (float(rng.uniform(*r)) for r in ((3, 8), (5, 12), (5, 12)))
    tendon_gap = float(rng.uniform(4.0, 12.0))
    right_dome = (float(rng.uniform(0.45, 0.6)), float(rng.uniform(0.0, 0.2)), float(rng.uniform(20.0, 40.0)))
    left_dome = (float(rng.uniform(0.4, 0.55)), float(rng.uniform(0.0, 0.2)), float(rng.uniform(5.0, 20.0)))
    slope = float(rng.uniform(0.05, 0.15))
    liver_edge = float(mid[0] + rng.uniform(-10.0, 25.0))

    def trunk(ax_: float, front: float) -> Trunk:
        """The outline with the skin ``front`` mm in front of the mid-LV and ``back_mm`` behind the spine."""
        g = (1.0 - min(abs(float(mid[0]) - cx) / ax_, 0.95) ** exponent) ** (1.0 / exponent)
        y_front, y_back = float(mid[1]) - front, spine_xy[1] + back_mm
        ay = (y_back - y_front) / (1.0 + g)
        return Trunk((cx, y_back - ay), (ax_, ay), exponent)

    outline = trunk(ax, front_mm)
    for _ in range(10):  # keep the LV clear of the fat and muscle layers
        depth = outline.depth_mm(pts[:, 0], pts[:, 1])
        deficit = fat + muscle + lv_clearance_mm - float(depth.min())
        if deficit <= 0.0:
            break
        weakest = pts[int(np.argmin(depth))]
        (ox, oy), (sx, sy) = outline.centre_xy, outline.semi_axes_xy
        if abs(weakest[0] - ox) / sx > abs(weakest[1] - oy) / sy:
            ax += deficit + 1.0  # too close to the side: a wider chest
        else:
            front_mm += deficit + 1.0  # too close to the front: more tissue in front of the heart
        outline = trunk(ax, front_mm)
    (cx, cy), (ax, ay) = outline.centre_xy, outline.semi_axes_xy

    lungs = tuple(
        (
            (cx + side * (0.42 + 0.1 * d[0]) * ax, cy + 0.15 * d[1] * ay, float(mid[2]) + 20.0 + 40.0 * d[2]),
            ((0.5 + 0.12 * d[3]) * ax, (0.8 + 0.15 * d[4]) * ay, 220.0),
        )
        for side, d in zip((1.0, -1.0), lung_draws, strict=True)  # left lung (+x), right lung
    )
    lv_side = anatomy.epi.radius_mm + lv_margin
    rv_side = anatomy.epi.radius_mm + 1.25 * anatomy.rv_radial_mm + rv_margin
    diaphragm = Diaphragm(
        float(pts[:, 2].min()) - tendon_gap,
        (
            (cx - right_dome[0] * ax, cy - right_dome[1] * ay, right_dome[2], 0.4 * ax, 0.75 * ay),
            (cx + left_dome[0] * ax, cy - left_dome[1] * ay, left_dome[2], 0.35 * ax, 0.7 * ay),
        ),
        slope,
        float(mid[1]),
    )
    # the heart rests on the diaphragm: lower the central tendon under any part of the LV a dome would cut
    cut = float(np.max(diaphragm.z_mm(pts[:, 0], pts[:, 1]) - (pts[:, 2] - tendon_gap)))
    if cut > 0.0:
        diaphragm = Diaphragm(diaphragm.tendon_z_mm - cut, diaphragm.domes, slope, diaphragm.ref_y_mm)
    aorta = (spine_xy[0] + aorta_offset[0], spine_xy[1] - aorta_offset[1])
    clear = float(np.min(np.hypot(pts[:, 0] - aorta[0], pts[:, 1] - aorta[1]))) - aorta_r - 4.0
    if clear < 0.0:  # behind the LV, never through it
        aorta = (aorta[0], aorta[1] - clear)
    return Body(
        trunk=outline,
        fat_mm=fat,
        muscle_mm=muscle,
        ribs_mm=ribs,
        lungs=lungs,
        mediastinum_centre=tuple(float(c) for c in 0.5 * (rv_side - lv_side) * rv_dir),
        mediastinum_axis=tuple(float(c) for c in axis / np.linalg.norm(axis)),
        mediastinum_semi_mm=(length + apex_margin, 0.5 * (lv_side + rv_side)),
        diaphragm=diaphragm,
        liver_edge_x_mm=liver_edge,
        aorta_xy=aorta,
        aorta_radius_mm=aorta_r,
        spine_xy=spine_xy,
        spine_radius_mm=spine_r,
        canal_xy=(spine_xy[0], spine_xy[1] + spine_r + canal_gap),
        canal_radius_mm=canal_r,
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


def _distance_mm(x: np.ndarray, y: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """In-plane distance to a point (np.hypot is several times slower on float32)."""
    dx, dy = x - np.float32(centre[0]), y - np.float32(centre[1])
    return np.sqrt(dx * dx + dy * dy)


def render_background(
    points_rel: np.ndarray, body: Body, app: Appearance, width_mm: float, texture: np.ndarray | None = None
) -> np.ndarray:
    """Relative signal (blood = 1) of everything but the heart at points given relative to the heart
    origin (LPS, mm): air, subcutaneous fat, chest-wall muscle, mediastinal and abdominal tissue, lungs,
    liver, descending aorta, vertebral body and spinal canal (``Body``)."""
    x, y, z = (np.ascontiguousarray(points_rel[..., k]) for k in range(3))  # strided views are slow
    f32 = np.float32
    depth = body.trunk.depth_mm(x, y)
    img = np.zeros(x.shape, np.float32)
    _lerp(img, app.fat, _soft(depth, width_mm))
    _lerp(img, app.muscle, _soft(depth - f32(body.fat_mm), width_mm))
    inside = _soft(depth - f32(body.fat_mm + body.muscle_mm), width_mm)
    _lerp(img, app.tissue, inside)
    below = _soft(body.diaphragm.z_mm(x, y) - z, width_mm)  # 1 in the abdomen
    d_spine = _distance_mm(x, y, body.spine_xy)
    d_aorta = _distance_mm(x, y, body.aorta_xy)
    # the lungs: inside the ribs, above the diaphragm, around the mediastinum, spine and aorta
    lung = np.zeros(x.shape, np.float32)
    for centre, semi in body.lungs:
        r = np.sqrt(
            ((x - f32(centre[0])) * f32(1.0 / semi[0])) ** 2
            + ((y - f32(centre[1])) * f32(1.0 / semi[1])) ** 2
            + ((z - f32(centre[2])) * f32(1.0 / semi[2])) ** 2
        )
        np.maximum(lung, _soft((1.0 - r) * f32(min(semi)), width_mm), out=lung)
    mc, ma = body.mediastinum_centre, body.mediastinum_axis
    dx, dy, dz = x - f32(mc[0]), y - f32(mc[1]), z - f32(mc[2])
    along = dx * f32(ma[0]) + dy * f32(ma[1]) + dz * f32(ma[2])
    across2 = np.maximum(dx * dx + dy * dy + dz * dz - along * along, f32(0.0))
    sa, sb = body.mediastinum_semi_mm
    r_med = np.sqrt((along * f32(1.0 / sa)) ** 2 + across2 * f32(1.0 / (sb * sb)))
    lung *= _soft(depth - f32(body.chest_wall_mm), width_mm)
    lung *= (1.0 - below) * (1.0 - _soft((1.0 - r_med) * f32(sb), width_mm))
    lung *= 1.0 - _soft(f32(body.spine_radius_mm + 10.0) - d_spine, width_mm)
    lung *= 1.0 - _soft(f32(body.aorta_radius_mm + 3.0) - d_aorta, width_mm)
    _lerp(img, app.lung, lung)
    liver = below * inside * _soft(f32(body.liver_edge_x_mm) - x, 2.0 * width_mm)
    _lerp(img, app.liver, liver)
    _lerp(img, 1.0, _soft(f32(body.aorta_radius_mm) - d_aorta, width_mm))
    _lerp(img, 0.5, _soft(f32(body.spine_radius_mm) - d_spine, width_mm))
    d_canal = _distance_mm(x, y, body.canal_xy)
    _lerp(img, 0.85, _soft(f32(body.canal_radius_mm) - d_canal, width_mm))  # CSF
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
        self.r_mm = np.sqrt(self.x_mm * self.x_mm + self.y_mm * self.y_mm)
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
        r, th = np.sqrt(x * x + y * y), np.arctan2(y, x) % (2.0 * math.pi)
        width = max(self.spacing)
        f_epi = np.zeros(r.shape)
        f_endo = np.zeros(r.shape)
        grid = _LABEL_GRID.theta
        for dz in slab_offsets_mm(TRUTH_SUBPLANES, SLICE_THICKNESS_MM):
            z = self.z_mm + dz
            if z < 0.0:
                continue
            endo_g, epi_g = radii_mm(a, _LABEL_GRID, z)  # radii on a fine angle grid, interpolated per pixel
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
