"""Prevalent disease on LV mass: logistic regression adjusted for age and sex (statsmodels ``Logit``).

For each disease x exposure x method the model is

    logit P(disease) = b0 + b1 exposure + b2 age_years + b3 male

fitted by maximum likelihood on complete cases. The odds ratio is exp(b1) with the Wald interval
exp(b1 -/+ q se(b1)), q the 1 - alpha/2 normal quantile. Exposures (Khurshid et al. 2021, Table 2):

* ``lvmi_per_sd``: LVMI standardised by its own mean and SD (ddof=1) in the model's sample, so the OR is
  per 1 SD;
* ``lvh``: LVMI above 72 g/m2 (men) / 55 g/m2 (women), as the pipeline wrote it;
* ``lvh_p90``: LV mass above the sex-specific 90th percentile, as the pipeline wrote it.

A model that cannot be trusted is returned with a ``status`` instead of an estimate, never dropped:
``too_few_events`` (fewer than ``min_events`` events or non-events), ``no_exposure_variation``,
``separation`` (an empty cell in the exposure x outcome table of a binary exposure, or statsmodels'
perfect-separation signal), ``not_converged``, or ``failed: <reason>``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import statsmodels.api as sm
from numpy.typing import ArrayLike
from scipy import stats as sps

from analysis.cohort import mcol
from lvmass.core.schema import DISEASE_COLUMNS
from lvmass.core.truth import TRUE_OR_PATH, TRUTH_LVMI_G_M2

EXPOSURE_LVMI_PER_SD = "lvmi_per_sd"
EXPOSURE_LVH = "lvh"
EXPOSURE_LVH_P90 = "lvh_p90"
EXPOSURES: tuple[str, ...] = (EXPOSURE_LVMI_PER_SD, EXPOSURE_LVH, EXPOSURE_LVH_P90)
EXPOSURE_LABELS: dict[str, str] = {
    EXPOSURE_LVMI_PER_SD: "LVMI (per 1 SD)",
    EXPOSURE_LVH: "LVH",
    EXPOSURE_LVH_P90: "LVH (90th percentile)",
}
EXPOSURE_FIELD: dict[str, str] = {
    EXPOSURE_LVMI_PER_SD: "lvmi_g_m2",
    EXPOSURE_LVH: "lvh",
    EXPOSURE_LVH_P90: "lvh_p90",
}
DEFAULT_MIN_EVENTS = 10
STATUS_OK = "ok"
STATUS_TOO_FEW_EVENTS = "too_few_events"
STATUS_NO_VARIATION = "no_exposure_variation"
STATUS_SEPARATION = "separation"
STATUS_NOT_CONVERGED = "not_converged"


@dataclass(frozen=True)
class OddsRatioResult:
    """One logistic model's exposure odds ratio (NaN unless ``status`` is 'ok')."""

    statistic: ClassVar[str] = "odds_ratio"
    outcome: str
    exposure: str
    log_odds_ratio: float
    se: float
    n: int
    n_events: int
    status: str
    covariates: tuple[str, ...] = ()
    exposure_sd: float = float("nan")  # the SD one unit stands for (per-SD exposures), else NaN
    label: str = ""  # e.g. the method

    @property
    def estimate(self) -> float:
        return float(np.exp(self.log_odds_ratio))

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1). Received: {alpha!r}")
        q = float(sps.norm.ppf(1.0 - alpha / 2.0))
        return float(np.exp(self.log_odds_ratio - q * self.se)), float(
            np.exp(self.log_odds_ratio + q * self.se)
        )

    @property
    def p_value(self) -> float:
        if not np.isfinite(self.se) or self.se <= 0:
            return float("nan")
        return float(2.0 * sps.norm.sf(abs(self.log_odds_ratio / self.se)))

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        lower, upper = self.conf_int(alpha)
        return pd.DataFrame(
            [
                {
                    "label": self.label,
                    "outcome": self.outcome,
                    "exposure": self.exposure,
                    "odds_ratio": self.estimate,
                    "ci_lower": lower,
                    "ci_upper": upper,
                    "p_value": self.p_value,
                    "n": self.n,
                    "n_events": self.n_events,
                    "status": self.status,
                    "covariates": ", ".join(self.covariates),
                    "exposure_sd": self.exposure_sd,
                }
            ]
        )


def _not_fitted(outcome: str, exposure: str, n: int, events: int, status: str, label: str) -> OddsRatioResult:
    return OddsRatioResult(outcome, exposure, float("nan"), float("nan"), n, events, status, label=label)


def fit_logistic(
    outcome: ArrayLike,
    exposure: ArrayLike,
    covariates: Mapping[str, ArrayLike],
    *,
    outcome_name: str = "outcome",
    exposure_name: str = "exposure",
    per_sd: bool = False,
    min_events: int = DEFAULT_MIN_EVENTS,
    label: str = "",
) -> OddsRatioResult:
    """Odds ratio of a binary ``outcome`` (0/1) per unit of ``exposure`` (per SD when ``per_sd``),
    adjusted for ``covariates``; rows with any missing value are left out (complete cases).

    A covariate that is constant in the sample (e.g. one sex) is left out of the model and out of
    ``covariates`` in the result.
    """
    y = np.asarray(outcome, dtype=float)
    x = np.asarray(exposure, dtype=float)
    cov = {name: np.asarray(v, dtype=float) for name, v in covariates.items()}
    for name, arr in (("outcome", y), *cov.items()):
        if arr.shape != x.shape:
            raise ValueError(f"{name} has shape {arr.shape}, exposure has {x.shape}")
    keep = np.isfinite(y) & np.isfinite(x)
    for arr in cov.values():
        keep &= np.isfinite(arr)
    y, x = y[keep], x[keep]
    cov = {name: arr[keep] for name, arr in cov.items()}
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{outcome_name} must be coded 0/1")
    n, events = int(y.size), int(y.sum())
    if min(events, n - events) < min_events:
        return _not_fitted(outcome_name, exposure_name, n, events, STATUS_TOO_FEW_EVENTS, label)
    if np.ptp(x) == 0:
        return _not_fitted(outcome_name, exposure_name, n, events, STATUS_NO_VARIATION, label)
    binary = bool(np.isin(x, (0.0, 1.0)).all())
    if binary and not per_sd:
        cells = [int(np.sum((x == a) & (y == b))) for a in (0.0, 1.0) for b in (0.0, 1.0)]
        if min(cells) == 0:
            return _not_fitted(outcome_name, exposure_name, n, events, STATUS_SEPARATION, label)
    sd = float(x.std(ddof=1)) if per_sd else float("nan")
    if per_sd:
        x = (x - x.mean()) / sd
    used = [name for name, arr in cov.items() if np.ptp(arr) > 0]
    design = np.column_stack([np.ones(n), x, *(cov[name] for name in used)])
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore"):
            warnings.simplefilter("error", category=sm.tools.sm_exceptions.PerfectSeparationWarning)
            warnings.simplefilter("ignore", category=sm.tools.sm_exceptions.ConvergenceWarning)
            fit = sm.Logit(y, design).fit(method="newton", maxiter=100, disp=False)
    except (sm.tools.sm_exceptions.PerfectSeparationError, sm.tools.sm_exceptions.PerfectSeparationWarning):
        return _not_fitted(outcome_name, exposure_name, n, events, STATUS_SEPARATION, label)
    except (np.linalg.LinAlgError, ValueError) as exc:
        return _not_fitted(outcome_name, exposure_name, n, events, f"failed: {exc}", label)
    if not fit.mle_retvals.get("converged", False):
        return _not_fitted(outcome_name, exposure_name, n, events, STATUS_NOT_CONVERGED, label)
    beta, se = float(fit.params[1]), float(fit.bse[1])
    if not (np.isfinite(beta) and np.isfinite(se)):
        return _not_fitted(outcome_name, exposure_name, n, events, "failed: non-finite estimate", label)
    return OddsRatioResult(
        outcome_name, exposure_name, beta, se, n, events, STATUS_OK, tuple(used), sd, label=label
    )


def _covariates(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    sex = frame["sex"]
    male = np.where(sex == "male", 1.0, np.where(sex == "female", 0.0, np.nan))
    return {"age": frame["age"].to_numpy(dtype=float), "male": male}


def association_results(
    frame: pd.DataFrame,
    methods: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    diseases: Sequence[str] = DISEASE_COLUMNS,
    exposures: Sequence[str] = EXPOSURES,
    min_events: int = DEFAULT_MIN_EVENTS,
) -> list[OddsRatioResult]:
    """Every disease x method x exposure model on the analysis frame (``analysis.cohort``)."""
    labels = labels or {}
    cov = _covariates(frame)
    out = []
    for disease in diseases:
        y = frame[disease].to_numpy(dtype=float)
        for method in methods:
            for exposure in exposures:
                column = mcol(method, EXPOSURE_FIELD[exposure])
                x = (
                    frame[column].to_numpy(dtype=float)
                    if column in frame.columns
                    else np.full(len(frame), np.nan)
                )
                out.append(
                    fit_logistic(
                        y,
                        x,
                        cov,
                        outcome_name=disease,
                        exposure_name=exposure,
                        per_sd=exposure == EXPOSURE_LVMI_PER_SD,
                        min_events=min_events,
                        label=labels.get(method, method),
                    )
                )
    return out


def results_frame(results: Sequence[OddsRatioResult], alpha: float = 0.05) -> pd.DataFrame:
    """All models as rows (label, outcome, exposure, OR, CI, P, n, events, status, ...)."""
    if not results:
        return pd.DataFrame(
            columns=[
                "label",
                "outcome",
                "exposure",
                "odds_ratio",
                "ci_lower",
                "ci_upper",
                "p_value",
                "n",
                "n_events",
                "status",
                "covariates",
                "exposure_sd",
            ]
        )
    return pd.concat([r.summary_frame(alpha) for r in results], ignore_index=True)


# --- The synthetic generator's true odds ratios --------------------------------------------------------
def true_odds_ratios(
    parameters: Mapping[str, object], diseases: Sequence[str] = DISEASE_COLUMNS
) -> dict[str, float]:
    """The generator's true OR per 1 SD of true LVMI in the written cohort, for each disease it records,
    read from truth.json at ``lvmass.core.truth.TRUE_OR_PATH`` (``cohort`` ->
    ``true_odds_ratio_per_sample_sd_lvmi``): what a per-SD model fitted on that cohort's true LVMI
    estimates. Diseases not in ``diseases`` are ignored.

    Raises ValueError naming the missing key, or the bad value, when truth.json does not hold them.
    """
    node: object = parameters
    for depth, key in enumerate(TRUE_OR_PATH):
        if not isinstance(node, Mapping) or key not in node:
            where = ".".join(TRUE_OR_PATH[: depth + 1])
            raise ValueError(
                f"truth.json has no '{where}' (lvmass.core.truth.TRUE_OR_PATH): no true odds ratios to "
                "check against"
            )
        node = node[key]
    if not isinstance(node, Mapping):
        raise ValueError(
            f"truth.json {'.'.join(TRUE_OR_PATH)} must map diseases to odds ratios, got {node!r}"
        )
    out: dict[str, float] = {}
    for disease in diseases:
        value = node.get(disease)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(
                f"truth.json {'.'.join(TRUE_OR_PATH)}.{disease} must be a positive number, got {value!r}"
            )
        out[disease] = float(value)
    if not out:
        raise ValueError(f"truth.json {'.'.join(TRUE_OR_PATH)} holds no odds ratio for {list(diseases)}")
    return out


def truth_recovery(
    frame: pd.DataFrame,
    true_ors: Mapping[str, float],
    *,
    exposure_column: str = TRUTH_LVMI_G_M2,
    min_events: int = DEFAULT_MIN_EVENTS,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Refit each disease on the true LVMI (per SD, adjusted for age and sex) and check that the
    generator's true OR lies inside the estimate's 1 - alpha interval (``recovered``)."""
    cov = _covariates(frame)
    rows = []
    for disease, true_or in true_ors.items():
        if disease not in frame.columns or exposure_column not in frame.columns:
            rows.append({"outcome": disease, "true_odds_ratio": true_or, "status": "missing column"})
            continue
        fit = fit_logistic(
            frame[disease].to_numpy(dtype=float),
            frame[exposure_column].to_numpy(dtype=float),
            cov,
            outcome_name=disease,
            exposure_name=EXPOSURE_LVMI_PER_SD,
            per_sd=True,
            min_events=min_events,
            label="true LVMI",
        )
        lower, upper = fit.conf_int(alpha)
        ok = fit.status == STATUS_OK
        rows.append(
            {
                "outcome": disease,
                "true_odds_ratio": float(true_or),
                "odds_ratio": fit.estimate,
                "ci_lower": lower,
                "ci_upper": upper,
                "n": fit.n,
                "n_events": fit.n_events,
                "recovered": bool(ok and lower <= true_or <= upper) if ok else None,
                "status": fit.status,
            }
        )
    return pd.DataFrame(rows)
