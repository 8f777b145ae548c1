"""Random label maps of one cine short-axis slice at end diastole: the anatomy of the default ML4H_seg.

Why one slice, drawn analytically: short-axis slices lie 8-10 mm apart and the default segmenter is per-slice
2-D (as the UK Biobank reference segmenter of Bai et al. 2018), so a training sample is one slice. Every
structure is a function of position, evaluated wherever the renderer asks (a coarse grid over the whole
field of view, a fine grid and several planes across the slab around the heart), so partial volume costs
only the points it needs and nothing is drawn at one resolution and resampled.

What real scans show, and where each is drawn (looked at side by side with the Sunnybrook studies,
``docs/training.md``):

* the LV as nested truncated ellipsoids of revolution, with angular harmonics, ellipticity and regional wall
  changes (septal hypertrophy, thinned infarcted arcs); cavities from small to dilated (radius 13-40 mm at
  the equator) with walls from 3.5 to 18 mm, thin walls more likely in dilated hearts;
* papillary muscles (two, mid-ventricular, attached to the wall) and trabeculae against the endocardium:
  they look like myocardium but are LV cavity in the target, as every contouring convention has it;
* apical slices with little cavity and the solid apical cap; basal slices with the LV outflow tract cutting
  the anteroseptal ring, and above the base the atria, aortic root and pulmonary trunk with no LV at all;
* the right ventricle as a crescent on the septum (large at the base with its outflow tract, gone before the
  apex), its thin free wall and trabeculae;
* epicardial fat of varying thickness, thick in the grooves where the RV meets the LV and along the
  atrioventricular groove, with coronary vessels in it; the pericardium as a thin dark line, with
  paracardial fat outside it;
* the chest around: body outline, subcutaneous fat, chest-wall muscle and ribs, sternum, vertebra and
  spinal canal, descending aorta, lungs with vessels, liver and abdominal organs below the diaphragm, and
  random blobs (:data:`CLUTTER_LABELS`) so the surroundings are never only geometric.

Coordinates. Heart frame in mm: ``x`` to the image's right (patient's left), ``y`` down (posterior), origin on
the LV long axis; ``z`` along the long axis from the base plane (``z = 0``, mitral annulus) to the apex. The
images are in the pipeline's standard view (``contracts.IN_PLANE_VIEW``): anterior up, seen from the apex,
RV on the image's left. Angles ``theta = atan2(y, x)``: 0 lateral (right), -90 deg anterior (up),
+90 deg inferior (down), 180 deg septal (left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.special import erfinv

from lvmass.core import contracts

# --- The labels of a scene ------------------------------------------------------------------------
AIR = 0
LV_BLOOD = 1
LV_MYOCARDIUM = 2
LV_TRABECULAE = 3  # papillary muscles and trabeculae: LV cavity in the target
RV_BLOOD = 4
RV_WALL = 5
ATRIAL_BLOOD = 6
VESSEL_BLOOD = 7  # aortic root and aorta, pulmonary trunk, descending aorta, coronary vessels
LUNG = 8  # its vessels are texture (slice_image), not geometry
LIVER = 9
ABDOMEN = 10  # stomach, spleen, bowel
MUSCLE = 11  # chest wall and paraspinal muscle
SUBCUTANEOUS_FAT = 12
EPICARDIAL_FAT = 13  # epicardial and paracardial fat
PERICARDIUM = 14
SOFT_TISSUE = 15  # mediastinum, oesophagus, breast
BONE = 16  # ribs, sternum, vertebral body
SPINAL_CANAL = 17
CLUTTER_A = 18
CLUTTER_B = 19
LABEL_NAMES: tuple[str, ...] = (
    "air",
    "lv_blood",
    "lv_myocardium",
    "lv_trabeculae",
    "rv_blood",
    "rv_wall",
    "atrial_blood",
    "vessel_blood",
    "lung",
    "liver",
    "abdomen",
    "muscle",
    "subcutaneous_fat",
    "epicardial_fat",
    "pericardium",
    "soft_tissue",
    "bone",
    "spinal_canal",
    "clutter_a",
    "clutter_b",
)
NUM_LABELS = len(LABEL_NAMES)
BLOOD_LABELS = (LV_BLOOD, RV_BLOOD, ATRIAL_BLOOD, VESSEL_BLOOD)
CLUTTER_LABELS = (CLUTTER_A, CLUTTER_B)
LV_LABELS = (LV_BLOOD, LV_MYOCARDIUM, LV_TRABECULAE)
# Scene label -> the contract's label (lvmass.core.contracts.LABEL_MAP): trabeculae are cavity.
TARGET_OF_LABEL = np.zeros(NUM_LABELS, dtype=np.uint8)
TARGET_OF_LABEL[[LV_BLOOD, LV_TRABECULAE]] = contracts.LV_CAVITY
TARGET_OF_LABEL[LV_MYOCARDIUM] = contracts.MYOCARDIUM

_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class SceneRanges:
    """Ranges the scenes are drawn from (uniform unless stated). Lengths in mm, angles in degrees."""

    cavity_radius_mm: tuple[float, float] = (13.0, 46.0)  # at the equator, end diastole
    wall_mm: tuple[float, float] = (3.5, 18.0)  # mean wall thickness (drawn against the cavity size)
    cavity_half_length_mm: tuple[float, float] = (45.0, 85.0)  # equator to endocardial apex
    equator_z_mm: tuple[float, float] = (5.0, 30.0)  # below the base plane
    above_base_mm: float = 14.0  # slices drawn from this far above the base plane ...
    beyond_apex_mm: float = 8.0  # ... to this far beyond the epicardial apex
    within_lv_prob: float = 0.7  # a slice between 3% and 97% of the LV's length, else anywhere from above
    no_heart_prob: float = 0.04  # a slice of the chest far from the heart
    hypertrophy_prob: float = 0.2  # regional (septal or other) thickening
    infarct_prob: float = 0.25  # a thinned arc
    epicardial_fat_mm: tuple[float, float] = (0.0, 7.0)
    groove_fat_mm: tuple[float, float] = (1.0, 14.0)
    pericardium_prob: float = 0.7
    deformation_mm: tuple[float, float] = (0.0, 3.5)  # smooth displacement amplitude
    chest_deformation_mm: tuple[float, float] = (2.0, 9.0)  # and for the chest on top of it
    clutter_count: tuple[int, int] = (0, 10)

    def __post_init__(self) -> None:
        for name in (
            "cavity_radius_mm",
            "wall_mm",
            "cavity_half_length_mm",
            "equator_z_mm",
            "epicardial_fat_mm",
            "groove_fat_mm",
            "deformation_mm",
            "chest_deformation_mm",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{name} must be (low, high) with 0 <= low <= high. Received: {(low, high)!r}"
                )
        for name in (
            "within_lv_prob",
            "no_heart_prob",
            "hypertrophy_prob",
            "infarct_prob",
            "pericardium_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {getattr(self, name)!r}")


@dataclass(frozen=True)
class Harmonics:
    """``1 + sum_k a_k cos(k theta - phi_k)``: a smooth angular factor."""

    orders: tuple[int, ...] = ()
    amplitudes: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def factor(self, theta: np.ndarray) -> np.ndarray:
        out = np.ones_like(theta)
        for k, a, p in zip(self.orders, self.amplitudes, self.phases, strict=True):
            out += a * np.cos(k * theta - p)
        return out


def _harmonics(rng: np.random.Generator, amplitude: float, orders: tuple[int, ...]) -> Harmonics:
    amps = tuple(float(a) for a in rng.uniform(0.0, amplitude, len(orders)) / np.asarray(orders) ** 0.5)
    return Harmonics(orders, amps, tuple(float(p) for p in rng.uniform(0.0, _TWO_PI, len(orders))))


# Angular functions are tabulated on these angles and looked up (a scene evaluates them at up to 10^5 points).
TABLE_ANGLES = np.linspace(-math.pi, math.pi, 2048, endpoint=False)


def angle_index(theta: np.ndarray) -> np.ndarray:
    """Index of each angle (radians) in :data:`TABLE_ANGLES` (nearest below)."""
    n = TABLE_ANGLES.size
    return (np.floor((theta + math.pi) * (n / _TWO_PI)).astype(np.int64)) % n


def _angle_bump(theta: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    """1 at ``centre``, falling smoothly (cosine) to 0 at ``half_width`` radians away."""
    d = np.abs(np.angle(np.exp(1j * (theta - centre))))
    return np.where(d < half_width, 0.5 * (1.0 + np.cos(np.pi * d / half_width)), 0.0)


@dataclass(frozen=True)
class Blob:
    """An ellipse (centre, semi-axes, rotation) painted with one label, optionally only in a z range."""

    label: int
    x_mm: float
    y_mm: float
    a_mm: float
    b_mm: float
    angle: float = 0.0
    z_range: tuple[float, float] = (-math.inf, math.inf)

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (x - self.x_mm) * c + (y - self.y_mm) * s
        v = -(x - self.x_mm) * s + (y - self.y_mm) * c
        return (u / self.a_mm) ** 2 + (v / self.b_mm) ** 2 < 1.0


@dataclass(frozen=True)
class Papillary:
    """A papillary muscle: an ellipse on the ray ``angle``, its centre ``depth`` of the cavity radius in."""

    angle: float
    depth: float  # 0 = on the endocardium, 1 = at the centre
    a_mm: float  # along the ray
    b_mm: float  # across it
    z_range: tuple[float, float]


@dataclass(frozen=True)
class Heart:
    """The LV and RV of one scene (heart frame, see the module docstring)."""

    cavity_radius_mm: float
    cavity_half_length_mm: float
    equator_z_mm: float
    wall_mm: float
    apex_wall_mm: float
    ellipticity: float  # cavity and epicardium stretched by (1 + e) along ``ellipse_angle``
    ellipse_angle: float
    endo_harmonics: Harmonics
    wall_harmonics: Harmonics
    thickening: tuple[float, float, float] | None  # (angle, half width rad, factor)
    infarct: tuple[float, float, float] | None  # (angle, half width rad, residual wall mm)
    papillaries: tuple[Papillary, ...]
    trabeculae: tuple[tuple[float, float, float, float], ...]  # (angle, radius fraction, length, width mm)
    trabecular_band_mm: float  # a mesh of trabeculae this deep inside the endocardium (cavity in the target)
    trabecular_fill: float  # fraction of the band that is muscle, at the wall (less further in)
    trabecular_waves: tuple[tuple[int, float, float, float], ...]  # (k, amplitude, phase, radial wavenumber)
    lvot_z_mm: float  # the LV outflow tract opens the anteroseptal ring above this height
    rv_centre_mm: tuple[float, float]  # relative to the LV axis at the equator
    rv_axes_mm: tuple[float, float]
    rv_wall_mm: float
    rv_end_z_mm: float  # the RV ends here (before the LV apex)
    rv_trabeculae: tuple[tuple[float, float, float], ...]  # (x frac, y frac, size mm) in the RV ellipse
    fat_mm: float
    fat_harmonics: Harmonics
    groove_fat_mm: float
    pericardium: (
        tuple[float, float, float] | None
    )  # (gap mm beyond the fat, thickness mm, paracardial fat mm)
    coronaries: tuple[
        tuple[float, float, float], ...
    ]  # (angle, distance beyond the epicardium mm, radius mm)

    @cached_property
    def endo_table(self) -> np.ndarray:
        """The endocardium's angular factor on :data:`TABLE_ANGLES`."""
        return self.endo_harmonics.factor(TABLE_ANGLES)

    @cached_property
    def wall_table(self) -> np.ndarray:
        """The wall's angular factor (harmonics, regional thickening) on :data:`TABLE_ANGLES`."""
        table = self.wall_harmonics.factor(TABLE_ANGLES) ** 0.5
        if self.thickening is not None:
            angle, half, factor = self.thickening
            table = table * (1.0 + (factor - 1.0) * _angle_bump(TABLE_ANGLES, angle, half))
        return table

    @cached_property
    def infarct_table(self) -> np.ndarray:
        if self.infarct is None:
            return np.zeros_like(TABLE_ANGLES)
        return _angle_bump(TABLE_ANGLES, self.infarct[0], self.infarct[1])

    @cached_property
    def fat_table(self) -> np.ndarray:
        """Epicardial fat depth (mm) by angle, with the interventricular grooves."""
        depth = self.fat_mm * np.clip(self.fat_harmonics.factor(TABLE_ANGLES), 0.0, None)
        for groove in (-2.0, 2.3):  # anterior and inferior interventricular grooves
            depth = depth + self.groove_fat_mm * _angle_bump(TABLE_ANGLES, groove, 0.5)
        return depth

    @cached_property
    def av_groove_table(self) -> np.ndarray:
        """Extra fat depth (mm) of the atrioventricular groove, at basal slices."""
        return self.groove_fat_mm * 0.7 * _angle_bump(TABLE_ANGLES, 0.3, 1.2)

    @property
    def epi_half_length_mm(self) -> float:
        return self.cavity_half_length_mm + self.apex_wall_mm

    @property
    def endo_apex_z_mm(self) -> float:
        return self.equator_z_mm + self.cavity_half_length_mm

    @property
    def epi_apex_z_mm(self) -> float:
        return self.equator_z_mm + self.epi_half_length_mm

    def cavity_radius_at(self, z: float) -> float:
        """The mean endocardial radius of the plane ``z`` (0 beyond the apex or above the base)."""
        if z < 0.0:
            return 0.0
        u = (z - self.equator_z_mm) / self.cavity_half_length_mm
        return self.cavity_radius_mm * math.sqrt(max(0.0, 1.0 - u * u)) if u < 1.0 else 0.0

    def epicardial_radius_at(self, z: float) -> float:
        """The mean epicardial radius of the plane ``z``."""
        if z < 0.0:
            return 0.0
        radius = self.cavity_radius_mm + self.wall_mm
        u = (z - self.equator_z_mm) / self.epi_half_length_mm
        return radius * math.sqrt(max(0.0, 1.0 - u * u)) if u < 1.0 else 0.0


@dataclass(frozen=True)
class Chest:
    """The chest around the heart (heart frame; a frame ``rotation`` applies to all of it)."""

    centre_mm: tuple[float, float]
    axes_mm: tuple[float, float]  # lateral, antero-posterior semi-axes of the body outline
    outline: Harmonics
    subcutaneous_fat_mm: float
    fat_harmonics: Harmonics
    muscle_mm: float
    rib_spacing: float  # radians between ribs along the outline
    rib_phase: float
    rib_size_mm: tuple[float, float]
    spine_mm: tuple[float, float, float]  # x, y, radius of the vertebral body
    aorta_mm: tuple[float, float, float]
    mediastinum_axes_mm: tuple[float, float]  # soft tissue from the heart towards the spine
    fat_pad: tuple[float, float, float, float] | None  # (x, y, a, b) in LV radii: fat in front of the heart
    diaphragm: tuple[float, float, float] | None  # (y at the heart's axis mm, slope, curvature /mm)
    liver_side: float  # x (mm) left of which the region below the diaphragm is liver
    blobs: tuple[Blob, ...]  # clutter, breast, oesophagus, organs in the abdomen, great vessels


@dataclass(frozen=True)
class Deformation:
    """A smooth displacement field: knot displacements (mm) on a square lattice of ``spacing_mm``."""

    origin_mm: tuple[float, float]
    spacing_mm: float
    dx: np.ndarray = field(repr=False)
    dy: np.ndarray = field(repr=False)

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage

        coords = np.stack(
            [(y - self.origin_mm[1]) / self.spacing_mm, (x - self.origin_mm[0]) / self.spacing_mm]
        )
        flat = coords.reshape(2, -1)
        ux = ndimage.map_coordinates(self.dx, flat, order=1, mode="nearest").reshape(x.shape)
        uy = ndimage.map_coordinates(self.dy, flat, order=1, mode="nearest").reshape(x.shape)
        return x + ux, y + uy


@dataclass(frozen=True)
class SliceScene:
    """One slice: its heart, chest, height ``z_mm`` and the slab's thickness, and the frame's pose."""

    heart: Heart | None
    chest: Chest
    z_mm: float
    slab_mm: float
    rotation: float  # radians, image = R(rotation) heart frame
    tilt: tuple[float, float]  # (tan of the slice normal's angle to the LV axis, its direction in radians)
    mirrored: bool  # RV on the right: an acquisition whose orientation was not standardised
    deformation: Deformation
    chest_deformation: Deformation  # larger, on top, for the chest only: its organs are never ellipses

    def to_heart_frame(self, x_img: np.ndarray, y_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image-frame mm (origin on the LV axis) to heart-frame mm: un-rotate, un-mirror, deform."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        x = c * x_img + s * y_img
        y = -s * x_img + c * y_img
        if self.mirrored:
            x = -x
        return self.deformation.apply(x, y)


def _draw_heart(rng: np.random.Generator, ranges: SceneRanges) -> Heart:
    r_lo, r_hi = ranges.cavity_radius_mm
    cavity = float(rng.uniform(r_lo, r_hi))
    # dilated hearts mostly have thin walls, small ones thick: the wall's range slides with the cavity
    size = (cavity - r_lo) / max(r_hi - r_lo, 1e-6)
    w_lo, w_hi = ranges.wall_mm
    centre = w_hi - (w_hi - w_lo) * (0.35 + 0.5 * size)
    wall = float(np.clip(rng.normal(centre, 0.22 * (w_hi - w_lo)), w_lo, w_hi))
    half_length = float(rng.uniform(*ranges.cavity_half_length_mm)) * (0.8 + 0.4 * size)
    equator = float(rng.uniform(*ranges.equator_z_mm))
    apex_wall = wall * float(rng.uniform(0.5, 1.0))
    thickening = None
    if rng.random() < ranges.hypertrophy_prob:
        septal = rng.random() < 0.6
        angle = math.pi + rng.normal(0.0, 0.3) if septal else rng.uniform(-math.pi, math.pi)
        thickening = (float(angle), float(rng.uniform(0.5, 1.4)), float(rng.uniform(1.2, 2.0)))
    infarct = None
    if rng.random() < ranges.infarct_prob:
        infarct = (
            float(rng.uniform(-math.pi, math.pi)),
            float(rng.uniform(0.3, 1.2)),
            float(rng.uniform(1.5, 4.0)),
        )
    endo_apex = equator + half_length
    papillaries = []
    for base_angle in (-0.8, 1.9):  # anterolateral (upper right), posteromedial (lower, towards the septum)
        if rng.random() > 0.93:
            continue
        group_angle = float(base_angle + rng.normal(0.0, 0.3))
        z_range = (float(rng.uniform(0.0, 0.45) * endo_apex), float(rng.uniform(0.65, 0.95) * endo_apex))
        for _ in range(int(rng.integers(1, 4))):  # a muscle splits into heads
            papillaries.append(
                Papillary(
                    angle=float(group_angle + rng.normal(0.0, 0.15)),
                    depth=float(rng.uniform(0.05, 0.3)),
                    a_mm=float(rng.uniform(3.0, 9.0)),
                    b_mm=float(rng.uniform(2.0, 6.0)),
                    z_range=z_range,
                )
            )
    n_trab = int(rng.integers(0, 24))
    trabeculae = tuple(
        (
            float(rng.uniform(-math.pi, math.pi)),
            float(rng.uniform(0.85, 1.02)),
            float(rng.uniform(1.2, 4.5)),
            float(rng.uniform(0.7, 2.5)),
        )
        for _ in range(n_trab)
    )
    epi_radius = cavity + wall
    rv_a = epi_radius * float(rng.uniform(0.55, 1.25))
    rv_b = epi_radius * float(rng.uniform(1.0, 1.7))
    rv_centre = (-epi_radius * float(rng.uniform(0.45, 1.0)), epi_radius * float(rng.uniform(-0.35, 0.15)))
    rv_trab = tuple(
        (float(rng.uniform(-0.8, 0.8)), float(rng.uniform(-0.8, 0.8)), float(rng.uniform(1.0, 3.5)))
        for _ in range(int(rng.integers(0, 8)))
    )
    pericardium = None
    if rng.random() < ranges.pericardium_prob:
        pericardium = (
            float(rng.uniform(0.0, 3.0)),
            float(rng.uniform(0.7, 2.2)),
            float(rng.exponential(3.0)),
        )
    coronaries = tuple(
        (float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.5, 4.0)), float(rng.uniform(0.8, 2.5)))
        for _ in range(int(rng.integers(0, 6)))
    )
    return Heart(
        cavity_radius_mm=cavity,
        cavity_half_length_mm=half_length,
        equator_z_mm=equator,
        wall_mm=wall,
        apex_wall_mm=apex_wall,
        ellipticity=float(rng.uniform(0.0, 0.18)),
        ellipse_angle=float(rng.uniform(0.0, math.pi)),
        endo_harmonics=_harmonics(rng, 0.07, (2, 3, 4, 5)),
        wall_harmonics=_harmonics(rng, 0.3, (1, 2, 3)),
        thickening=thickening,
        infarct=infarct,
        papillaries=tuple(papillaries),
        trabeculae=trabeculae,
        # experts draw the endocardium at the compact wall: a trabeculated layer inside it, often several mm
        # deep and nearly as dark as the wall, is cavity
        trabecular_band_mm=float(
            rng.choice([0.0, rng.uniform(1.0, 4.0), rng.uniform(3.0, 10.0)], p=[0.12, 0.38, 0.5])
        ),
        trabecular_fill=float(rng.uniform(0.3, 0.95)),
        trabecular_waves=tuple(
            (
                int(rng.integers(5, 28)),
                float(rng.uniform(0.5, 1.0)),
                float(rng.uniform(0.0, _TWO_PI)),
                float(rng.uniform(-0.8, 0.8)),
            )
            for _ in range(5)
        ),
        lvot_z_mm=float(rng.uniform(0.0, 14.0)),
        rv_centre_mm=rv_centre,
        rv_axes_mm=(rv_a, rv_b),
        rv_wall_mm=float(rng.uniform(1.0, 3.5)),
        rv_end_z_mm=endo_apex * float(rng.uniform(0.6, 0.97)),
        rv_trabeculae=rv_trab,
        # many hearts have almost no epicardial fat outside the grooves
        fat_mm=float(rng.uniform(*ranges.epicardial_fat_mm)) * (1.0 if rng.random() < 0.55 else 0.2),
        fat_harmonics=_harmonics(rng, 0.8, (1, 2, 3, 4)),
        groove_fat_mm=float(rng.uniform(*ranges.groove_fat_mm)),
        pericardium=pericardium,
        coronaries=coronaries,
    )


def _draw_chest(rng: np.random.Generator, ranges: SceneRanges, heart: Heart | None, z_mm: float) -> Chest:
    lateral = float(rng.uniform(125.0, 210.0))
    ap = float(rng.uniform(85.0, 150.0))
    centre = (-float(rng.uniform(15.0, 75.0)), float(rng.uniform(0.0, 0.55)) * ap)
    spine_r = float(rng.uniform(13.0, 21.0))
    spine = (
        centre[0] + float(rng.normal(0.0, 12.0)),
        centre[1] + ap - float(rng.uniform(25.0, 45.0)) - spine_r,
        spine_r,
    )
    aorta_r = float(rng.uniform(8.0, 15.0))
    aorta = (
        spine[0] + float(rng.uniform(10.0, 35.0)),
        spine[1] - spine_r - aorta_r * float(rng.uniform(0.2, 1.2)),
        aorta_r,
    )
    fraction_down = 0.0 if heart is None else (z_mm / max(heart.epi_apex_z_mm, 1.0))
    diaphragm = None
    if rng.random() < 0.25 + 0.6 * float(np.clip(fraction_down, 0.0, 1.0)):
        diaphragm = (
            float(rng.uniform(20.0, 110.0)),
            float(rng.normal(0.0, 0.35)),
            float(rng.uniform(0.0, 0.006)),
        )
    blobs: list[Blob] = []
    n_clutter = int(rng.integers(ranges.clutter_count[0], ranges.clutter_count[1] + 1))
    for _ in range(n_clutter):
        label = int(rng.choice([CLUTTER_A, CLUTTER_B, SOFT_TISSUE, EPICARDIAL_FAT, VESSEL_BLOOD, MUSCLE]))
        blobs.append(
            Blob(
                label,
                centre[0] + float(rng.uniform(-0.9, 0.9)) * lateral,
                centre[1] + float(rng.uniform(-0.9, 0.9)) * ap,
                float(rng.uniform(3.0, 30.0)),
                float(rng.uniform(3.0, 25.0)),
                float(rng.uniform(0.0, math.pi)),
            )
        )
    if rng.random() < 0.35:  # breast tissue in front of the chest wall
        side = float(rng.uniform(-0.2, 0.6)) * lateral
        blobs.append(
            Blob(
                SOFT_TISSUE,
                centre[0] + side,
                centre[1] - ap * float(rng.uniform(0.85, 1.05)),
                float(rng.uniform(25.0, 60.0)),
                float(rng.uniform(12.0, 35.0)),
                float(rng.normal(0.0, 0.3)),
            )
        )
    # oesophagus between the aorta and the left atrium
    blobs.append(
        Blob(
            SOFT_TISSUE,
            spine[0] - float(rng.uniform(0.0, 20.0)),
            spine[1] - spine_r - 12.0,
            float(rng.uniform(5.0, 10.0)),
            float(rng.uniform(4.0, 8.0)),
            float(rng.uniform(0.0, math.pi)),
        )
    )
    if diaphragm is not None:  # stomach, spleen, bowel: blobs below the diaphragm on the patient's left
        for _ in range(int(rng.integers(1, 5))):
            label = int(rng.choice([ABDOMEN, CLUTTER_A, CLUTTER_B, AIR, SUBCUTANEOUS_FAT]))
            blobs.append(
                Blob(
                    label,
                    float(rng.uniform(0.0, 120.0)),
                    diaphragm[0] + float(rng.uniform(5.0, 80.0)),
                    float(rng.uniform(8.0, 40.0)),
                    float(rng.uniform(6.0, 30.0)),
                    float(rng.uniform(0.0, math.pi)),
                )
            )
    if heart is not None and z_mm < 18.0:  # great vessels and atria at and above the base
        above = float(np.clip(1.0 - z_mm / 18.0, 0.0, 1.5))
        epi = heart.cavity_radius_mm + heart.wall_mm
        blobs.append(
            Blob(
                VESSEL_BLOOD,
                -0.45 * epi,
                -0.25 * epi,
                11.0 + 4.0 * rng.random(),
                10.0 + 4.0 * rng.random(),
                0.0,
                (-math.inf, 6.0),
            )
        )  # aortic root
        blobs.append(
            Blob(
                VESSEL_BLOOD,
                -0.9 * epi,
                -1.0 * epi,
                10.0 + 5.0 * rng.random(),
                9.0 + 4.0 * rng.random(),
                float(rng.uniform(0, math.pi)),
                (-math.inf, 4.0),
            )
        )  # pulmonary
        blobs.append(
            Blob(
                ATRIAL_BLOOD,
                float(rng.normal(0.1, 0.2)) * epi,
                (0.95 + 0.3 * rng.random()) * epi,
                epi * (0.7 + 0.4 * above),
                epi * (0.45 + 0.35 * above),
                float(rng.normal(0.0, 0.3)),
                (-math.inf, float(rng.uniform(-4.0, 8.0))),
            )
        )  # left atrium
        blobs.append(
            Blob(
                ATRIAL_BLOOD,
                -1.3 * epi,
                (0.45 + 0.3 * rng.random()) * epi,
                epi * (0.45 + 0.35 * above),
                epi * (0.5 + 0.3 * above),
                float(rng.normal(0.0, 0.3)),
                (-math.inf, float(rng.uniform(-6.0, 4.0))),
            )
        )  # right atrium
    return Chest(
        centre_mm=centre,
        axes_mm=(lateral, ap),
        outline=_harmonics(rng, 0.12, (2, 3, 4)),
        subcutaneous_fat_mm=float(rng.uniform(3.0, 35.0)),
        fat_harmonics=_harmonics(rng, 0.6, (1, 2, 3)),
        muscle_mm=float(rng.uniform(5.0, 22.0)),
        rib_spacing=float(rng.uniform(0.25, 0.45)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        rib_size_mm=(float(rng.uniform(5.0, 10.0)), float(rng.uniform(3.0, 6.0))),
        spine_mm=spine,
        aorta_mm=aorta,
        mediastinum_axes_mm=(float(rng.uniform(0.9, 1.4)), float(rng.uniform(1.0, 1.6))),
        fat_pad=(
            float(rng.uniform(-1.4, -0.2)),
            float(rng.uniform(-1.4, -0.6)),
            float(rng.uniform(0.4, 1.1)),
            float(rng.uniform(0.3, 0.8)),
        )
        if rng.random() < 0.6
        else None,
        diaphragm=diaphragm,
        liver_side=float(rng.uniform(-80.0, 40.0)),
        blobs=tuple(blobs),
    )


def draw_deformation(
    rng: np.random.Generator,
    amplitude_mm: float,
    extent_mm: float = 500.0,
    spacing_mm: tuple[float, float] = (25.0, 60.0),
) -> Deformation:
    """A smooth random displacement field over ``extent_mm`` around the origin."""
    spacing = float(rng.uniform(*spacing_mm))
    n = math.ceil(extent_mm / spacing) + 2
    origin = (-(n - 1) * spacing / 2.0, -(n - 1) * spacing / 2.0)
    dx = rng.normal(0.0, amplitude_mm, (n, n))
    dy = rng.normal(0.0, amplitude_mm, (n, n))
    return Deformation(origin, spacing, dx.astype(np.float64), dy.astype(np.float64))


def draw_scene(
    rng: np.random.Generator, ranges: SceneRanges | None = None, *, z_fraction: float | None = None
) -> SliceScene:
    """A random slice scene. ``z_fraction`` (0 = base plane, 1 = epicardial apex) fixes the slice's height;
    by default it is drawn from above the base to beyond the apex."""
    ranges = ranges or SceneRanges()
    heart = None if rng.random() < ranges.no_heart_prob else _draw_heart(rng, ranges)
    if heart is None:
        z = 0.0
    elif z_fraction is not None:
        z = float(z_fraction) * heart.epi_apex_z_mm
    elif rng.random() < ranges.within_lv_prob:  # most slices cut the LV, as a stack's do
        z = float(rng.uniform(0.03, 0.97)) * heart.epi_apex_z_mm
    else:
        z = float(rng.uniform(-ranges.above_base_mm, heart.epi_apex_z_mm + ranges.beyond_apex_mm))
    chest = _draw_chest(rng, ranges, heart, z)
    return SliceScene(
        heart=heart,
        chest=chest,
        z_mm=z,
        slab_mm=float(rng.uniform(5.0, 10.0)),
        rotation=math.radians(float(rng.uniform(-40.0, 40.0))),
        tilt=(math.tan(math.radians(float(rng.uniform(0.0, 25.0)))), float(rng.uniform(-math.pi, math.pi))),
        mirrored=bool(rng.random() < 0.05),
        deformation=draw_deformation(rng, float(rng.uniform(*ranges.deformation_mm))),
        chest_deformation=draw_deformation(
            rng, float(rng.uniform(*ranges.chest_deformation_mm)), spacing_mm=(15.0, 45.0)
        ),
    )


# --- Evaluating a scene's labels at points ---------------------------------------------------------


def _polar(x: np.ndarray, y: np.ndarray, heart: Heart) -> tuple[np.ndarray, np.ndarray]:
    """Radius (mm, in the heart's elliptical metric) and angle of each point around the LV axis."""
    theta = np.arctan2(y, x)
    rho = np.hypot(x, y)
    # an ellipse of ratio (1 + e) along ellipse_angle: divide the radius by the ellipse's own radius
    e = heart.ellipticity
    d = theta - heart.ellipse_angle
    stretch = (1.0 + e) / np.sqrt(((1.0 + e) * np.sin(d)) ** 2 + np.cos(d) ** 2)
    return rho / stretch, theta


def lv_radii_mm(heart: Heart, index: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Endocardial and epicardial radius (heart's elliptical metric) at the tabulated angles ``index``
    (:func:`angle_index`) in plane ``z``."""
    cavity = heart.cavity_radius_at(z)
    r_endo = cavity * heart.endo_table[index]
    wall = max(heart.epicardial_radius_at(z) - cavity, 0.0) * heart.wall_table[index]
    if heart.infarct is not None:
        bump = heart.infarct_table[index]
        wall = wall + (np.minimum(wall, heart.infarct[2]) - wall) * bump
    r_endo = np.maximum(r_endo, 0.0)
    return r_endo, r_endo + np.maximum(wall, 0.0)


def _rv_ellipse(heart: Heart, z: float) -> tuple[float, float, float, float] | None:
    """(centre x, centre y, semi-axis x, semi-axis y) of the RV cavity at height ``z`` (shrinking towards
    its end, larger at the base), None where there is no RV."""
    if z >= heart.rv_end_z_mm or z < -4.0:
        return None
    scale = math.sqrt(max(0.0, 1.0 - (max(z, 0.0) / heart.rv_end_z_mm) ** 2)) * (
        1.0 + 0.15 * max(0.0, 1.0 - z / 20.0)
    )
    if scale <= 0.05:
        return None
    return (
        heart.rv_centre_mm[0] * (0.6 + 0.4 * scale),
        heart.rv_centre_mm[1],
        heart.rv_axes_mm[0] * scale,
        heart.rv_axes_mm[1] * scale,
    )


def _rv_inside(x: np.ndarray, y: np.ndarray, heart: Heart, z: float, grow_mm: float = 0.0) -> np.ndarray:
    """Inside the RV ellipse at height ``z``, grown by ``grow_mm``."""
    ellipse = _rv_ellipse(heart, z)
    if ellipse is None:
        return np.zeros(x.shape, dtype=bool)
    cx, cy, a, b = ellipse
    return ((x - cx) / (a + grow_mm)) ** 2 + ((y - cy) / (b + grow_mm)) ** 2 < 1.0


def _rv_distance_mm(x: np.ndarray, y: np.ndarray, heart: Heart, z: float) -> np.ndarray | None:
    """Approximate distance (mm) outside the RV cavity's ellipse (negative inside); None without an RV."""
    ellipse = _rv_ellipse(heart, z)
    if ellipse is None:
        return None
    cx, cy, a, b = ellipse
    s = np.hypot((x - cx) / a, (y - cy) / b)
    return (s - 1.0) * min(a, b)


def heart_labels(
    x: np.ndarray,
    y: np.ndarray,
    z: float,
    heart: Heart,
    labels: np.ndarray,
    polar: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Paint the heart (fat, pericardium, RV, LV, papillary muscles, trabeculae) over ``labels`` at the
    heart-frame points; returns ``labels`` (changed in place). ``polar``: the points' ``(rho, angle index)``
    around the LV axis when already computed (the same points on several planes)."""
    if polar is None:
        rho, theta = _polar(x, y, heart)
        polar = (rho, angle_index(theta))
    rho, index = polar
    r_endo, r_epi = lv_radii_mm(heart, index, z)
    has_lv = heart.epicardial_radius_at(z) > 0.0
    lv_outer = (rho < r_epi) if has_lv else np.zeros(x.shape, dtype=bool)
    rv_wall = heart.rv_wall_mm
    rv_outer = _rv_inside(x, y, heart, z, grow_mm=rv_wall) & ~lv_outer
    heart_mask = lv_outer | rv_outer
    # epicardial fat: within a varying distance of the heart's surface (radial distance around the LV axis,
    # thick in the grooves where the RV wall meets the LV and along the atrioventricular groove)
    if has_lv:
        dist = rho - np.maximum(r_epi, 1.0)
        fat_depth = heart.fat_table[index]
        if z < 12.0:
            fat_depth = fat_depth + heart.av_groove_table[index]
    else:
        dist = np.full(x.shape, np.inf)
        fat_depth = np.full(x.shape, heart.fat_mm)
    # the heart's surface is the LV's and the RV's: distance beyond the nearer of the two
    rv_dist = _rv_distance_mm(x, y, heart, z)
    if rv_dist is not None:
        dist = np.minimum(dist, rv_dist - rv_wall)
    labels[(dist < fat_depth) & ~heart_mask] = EPICARDIAL_FAT
    if heart.pericardium is not None:
        gap, thickness, para = heart.pericardium
        peri_in = fat_depth + gap
        labels[(dist >= peri_in) & (dist < peri_in + thickness) & ~heart_mask] = PERICARDIUM
        para_depth = para * (1.0 + np.cos(TABLE_ANGLES + 1.6))[index]
        labels[(dist >= peri_in + thickness) & (dist < peri_in + thickness + para_depth) & ~heart_mask] = (
            EPICARDIAL_FAT
        )
    if has_lv and heart.coronaries:
        ring_theta, ring_r = _sorted_ring(heart, z)
        for angle, beyond, radius in heart.coronaries:
            reach = float(np.interp(angle, ring_theta, ring_r)) + beyond + radius
            cx, cy = reach * math.cos(angle), reach * math.sin(angle)
            labels[((x - cx) ** 2 + (y - cy) ** 2 < radius * radius) & ~heart_mask] = VESSEL_BLOOD
    # right ventricle, its trabeculae only tested on its cavity's points
    if rv_outer.any():
        labels[rv_outer] = RV_WALL
        rv_cavity = np.flatnonzero(_rv_inside(x, y, heart, z) & ~lv_outer)
        labels.flat[rv_cavity] = RV_BLOOD
        if heart.rv_trabeculae and rv_cavity.size:
            px, py = x.flat[rv_cavity], y.flat[rv_cavity]
            a, b = heart.rv_axes_mm
            for fx, fy, size in heart.rv_trabeculae:
                cx, cy = heart.rv_centre_mm[0] + fx * a, heart.rv_centre_mm[1] + fy * b
                labels.flat[rv_cavity[(px - cx) ** 2 + (py - cy) ** 2 < size * size]] = RV_WALL
    if not has_lv:
        return labels
    # left ventricle: myocardium, then cavity, papillary muscles and trabeculae inside it
    labels[lv_outer] = LV_MYOCARDIUM
    cavity_mask = rho < r_endo
    if z < heart.lvot_z_mm:  # the outflow tract opens the anteroseptal wall into the aortic root
        half = 0.35 + 0.5 * (heart.lvot_z_mm - z) / max(heart.lvot_z_mm, 1.0)
        opening = _angle_bump(TABLE_ANGLES, -2.2, half) > 0.0
        labels[opening[index] & lv_outer & ~cavity_mask] = VESSEL_BLOOD
    cavity = np.flatnonzero(cavity_mask)
    labels.flat[cavity] = LV_BLOOD
    if cavity.size == 0:
        return labels
    px, py = x.flat[cavity], y.flat[cavity]
    muscle = np.zeros(cavity.size, dtype=bool)
    for p in heart.papillaries:
        if not p.z_range[0] <= z <= p.z_range[1]:
            continue
        r_here = heart.cavity_radius_at(z) * float(heart.endo_table[angle_index(np.array([p.angle]))[0]])
        reach = r_here * (1.0 - p.depth)
        cx, cy = reach * math.cos(p.angle), reach * math.sin(p.angle)
        u = (px - cx) * math.cos(p.angle) + (py - cy) * math.sin(p.angle)
        v = -(px - cx) * math.sin(p.angle) + (py - cy) * math.cos(p.angle)
        muscle |= (u / p.a_mm) ** 2 + (v / p.b_mm) ** 2 < 1.0
    if heart.trabeculae:
        apical = float(np.clip((z - heart.equator_z_mm) / max(heart.cavity_half_length_mm, 1.0), 0.0, 1.0))
        keep = 0.4 + 0.6 * apical
        r_here = heart.cavity_radius_at(z)
        edge = rho.flat[cavity] > 0.7 * r_endo.flat[cavity]  # only near the wall can a trabecula be
        ex, ey = px[edge], py[edge]
        near = np.zeros(ex.size, dtype=bool)
        for k, (angle, frac, length, width) in enumerate(heart.trabeculae):
            if (k % 10) / 10.0 >= keep:
                continue
            c, s_ = math.cos(angle), math.sin(angle)
            cx, cy = r_here * frac * c, r_here * frac * s_
            u = (ex - cx) * c + (ey - cy) * s_  # along the radius: the trabecula runs from the wall inwards
            v = -(ex - cx) * s_ + (ey - cy) * c
            near |= (u / length) ** 2 + (v / width) ** 2 < 1.0
        muscle[np.flatnonzero(edge)[near]] = True
    if heart.trabecular_band_mm > 0:
        # a mesh against the wall: where a sum of angular waves (slanted with depth) exceeds a level that
        # falls with depth, so the mesh is dense at the wall and sparse further in
        r_wall = r_endo.flat[cavity]
        depth = r_wall - rho.flat[cavity]
        band = depth < heart.trabecular_band_mm
        if band.any():
            angle = TABLE_ANGLES[index.flat[cavity][band]]
            d = depth[band]
            wave = np.zeros(d.shape)
            for k, amplitude, phase, slant in heart.trabecular_waves:
                wave += amplitude * np.cos(k * angle + phase + slant * d)
            wave /= math.sqrt(sum(a * a for _, a, _, _ in heart.trabecular_waves) / 2.0)
            fill = heart.trabecular_fill * (1.0 - d / heart.trabecular_band_mm)
            # the level whose exceedance is ``fill`` for a standard normal wave
            level = np.sqrt(2.0) * erfinv(1.0 - 2.0 * np.clip(fill, 1e-3, 0.999))
            muscle[np.flatnonzero(band)[wave > level]] = True
    labels.flat[cavity[muscle]] = LV_TRABECULAE
    return labels


def _sorted_ring(heart: Heart, z: float) -> tuple[np.ndarray, np.ndarray]:
    return TABLE_ANGLES, lv_radii_mm(heart, np.arange(TABLE_ANGLES.size), z)[1]


def chest_labels(x: np.ndarray, y: np.ndarray, chest: Chest, heart: Heart | None, z: float) -> np.ndarray:
    """The chest's labels at heart-frame points (air outside the body), before the heart is painted."""
    cx, cy = chest.centre_mm
    dx, dy = x - cx, y - cy
    phi = np.arctan2(dy / chest.axes_mm[1], dx / chest.axes_mm[0])
    phi_index = angle_index(phi)
    scale = chest.outline.factor(TABLE_ANGLES)[phi_index]
    radial = np.hypot(dx / chest.axes_mm[0], dy / chest.axes_mm[1]) / scale  # 1 on the skin
    mean_axis = 0.5 * (chest.axes_mm[0] + chest.axes_mm[1])
    depth = (1.0 - radial) * mean_axis * scale  # mm below the skin, roughly
    labels = np.full(x.shape, AIR, dtype=np.uint8)
    body = radial < 1.0
    fat = chest.subcutaneous_fat_mm * np.clip(chest.fat_harmonics.factor(TABLE_ANGLES), 0.15, None)[phi_index]
    labels[body] = SUBCUTANEOUS_FAT
    muscle = body & (depth >= fat)
    labels[muscle] = MUSCLE
    cavity = muscle & (depth >= fat + chest.muscle_mm)
    labels[cavity] = LUNG
    # ribs along the inner edge of the muscle
    rib_band = muscle & (depth >= fat + 0.3 * chest.muscle_mm) & ~cavity
    if rib_band.any():
        along = (phi / chest.rib_spacing + chest.rib_phase) % 1.0
        rib_a = chest.rib_size_mm[0] / (mean_axis * chest.rib_spacing)
        rib_depth = np.abs(depth - fat - 0.75 * chest.muscle_mm) / chest.rib_size_mm[1]
        labels[rib_band & (np.abs(along - 0.5) < rib_a) & (rib_depth < 1.0)] = BONE
    # mediastinum: soft tissue and fat from the heart towards the spine
    sx, sy, sr = chest.spine_mm
    if heart is not None:
        reach = max(heart.cavity_radius_mm + heart.wall_mm, 20.0)
        ma, mb = chest.mediastinum_axes_mm
        mid_y = 0.5 * sy
        # behind and medial to the heart, towards the spine: the LV's lateral wall is left to the lung
        medi = ((x - 0.6 * sx - 0.2 * reach) / (reach * ma * 0.75)) ** 2 + (
            (y - mid_y) / (max(sy, reach) * 0.55 * mb + reach * 0.3)
        ) ** 2 < 1.0
        labels[medi & cavity] = SOFT_TISSUE
        if chest.fat_pad is not None:  # a fat pad in front of the heart, over the RV
            fx, fy, fa, fb = (v * reach for v in chest.fat_pad)
            pad = (((x - fx) / fa) ** 2 + ((y - fy) / fb) ** 2 < 1.0) & cavity
            labels[pad & (labels == LUNG)] = EPICARDIAL_FAT
    # below the diaphragm: liver on the patient's right, abdomen on the left
    if chest.diaphragm is not None:
        y0, slope, curve = chest.diaphragm
        below = (y > y0 + slope * x + curve * x * x) & cavity
        labels[below] = np.where(x[below] < chest.liver_side, LIVER, ABDOMEN)
    # spine, canal, paraspinal muscle, descending aorta
    labels[body & ((x - sx) ** 2 + (y - sy - sr * 1.6) ** 2 < (sr * 2.2) ** 2)] = MUSCLE
    labels[body & ((x - sx) ** 2 + (y - sy) ** 2 < sr * sr)] = BONE
    labels[body & ((x - sx) ** 2 + (y - sy - sr * 1.45) ** 2 < (sr * 0.45) ** 2)] = SPINAL_CANAL
    ax_, ay_, ar = chest.aorta_mm
    labels[body & ((x - ax_) ** 2 + (y - ay_) ** 2 < ar * ar)] = VESSEL_BLOOD
    # sternum
    top = cy - chest.axes_mm[1] + fat.mean() * 0.5 if np.size(fat) else cy - chest.axes_mm[1]
    labels[body & (((x - cx - 10.0) / 14.0) ** 2 + ((y - top - chest.muscle_mm) / 7.0) ** 2 < 1.0)] = BONE
    for blob in chest.blobs:
        if not blob.z_range[0] <= z <= blob.z_range[1]:
            continue
        labels[body & blob.inside(x, y)] = blob.label
    return labels


def scene_labels(
    scene: SliceScene,
    x_img: np.ndarray,
    y_img: np.ndarray,
    z_offsets_mm: tuple[float, ...] = (0.0,),
    *,
    chest: np.ndarray | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """uint8 scene labels at image-frame points (mm from the LV axis), one array per plane ``z +
    offset``, and the chest's labels alone. The chest is evaluated once (it hardly changes across a slab),
    or taken as given (``chest``: labels of the same points, e.g. a coarser grid's repeated); the heart is
    painted on every plane."""
    x, y = scene.to_heart_frame(np.asarray(x_img, dtype=np.float64), np.asarray(y_img, dtype=np.float64))
    if chest is None:
        cx, cy = scene.chest_deformation.apply(x, y)
        chest = chest_labels(cx, cy, scene.chest, scene.heart, scene.z_mm)
    if scene.heart is None:
        return [chest.copy() for _ in z_offsets_mm], chest
    inside_body = chest != AIR
    planes = []
    slope, direction = scene.tilt
    for offset in z_offsets_mm:
        # a slice tilted against the LV axis meets the heart further along that direction off its centre plane
        hx = x - offset * slope * math.cos(direction)
        hy = y - offset * slope * math.sin(direction)
        rho, theta = _polar(hx, hy, scene.heart)
        painted = heart_labels(
            hx, hy, scene.z_mm + offset, scene.heart, chest.copy(), (rho, angle_index(theta))
        )
        planes.append(np.where(inside_body, painted, chest).astype(np.uint8))
    return planes, chest


def heart_extent_mm(scene: SliceScene) -> float:
    """A radius (mm) around the LV axis that holds the LV, RV and epicardial fat of the slice."""
    if scene.heart is None:
        return 60.0
    h = scene.heart
    epi = h.cavity_radius_mm + h.wall_mm
    if h.thickening is not None:
        epi += h.wall_mm * (h.thickening[2] - 1.0)
    rv = abs(h.rv_centre_mm[0]) + max(h.rv_axes_mm) * 1.2 + h.rv_wall_mm
    return float(max(epi * (1.0 + h.ellipticity), rv) + h.fat_mm * 2.0 + h.groove_fat_mm + 10.0)
