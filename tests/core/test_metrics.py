"""lvmass.core.metrics: Dice (NaN for two empty masks) and mass agreement, against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvmass.core.contracts import BACKGROUND, LV_CAVITY, MYOCARDIUM
from lvmass.core.metrics import dice_by_label, label_dice, mask_dice, mass_agreement


class TestMaskDice:
    def test_hand_worked_masks(self):
        a = np.array([[1, 1], [1, 0]], dtype=bool)  # 3 voxels
        b = np.array([[1, 1], [0, 0]], dtype=bool)  # 2 voxels, 2 shared: 2 x 2 / 5
        assert mask_dice(a, b) == pytest.approx(0.8)
        assert mask_dice(a, a) == 1.0
        assert mask_dice(a, ~a) == 0.0

    def test_two_empty_masks_are_nan_not_a_perfect_score(self):
        assert math.isnan(mask_dice(np.zeros(4, bool), np.zeros(4, bool)))
        assert mask_dice(np.zeros(4, bool), np.ones(4, bool)) == 0.0  # one side has it: 0

    def test_shapes_must_agree(self):
        with pytest.raises(ValueError, match=r"masks must have the same shape. Received \(2,\) and \(3,\)"):
            mask_dice(np.zeros(2, bool), np.zeros(3, bool))

    def test_inputs_are_not_changed(self):
        a = np.array([0, 1, 2])
        mask_dice(a, a)
        np.testing.assert_array_equal(a, [0, 1, 2])


class TestDiceOfLabels:
    def test_by_label_uses_the_label_map(self):
        ref = np.zeros((4, 4, 2), dtype=np.uint8)
        ref[1:3, 1:3, 0] = LV_CAVITY  # 4 cavity voxels
        ref[0, :, 0] = MYOCARDIUM  # 4 myocardium voxels
        pred = ref.copy()
        pred[0, 0, 0] = BACKGROUND  # one myocardium voxel missed: 2 x 3 / (3 + 4)
        pred[1, 1, 0] = MYOCARDIUM  # one cavity voxel called myocardium
        scores = dice_by_label(pred, ref)
        assert scores["lv_cavity"] == pytest.approx(6 / 7)
        assert scores["myocardium"] == pytest.approx(2 * 3 / (4 + 4))
        assert label_dice(pred, ref) == scores["myocardium"]
        assert label_dice(pred, ref, LV_CAVITY) == scores["lv_cavity"]

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="label volumes must have the same shape"):
            dice_by_label(np.zeros((2, 2, 1)), np.zeros((2, 3, 1)))


class TestMassAgreement:
    def test_hand_worked(self):
        got = mass_agreement([110.0, 120.0, 130.0, float("nan")], [100.0, 125.0, 130.0, 90.0])
        assert got["n"] == 3  # the NaN pair is left out
        assert got["mae_g"] == pytest.approx((10 + 5 + 0) / 3)
        assert got["mean_difference_g"] == pytest.approx((10 - 5 + 0) / 3)
        assert got["pearson_r"] == pytest.approx(np.corrcoef([110, 120, 130], [100, 125, 130])[0, 1])

    def test_no_pairs_and_no_spread(self):
        empty = mass_agreement([], [])
        assert empty["n"] == 0 and math.isnan(empty["mae_g"]) and math.isnan(empty["pearson_r"])
        flat = mass_agreement([100.0, 100.0], [90.0, 110.0])
        assert flat["n"] == 2 and math.isnan(flat["pearson_r"]) and flat["mae_g"] == 10.0
