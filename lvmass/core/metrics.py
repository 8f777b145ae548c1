"""The measures of agreement every evaluation uses, defined once: Dice between masks and label volumes, and
a mass's agreement with a reference (the trainer's reports, the analysis' Dice table, the benchmarks).

Dice of two empty masks: NaN. There is nothing to overlap, so averages skip it (``np.nanmean``) rather than
count a perfect score; a slice or structure that one side has and the other has not scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lvmass.core import contracts

# The structures a Dice table reports, by their label in contracts.LABEL_MAP.
DICE_LABELS: Mapping[str, int] = {"myocardium": contracts.MYOCARDIUM, "lv_cavity": contracts.LV_CAVITY}


def mask_dice(predicted: Any, reference: Any) -> float:
    """Dice = 2 |A and B| / (|A| + |B|) of two boolean masks of one shape; NaN when both are empty (the
    module's convention). ValueError when the shapes differ."""
    a = np.asarray(predicted, dtype=bool)
    b = np.asarray(reference, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape. Received {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def label_dice(predicted: Any, reference: Any, label: int = contracts.MYOCARDIUM) -> float:
    """Dice of one ``label`` between two label volumes (:func:`mask_dice`; NaN when neither has it)."""
    return mask_dice(np.asarray(predicted) == label, np.asarray(reference) == label)


def dice_by_label(predicted: Any, reference: Any,
                  labels: Mapping[str, int] = DICE_LABELS) -> dict[str, float]:
    """Dice per structure between two label volumes coded with ``contracts.LABEL_MAP`` (myocardium 2, LV
    cavity 1 by default). ValueError when the volumes' shapes differ."""
    pred = np.asarray(predicted)
    ref = np.asarray(reference)
    if pred.shape != ref.shape:
        raise ValueError(f"label volumes must have the same shape. Received {pred.shape} and {ref.shape}")
    return {name: mask_dice(pred == value, ref == value) for name, value in labels.items()}


def mass_agreement(predicted: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Agreement of masses with a reference over the pairs where both are finite: ``n``, Pearson r
    (``pearson_r``, NaN below two pairs or without spread), the mean absolute error (``mae_g``) and the
    mean difference predicted - reference (``mean_difference_g``). Point estimates only: the analysis
    reports the same with confidence intervals (``analysis.stats``)."""
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
