"""Close the myocardial ring where a per-slice segmentation lost a short stretch of wall; cut what is fused
to it.

Why: in short axis the LV myocardium encloses the cavity on every slice the experts contour (at the base they
close it across the outflow tract). A per-slice model loses a stretch of a thin, low-contrast wall now and
then (against the lung, a thin septum against a bright RV): the cavity then runs into the background, the
mass misses that stretch and the ring check of QC (``qc.label_qc_flags``) fails a slice that is otherwise
right. Something fused to the ring's outside (a vessel, part of the RV) adds its mass. Around the LV's centre,
each ray's cavity radius and outer radius (cavity and myocardium) are read off the labels; rays with no
proper wall beyond the cavity, or whose outer radius jumps far beyond the neighbouring rays', get both radii
interpolated from the nearest good rays, and only those rays' pixels are repainted. A slice where more than
``max_gap_fraction`` of the rays are bad is left alone: that is no short gap, and QC should see it.
"""

from __future__ import annotations

import math

import numpy as np

from lvmass.core import contracts

RAYS = 120
STEP_PX = 0.25  # samples along a ray
MIN_WALL_PX = 1.0  # a ray has a wall when the LV reaches at least this far beyond the cavity


def _ray_radii(labels: np.ndarray, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per ray (angles ``2 pi j / RAYS`` from +x towards +y), the outermost cavity sample's radius and the
    outermost LV sample's, sampling the labels (nearest) every ``STEP_PX`` along the ray."""
    from scipy import ndimage

    theta = 2 * math.pi * np.arange(RAYS) / RAYS
    steps = np.arange(0.0, float(np.hypot(*labels.shape)), STEP_PX)
    rows = centre[0] + steps[None, :] * np.sin(theta)[:, None]
    cols = centre[1] + steps[None, :] * np.cos(theta)[:, None]
    sampled = ndimage.map_coordinates(labels, [rows.ravel(), cols.ravel()], order=0, mode="constant",
                                      cval=contracts.BACKGROUND).reshape(rows.shape)
    radii = np.broadcast_to(steps, sampled.shape)
    cavity = np.where(sampled == contracts.LV_CAVITY, radii, 0.0).max(axis=1)
    outer = np.where(sampled != contracts.BACKGROUND, radii, 0.0).max(axis=1)
    return cavity, outer


def _interpolate_circular(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``values`` with the invalid entries replaced by linear interpolation between the nearest valid ones
    around the circle."""
    index = np.flatnonzero(valid)
    n = values.size
    extended = np.concatenate([index - n, index, index + n])
    return np.interp(np.arange(n), extended, np.tile(values[index], 3))


def _running_median(values: np.ndarray, half_width: int) -> np.ndarray:
    """The median of each ray's neighbourhood (``half_width`` rays each side) around the circle."""
    n = values.size
    index = (np.arange(n)[:, None] + np.arange(-half_width, half_width + 1)[None, :]) % n
    return np.median(values[index], axis=1)


def _bad_rays(r_cavity: np.ndarray, r_outer: np.ndarray) -> np.ndarray | None:
    """Rays without a proper wall (none, or under half the slice's typical wall: they graze a gap's edge)
    or with something fused to the ring (the outer radius far beyond the neighbouring rays'); None when the
    slice has no wall at all."""
    wall = r_outer - r_cavity
    solid = wall[(wall >= MIN_WALL_PX) & (r_cavity > 0)]
    if solid.size == 0:
        return None
    thin = (wall < max(MIN_WALL_PX, 0.5 * float(np.median(solid)))) | (r_cavity <= 0)
    # over half the circle: a fused blob up to a third of the rays wide stays a minority of the window
    usual = _running_median(r_outer, RAYS // 4)
    fused = r_outer > usual + np.maximum(3.0, 0.25 * usual)
    return thin | fused


def close_ring(labels: np.ndarray, *, max_gap_fraction: float = 0.35) -> np.ndarray:
    """One slice's labels ``(rows, cols)`` with short gaps in the myocardial ring closed and what is fused to
    its outside cut off; a new array."""
    out = np.array(labels, copy=True)
    cavity = out == contracts.LV_CAVITY
    if cavity.sum() < 20 or not (out == contracts.MYOCARDIUM).any():
        return out
    # the LV's centre, refined once from the fitted outline: neither a stretch of wall taken for cavity nor
    # a blob fused to the ring moves it much
    lv = np.argwhere(out != contracts.BACKGROUND)
    centre = (float(lv[:, 0].mean()), float(lv[:, 1].mean()))
    for _ in range(2):
        r_cavity, r_outer = _ray_radii(out, centre)
        bad = _bad_rays(r_cavity, r_outer)
        if bad is None or bad.mean() > max_gap_fraction or (~bad).sum() < 3:
            return out
        outer_fit = _interpolate_circular(r_outer, ~bad)
        theta = 2 * math.pi * np.arange(RAYS) / RAYS
        centre = (centre[0] + float(np.mean(outer_fit * np.sin(theta))),
                  centre[1] + float(np.mean(outer_fit * np.cos(theta))))
    r_cavity, r_outer = _ray_radii(out, centre)
    bad = _bad_rays(r_cavity, r_outer)
    if bad is None or not bad.any() or bad.mean() > max_gap_fraction or (~bad).sum() < 3:
        return out
    cavity_fit = _interpolate_circular(r_cavity, ~bad)
    outer_fit = _interpolate_circular(r_outer, ~bad)
    rows, cols = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    dy, dx = rows - centre[0], cols - centre[1]
    radius = np.hypot(dy, dx)
    position = (np.arctan2(dy, dx) % (2 * math.pi)) / (2 * math.pi) * RAYS  # in rays, continuous
    nearest = np.rint(position).astype(np.int64) % RAYS
    cavity_here = np.interp(position, np.arange(RAYS + 1), np.append(cavity_fit, cavity_fit[0]))
    outer_here = np.interp(position, np.arange(RAYS + 1), np.append(outer_fit, outer_fit[0]))
    # as far as the LV reaches on this ray or its neighbours (a pixel lies between rays)
    widest = np.maximum(np.maximum(r_outer, np.roll(r_outer, 1)), np.roll(r_outer, -1))
    reach = np.maximum(outer_here, widest[nearest]) + 1.5
    on_bad = bad[nearest] & (radius <= reach)
    repaint = np.where(
        radius <= cavity_here, contracts.LV_CAVITY,
        np.where(radius <= outer_here, contracts.MYOCARDIUM, contracts.BACKGROUND))
    out[on_bad] = repaint[on_bad].astype(out.dtype)
    return out


def close_rings(labels: np.ndarray, *, max_gap_fraction: float = 0.35) -> np.ndarray:
    """:func:`close_ring` on every slice of ``(rows, cols, slices)`` labels; a new array."""
    arr = np.asarray(labels)
    slices = [close_ring(arr[:, :, k], max_gap_fraction=max_gap_fraction) for k in range(arr.shape[2])]
    return np.stack(slices, axis=-1).astype(arr.dtype)
