"""Siemens InlineVF contours as the scanner stores them: the 1-pixel outline of the endocardium and the
epicardium, with the systematic error that makes raw InlineVF mass run high, random jitter, and gross
failures in a few percent of participants.

Systematic error (per participant): the epicardium is drawn ``epi_offset_mm`` outside the true surface
and the endocardium ``endo_offset_mm`` inside the cavity (taking papillary muscles and trabeculae into
the myocardium). With ml4h's outline-to-label morphology counting both 1-pixel outlines as myocardium,
raw InlineVF mass comes out ~1.7x the true mass, like the paper (raw 155 g vs 90 g manual).

Gross failures (``FAILURE_KINDS``): ``below_apex`` (a ring contoured on a slice past the apex),
``outflow_tract`` (the LV outflow tract taken into the most basal contours, and the atrium contoured on a
slice above the base), ``mistrace`` (one or two mid slices traced around the septum and RV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lvmass.core.contracts import MYOCARDIAL_DENSITY_G_PER_ML
from lvmass.synth.anatomy import LVAnatomy, contraction, ed_height_mm, profile_mm, radii_mm

FAILURE_KINDS = ("below_apex", "outflow_tract", "mistrace")
MIN_CONTOUR_RADIUS_MM = 5.0  # InlineVF draws nothing where the epicardium is smaller than this


@dataclass(frozen=True)
class InlineVFParams:
    """One participant's InlineVF behaviour."""

    epi_offset_mm: float
    endo_offset_mm: float
    jitter_mm: float
    failure: str  # "" or one of FAILURE_KINDS
    failure_slices: tuple[int, ...]
    failure_shift_mm: float


def draw_inlinevf(
    rng: np.random.Generator,
    *,
    failure_rate: float,
    epi_offset_mm: float,
    endo_offset_mm: float,
    offset_sd_mm: float,
    jitter_mm: float,
) -> InlineVFParams:
    """Offsets vary around the configured means; a failure kind is drawn with probability ``failure_rate``
    (its slices are chosen later, once the slices are known). The draws do not depend on ``failure_rate``,
    so the same participant with and without a failure has the same offsets."""
    failing = rng.random() < failure_rate
    kind = FAILURE_KINDS[int(rng.integers(len(FAILURE_KINDS)))]
    failure = kind if failing else ""
    return InlineVFParams(
        epi_offset_mm=max(0.0, float(rng.normal(epi_offset_mm, offset_sd_mm))),
        endo_offset_mm=max(0.0, float(rng.normal(endo_offset_mm, offset_sd_mm))),
        jitter_mm=jitter_mm,
        failure=failure,
        failure_slices=(),
        failure_shift_mm=float(rng.uniform(8.0, 13.0)),
    )


def contoured(anatomy: LVAnatomy, slice_z_mm: float, phase: int) -> bool:
    """Whether InlineVF finds an LV in a slice's centre plane at a phase."""
    _, lam = contraction(phase, anatomy)
    z_ed = ed_height_mm(anatomy, slice_z_mm, lam)
    return z_ed >= 0.0 and float(profile_mm(anatomy.epi, anatomy.centre_z_mm, z_ed)) > MIN_CONTOUR_RADIUS_MM


def assign_failure_slices(
    params: InlineVFParams, rng: np.random.Generator, contoured_slices: list[int], n_slices: int
) -> InlineVFParams:
    """Choose the slices a failure affects; a failure that cannot happen here becomes a mistrace."""
    failure, slices = params.failure, ()
    if not failure or not contoured_slices:
        return InlineVFParams(**{**params.__dict__, "failure": "" if not contoured_slices else failure})
    last, first = max(contoured_slices), min(contoured_slices)
    if failure == "below_apex":
        slices = (last + 1,) if last + 1 < n_slices else ()
    elif failure == "outflow_tract":
        slices = (first,) + ((first - 1,) if first >= 1 else ())
    if failure == "mistrace" or not slices:
        failure = "mistrace"
        mids = contoured_slices[1:-1] or contoured_slices
        count = min(len(mids), int(rng.integers(1, 3)))
        slices = tuple(sorted(int(k) for k in rng.choice(mids, size=count, replace=False)))
    return InlineVFParams(**{**params.__dict__, "failure": failure, "failure_slices": slices})


def _jitter(rng: np.random.Generator, theta: np.ndarray, amplitude_mm: float) -> np.ndarray:
    """Smooth random radial error: low angular harmonics with the given RMS amplitude."""
    coef = rng.standard_normal((4, 2)) * (amplitude_mm / 2.0)
    out = np.zeros_like(theta)
    for n in range(1, 5):
        out += coef[n - 1, 0] * np.cos(n * theta) + coef[n - 1, 1] * np.sin(n * theta)
    return out


def rasterise(curve_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 1-pixel outline (bool) through densely sampled (row, col) points of a closed curve."""
    out = np.zeros(shape, bool)
    rc = np.rint(curve_rc).astype(np.int64)
    keep = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
    out[rc[keep, 0], rc[keep, 1]] = True
    return out


def _curve(
    centre_px: tuple[float, float], spacing: tuple[float, float], theta: np.ndarray, radius_mm: np.ndarray
) -> np.ndarray:
    return np.stack(
        [
            centre_px[0] + radius_mm * np.sin(theta) / spacing[0],
            centre_px[1] + radius_mm * np.cos(theta) / spacing[1],
        ],
        axis=1,
    )


def slice_curves(
    anatomy: LVAnatomy,
    params: InlineVFParams,
    *,
    slice_index: int,
    slice_z_mm: float,
    phase: int,
    centre_px: tuple[float, float],
    spacing: tuple[float, float],
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """The (row, col) point lists of the curves InlineVF draws on one slice and phase (0, 1 or 2 curves)."""
    failing = params.failure and slice_index in params.failure_slices
    s, lam = contraction(phase, anatomy)
    z_ed = ed_height_mm(anatomy, slice_z_mm, lam)
    r_max = anatomy.epi.radius_mm + params.epi_offset_mm + 20.0
    n = max(96, math.ceil(2.0 * math.pi * r_max / (0.3 * min(spacing))))
    theta = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    if failing and params.failure == "below_apex":
        ring = 11.0 + 2.0 * np.cos(2 * theta)
        return [_curve(centre_px, spacing, theta, ring), _curve(centre_px, spacing, theta, ring - 6.0)]
    if z_ed < 0.0 or not contoured(anatomy, slice_z_mm, phase):
        if failing and params.failure == "outflow_tract":  # the atrium above the base contoured as LV
            bulge = 12.0 * np.exp(
                -((((theta - anatomy.rv_angle_rad - 0.7 + math.pi) % (2 * math.pi) - math.pi) / 0.5) ** 2)
            )
            la = anatomy.la_radius_mm
            return [
                _curve(centre_px, spacing, theta, la + 4.0 + bulge),
                _curve(centre_px, spacing, theta, np.maximum(la - 3.0 + 0.6 * bulge, 3.0)),
            ]
        return []
    endo, epi = radii_mm(anatomy, theta, z_ed)
    endo_t = s * endo
    epi_t = np.sqrt(endo_t**2 + (epi**2 - endo**2) / lam)
    epi_d = epi_t + params.epi_offset_mm + _jitter(rng, theta, params.jitter_mm)
    endo_d = endo_t - params.endo_offset_mm + _jitter(rng, theta, params.jitter_mm)
    centre = centre_px
    if failing and params.failure == "outflow_tract":
        bulge = 14.0 * np.exp(
            -((((theta - anatomy.rv_angle_rad - 0.7 + math.pi) % (2 * math.pi) - math.pi) / 0.5) ** 2)
        )
        epi_d, endo_d = epi_d + bulge, endo_d + 0.7 * bulge
    elif failing and params.failure == "mistrace":  # follows the septum into the RV
        shift = params.failure_shift_mm
        centre = (
            centre_px[0] + shift * math.sin(anatomy.rv_angle_rad) / spacing[0],
            centre_px[1] + shift * math.cos(anatomy.rv_angle_rad) / spacing[1],
        )
        epi_d, endo_d = epi_d * 1.2, endo_d * 0.65
    min_gap_mm = 3.5 * max(spacing)  # rounded 1-pixel curves never touch
    curves = [_curve(centre, spacing, theta, np.maximum(epi_d, 3.0))]
    if float(endo_d.min()) > 2.0 * max(spacing):
        curves.append(_curve(centre, spacing, theta, np.minimum(endo_d, epi_d - min_gap_mm)))
    return curves


def outline_labels_myocardium(curves: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Myocardium of ml4h's outline-to-label morphology, computed by filling: everything inside the
    outer outline except the strict interior of the inner one (both 1-pixel outlines count as
    myocardium). Equivalent to ml4h's two closings for well-separated curves."""
    out = np.zeros(shape, bool)
    if not curves:
        return out
    pts = np.rint(np.concatenate(curves)).astype(int)
    r0, c0 = np.clip(pts.min(axis=0) - 1, 0, None)
    r1, c1 = np.minimum(pts.max(axis=0) + 2, shape)
    if r1 <= r0 or c1 <= c0:
        return out
    sub = (r1 - r0, c1 - c0)  # fill inside the curves' bounding box (+1 pixel) only
    local = [c - np.array([r0, c0]) for c in curves]
    mask = ndimage.binary_fill_holes(rasterise(local[0], sub))
    if len(local) > 1:
        inner_line = rasterise(local[1], sub)
        mask &= ~(ndimage.binary_fill_holes(inner_line) & ~inner_line)
    out[r0:r1, c0:c1] = mask
    return out


def raw_mass_g(
    myocardium_masks: list[np.ndarray], pixel_spacing_mm: tuple[float, float], slice_spacing_mm: float
) -> float:
    """The paper's rule: myocardium voxels x pixel area x slice spacing x 1.05 g/mL."""
    voxels = sum(int(m.sum()) for m in myocardium_masks)
    return (
        voxels
        * pixel_spacing_mm[0]
        * pixel_spacing_mm[1]
        * slice_spacing_mm
        / 1000.0
        * MYOCARDIAL_DENSITY_G_PER_ML
    )
