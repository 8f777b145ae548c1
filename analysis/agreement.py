"""Agreement of each method with a reference mass (manual, or the synthetic truth), side by side.

Per method (available cases: participants with both values): Pearson r (Fisher CI), MAE (bootstrap CI),
Bland-Altman bias and limits of agreement. Per pair of methods (participants with all three values):
Dunn & Clark's z for the two methods' correlations with the same reference. Statistics that cannot be
computed (too few pairs, a constant column) become rows with a ``status`` saying why, never omissions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from analysis import stats
from analysis.cohort import MANUAL_MASS, mcol
from lvmass.core.contracts import (
    INLINEVF_RECALIBRATION_INTERCEPT_G,
    INLINEVF_RECALIBRATION_SLOPE,
    METHOD_INLINEVF,
)

OK = "ok"


@dataclass(frozen=True)
class MethodAgreement:
    """One method against the reference; the statistics are None when ``status`` is not 'ok'."""

    label: str
    n: int
    status: str
    correlation: stats.CorrelationResult | None = None
    mae: stats.BootstrapResult | None = None
    bland_altman: stats.BlandAltmanResult | None = None


@dataclass(frozen=True)
class PairComparison:
    label_a: str
    label_b: str
    n: int
    status: str
    test: stats.DependentCorrelationTest | None = None


@dataclass(frozen=True)
class AgreementReport:
    reference: str
    per_method: tuple[MethodAgreement, ...]
    comparisons: tuple[PairComparison, ...]

    def table(self, alpha: float = 0.05) -> pd.DataFrame:
        """One row per method: n, r and CI, MAE and CI, bias, LoA, share inside, status."""
        rows = []
        for m in self.per_method:
            row: dict[str, object] = {"method": m.label, "reference": self.reference, "n": m.n}
            if m.status == OK and m.correlation and m.mae and m.bland_altman:
                r_lo, r_hi = m.correlation.conf_int(alpha)
                mae_lo, mae_hi = m.mae.conf_int(alpha)
                loa_lo, loa_hi = m.bland_altman.limits_of_agreement()
                row.update(
                    r=m.correlation.estimate,
                    r_ci_lower=r_lo,
                    r_ci_upper=r_hi,
                    mae_g=m.mae.estimate,
                    mae_ci_lower_g=mae_lo,
                    mae_ci_upper_g=mae_hi,
                    bias_g=m.bland_altman.bias,
                    sd_difference_g=m.bland_altman.sd_difference,
                    loa_lower_g=loa_lo,
                    loa_upper_g=loa_hi,
                    share_inside_loa=m.bland_altman.share_inside_loa,
                )
            row["status"] = m.status
            rows.append(row)
        return pd.DataFrame(rows)

    def comparison_table(self, alpha: float = 0.05) -> pd.DataFrame:
        """One row per pair of methods: both r, r between the methods, z, P, Zou's CI of r_a - r_b."""
        rows = []
        for c in self.comparisons:
            row: dict[str, object] = {"method_a": c.label_a, "method_b": c.label_b, "n": c.n}
            if c.status == OK and c.test is not None:
                lo, hi = c.test.conf_int(alpha)
                row.update(
                    r_a=c.test.r12,
                    r_b=c.test.r13,
                    r_ab=c.test.r23,
                    difference=c.test.estimate,
                    difference_ci_lower=lo,
                    difference_ci_upper=hi,
                    z=c.test.statistic_z,
                    p_value=c.test.p_value,
                )
            row["status"] = c.status
            rows.append(row)
        return pd.DataFrame(rows)


def _finite_pairs(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    values = frame[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    return values[np.isfinite(values.to_numpy()).all(axis=1)]


def agree(
    frame: pd.DataFrame,
    reference: str,
    methods: Mapping[str, str],
    *,
    n_boot: int = stats.DEFAULT_N_BOOT,
    seed: int = stats.DEFAULT_SEED,
    min_n: int = 4,
) -> AgreementReport:
    """Agreement of each ``methods`` column (label -> column) with the ``reference`` column of ``frame``.

    Each method uses the participants where both values are finite; each pair of methods uses those
    where all three are (Dunn & Clark needs the same people). The bootstrap seed is the same for every
    method, so rerunning reproduces every interval.
    """
    per_method = []
    for label, column in methods.items():
        pairs = _finite_pairs(frame, [reference, column])
        n = len(pairs)
        if n < min_n:
            per_method.append(MethodAgreement(label, n, f"too few pairs ({n} < {min_n})"))
            continue
        ref, est = pairs[reference].to_numpy(), pairs[column].to_numpy()
        try:
            per_method.append(
                MethodAgreement(
                    label,
                    n,
                    OK,
                    correlation=stats.pearson(est, ref),
                    mae=stats.mean_absolute_error(est, ref, n_boot=n_boot, seed=seed),
                    bland_altman=stats.bland_altman(est, ref),
                )
            )
        except ValueError as exc:
            per_method.append(MethodAgreement(label, n, f"not computable: {exc}"))
    comparisons = []
    for (label_a, col_a), (label_b, col_b) in combinations(methods.items(), 2):
        triples = _finite_pairs(frame, [reference, col_a, col_b])
        n = len(triples)
        if n < min_n:
            comparisons.append(PairComparison(label_a, label_b, n, f"too few participants ({n} < {min_n})"))
            continue
        try:
            test = stats.compare_dependent_correlations(
                triples[reference].to_numpy(), triples[col_a].to_numpy(), triples[col_b].to_numpy()
            )
            comparisons.append(PairComparison(label_a, label_b, n, OK, test))
        except ValueError as exc:
            comparisons.append(PairComparison(label_a, label_b, n, f"not computable: {exc}"))
    return AgreementReport(reference=reference, per_method=tuple(per_method), comparisons=tuple(comparisons))


def method_columns(
    methods: tuple[str, ...], labels: Mapping[str, str], field: str = "lv_mass_g"
) -> dict[str, str]:
    """``{display label: column}`` for each method's field, in the given order."""
    return {labels.get(m, m): mcol(m, field) for m in methods}


# --- InlineVF linear recalibration -----------------------------------------------------------------
def recalibration_table(
    frame: pd.DataFrame,
    *,
    fit_mask: pd.Series,
    evaluate_mask: pd.Series,
    fit_set: str,
    n_boot: int = stats.DEFAULT_N_BOOT,
    seed: int = stats.DEFAULT_SEED,
    min_n: int = 4,
) -> tuple[pd.DataFrame, stats.RecalibrationResult | None]:
    """Manual mass regressed on raw InlineVF mass (the paper's recalibration), fitted on ``fit_mask`` and
    evaluated (r, MAE with bootstrap CI) on ``evaluate_mask``; the paper's published equation
    (0.543487 x raw + 5.808005) is evaluated beside it, and so is the sex-centred InlineVF mass.
    """
    raw, centred = mcol(METHOD_INLINEVF, "lv_mass_raw_g"), mcol(METHOD_INLINEVF, "lv_mass_g")
    if raw not in frame.columns:
        return pd.DataFrame([{"model": "fitted here", "status": "no InlineVF results"}]), None
    fit_pairs = _finite_pairs(frame[fit_mask.to_numpy()], [MANUAL_MASS, raw])
    eval_pairs = _finite_pairs(frame[evaluate_mask.to_numpy()], [MANUAL_MASS, raw, centred])
    rows: list[dict[str, object]] = []
    fitted: stats.RecalibrationResult | None = None
    if len(fit_pairs) >= min_n:
        try:
            fitted = stats.linear_recalibration(fit_pairs[raw].to_numpy(), fit_pairs[MANUAL_MASS].to_numpy())
        except ValueError as exc:
            rows.append(
                {
                    "model": "fitted here",
                    "fit_set": fit_set,
                    "n_fit": len(fit_pairs),
                    "status": f"not computable: {exc}",
                }
            )
    else:
        rows.append(
            {
                "model": "fitted here",
                "fit_set": fit_set,
                "n_fit": len(fit_pairs),
                "status": f"too few pairs ({len(fit_pairs)} < {min_n})",
            }
        )
    candidates: list[tuple[str, float | None, float | None, str, int | None]] = []
    if fitted is not None:
        candidates.append(("fitted here", fitted.slope, fitted.intercept, fit_set, fitted.n))
    candidates.append(
        (
            "paper equation",
            INLINEVF_RECALIBRATION_SLOPE,
            INLINEVF_RECALIBRATION_INTERCEPT_G,
            "Khurshid 2021",
            None,
        )
    )
    candidates.append(("sex-centred (no recalibration)", None, None, "", None))
    for name, slope, intercept, source, n_fit in candidates:
        row: dict[str, object] = {
            "model": name,
            "slope": slope,
            "intercept_g": intercept,
            "fit_set": source,
            "n_fit": n_fit,
            "n_evaluated": len(eval_pairs),
        }
        if name == "fitted here" and fitted is not None:
            s_lo, s_hi = fitted.conf_int()
            i_lo, i_hi = fitted.intercept_conf_int()
            row.update(
                slope_ci_lower=s_lo, slope_ci_upper=s_hi, intercept_ci_lower_g=i_lo, intercept_ci_upper_g=i_hi
            )
        if len(eval_pairs) >= min_n:
            manual = eval_pairs[MANUAL_MASS].to_numpy()
            values = (
                eval_pairs[centred].to_numpy()
                if slope is None
                else slope * eval_pairs[raw].to_numpy() + float(intercept or 0.0)
            )
            try:
                r = stats.pearson(values, manual)
                mae = stats.mean_absolute_error(values, manual, n_boot=n_boot, seed=seed)
                r_lo, r_hi = r.conf_int()
                m_lo, m_hi = mae.conf_int()
                row.update(
                    r_after=r.estimate,
                    r_ci_lower=r_lo,
                    r_ci_upper=r_hi,
                    mae_g=mae.estimate,
                    mae_ci_lower_g=m_lo,
                    mae_ci_upper_g=m_hi,
                    status=OK,
                )
            except ValueError as exc:
                row["status"] = f"not computable: {exc}"
        else:
            row["status"] = f"too few evaluation pairs ({len(eval_pairs)} < {min_n})"
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("n_fit", "n_evaluated"):
        if column in table.columns:
            table[column] = table[column].astype("Int64")
    return table, fitted


def dice_table(per_study: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice (t CI), SD and n per method and structure from a per-study frame with columns
    method, structure, dice."""
    rows = []
    for (method, structure), group in per_study.groupby(["method", "structure"], sort=False):
        values = group["dice"].to_numpy(dtype=float)
        if not np.isfinite(values).any():
            rows.append({"method": method, "structure": structure, "n": 0, "status": "no defined Dice"})
            continue
        result = stats.mean_with_ci(values, name="dice")
        lo, hi = result.conf_int()
        rows.append(
            {
                "method": method,
                "structure": structure,
                "n": result.n,
                "mean_dice": result.estimate,
                "ci_lower": lo,
                "ci_upper": hi,
                "sd": result.sd,
                "status": OK,
            }
        )
    return pd.DataFrame(rows)
