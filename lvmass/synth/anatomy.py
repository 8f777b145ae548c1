"""The left ventricle as a thick, irregular, truncated-ellipsoid shell, its contraction, and the exact
ground truth measured on it.

Heart coordinates (mm): ``z`` runs along the LV long axis from the base plane (``z = 0``, the mitral plane
at end-diastole) towards the apex; ``(x, y)`` are in-plane along the image's row and column directions
(DICOM ImageOrientationPatient (0020,0037)), so the short-axis slices are planes of constant ``z``.

Shape. Epicardium and endocardium are truncated prolate ellipsoids sharing a centre at ``z = centre_z``
(slightly above the base plane): in-plane radius ``r(z) = R sqrt(1 - ((z - centre_z)/L)^2)``, cut at the
base. Each cross-section is made irregular by a few angular harmonics, ``R(theta, z) = r(z) (1 + sum_n
a_n cos(n (theta - phi_n - twist z)))``, with independent harmonics for the two surfaces (wall thickness
varies around the ring). The endocardial apex sits ``apex_thickness`` short of the epicardial one.

Contraction. Phase ``t`` has an endocardial radial scale ``s(t)`` and a longitudinal scale ``lam(t)`` (the
apex is fixed, the base descends). A material cross-section at ED height ``z_ed`` lands at
``z = z_apex - (z_apex - z_ed) lam``; its endocardium shrinks to ``s R_endo`` and its epicardium becomes
``sqrt(s^2 R_endo^2 + (R_epi^2 - R_endo^2) / lam)``: every slab of myocardium keeps its volume, so the
myocardial volume is conserved exactly across the 50 phases.

Ground truth (exact definitions, used by ``truth.csv``):

* slice area ``A_k`` = the myocardial cross-sectional area (mm^2) averaged over the slice's 8 mm slab
  (``TRUTH_SUBPLANES`` planes, midpoint rule), each plane's area integrated over angle on
  ``THETA_SAMPLES`` samples; papillary muscles and trabeculae count as cavity (they lie inside the
  endocardial surface), as in UK Biobank manual contouring conventions;
* true myocardium volume (mL) = ``sum_k A_k x slice spacing (10 mm) / 1000``: what the paper's rule
  (voxels x pixel area x 10 mm) recovers from a perfect partial-volume segmentation;
* true LV mass (g) = volume x ``MYOCARDIAL_DENSITY_G_PER_ML`` (1.05 g/mL);
* true LV cavity volume (mL) = the same sum over the endocardial areas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lvmass.core.contracts import MYOCARDIAL_DENSITY_G_PER_ML

THETA_SAMPLES = 360
TRUTH_SUBPLANES = 8
SLICE_SPACING_MM = 10.0
SLICE_THICKNESS_MM = 8.0
N_PHASES = 50
MIN_WALL_MM = 1.5  # the endocardium is kept at least this far inside the epicardium

MAX_HARMONICS = 4  # the most angular harmonics a Surface has (build_anatomy's endocardium)


@dataclass(frozen=True)
class AngleGrid:
    """Fixed angles with cos(k theta), sin(k theta) for k = 1..MAX_HARMONICS precomputed, so harmonic
    sums on them are two small matrix products (``harmonic_factor``)."""

    theta: np.ndarray
    cos_k: np.ndarray  # (MAX_HARMONICS, len(theta))
    sin_k: np.ndarray

    @classmethod
    def of(cls, theta: np.ndarray) -> AngleGrid:
        k_theta = np.arange(1, MAX_HARMONICS + 1)[:, None] * np.asarray(theta, dtype=np.float64)[None, :]
        return cls(np.asarray(theta, dtype=np.float64), np.cos(k_theta), np.sin(k_theta))


_THETA = AngleGrid.of(np.linspace(0.0, 2.0 * math.pi, THETA_SAMPLES, endpoint=False))


@dataclass(frozen=True)
class Surface:
    """One truncated ellipsoid surface: equatorial radius, long semi-axis (both mm) and harmonics."""

    radius_mm: float
    length_mm: float
    harmonic_amps: tuple[float, ...]  # a_1..a_n
    harmonic_phases: tuple[float, ...]  # phi_1..phi_n (rad)
    harmonic_z_mod: float  # relative modulation of the amplitudes along z
    harmonic_z_period_mm: float


@dataclass(frozen=True)
class Papillary:
    """A papillary muscle: angle (rad), radial position as a fraction of the endocardial radius, radius
    (mm), and its extent along z (mm)."""

    angle_rad: float
    radial_fraction: float
    radius_mm: float
    z_start_mm: float
    z_end_mm: float


@dataclass(frozen=True)
class LVAnatomy:
    """A participant's LV (and the RV/atrium around it) in heart coordinates, at end-diastole."""

    epi: Surface
    endo: Surface
    centre_z_mm: float
    twist_rad_per_mm: float
    axis_drift_mm_per_mm: tuple[float, float]  # in-plane drift of the LV centre per mm of z (axis tilt)
    papillaries: tuple[Papillary, ...]
    trabeculation: float  # 0..1, strength of the trabecular texture in the endocardial band
    rv_angle_rad: float  # direction of the RV from the LV centre, in image (x=col, y=row) angles
    rv_radial_mm: float
    rv_tangential_mm: float
    rv_length_mm: float
    la_radius_mm: float
    fat_angle_rad: float
    fat_thickness_mm: float
    endo_scale_es: float  # s(t) at end-systole
    long_scale_es: float  # lam(t) at end-systole
    systole_fraction: float  # end-systole as a fraction of the RR interval

    @property
    def epi_apex_z_mm(self) -> float:
        return self.centre_z_mm + self.epi.length_mm

    @property
    def endo_apex_z_mm(self) -> float:
        return self.centre_z_mm + self.endo.length_mm


def contraction(phase: int, anatomy: LVAnatomy, n_phases: int = N_PHASES) -> tuple[float, float]:
    """(endocardial radial scale s, longitudinal scale lam) at a phase; both 1 at end-diastole (phase 0).

    A raised-cosine systole to ``systole_fraction``, rapid filling over a quarter cycle, diastasis and a
    small atrial kick before the next end-diastole.
    """
    f = (phase % n_phases) / n_phases
    t_es = anatomy.systole_fraction
    if f < t_es:
        c = 0.5 * (1.0 - math.cos(math.pi * f / t_es))
    elif f < t_es + 0.25:
        c = 0.5 * (1.0 + math.cos(math.pi * (f - t_es) / 0.25))
    elif f >= 0.82:
        c = 0.08 * math.sin(math.pi * (f - 0.82) / 0.18)
    else:
        c = 0.0
    return 1.0 - (1.0 - anatomy.endo_scale_es) * c, 1.0 - (1.0 - anatomy.long_scale_es) * c


def profile_mm(surface: Surface, centre_z_mm: float, z_mm: np.ndarray | float) -> np.ndarray:
    """Mean in-plane radius r(z) of a surface (0 outside it: above the base plane or past the apex)."""
    z = np.asarray(z_mm, dtype=np.float64)
    q = 1.0 - ((z - centre_z_mm) / surface.length_mm) ** 2
    r = surface.radius_mm * np.sqrt(np.clip(q, 0.0, None))
    return np.where(z < 0.0, 0.0, r)


def _profile_at(surface: Surface, centre_z_mm: float, z_mm: float) -> float:
    """``profile_mm`` at one height (scalar arithmetic: called for every slab plane)."""
    if z_mm < 0.0:
        return 0.0
    q = 1.0 - ((z_mm - centre_z_mm) / surface.length_mm) ** 2
    return surface.radius_mm * math.sqrt(q) if q > 0.0 else 0.0


def harmonic_factor(
    surface: Surface, theta: np.ndarray | AngleGrid, z_mm: float, twist_rad_per_mm: float
) -> np.ndarray:
    """1 + sum_n a_n(z) cos(n (theta - phi_n - twist z)): the irregular cross-section's relative radius.

    On an :class:`AngleGrid` the sum is expanded as cos(n theta) cos(n psi) + sin(n theta) sin(n psi)
    over the precomputed multiples (the same values, much faster for the fixed truth and label grids).
    """
    mod = 1.0 + surface.harmonic_z_mod * math.sin(2.0 * math.pi * z_mm / surface.harmonic_z_period_mm)
    if isinstance(theta, AngleGrid):
        m = len(surface.harmonic_amps)
        k = np.arange(1, m + 1)
        psi = k * (np.asarray(surface.harmonic_phases) + twist_rad_per_mm * z_mm)
        amps = np.asarray(surface.harmonic_amps) * mod
        return 1.0 + (amps * np.cos(psi)) @ theta.cos_k[:m] + (amps * np.sin(psi)) @ theta.sin_k[:m]
    out = np.ones_like(theta, dtype=np.float64)
    for n, (a, phi) in enumerate(zip(surface.harmonic_amps, surface.harmonic_phases, strict=True), start=1):
        out = out + (a * mod) * np.cos(n * (theta - phi - twist_rad_per_mm * z_mm))
    return out


def radii_mm(
    anatomy: LVAnatomy, theta: np.ndarray | AngleGrid, z_ed_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """(endocardial, epicardial) radius at ED height z_ed for each angle; the endocardium is kept at least
    MIN_WALL_MM inside the epicardium, and is 0 past its apex (the apical cap is solid myocardium)."""
    r_epi = _profile_at(anatomy.epi, anatomy.centre_z_mm, z_ed_mm)
    r_endo = _profile_at(anatomy.endo, anatomy.centre_z_mm, z_ed_mm)
    epi = r_epi * harmonic_factor(anatomy.epi, theta, z_ed_mm, anatomy.twist_rad_per_mm)
    endo = r_endo * harmonic_factor(anatomy.endo, theta, z_ed_mm, anatomy.twist_rad_per_mm)
    endo = np.maximum(np.minimum(endo, epi - MIN_WALL_MM), 0.0)
    return endo, epi


def ed_height_mm(anatomy: LVAnatomy, z_mm: float, long_scale: float) -> float:
    """The ED height of the material that sits at height z when the LV is shortened by ``long_scale``."""
    apex = anatomy.epi_apex_z_mm
    return apex - (apex - z_mm) / long_scale


def _harmonic_factors(
    surface: Surface, grid: AngleGrid, z_mm: np.ndarray, twist_rad_per_mm: float
) -> np.ndarray:
    """``harmonic_factor`` on a grid for many heights at once: (len(z_mm), len(grid.theta))."""
    m = len(surface.harmonic_amps)
    z = np.asarray(z_mm, dtype=np.float64)[:, None]
    mod = 1.0 + surface.harmonic_z_mod * np.sin(2.0 * math.pi * z / surface.harmonic_z_period_mm)
    psi = np.arange(1, m + 1) * (np.asarray(surface.harmonic_phases) + twist_rad_per_mm * z)
    amps = np.asarray(surface.harmonic_amps) * mod
    return 1.0 + (amps * np.cos(psi)) @ grid.cos_k[:m] + (amps * np.sin(psi)) @ grid.sin_k[:m]


def planes_areas_mm2(anatomy: LVAnatomy, z_mm: np.ndarray, phase: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(myocardium, cavity) cross-sectional areas in mm^2 of the planes at heights z and a phase: each
    plane's ``radii_mm`` at ED height on ``THETA_SAMPLES`` angles, contracted, integrated over angle
    (0.5 x integral of R^2 dtheta). All planes at once."""
    s, lam = contraction(phase, anatomy)
    apex = anatomy.epi_apex_z_mm
    z_ed = apex - (apex - np.asarray(z_mm, dtype=np.float64)) / lam  # ed_height_mm for every plane
    inside = z_ed >= 0.0
    myo, cav = np.zeros(z_ed.shape), np.zeros(z_ed.shape)
    if not inside.any():
        return myo, cav
    z = z_ed[inside]
    twist = anatomy.twist_rad_per_mm
    r_epi = profile_mm(anatomy.epi, anatomy.centre_z_mm, z)[:, None]
    r_endo = profile_mm(anatomy.endo, anatomy.centre_z_mm, z)[:, None]
    epi = r_epi * _harmonic_factors(anatomy.epi, _THETA, z, twist)
    endo = r_endo * _harmonic_factors(anatomy.endo, _THETA, z, twist)
    endo = np.maximum(np.minimum(endo, epi - MIN_WALL_MM), 0.0)  # as radii_mm
    endo_t2 = (s * endo) ** 2
    epi_t2 = endo_t2 + (epi**2 - endo**2) / lam
    cav[inside] = math.pi * np.mean(endo_t2, axis=1)
    myo[inside] = math.pi * np.mean(epi_t2, axis=1) - cav[inside]
    return myo, cav


def plane_areas_mm2(anatomy: LVAnatomy, z_mm: float, phase: int = 0) -> tuple[float, float]:
    """(myocardium, cavity) cross-sectional area in mm^2 of the plane at height z and a phase."""
    myo, cav = planes_areas_mm2(anatomy, np.array([z_mm]), phase)
    return float(myo[0]), float(cav[0])


def slab_offsets_mm(n: int, thickness_mm: float = SLICE_THICKNESS_MM) -> np.ndarray:
    """Midpoint-rule sub-plane offsets across a slab of the given thickness."""
    return (np.arange(n) + 0.5) / n * thickness_mm - 0.5 * thickness_mm


def slice_areas_mm2(
    anatomy: LVAnatomy, slice_z_mm: np.ndarray, phase: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Slab-averaged (myocardium, cavity) areas A_k (mm^2) of each slice (the truth definition)."""
    z = np.asarray(slice_z_mm, dtype=np.float64)[:, None] + slab_offsets_mm(TRUTH_SUBPLANES)[None, :]
    myo, cav = planes_areas_mm2(anatomy, z.ravel(), phase)
    return myo.reshape(z.shape).mean(axis=1), cav.reshape(z.shape).mean(axis=1)


@dataclass(frozen=True)
class TrueVolumes:
    """The exact ground truth of one participant (definitions in the module docstring)."""

    myocardium_area_mm2: tuple[float, ...]  # per slice, base to apex
    cavity_area_mm2: tuple[float, ...]
    myocardium_volume_ml: float
    lv_mass_g: float
    cavity_volume_ml: float


def true_volumes(
    anatomy: LVAnatomy, slice_z_mm: np.ndarray, slice_spacing_mm: float = SLICE_SPACING_MM, phase: int = 0
) -> TrueVolumes:
    """True myocardium volume, LV mass and cavity volume measured on the slices (end-diastole by default)."""
    myo, cav = slice_areas_mm2(anatomy, slice_z_mm, phase)
    volume_ml = float(myo.sum()) * slice_spacing_mm / 1000.0
    return TrueVolumes(
        myocardium_area_mm2=tuple(float(a) for a in myo),
        cavity_area_mm2=tuple(float(a) for a in cav),
        myocardium_volume_ml=volume_ml,
        lv_mass_g=volume_ml * MYOCARDIAL_DENSITY_G_PER_ML,
        cavity_volume_ml=float(cav.sum()) * slice_spacing_mm / 1000.0,
    )


def continuous_myocardium_volume_ml(anatomy: LVAnatomy, phase: int = 0, dz_mm: float = 0.25) -> float:
    """The myocardium's volume integrated continuously along z (conserved across phases)."""
    z = np.arange(-20.0, anatomy.epi_apex_z_mm + 5.0, dz_mm) + 0.5 * dz_mm
    return float(planes_areas_mm2(anatomy, z, phase)[0].sum()) * dz_mm / 1000.0


def _surface(
    rng: np.random.Generator,
    radius_mm: float,
    length_mm: float,
    amps_sd: tuple[float, ...],
    amps_mean: tuple[float, ...],
) -> Surface:
    amps = tuple(float(m + s * rng.standard_normal()) for m, s in zip(amps_mean, amps_sd, strict=True))
    return Surface(
        radius_mm=radius_mm,
        length_mm=length_mm,
        harmonic_amps=amps,
        harmonic_phases=tuple(float(p) for p in rng.uniform(0.0, 2.0 * math.pi, len(amps))),
        harmonic_z_mod=float(rng.uniform(0.1, 0.4)),
        harmonic_z_period_mm=float(rng.uniform(40.0, 90.0)),
    )


def _shell_volume_ml(
    endo_r: float, endo_l: float, thickness: float, centre_z: float, epi_f: float, endo_f: float
) -> float:
    """Continuous volume of the truncated shell (z >= 0) from the closed form of each ellipsoid cap."""

    def cap(r: float, length: float) -> float:  # integral over z in [0, c+L] of pi r^2 (1 - ((z-c)/L)^2)
        a, b = -centre_z / length, 1.0
        return math.pi * r * r * length * ((b - b**3 / 3.0) - (a - a**3 / 3.0))

    epi_r, epi_l = endo_r + thickness, endo_l + 0.6 * thickness
    return (cap(epi_r, epi_l) * epi_f - cap(endo_r, endo_l) * endo_f) / 1000.0


def build_anatomy(
    rng: np.random.Generator, *, target_mass_g: float, bsa_m2: float, rv_angle_rad: float
) -> LVAnatomy:
    """A random LV whose continuous myocardial volume matches ``target_mass_g`` (the sliced true mass then
    differs by the slice sampling only): cavity size from body size, wall thickness solved for the mass."""
    endo_r = 25.5 * math.sqrt(bsa_m2 / 1.9) * math.exp(0.07 * rng.standard_normal())
    endo_l = endo_r * float(np.clip(rng.normal(3.3, 0.2), 2.8, 3.9))
    centre_z = -float(rng.uniform(0.0, 0.12)) * endo_l
    epi_proto = _surface(rng, 1.0, 1.0, (0.0, 0.015, 0.015), (0.0, 0.045, 0.0))
    # the endocardium follows the epicardium's shape (aligned ellipticity) with its own small irregularity,
    # so the wall thickness varies around the ring by about +/-25%, never collapsing
    _a1, a2, a3 = epi_proto.harmonic_amps
    _p1, p2, p3 = epi_proto.harmonic_phases
    endo_s = Surface(
        radius_mm=endo_r,
        length_mm=endo_l,
        harmonic_amps=(
            float(rng.normal(0.0, 0.02)),
            a2 * float(rng.uniform(0.9, 1.3)),
            a3 * float(rng.uniform(0.8, 1.2)),
            float(rng.normal(0.0, 0.01)),
        ),
        harmonic_phases=(
            float(rng.uniform(0, 2 * math.pi)),
            p2 + float(rng.normal(0, 0.25)),
            p3 + float(rng.normal(0, 0.25)),
            float(rng.uniform(0, 2 * math.pi)),
        ),
        harmonic_z_mod=epi_proto.harmonic_z_mod,
        harmonic_z_period_mm=epi_proto.harmonic_z_period_mm,
    )
    epi_f = 1.0 + 0.5 * sum(a * a for a in epi_proto.harmonic_amps)
    endo_f = 1.0 + 0.5 * sum(a * a for a in endo_s.harmonic_amps)
    target_ml = target_mass_g / MYOCARDIAL_DENSITY_G_PER_ML
    lo, hi = 1.0, 30.0
    for _ in range(50):  # the shell volume grows monotonically with the wall thickness
        mid = 0.5 * (lo + hi)
        if _shell_volume_ml(endo_r, endo_l, mid, centre_z, epi_f, endo_f) < target_ml:
            lo = mid
        else:
            hi = mid
    thickness = 0.5 * (lo + hi)
    epi = Surface(
        endo_r + thickness,
        endo_l + 0.6 * thickness,
        epi_proto.harmonic_amps,
        epi_proto.harmonic_phases,
        epi_proto.harmonic_z_mod,
        epi_proto.harmonic_z_period_mm,
    )
    opposite = rv_angle_rad + math.pi
    paps = tuple(
        Papillary(
            angle_rad=opposite + sign * float(rng.uniform(0.6, 1.0)),
            radial_fraction=float(rng.uniform(0.55, 0.7)),
            radius_mm=float(rng.uniform(3.5, 5.5)),
            z_start_mm=float(rng.uniform(0.2, 0.3)) * endo_l,
            z_end_mm=float(rng.uniform(0.6, 0.75)) * endo_l,
        )
        for sign in (-1.0, 1.0)
    )
    return LVAnatomy(
        epi=epi,
        endo=endo_s,
        centre_z_mm=centre_z,
        twist_rad_per_mm=float(rng.normal(0.0, 0.004)),
        axis_drift_mm_per_mm=(float(rng.normal(0.0, 0.06)), float(rng.normal(0.0, 0.06))),
        papillaries=paps,
        trabeculation=float(rng.uniform(0.25, 0.6)),
        rv_angle_rad=rv_angle_rad,
        rv_radial_mm=float(rng.uniform(0.45, 0.65)) * (endo_r + thickness),
        rv_tangential_mm=float(rng.uniform(1.2, 1.5)) * (endo_r + thickness),
        rv_length_mm=float(rng.uniform(0.7, 0.85)) * (centre_z + endo_l + 0.6 * thickness),
        la_radius_mm=float(rng.uniform(0.75, 0.95)) * endo_r,
        fat_angle_rad=float(rng.uniform(0, 2 * math.pi)),
        fat_thickness_mm=float(rng.uniform(2.0, 7.0)),
        endo_scale_es=float(np.clip(rng.normal(0.68, 0.04), 0.55, 0.8)),
        long_scale_es=float(np.clip(rng.normal(0.86, 0.03), 0.78, 0.93)),
        systole_fraction=float(rng.uniform(0.32, 0.4)),
    )
