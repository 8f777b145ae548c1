"""Numpy measures shared by training reports and the evaluation script (pure functions).

Mass from a label volume is the pipeline's own (``lvmass.core.mass``), so evaluation and production agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from lvmass.core import contracts
from lvmass.core.mass import measure_label_volume


def myocardium_mass_g(labels: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """LV mass (g) of one label volume ``(rows, cols, slices)``, measured as the pipeline measures it
    (``lvmass.core.mass.measure_label_volume``: voxel count x voxel volume x 1.05 g/mL)."""
    return measure_label_volume(labels, spacing_mm).lv_mass_raw_g


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A and B| / (|A| + |B|) of two masks; NaN when both are empty (nothing to overlap:
    averages skip it rather than count a perfect score)."""
    in_a = np.asarray(a, dtype=bool)
    in_b = np.asarray(b, dtype=bool)
    total = int(in_a.sum() + in_b.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(in_a, in_b).sum()) / total


def dice(a: np.ndarray, b: np.ndarray, label: int = contracts.MYOCARDIUM) -> float:
    """Dice overlap of ``label`` between two label volumes; NaN when both are empty."""
    return mask_dice(np.asarray(a) == label, np.asarray(b) == label)


def agreement(predicted: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Pearson r, MAE and mean difference (predicted - reference) over the pairs where both are finite."""
    p = np.asarray(predicted, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    n = int(p.size)
    if n == 0:
        return {"n": 0, "pearson_r": math.nan, "mae_g": math.nan, "mean_difference_g": math.nan}
    corr = float(np.corrcoef(p, r)[0, 1]) if n > 1 and p.std() > 0 and r.std() > 0 else math.nan
    return {
        "n": n,
        "pearson_r": corr,
        "mae_g": float(np.mean(np.abs(p - r))),
        "mean_difference_g": float(np.mean(p - r)),
    }


@keras.saving.register_keras_serializable(package="lvmass")
class MyocardiumDice(keras.metrics.Metric):
    """Streaming Dice of the myocardium between argmax predictions and integer labels (training metric)."""

    def __init__(self, name: str = "myocardium_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        truth = ops.equal(ops.cast(y_true, "int32"), contracts.MYOCARDIUM)
        pred = ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), contracts.MYOCARDIUM)
        self.intersection.assign_add(ops.sum(ops.cast(ops.logical_and(truth, pred), "float32")))
        self.total.assign_add(ops.sum(ops.cast(truth, "float32")) + ops.sum(ops.cast(pred, "float32")))

    def result(self):
        return keras.ops.divide_no_nan(2.0 * self.intersection, self.total)

    def reset_state(self):
        self.intersection.assign(0.0)
        self.total.assign(0.0)
