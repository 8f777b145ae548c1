"""Which participants a reviewer looks at first: one row per participant and visit, worst first.

The pipeline's results are one row per participant x visit x method. A reviewer reviews participants, so
:func:`review_order` folds each participant's methods into one row and sorts the rows in tiers:

1. ``qc_failed``: a method's row fails QC (``qc_pass`` false): the pipeline itself doubts a result;
2. ``methods_disagree``: the methods' masses lie :data:`DISAGREEMENT_FRACTION` or more of their mean apart
   (at least one method is wrong, and the picture shows which) and, in a cohort of :data:`MIN_OUTLIER_N` or
   more, further apart than is usual in it: beyond the median disagreement plus :data:`OUTLIER_ROBUST_Z`
   robust SDs, so methods that differ by a constant share everywhere (one calibrated, one not) do not put
   the whole cohort in this tier (:func:`disagreement_threshold`);
3. ``mass_outlier``: the primary method's calibrated mass lies :data:`OUTLIER_ROBUST_Z` or more robust SDs
   (1.4826 x the median absolute deviation) from the median of the participant's sex (of everyone when
   the sex is unknown or a sex has fewer than :data:`MIN_OUTLIER_N`), a mass the cohort makes unlikely;
4. ``no_concern``.

Within a tier the largest relative disagreement comes first, then the largest \\|robust z\\|, then the
participant id, so the order is the same on every run. Masses compared (:func:`comparable_mass_g`) are the
calibrated ones (``lv_mass_g``) of ML4H_seg, ML4H_reg and InlineVF (sex-centred); where a model's mass
has no calibration (no phenotype row, no manual masses) its raw mass stands in, being a physical estimate
itself, but never InlineVF's raw mass, which overestimates by design (the paper's recalibration slope is
0.54). ``inlinevf_recalibrated`` is InlineVF again and is not compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.cohort import method_label
from lvmass.core.contracts import (
    INPUT_METHODS,
    METHOD_INLINEVF,
    METHOD_INLINEVF_RECALIBRATED,
    QC_INFORMATIONAL_FLAGS,
)

TIERS: tuple[str, ...] = ("qc_failed", "methods_disagree", "mass_outlier", "no_concern")
TIER_LABELS = {
    "qc_failed": "QC failed",
    "methods_disagree": "methods disagree",
    "mass_outlier": "mass outlier",
    "no_concern": "no concern",
}
# 20% of the mean mass: beyond the spread of two sound methods (the paper's limits of agreement with the
# manual mass are about +/-20 g around 90-140 g), so a pair this far apart means a failed segmentation.
DISAGREEMENT_FRACTION = 0.20
OUTLIER_ROBUST_Z = 3.0  # about 1 in 370 of a normal population
MIN_OUTLIER_N = 10  # fewer masses than this say too little about a median and its spread
MAD_TO_SD = 1.4826  # a normal distribution's SD per median absolute deviation
METHOD_FIELDS: tuple[str, ...] = ("lv_mass_g", "lv_mass_raw_g", "lvmi_g_m2", "lvh", "qc_pass", "qc_flags")
KEY = ["participant_id", "instance"]


def _number(value: Any) -> float | None:
    """A finite float, or None (pandas' NA, NaN, None)."""
    if value is None or value is pd.NA:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _flags(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(f) for f in value]


def comparable_mass_g(method: str, fields: dict[str, Any]) -> float | None:
    """The mass of ``method`` the tiers compare: calibrated, else a model's raw mass (module docstring)."""
    calibrated = _number(fields.get("lv_mass_g"))
    if calibrated is not None or method == METHOD_INLINEVF:
        return calibrated
    return _number(fields.get("lv_mass_raw_g"))


def primary_method(methods: Sequence[str]) -> str | None:
    """The method whose mass the outlier tier uses: the first of ML4H_seg, ML4H_reg, InlineVF present."""
    return next((m for m in INPUT_METHODS if m in methods), None)


def robust_z(values: pd.Series, groups: pd.Series) -> pd.Series:
    """(value - median) / (1.4826 MAD) within each group of at least :data:`MIN_OUTLIER_N` values, else
    within all values when they are that many; NaN where neither has enough values or no spread."""
    out = pd.Series(np.nan, index=values.index, dtype=float)
    known = values.notna()

    def fill(mask: pd.Series) -> None:
        sample = values[mask & known].astype(float)
        if len(sample) < MIN_OUTLIER_N:
            return
        median = float(sample.median())
        mad = float((sample - median).abs().median()) * MAD_TO_SD
        if mad > 0:
            out[mask & known] = (sample - median) / mad

    fill(pd.Series(True, index=values.index))  # everyone first; a large enough sex replaces it
    for group in groups.dropna().unique():
        if int(((groups == group) & known).sum()) >= MIN_OUTLIER_N:
            fill(groups == group)
    return out


def _apart(row: pd.Series) -> str:
    """``ML4H_seg 300 g vs ML4H_reg 120 g: 180 g apart (99% of their mean)``."""
    (low_method, low_g), (high_method, high_g) = row["disagreement_pair"]
    share = 100 * row["disagreement_fraction"]
    return (f"{method_label(high_method)} {high_g:.0f} g vs {method_label(low_method)} {low_g:.0f} g: "
            f"{row['disagreement_g']:.0f} g apart ({share:.0f}% of their mean)")


def _reason(row: pd.Series, primary: str | None) -> str:
    """Why the participant sits where it does, in words."""
    tier = row["tier"]
    if tier == "qc_failed":
        methods_by_flag: dict[str, list[str]] = {}
        for method, flags in row["failing"].items():
            if method == METHOD_INLINEVF_RECALIBRATED and METHOD_INLINEVF in row["failing"]:
                continue  # InlineVF again, with the same flags
            for flag in flags or ["no mass"]:
                methods_by_flag.setdefault(flag, []).append(method_label(method))
        text = "QC failed: " + "; ".join(f"{flag} ({', '.join(ms)})" for flag, ms in methods_by_flag.items())
        fraction = row["disagreement_fraction"]
        notable = row["disagreement_pair"] is not None and fraction >= DISAGREEMENT_FRACTION
        return text + (f"; {_apart(row)}" if notable else "")
    if tier == "methods_disagree":
        return _apart(row)
    if tier == "mass_outlier":
        side = "above" if row["robust_z"] > 0 else "below"
        return (f"{method_label(primary or '')} mass {row['primary_mass_g']:.0f} g lies "
                f"{abs(row['robust_z']):.1f} robust SD {side} the cohort's median")
    if row["disagreement_g"] is not None:
        return f"no concern (methods within {row['disagreement_g']:.0f} g)"
    return "no concern"


def usual_disagreement(fractions: pd.Series) -> float:
    """The most relative disagreement that is usual in this cohort: the median plus
    :data:`OUTLIER_ROBUST_Z` robust SDs, over participants with two methods; -inf when fewer than
    :data:`MIN_OUTLIER_N` have them (too few to say what is usual)."""
    known = pd.to_numeric(fractions, errors="coerce").dropna()
    known = known[np.isfinite(known)]
    if len(known) < MIN_OUTLIER_N:
        return -math.inf
    median = float(known.median())
    spread = float((known - median).abs().median()) * MAD_TO_SD
    return median + OUTLIER_ROBUST_Z * spread


def disagreement_threshold(fractions: pd.Series) -> float:
    """The relative disagreement from which a participant is in the ``methods_disagree`` tier (reached
    when at least :data:`DISAGREEMENT_FRACTION`, exceeded when the cohort's usual level is higher:
    :func:`usual_disagreement`)."""
    return max(DISAGREEMENT_FRACTION, usual_disagreement(fractions))


def review_order(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (participant_id, instance) of ``results`` (the pipeline's rows, ``analysis.io
    .read_results``), worst first (module docstring), with ``rank`` (1 = first), ``tier``, ``reason``,
    ``disagreement_g``, ``disagreement_fraction``, ``robust_z``, ``primary_mass_g``, ``sex``, ``eid`` and
    ``methods`` (per method present: the :data:`METHOD_FIELDS`). ``attrs["disagreement_threshold"]`` is
    the relative disagreement the tier used (:func:`disagreement_threshold`)."""
    if results.empty:
        return pd.DataFrame(columns=["rank", *KEY, "eid", "sex", "tier", "reason", "disagreement_g",
                                     "disagreement_fraction", "robust_z", "primary_mass_g", "methods"])
    present = [m for m in (*INPUT_METHODS, "inlinevf_recalibrated") if m in set(results["method"])]
    primary = primary_method(present)
    rows = []
    grouped: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for record in results[[*KEY, "method", "eid", "sex", *METHOD_FIELDS]].to_dict("records"):
        key = (str(record["participant_id"]), int(record["instance"]))
        grouped.setdefault(key, {})[str(record["method"])] = record
    for (participant_id, instance), by_method in sorted(grouped.items()):
        methods = {m: {f: by_method[m][f] for f in METHOD_FIELDS} for m in present if m in by_method}
        failing = {}
        for m, fields in methods.items():
            if not bool(fields["qc_pass"]):
                failing[m] = [f for f in _flags(fields["qc_flags"]) if f not in QC_INFORMATIONAL_FLAGS]
        compared = {m: comparable_mass_g(m, methods[m]) for m in INPUT_METHODS if m in methods}
        masses = sorted((g, m) for m, g in compared.items() if g is not None)
        gap = frac = None
        pair = None
        if len(masses) >= 2:
            (low_g, low_m), (high_g, high_m) = masses[0], masses[-1]
            gap = high_g - low_g  # type: ignore[operator]
            mean = float(np.mean([g for g, _ in masses]))
            frac = gap / mean if mean > 0 else math.inf
            pair = ((low_m, low_g), (high_m, high_g))
        first = next(iter(by_method.values()))
        rows.append({
            "participant_id": participant_id, "instance": instance,
            "eid": first["eid"], "sex": first["sex"], "failing": failing, "methods": methods,
            "disagreement_g": gap, "disagreement_fraction": frac, "disagreement_pair": pair,
            "primary_mass_g": compared.get(primary) if primary is not None else None,
        })
    table = pd.DataFrame(rows)
    table["robust_z"] = robust_z(table["primary_mass_g"].astype(float), table["sex"])
    usual = usual_disagreement(table["disagreement_fraction"])
    threshold = max(DISAGREEMENT_FRACTION, usual)
    disagree = table["disagreement_fraction"].apply(
        lambda f: f is not None and f >= DISAGREEMENT_FRACTION and f > usual)
    outlier = table["robust_z"].abs() >= OUTLIER_ROBUST_Z
    table["tier"] = np.select([table["failing"].apply(bool), disagree, outlier], list(TIERS[:3]), TIERS[3])
    table["reason"] = table.apply(_reason, axis=1, primary=primary)
    table["_tier"] = table["tier"].map(TIERS.index)
    table["_frac"] = -table["disagreement_fraction"].astype(float).fillna(-1.0)
    table["_z"] = -table["robust_z"].abs().fillna(-1.0)
    table = table.sort_values(["_tier", "_frac", "_z", "participant_id", "instance"], kind="stable")
    table = table.drop(columns=["_tier", "_frac", "_z", "failing", "disagreement_pair"])
    table = table.reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table.attrs["disagreement_threshold"] = threshold
    return table
