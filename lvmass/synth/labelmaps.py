"""Random 3-D label maps of a cine short-axis stack at end diastole: the anatomy of a SynthSeg-style trainer.

Why label maps first: a segmenter trained on images synthesised from label maps, with every appearance
parameter drawn at random at each step, learns shape and context rather than one generator's look (SynthSeg,
Billot et al., Medical Image Analysis 2023). The only anatomy it needs is here; appearance is never modelled,
only randomised (``trainer.synthseg``). Whatever the network must learn to ignore has a label of its own:
right ventricle, atria, outflow tract and great vessels, lungs, liver, chest wall, fat, spine.

Anatomy comes from the cohort generator, unchanged: the LV is an :class:`~lvmass.synth.anatomy.LVAnatomy`
(truncated ellipsoid shells with angular harmonics, papillary muscles, trabeculation; its radii from
:func:`~lvmass.synth.anatomy.radii_mm`) and the chest is a :class:`~lvmass.synth.render.Body` from
:func:`~lvmass.synth.render.draw_body`. Only the ranges are wider (:class:`GeometryRanges`): cavities from
small to dilated (end-diastolic volume up to about 350 mL), walls from thin infarcted segments to severe
hypertrophy, any position in the field of view, in-plane rotation, a tilted stack, 6-14 slices 8-12 mm apart.

Coordinates. Heart coordinates (mm) are those of ``anatomy.py``: ``z`` along the LV long axis from the base
plane (``z = 0``) to the apex, ``x``/``y`` along the image's column/row directions of an untilted plane. Slice
``k`` is the plane through ``centre_k`` spanned by ``plane_u`` (image right) and ``plane_v`` (image down,
posterior), its normal ``plane_n`` tilted from ``z``. Pixel ``(i, j)`` of an ``rows x cols`` acquisition of
pixel ``p`` mm sits at ``X = (j - (cols - 1) / 2) p``, ``Y = (i - (rows - 1) / 2) p`` from the field-of-view
centre (the convention of ``beam_pipeline.tensor.resample_slice``). The images are in the pipeline's standard
view (``contracts.IN_PLANE_VIEW``): anterior at the top, seen from the apex, right ventricle on the left.

Two resolutions keep a sample cheap. Everything is labelled on the acquisition grid at the slice centre
(``SliceLabels.coarse``); the LV, where the mass is, is labelled again in a box around it on a grid
``supersample`` times finer, on ``subplanes`` planes across the slab (``SliceLabels.fine``), for partial
volume in-plane and through-plane. Papillary muscles and trabeculae have their own label (they look like
myocardium) but count as LV cavity in the target (:data:`TARGET_OF_LABEL`), as in InlineVF, UK Biobank manual
contouring and ``anatomy.py``'s ground truth. The true myocardial area of a slice is the fine myocardium
averaged over the slab's planes, so the true mass is ``sum_k area_k x slice spacing x 1.05 g/mL``, the
paper's rule on a perfect partial-volume segmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from beam_pipeline import contracts
from lvmass.synth.anatomy import (
    MIN_WALL_MM,
    AngleGrid,
    LVAnatomy,
    Papillary,
    Surface,
    profile_mm,
    radii_mm,
)
from lvmass.synth.render import Body, draw_body
from lvmass.synth.vectors import rotate as _rotate
from lvmass.synth.vectors import unit as _unit

# --- The labels of a scene ------------------------------------------------------------------------
AIR = 0
LV_BLOOD = 1
LV_MYOCARDIUM = 2
LV_PAPILLARY = 3  # papillary muscles and trabeculae: LV cavity in the target
RV_BLOOD = 4
RV_WALL = 5
ATRIA = 6  # left and right atrial blood
GREAT_VESSELS = 7  # LV outflow tract, aortic root and aorta, pulmonary trunk, descending aorta
LUNG = 8
LIVER = 9
CHEST_WALL = 10  # muscle and ribs
FAT = 11  # subcutaneous, pericardial and epicardial
SOFT_TISSUE = 12  # mediastinum and other tissue inside the chest wall
ABDOMEN = 13  # below the diaphragm, not liver (stomach, spleen, bowel)
BONE = 14  # vertebral body
CSF = 15  # spinal canal
LABEL_NAMES: tuple[str, ...] = (
    "air",
    "lv_blood",
    "lv_myocardium",
    "lv_papillary",
    "rv_blood",
    "rv_wall",
    "atria",
    "great_vessels",
    "lung",
    "liver",
    "chest_wall",
    "fat",
    "soft_tissue",
    "abdomen",
    "bone",
    "csf",
)
NUM_LABELS = len(LABEL_NAMES)
BLOOD_LABELS = (LV_BLOOD, RV_BLOOD, ATRIA, GREAT_VESSELS)
# Scene label -> the contract's label (beam_pipeline.contracts.LABEL_MAP): papillary muscles are cavity.
TARGET_OF_LABEL = np.zeros(NUM_LABELS, dtype=np.uint8)
TARGET_OF_LABEL[[LV_BLOOD, LV_PAPILLARY]] = contracts.LV_CAVITY
TARGET_OF_LABEL[LV_MYOCARDIUM] = contracts.MYOCARDIUM

_RADII_DZ_MM = 0.5  # height step of the radius tables
_RADII_GRID = AngleGrid.of(np.linspace(0.0, 2.0 * math.pi, 360, endpoint=False))
_TWO_PI = 2.0 * math.pi
# LPS direction of the RV from the LV (lvmass.synth.participant.RV_DIRECTION_LPS)
_RV_DIRECTION_LPS = np.array([-0.7, -0.5, -0.5])


@dataclass(frozen=True)
class GeometryRanges:
    """Ranges of the label maps (uniform unless stated). Lengths in mm, volumes in mL, angles in degrees."""

    edv_ml: tuple[float, float] = (45.0, 350.0)  # end-diastolic cavity volume, drawn log-uniform
    wall_mm: tuple[float, float] = (4.0, 20.0)  # mean wall thickness (see draw_heart for the mixture)
    infarct_prob: float = 0.3  # a thinned, infarcted wall segment
    infarct_residual_mm: tuple[float, float] = (1.5, 4.0)
    n_slices: tuple[int, int] = (6, 14)
    slice_spacing_mm: tuple[float, float] = (8.0, 12.0)
    slice_gap_mm: tuple[float, float] = (0.0, 2.0)  # thickness = spacing - gap
    tilt_deg: tuple[float, float] = (0.0, 25.0)  # slice normal against the LV long axis
    rotation_deg: float = 40.0  # in-plane rotation of the whole chest, +/-
    fov_cols_mm: tuple[float, float] = (280.0, 420.0)
    fov_aspect: tuple[float, float] = (0.75, 1.0)  # rows / cols
    # where the LV axis crosses the plane through the base's centre, as fractions of the field of view from
    # its centre (+ right and down): on average a little right of and above the centre (the chest is planned
    # around the heart), spread uniformly by +/- offset_spread
    offset_mean: tuple[float, float] = (0.04, -0.06)
    offset_spread: float = 0.18
    misregistration_mm: float = 2.5  # breath-hold displacement per slice, sd
    body_size: tuple[float, float] = (0.85, 1.2)
    bmi_kg_m2: tuple[float, float] = (17.0, 42.0)

    def __post_init__(self) -> None:
        for name in (
            "edv_ml",
            "wall_mm",
            "infarct_residual_mm",
            "slice_spacing_mm",
            "slice_gap_mm",
            "tilt_deg",
            "fov_cols_mm",
            "fov_aspect",
            "body_size",
            "bmi_kg_m2",
            "n_slices",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{name} must be (low, high) with 0 <= low <= high. Received: {(low, high)!r}"
                )
        if self.slice_gap_mm[1] >= self.slice_spacing_mm[0]:
            raise ValueError(
                f"slice_gap_mm must stay below the slice spacing. Received: {self.slice_gap_mm!r}"
            )
        if self.n_slices[0] < 1:
            raise ValueError(f"n_slices must be at least 1. Received: {self.n_slices!r}")
        if not 0.0 <= self.offset_spread < 0.5:
            raise ValueError(f"offset_spread must be in [0, 0.5). Received: {self.offset_spread!r}")
        if not 0.0 <= self.infarct_prob <= 1.0:
            raise ValueError(f"infarct_prob must be in [0, 1]. Received: {self.infarct_prob!r}")


@dataclass(frozen=True)
class Infarct:
    """A thinned wall segment: the endocardium moves out to leave ``residual_mm`` of wall, tapered at the
    sector's edges (angles in heart coordinates, rad) and along ``z``."""

    angle_rad: float
    half_width_rad: float
    z_start_mm: float
    z_end_mm: float
    residual_mm: float


@dataclass(frozen=True)
class Vessel:
    """A straight tube (great vessel): axis point at ``z = 0`` (heart x, y mm), direction (unit, heart
    coordinates), radius, and the heights it spans."""

    base_xy_mm: tuple[float, float]
    direction: tuple[float, float, float]
    radius_mm: float
    z_range_mm: tuple[float, float]


@dataclass(frozen=True)
class Chamber:
    """An ellipsoidal blood pool (atrium): centre (heart mm), semi-axes (mm) along x, y, z."""

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Heart:
    """The LV (``anatomy.py``) and what surrounds it at the base, in heart coordinates."""

    anatomy: LVAnatomy
    rv_wall_mm: float
    rv_top_mm: float  # the RV (outflow tract) reaches this far above the base plane
    la: Chamber
    ra: Chamber
    aorta: Vessel
    pulmonary: Vessel
    lvot_angle_rad: float  # the outflow tract leaves the cavity through the wall here, near the base
    lvot_half_width_rad: float
    lvot_depth_mm: float
    infarct: Infarct | None


@dataclass(frozen=True)
class StackPlan:
    """Where the slices are: slice ``k`` is centred at ``positions_mm[k] * plane_n + offset`` (heart mm)."""

    plane_u: tuple[float, float, float]
    plane_v: tuple[float, float, float]
    plane_n: tuple[float, float, float]
    positions_mm: tuple[float, ...]  # along plane_n from the heart origin, base to apex
    shifts_mm: tuple[tuple[float, float, float], ...]  # breath-hold displacement per slice (u, v, n)
    centre_offset_mm: tuple[float, float]  # field-of-view centre from the LV axis, along plane_u, plane_v
    slice_spacing_mm: float
    slice_thickness_mm: float
    fov_mm: tuple[float, float]  # rows, cols

    @property
    def n_slices(self) -> int:
        return len(self.positions_mm)


@dataclass(frozen=True)
class LabelScene:
    """One random participant's anatomy and acquisition plan, independent of the acquired pixel size."""

    heart: Heart
    body: Body
    orientation: tuple[np.ndarray, np.ndarray, np.ndarray]  # LPS u, v, n of the heart's x, y, z axes
    plan: StackPlan


@dataclass(frozen=True)
class SliceLabels:
    """The labels of one slice: ``coarse`` (rows, cols) on the acquisition grid at the slice centre; ``fine``
    (subplanes, h, w) on the grid ``supersample`` times finer over ``roi`` = (row0, col0, row1, col1) of the
    acquisition grid (``fine`` covers rows ``row0..row1-1``; every label, LV ones from the fine geometry).
    An empty ``roi`` (row1 == row0) means no LV on this slice."""

    coarse: np.ndarray
    fine: np.ndarray
    roi: tuple[int, int, int, int]

    def target_fractions(self) -> tuple[np.ndarray, np.ndarray]:
        """(cavity, myocardium) fractions on the fine ROI grid, averaged over the slab's planes (float32)."""
        target = TARGET_OF_LABEL[self.fine]
        cavity = (target == contracts.LV_CAVITY).mean(axis=0, dtype=np.float32)
        myocardium = (target == contracts.MYOCARDIUM).mean(axis=0, dtype=np.float32)
        return cavity, myocardium


@dataclass(frozen=True)
class LabelStack:
    """A scene rasterised at one acquired pixel size: the labels of every slice and the true volumes."""

    slices: tuple[SliceLabels, ...]
    shape: tuple[int, int]  # acquisition (rows, cols)
    pixel_spacing_mm: float
    supersample: int
    slice_spacing_mm: float
    slice_thickness_mm: float
    positions_mm: tuple[float, ...]
    myocardium_area_mm2: tuple[float, ...]  # per slice: fine myocardium averaged over the slab's planes
    cavity_area_mm2: tuple[float, ...]  # the same for the cavity (papillary muscles included)

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    def true_lv_mass_g(self, n_slices: int | None = None) -> float:
        """sum of myocardial areas x slice spacing x 1.05 g/mL over the first ``n_slices`` (all: None)."""
        areas = self.myocardium_area_mm2[: self.n_slices if n_slices is None else n_slices]
        return float(sum(areas)) * self.slice_spacing_mm / 1000.0 * contracts.MYOCARDIAL_DENSITY_G_PER_ML

    def true_cavity_volume_ml(self, n_slices: int | None = None) -> float:
        areas = self.cavity_area_mm2[: self.n_slices if n_slices is None else n_slices]
        return float(sum(areas)) * self.slice_spacing_mm / 1000.0


# --- Drawing a scene ------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def draw_orientation(
    rng: np.random.Generator, rotation_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS (u, v, n) of a short-axis plane: ``n`` the LV axis (apex left, anterior, inferior), ``v`` (image
    down) posterior within the plane then turned by up to ``rotation_deg``, ``u = n x v`` (so ``u x v = -n``:
    seen from the apex, RV on the left), as ``lvmass.synth.participant`` plans its stacks."""
    n = _unit(np.array([0.55, -0.45, -0.70]) + rng.normal(0.0, 0.1, 3))
    posterior = np.array([0.0, 1.0, 0.0])
    v = _unit(posterior - np.dot(posterior, n) * n)
    v = _unit(_rotate(v, n, math.radians(float(rng.uniform(-rotation_deg, rotation_deg)))))
    return np.cross(n, v), v, n


def draw_lv_anatomy(rng: np.random.Generator, ranges: GeometryRanges, rv_angle_rad: float) -> LVAnatomy:
    """An :class:`LVAnatomy` over the wide ranges: end-diastolic volume log-uniform in ``edv_ml`` (dilated
    hearts rounder), wall thickness from a mixture (70% normal 6-11 mm, 15% thin down to ``wall_mm[0]``, 15%
    hypertrophied up to ``wall_mm[1]``), harmonics a little wider than the cohort generator's."""
    edv = math.exp(_uniform(rng, (math.log(ranges.edv_ml[0]), math.log(ranges.edv_ml[1]))))
    sphericity = float(np.clip(3.3 - 1.0 * (edv - 120.0) / 230.0 + rng.normal(0.0, 0.2), 2.2, 3.8))
    # cavity ~ a half prolate ellipsoid of radius r and semi-length L = sphericity x r (2/3 pi r^2 L)
    endo_r = (edv * 1000.0 / (2.0 / 3.0 * math.pi * sphericity)) ** (1.0 / 3.0)
    endo_l = sphericity * endo_r
    pick = rng.random()
    lo, hi = ranges.wall_mm
    if pick < 0.7:
        thickness = float(np.clip(rng.uniform(6.0, 11.0), lo, hi))
    elif pick < 0.85:
        thickness = _uniform(rng, (lo, max(lo, min(6.0, hi))))
    else:
        thickness = _uniform(rng, (min(max(11.0, lo), hi), hi))
    centre_z = -float(rng.uniform(0.0, 0.12)) * endo_l
    a2 = float(rng.normal(0.045, 0.025))
    a3 = float(rng.normal(0.0, 0.02))
    p2, p3 = (float(x) for x in rng.uniform(0.0, _TWO_PI, 2))
    z_mod, z_period = float(rng.uniform(0.1, 0.4)), float(rng.uniform(40.0, 90.0))
    epi = Surface(
        endo_r + thickness,
        endo_l + 0.6 * thickness,
        (float(rng.normal(0.0, 0.02)), a2, a3),
        (float(rng.uniform(0, _TWO_PI)), p2, p3),
        z_mod,
        z_period,
    )
    endo = Surface(
        endo_r,
        endo_l,
        (
            float(rng.normal(0.0, 0.03)),
            a2 * float(rng.uniform(0.8, 1.4)),
            a3 * float(rng.uniform(0.7, 1.3)),
            float(rng.normal(0.0, 0.015)),
        ),
        (
            float(rng.uniform(0, _TWO_PI)),
            p2 + float(rng.normal(0, 0.3)),
            p3 + float(rng.normal(0, 0.3)),
            float(rng.uniform(0, _TWO_PI)),
        ),
        z_mod,
        z_period,
    )
    opposite = rv_angle_rad + math.pi
    papillaries = tuple(
        Papillary(
            angle_rad=opposite + sign * float(rng.uniform(0.5, 1.1)),
            radial_fraction=float(rng.uniform(0.5, 0.75)),
            radius_mm=float(rng.uniform(2.5, 6.5)) * math.sqrt(endo_r / 25.0),
            z_start_mm=float(rng.uniform(0.15, 0.3)) * endo_l,
            z_end_mm=float(rng.uniform(0.55, 0.8)) * endo_l,
        )
        for sign in (-1.0, 1.0)
    )
    return LVAnatomy(
        epi=epi,
        endo=endo,
        centre_z_mm=centre_z,
        twist_rad_per_mm=float(rng.normal(0.0, 0.004)),
        axis_drift_mm_per_mm=(float(rng.normal(0.0, 0.06)), float(rng.normal(0.0, 0.06))),
        papillaries=papillaries,
        trabeculation=float(rng.uniform(0.0, 0.8)),
        rv_angle_rad=rv_angle_rad,
        rv_radial_mm=float(rng.uniform(0.35, 0.75)) * (endo_r + thickness),
        rv_tangential_mm=float(rng.uniform(1.1, 1.6)) * (endo_r + thickness),
        rv_length_mm=float(rng.uniform(0.65, 0.9)) * (centre_z + endo_l + 0.6 * thickness),
        la_radius_mm=float(rng.uniform(0.7, 1.1)) * endo_r,
        fat_angle_rad=float(rng.uniform(0, _TWO_PI)),
        fat_thickness_mm=float(rng.uniform(0.5, 9.0)),
        endo_scale_es=0.68,
        long_scale_es=0.86,
        systole_fraction=0.35,  # end diastole only: unused
    )


def draw_heart(rng: np.random.Generator, ranges: GeometryRanges, rv_angle_rad: float) -> Heart:
    """The LV and the structures at its base, placed around the RV direction (seen from the apex: atria
    posterior, aortic root between RV and LA, pulmonary trunk anterior)."""
    anatomy = draw_lv_anatomy(rng, ranges, rv_angle_rad)
    endo_r, epi_r = anatomy.endo.radius_mm, anatomy.epi.radius_mm

    def around(angle: float, distance: float) -> tuple[float, float]:
        return distance * math.cos(angle), distance * math.sin(angle)

    jitter = rng.normal(0.0, 0.25, 4)
    la_r = anatomy.la_radius_mm
    la_xy = around(rv_angle_rad - math.pi / 2 + jitter[0], 0.4 * endo_r + 0.5 * la_r)
    la = Chamber(
        (*la_xy, -float(rng.uniform(0.6, 1.0)) * la_r),
        (la_r * float(rng.uniform(0.9, 1.2)), la_r * float(rng.uniform(0.7, 0.95)), la_r),
    )
    ra_r = float(rng.uniform(0.75, 1.1)) * endo_r
    ra_xy = around(rv_angle_rad - 0.6 + jitter[1], epi_r + 0.5 * ra_r)
    ra = Chamber(
        (*ra_xy, -float(rng.uniform(0.5, 1.0)) * ra_r), (ra_r, ra_r * float(rng.uniform(0.8, 1.1)), ra_r)
    )
    aorta_angle = rv_angle_rad + 0.7 + jitter[2]
    aorta_r = float(rng.uniform(10.0, 17.0))

    def tilt(angle: float, amount: float) -> tuple[float, float, float]:
        d = np.array([amount * math.cos(angle), amount * math.sin(angle), -1.0])
        return tuple(float(c) for c in _unit(d))  # type: ignore[return-value]

    aorta = Vessel(
        around(aorta_angle, float(rng.uniform(0.35, 0.7)) * endo_r),
        tilt(aorta_angle, 0.3),
        aorta_r,
        (-110.0, 0.0),
    )
    pulmonary_angle = rv_angle_rad + 1.25 + jitter[3]
    pulmonary = Vessel(
        around(pulmonary_angle, epi_r + float(rng.uniform(5.0, 20.0))),
        tilt(pulmonary_angle + math.pi, 0.4),
        float(rng.uniform(10.0, 15.0)),
        (-110.0, -12.0),
    )
    infarct = None
    if rng.random() < ranges.infarct_prob:
        z_start = float(rng.uniform(0.1, 0.5)) * anatomy.endo_apex_z_mm
        infarct = Infarct(
            angle_rad=float(rng.uniform(0.0, _TWO_PI)),
            half_width_rad=math.radians(float(rng.uniform(20, 60))),
            z_start_mm=z_start,
            z_end_mm=z_start + float(rng.uniform(0.25, 0.6)) * anatomy.endo_apex_z_mm,
            residual_mm=_uniform(rng, ranges.infarct_residual_mm),
        )
    return Heart(
        anatomy=anatomy,
        rv_wall_mm=float(rng.uniform(2.0, 5.0)),
        rv_top_mm=float(rng.uniform(5.0, 25.0)),
        la=la,
        ra=ra,
        aorta=aorta,
        pulmonary=pulmonary,
        lvot_angle_rad=aorta_angle,
        lvot_half_width_rad=math.radians(float(rng.uniform(20.0, 45.0))),
        lvot_depth_mm=float(rng.uniform(0.0, 14.0)),
        infarct=infarct,
    )


def draw_plan(rng: np.random.Generator, ranges: GeometryRanges, heart: Heart) -> StackPlan:
    """The slices: a tilted stack from at or above the base (atria and outflow tract in the first slice
    sometimes) to around the apex, 6-14 slices, the LV anywhere near the middle of the field of view."""
    alpha = math.radians(_uniform(rng, ranges.tilt_deg))
    beta = float(rng.uniform(0.0, _TWO_PI))
    axis = np.array([math.cos(beta), math.sin(beta), 0.0])
    n = _rotate(np.array([0.0, 0.0, 1.0]), axis, alpha)
    u = _unit(_rotate(np.array([1.0, 0.0, 0.0]), axis, alpha))
    v = np.cross(n, u)  # image down; u x v = n here in heart coordinates (x right, y down, z into the page)
    spacing = _uniform(rng, ranges.slice_spacing_mm)
    thickness = spacing - _uniform(rng, ranges.slice_gap_mm)
    first = float(rng.uniform(-1.0, 0.5)) * spacing
    apex = heart.anatomy.epi_apex_z_mm
    needed = math.floor((apex - first) / spacing) + 1
    lo, hi = ranges.n_slices
    n_slices = int(np.clip(needed + int(rng.integers(-2, 3)), lo, hi))
    sd = ranges.misregistration_mm
    shifts = tuple(
        (float(a), float(b), float(c)) for a, b, c in rng.normal(0.0, 1.0, (n_slices, 3)) * [sd, sd, 0.6 * sd]
    )
    fov_cols = _uniform(rng, ranges.fov_cols_mm)
    fov_rows = fov_cols * _uniform(rng, ranges.fov_aspect)
    f = ranges.offset_spread
    heart_at = (
        ranges.offset_mean[0] + float(rng.uniform(-f, f)),
        ranges.offset_mean[1] + float(rng.uniform(-f, f)),
    )
    offset = (-heart_at[0] * fov_cols, -heart_at[1] * fov_rows)
    return StackPlan(
        plane_u=tuple(float(c) for c in u),
        plane_v=tuple(float(c) for c in v),  # type: ignore[arg-type]
        plane_n=tuple(float(c) for c in n),  # type: ignore[arg-type]
        positions_mm=tuple(first + spacing * k for k in range(n_slices)),
        shifts_mm=shifts,
        centre_offset_mm=offset,
        slice_spacing_mm=spacing,
        slice_thickness_mm=thickness,
        fov_mm=(fov_rows, fov_cols),
    )


def draw_label_scene(rng: np.random.Generator, ranges: GeometryRanges | None = None) -> LabelScene:
    """A random scene: chest orientation, heart, stack plan, chest (``render.draw_body``), in that order."""
    ranges = ranges or GeometryRanges()
    u, v, n = draw_orientation(rng, ranges.rotation_deg)
    rv_angle = math.atan2(float(_RV_DIRECTION_LPS @ v), float(_RV_DIRECTION_LPS @ u)) + float(
        rng.normal(0, 0.2)
    )
    heart = draw_heart(rng, ranges, rv_angle)
    plan = draw_plan(rng, ranges, heart)
    body = draw_body(
        rng,
        body_size=_uniform(rng, ranges.body_size),
        bmi_kg_m2=_uniform(rng, ranges.bmi_kg_m2),
        anatomy=heart.anatomy,
        orientation=(u, v, n),
    )
    return LabelScene(heart=heart, body=body, orientation=(u, v, n), plan=plan)


# --- Rasterising ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RadiusTables:
    """End-diastolic endocardial and epicardial radii (mm) on a (height, angle) grid, with the infarct and
    the outflow-tract opening applied: the LV geometry for many pixels at once by table look-up."""

    endo: np.ndarray  # (n_z, n_theta) float32
    epi: np.ndarray
    lvot: np.ndarray  # bool: no wall here (the outflow tract)
    dz_mm: float

    def lookup(self, z_mm: np.ndarray, theta_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(endo, epi, lvot) at each point, bilinear in height and angle (nearest for ``lvot``); zero
        radii outside the LV's heights."""
        n_z, n_t = self.endo.shape
        zi = z_mm * np.float32(1.0 / self.dz_mm)
        inside = (zi >= 0.0) & (zi <= n_z - 1)
        zi = np.clip(zi, 0.0, n_z - 1.001)
        iz = zi.astype(np.int32)
        wz = (zi - iz).astype(np.float32)
        ti = np.mod(theta_rad, _TWO_PI) * np.float32(n_t / _TWO_PI)
        it = ti.astype(np.int32) % n_t
        wt = (ti - np.floor(ti)).astype(np.float32)
        it1 = (it + 1) % n_t

        def bilinear(table: np.ndarray) -> np.ndarray:
            flat = table.ravel()
            a = flat[iz * n_t + it] * (1 - wt) + flat[iz * n_t + it1] * wt
            b = flat[(iz + 1) * n_t + it] * (1 - wt) + flat[(iz + 1) * n_t + it1] * wt
            return np.where(inside, a * (1 - wz) + b * wz, np.float32(0.0))

        lvot = self.lvot.ravel()[np.rint(zi).astype(np.int32) * n_t + it] & inside
        return bilinear(self.endo), bilinear(self.epi), lvot


def radius_tables(heart: Heart) -> RadiusTables:
    """:func:`anatomy.radii_mm` on every 0.5 mm of height and every degree, then the infarct (endocardium
    moved out to the residual wall, raised-cosine taper) and the outflow tract (no wall in its sector from
    the base to ``lvot_depth_mm``)."""
    a = heart.anatomy
    z = np.arange(0.0, a.epi_apex_z_mm + 2 * _RADII_DZ_MM, _RADII_DZ_MM)
    endo = np.empty((len(z), len(_RADII_GRID.theta)))
    epi = np.empty_like(endo)
    for i, zi in enumerate(z):
        endo[i], epi[i] = radii_mm(a, _RADII_GRID, float(zi))
    theta = _RADII_GRID.theta[None, :]
    if heart.infarct is not None:
        inf = heart.infarct
        d_angle = np.abs((theta - inf.angle_rad + math.pi) % _TWO_PI - math.pi) / inf.half_width_rad
        along = (z[:, None] - inf.z_start_mm) / max(inf.z_end_mm - inf.z_start_mm, 1e-3)
        weight = np.clip(1.5 - 1.5 * d_angle, 0, 1) * np.clip(np.minimum(along, 1 - along) * 6, 0, 1)
        thinned = np.maximum(endo, epi - max(inf.residual_mm, MIN_WALL_MM))
        endo = np.where(endo > 0, endo + weight * (thinned - endo), endo)
    d_lvot = np.abs((theta - heart.lvot_angle_rad + math.pi) % _TWO_PI - math.pi)
    lvot = (d_lvot < heart.lvot_half_width_rad) & (z[:, None] < heart.lvot_depth_mm)
    return RadiusTables(endo.astype(np.float32), epi.astype(np.float32), lvot, _RADII_DZ_MM)


def _plane_points(
    plan: StackPlan, k: int, x_mm: np.ndarray, y_mm: np.ndarray, through_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heart coordinates of in-plane points (X, Y mm from the field-of-view centre) of slice ``k``, moved
    ``through_mm`` along the slice normal (a plane of the slab)."""
    u, v, n = (np.asarray(c, dtype=np.float32) for c in (plan.plane_u, plan.plane_v, plan.plane_n))
    su, sv, sn = plan.shifts_mm[k]
    cu, cv = plan.centre_offset_mm
    centre = (plan.positions_mm[k] + through_mm + sn) * n + (cu + su) * u + (cv + sv) * v
    x = centre[0] + x_mm * u[0] + y_mm * v[0]
    y = centre[1] + x_mm * u[1] + y_mm * v[1]
    z = centre[2] + x_mm * u[2] + y_mm * v[2]
    return x.astype(np.float32), y.astype(np.float32), z.astype(np.float32)


def _axis_offsets(
    anatomy: LVAnatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """In-plane offsets (dx, dy) of heart points from the LV axis, the axis drift included."""
    zc = np.maximum(z, np.float32(0.0))
    return (
        x - np.float32(anatomy.axis_drift_mm_per_mm[0]) * zc,
        y - np.float32(anatomy.axis_drift_mm_per_mm[1]) * zc,
    )


def _axis_distance(anatomy: LVAnatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    dx, dy = _axis_offsets(anatomy, x, y, z)
    return np.sqrt(dx * dx + dy * dy)


def _in_ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, chamber: Chamber) -> np.ndarray:
    (cx, cy, cz), (ax, ay, az) = chamber.centre_mm, chamber.semi_axes_mm
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 < 1.0


def _in_vessel(x: np.ndarray, y: np.ndarray, z: np.ndarray, vessel: Vessel) -> np.ndarray:
    d = np.asarray(vessel.direction, dtype=np.float32)
    px, py = x - np.float32(vessel.base_xy_mm[0]), y - np.float32(vessel.base_xy_mm[1])
    along = px * d[0] + py * d[1] + z * d[2]
    across2 = px * px + py * py + z * z - along * along
    return (across2 < vessel.radius_mm**2) & (z > vessel.z_range_mm[0]) & (z < vessel.z_range_mm[1])


def background_labels(points_rel: np.ndarray, body: Body) -> np.ndarray:
    """Labels of the chest at LPS points (..., 3) relative to the heart origin: the structures of
    ``render.render_background``, each where its partial-volume fraction there would pass one half."""
    x, y, z = (np.ascontiguousarray(points_rel[..., k]) for k in range(3))
    f32 = np.float32
    depth = body.trunk.depth_mm(x, y)
    out = np.full(x.shape, AIR, dtype=np.uint8)
    out[depth > 0] = FAT
    out[depth > body.fat_mm] = CHEST_WALL
    inside = depth > body.chest_wall_mm
    out[inside] = SOFT_TISSUE
    below = body.diaphragm.z_mm(x, y) > z
    d_spine = np.hypot(x - f32(body.spine_xy[0]), y - f32(body.spine_xy[1]))
    d_aorta = np.hypot(x - f32(body.aorta_xy[0]), y - f32(body.aorta_xy[1]))
    lung = np.zeros(x.shape, dtype=bool)
    for centre, semi in body.lungs:
        r2 = (
            ((x - f32(centre[0])) / f32(semi[0])) ** 2
            + ((y - f32(centre[1])) / f32(semi[1])) ** 2
            + ((z - f32(centre[2])) / f32(semi[2])) ** 2
        )
        lung |= r2 < 1.0
    mc, ma = body.mediastinum_centre, body.mediastinum_axis
    dx, dy, dz = x - f32(mc[0]), y - f32(mc[1]), z - f32(mc[2])
    along = dx * f32(ma[0]) + dy * f32(ma[1]) + dz * f32(ma[2])
    across2 = np.maximum(dx * dx + dy * dy + dz * dz - along * along, f32(0.0))
    sa, sb = body.mediastinum_semi_mm
    in_mediastinum = (along / f32(sa)) ** 2 + across2 / f32(sb * sb) < 1.0
    lung &= inside & ~below & ~in_mediastinum
    lung &= (d_spine > body.spine_radius_mm + 10.0) & (d_aorta > body.aorta_radius_mm + 3.0)
    out[lung] = LUNG
    abdomen = below & (depth > body.fat_mm + body.muscle_mm)
    out[abdomen] = ABDOMEN
    out[abdomen & (x < f32(body.liver_edge_x_mm))] = LIVER
    out[d_aorta < body.aorta_radius_mm] = GREAT_VESSELS
    out[d_spine < body.spine_radius_mm] = BONE
    out[np.hypot(x - f32(body.canal_xy[0]), y - f32(body.canal_xy[1])) < body.canal_radius_mm] = CSF
    return out


HEART_PARTS = ("all", "around", "lv")


def heart_labels(
    heart: Heart,
    tables: RadiusTables,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    base: np.ndarray,
    *,
    parts: str = "all",
    texture_phase: float = 0.0,
) -> np.ndarray:
    """``base`` (labels of the chest) with the heart painted over it at heart points (x, y, z): around the
    LV pericardial fat, atria, great vessels, RV wall and blood; then the LV: outflow tract, myocardium,
    cavity, papillary muscles and trabeculae. ``parts``: ``"all"``, ``"around"`` (the LV's place keeps the
    labels under it) or ``"lv"`` (only the LV, over ``base``)."""
    if parts not in HEART_PARTS:
        raise ValueError(f"parts must be one of {HEART_PARTS}. Received: {parts!r}")
    a = heart.anatomy
    out = base.copy()
    dx, dy = _axis_offsets(a, x, y, z)
    r, theta = np.sqrt(dx * dx + dy * dy), np.arctan2(dy, dx)
    endo, epi, lvot = tables.lookup(z, theta)
    lv_z = (z >= 0.0) & (z <= a.epi_apex_z_mm)
    if parts != "lv":
        _paint_around(heart, out, x, y, z, dx, dy, r, theta, epi, lv_z)
    if parts == "around":
        return out
    out[lv_z & lvot & (r < epi + 4.0) & (r >= endo)] = GREAT_VESSELS  # the outflow tract through the wall
    myo = lv_z & (r < epi) & ~lvot
    cavity = lv_z & (r < endo)
    out[myo] = LV_MYOCARDIUM
    out[cavity] = LV_BLOOD
    _paint_cavity_muscle(a, out, cavity, z, dx, dy, r, theta, endo, texture_phase)
    return out


def _paint_around(
    heart: Heart,
    out: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    r: np.ndarray,
    theta: np.ndarray,
    epi: np.ndarray,
    lv_z: np.ndarray,
) -> None:
    """Pericardial and groove fat, atria, the RV (an elliptic shell leaning on the septum, up to its outflow
    tract above the base) and the great vessels, into ``out``."""
    a = heart.anatomy
    fat_w = np.float32(a.fat_thickness_mm) * np.maximum(np.cos(theta - np.float32(a.fat_angle_rad)), 0) ** 2
    fat_w += np.float32(1.0)
    mean_epi = profile_mm(a.epi, a.centre_z_mm, np.maximum(z, 0.0)).astype(np.float32)
    groove = (z < 0.0) & (z > -12.0) & (r < a.epi.radius_mm + 6.0)  # atrioventricular groove fat
    out[(lv_z & (r < epi + fat_w)) | groove] = FAT
    out[_in_ellipsoid(x, y, z, heart.la) | _in_ellipsoid(x, y, z, heart.ra)] = ATRIA
    # the RV: an elliptic shell leaning on the septum, up to the outflow tract above the base
    rho = np.where(z <= 0.0, 1.0, np.sqrt(np.clip(1.0 - (z / np.float32(a.rv_length_mm)) ** 2, 0.0, 1.0)))
    rv_z = (z > -heart.rv_top_mm) & (z < a.rv_length_mm)
    ra_, rb_ = np.float32(a.rv_radial_mm) * rho, np.float32(a.rv_tangential_mm) * rho
    cos_rv, sin_rv = np.float32(math.cos(a.rv_angle_rad)), np.float32(math.sin(a.rv_angle_rad))
    par = dx * cos_rv + dy * sin_rv - (np.maximum(mean_epi, np.float32(a.epi.radius_mm * 0.6)) + 0.25 * ra_)
    perp = -dx * sin_rv + dy * cos_rv
    w = np.float32(heart.rv_wall_mm)
    ok = rv_z & (ra_ > 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        outer = (par / (ra_ + w)) ** 2 + (perp / (rb_ + w)) ** 2 < 1.0
        inner = (par / ra_) ** 2 + (perp / rb_) ** 2 < 1.0
    out[ok & outer] = RV_WALL
    out[ok & inner] = RV_BLOOD
    out[_in_vessel(x, y, z, heart.aorta) | _in_vessel(x, y, z, heart.pulmonary)] = GREAT_VESSELS


def _paint_cavity_muscle(
    a: LVAnatomy,
    out: np.ndarray,
    cavity: np.ndarray,
    z: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    r: np.ndarray,
    theta: np.ndarray,
    endo: np.ndarray,
    texture_phase: float,
) -> None:
    """Trabeculae in the endocardial band (more towards the apex) and the papillary muscles, into ``out``."""
    if a.trabeculation > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            band = cavity & (r > 0.82 * endo)
        apical = 0.6 + 0.8 * np.clip(z / max(a.endo_apex_z_mm, 1.0), 0.0, 1.0)
        pattern = 0.5 + 0.5 * np.cos(17.0 * theta + 2.0 * np.sin(5.0 * theta + texture_phase))
        out[band & (pattern > 1.0 - 0.55 * a.trabeculation * apical)] = LV_PAPILLARY
    for p in a.papillaries:
        within = cavity & (z > p.z_start_mm) & (z < p.z_end_mm)
        if not within.any():
            continue
        zz = z[within]
        taper = np.sin(np.pi * (zz - p.z_start_mm) / (p.z_end_mm - p.z_start_mm)) ** 0.4
        pr = p.radial_fraction * profile_mm(a.endo, a.centre_z_mm, zz)
        px, py = pr * math.cos(p.angle_rad), pr * math.sin(p.angle_rad)
        d = np.hypot(dx[within] - px, dy[within] - py)
        hit = np.zeros(out.shape, dtype=bool)
        hit[within] = d < p.radius_mm * taper
        out[hit] = LV_PAPILLARY


def _lv_box(
    heart: Heart, plan: StackPlan, k: int, rows: int, cols: int, pixel_mm: float
) -> tuple[int, int, int, int]:
    """The acquisition pixels (row0, col0, row1, col1) of slice ``k`` within reach of the LV on any plane of
    the slab (empty when the slab misses the LV's heights), searched on every 4th pixel."""
    a = heart.anatomy
    step = 4
    reach = a.epi.radius_mm * (1.0 + sum(abs(h) for h in a.epi.harmonic_amps) * 1.6) + 5.0 + step * pixel_mm
    half_t = 0.5 * plan.slice_thickness_mm
    r_at = np.arange(0, rows + step - 1, step).clip(max=rows - 1)
    c_at = np.arange(0, cols + step - 1, step).clip(max=cols - 1)
    xs = (c_at.astype(np.float32) - (cols - 1) / 2.0) * np.float32(pixel_mm)
    ys = (r_at.astype(np.float32) - (rows - 1) / 2.0) * np.float32(pixel_mm)
    near = np.zeros((len(r_at), len(c_at)), dtype=bool)
    for through in (-half_t, 0.0, half_t):
        x, y, z = _plane_points(plan, k, xs[None, :], ys[:, None], through)
        near |= (_axis_distance(a, x, y, z) < reach) & (z > -2.0) & (z < a.epi_apex_z_mm + 2.0)
    if not near.any():
        return (0, 0, 0, 0)
    r_idx, c_idx = r_at[near.any(axis=1)], c_at[near.any(axis=0)]
    return (
        max(0, int(r_idx[0]) - 2),
        max(0, int(c_idx[0]) - 2),
        min(rows, int(r_idx[-1]) + 3),
        min(cols, int(c_idx[-1]) + 3),
    )


def rasterise_scene(
    scene: LabelScene,
    pixel_mm: float,
    *,
    supersample: int = 2,
    subplanes: int = 3,
    texture_phase: float = 0.0,
) -> LabelStack:
    """Labels of every slice of ``scene`` acquired with square pixels of ``pixel_mm``: the whole field of
    view at the slice centre, and the LV's box ``supersample`` times finer on ``subplanes`` planes across
    the slab (module docstring). The true myocardial and cavity areas come from the fine planes."""
    if not pixel_mm > 0:
        raise ValueError(f"pixel_mm must be > 0. Received: {pixel_mm!r}")
    if supersample < 1 or subplanes < 1:
        raise ValueError(f"supersample and subplanes must be >= 1. Received: {supersample!r}, {subplanes!r}")
    plan, heart = scene.plan, scene.heart
    rows = max(8, round(plan.fov_mm[0] / pixel_mm))
    cols = max(8, round(plan.fov_mm[1] / pixel_mm))
    tables = radius_tables(heart)
    a = heart.anatomy
    apex_mm = a.epi_apex_z_mm
    # everything of the heart lies within this distance of the LV axis (RV, atria, vessels, fat)
    reach = (
        a.epi.radius_mm * 1.3
        + 1.3 * a.rv_radial_mm
        + heart.rv_wall_mm
        + a.fat_thickness_mm
        + 10.0
        + max(
            heart.la.semi_axes_mm[0] + float(np.hypot(*heart.la.centre_mm[:2])),
            heart.ra.semi_axes_mm[0] + float(np.hypot(*heart.ra.centre_mm[:2])),
            heart.pulmonary.radius_mm + float(np.hypot(*heart.pulmonary.base_xy_mm)) + 50.0,
            heart.aorta.radius_mm + float(np.hypot(*heart.aorta.base_xy_mm)) + 40.0,
        )
    )
    lps = np.stack([np.asarray(c, dtype=np.float32) for c in scene.orientation], axis=0)  # rows: u, v, n
    xs = (np.arange(cols, dtype=np.float32) - (cols - 1) / 2.0) * np.float32(pixel_mm)
    ys = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0) * np.float32(pixel_mm)
    fine_mm = pixel_mm / supersample
    offsets = (
        np.arange(subplanes) + 0.5
    ) / subplanes * plan.slice_thickness_mm - 0.5 * plan.slice_thickness_mm
    slices, myo_area, cav_area = [], [], []
    for k in range(plan.n_slices):
        x, y, z = _plane_points(plan, k, xs[None, :], ys[:, None], 0.0)
        rel = np.stack([x, y, z], axis=-1) @ lps  # heart (x, y, z) along (u, v, n) -> LPS relative
        chest = background_labels(rel, scene.body)
        coarse = chest.copy()
        zone = (_axis_distance(heart.anatomy, x, y, z) < reach) & (z > -130.0) & (z < apex_mm + 10.0)
        coarse[zone] = heart_labels(
            heart, tables, x[zone], y[zone], z[zone], chest[zone], texture_phase=texture_phase
        )
        r0, c0, r1, c1 = _lv_box(heart, plan, k, rows, cols, pixel_mm)
        if r1 <= r0 or c1 <= c0:
            fine = np.zeros((subplanes, 0, 0), dtype=np.uint8)
            myo_area.append(0.0)
            cav_area.append(0.0)
        else:
            around = heart_labels(
                heart,
                tables,
                x[r0:r1, c0:c1],
                y[r0:r1, c0:c1],
                z[r0:r1, c0:c1],
                chest[r0:r1, c0:c1],
                parts="around",
            )
            base = np.repeat(np.repeat(around, supersample, axis=0), supersample, axis=1)
            fx = (
                np.arange(c0 * supersample, c1 * supersample, dtype=np.float32)
                - (cols * supersample - 1) / 2.0
            ) * np.float32(fine_mm)
            fy = (
                np.arange(r0 * supersample, r1 * supersample, dtype=np.float32)
                - (rows * supersample - 1) / 2.0
            ) * np.float32(fine_mm)
            planes = []
            for t in offsets:
                px, py, pz = _plane_points(plan, k, fx[None, :], fy[:, None], float(t))
                planes.append(
                    heart_labels(heart, tables, px, py, pz, base, parts="lv", texture_phase=texture_phase)
                )
            fine = np.stack(planes)
            target = TARGET_OF_LABEL[fine]
            area = fine_mm * fine_mm / subplanes
            myo_area.append(float(np.count_nonzero(target == contracts.MYOCARDIUM)) * area)
            cav_area.append(float(np.count_nonzero(target == contracts.LV_CAVITY)) * area)
        slices.append(SliceLabels(coarse=coarse, fine=fine, roi=(r0, c0, r1, c1)))
    return LabelStack(
        slices=tuple(slices),
        pixel_spacing_mm=float(pixel_mm),
        supersample=supersample,
        slice_spacing_mm=plan.slice_spacing_mm,
        slice_thickness_mm=plan.slice_thickness_mm,
        positions_mm=tuple(float(p) for p in plan.positions_mm),
        myocardium_area_mm2=tuple(myo_area),
        cavity_area_mm2=tuple(cav_area),
        shape=(rows, cols),
    )
