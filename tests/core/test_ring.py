"""lvmass.core.ring: short gaps in the myocardial ring are closed from the neighbouring rays; long ones are
left for QC to see."""

from __future__ import annotations

import numpy as np

from lvmass.core import contracts
from lvmass.core.ring import close_ring, close_rings

CENTRE = (50, 50)


def ring(inner: float = 15.0, outer: float = 21.0, shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    labels = np.where(r < inner, contracts.LV_CAVITY, np.where(r < outer, contracts.MYOCARDIUM, 0))
    return labels.astype(np.uint8)


def angle_sector(low_deg: float, high_deg: float, shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    angle = np.degrees(np.arctan2(yy - CENTRE[0], xx - CENTRE[1]))
    return (angle >= low_deg) & (angle < high_deg)


def assert_closed_like(closed: np.ndarray, whole: np.ndarray, gap: np.ndarray) -> None:
    """Closed as its neighbours are: the gap is wall again (its edge pixels aside: rays are sampled every
    3 degrees and 0.25 px), the myocardium's area is the whole ring's within 3%, and no cavity pixel
    touches the background (the ring check of QC holds)."""
    from scipy import ndimage

    assert (closed[gap] == contracts.MYOCARDIUM).mean() > 0.8
    myo, myo_whole = (closed == contracts.MYOCARDIUM).sum(), (whole == contracts.MYOCARDIUM).sum()
    assert abs(int(myo) - int(myo_whole)) <= 0.03 * myo_whole
    cavity = closed == contracts.LV_CAVITY
    assert not (ndimage.binary_dilation(cavity) & (closed == contracts.BACKGROUND)).any()


def test_a_gap_where_the_cavity_runs_out_is_closed_as_its_neighbours_are():
    """A 40-degree stretch of wall labelled cavity (the model took a thin wall for blood)."""
    whole = ring()
    broken = whole.copy()
    gap = angle_sector(10, 50) & (whole == contracts.MYOCARDIUM)
    broken[gap] = contracts.LV_CAVITY
    assert_closed_like(close_ring(broken), whole, gap)
    assert (broken[gap] == contracts.LV_CAVITY).all()  # the input is not changed


def test_a_gap_of_background_is_closed_too():
    whole = ring()
    broken = whole.copy()
    gap = angle_sector(-120, -90) & (whole == contracts.MYOCARDIUM)
    broken[gap] = contracts.BACKGROUND
    assert_closed_like(close_ring(broken), whole, gap)


def test_a_wall_mostly_missing_is_left_for_qc():
    whole = ring()
    broken = whole.copy()
    broken[angle_sector(-180, 30) & (whole == contracts.MYOCARDIUM)] = contracts.BACKGROUND  # 210 degrees
    np.testing.assert_array_equal(close_ring(broken), broken)


def test_slices_without_an_lv_and_a_whole_volume():
    empty = np.zeros((40, 40), np.uint8)
    np.testing.assert_array_equal(close_ring(empty), empty)
    volume = np.stack([ring(), np.zeros((100, 100), np.uint8)], axis=-1)
    np.testing.assert_array_equal(close_rings(volume), volume)


def test_a_blob_fused_to_the_ring_is_cut_off():
    """A vessel-sized blob touching the ring's outside (labelled cavity and myocardium, as a model may):
    removed, the ring kept."""
    whole = ring()
    fused = whole.copy()
    yy, xx = np.mgrid[0:100, 0:100]
    blob = np.hypot(yy - 50, xx - 80) < 9
    fused[blob & (whole == 0)] = contracts.MYOCARDIUM
    fused[np.hypot(yy - 50, xx - 82) < 5] = contracts.LV_CAVITY
    closed = close_ring(fused)
    assert not (closed[blob & (whole == 0)] != 0).any()
    myo, myo_whole = (closed == contracts.MYOCARDIUM).sum(), (whole == contracts.MYOCARDIUM).sum()
    assert abs(int(myo) - int(myo_whole)) <= 0.03 * myo_whole
