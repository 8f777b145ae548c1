"""lvmass.core.postprocess: the LV kept, what lies beside it cleared, the input unchanged."""

from __future__ import annotations

import numpy as np

from lvmass.core import contracts
from lvmass.core.postprocess import LV_WITH_CLOSED_RINGS, POSTPROCESSING, largest_lv_component
from lvmass.core.ring import close_rings


def ring(shape: tuple[int, int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    distance = np.hypot(rows - centre[0], cols - centre[1])
    labels = np.zeros(shape, np.uint8)
    labels[distance <= radius] = contracts.MYOCARDIUM
    labels[distance <= radius - 3] = contracts.LV_CAVITY
    return labels


def test_a_blob_beside_the_lv_is_cleared_and_the_input_kept():
    labels = ring((40, 40, 3), (15, 15), 8)
    labels[30:34, 30:34, 1] = contracts.MYOCARDIUM  # a blob 25 px away on one slice
    before = labels.copy()
    kept = largest_lv_component(labels, spacing_mm=(2.0, 2.0))
    np.testing.assert_array_equal(labels, before)
    assert not kept[30:34, 30:34, 1].any()
    np.testing.assert_array_equal(kept, ring((40, 40, 3), (15, 15), 8))


def test_empty_labels_stay_empty_and_the_card_names_it():
    empty = np.zeros((8, 8, 2), np.uint8)
    np.testing.assert_array_equal(largest_lv_component(empty), empty)
    assert POSTPROCESSING["largest_component"] is largest_lv_component


def test_closed_rings_keep_the_lv_alone_and_close_a_short_gap():
    labels = ring((48, 48, 2), (20, 20), 10)
    labels[40:45, 40:45, 0] = contracts.MYOCARDIUM  # a blob far from the LV
    labels[18:23, 27:31, 1] = contracts.LV_CAVITY  # a short stretch of wall lost: the cavity reaches out
    labels[18:23, 31:, 1] = contracts.BACKGROUND
    processed = POSTPROCESSING[LV_WITH_CLOSED_RINGS](labels, spacing_mm=(1.5, 1.5))
    assert not processed[40:45, 40:45, 0].any()
    np.testing.assert_array_equal(processed, close_rings(largest_lv_component(labels, spacing_mm=(1.5, 1.5))))

    def cavity_touching_background(slice_labels: np.ndarray) -> int:
        cavity = slice_labels == contracts.LV_CAVITY
        outside = np.pad(slice_labels == contracts.BACKGROUND, 1)
        near = outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:]
        return int((cavity & near).sum())

    assert cavity_touching_background(labels[:, :, 1]) > 0
    assert cavity_touching_background(processed[:, :, 1]) == 0  # the gap is closed
    area = (processed[:, :, 1] == contracts.MYOCARDIUM).sum()
    intact = ring((48, 48, 1), (20, 20), 10)[:, :, 0]
    assert abs(area - (intact == contracts.MYOCARDIUM).sum()) < 0.15 * area
