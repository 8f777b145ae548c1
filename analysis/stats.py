"""The paper's agreement statistics as pure functions returning results objects.

Every function takes plain numpy arrays (never mutated) and returns a small frozen results object with
``estimate``, ``n``, ``conf_int(alpha=0.05)`` and ``summary_frame(alpha=0.05)`` (a one-row DataFrame), in
the style of statsmodels' results classes. Formulas are stated in each docstring; references:

* Fisher RA (1921). On the "probable error" of a coefficient of correlation. Metron 1:3-32.
* Efron B, Tibshirani RJ (1993). An Introduction to the Bootstrap, ch. 13 (percentile interval).
* Dunn OJ, Clark VA (1969). Correlation coefficients measured on the same individuals. JASA 64:366-377.
* Zou GY (2007). Toward using confidence intervals to compare correlations. Psychol Methods 12:399-413.
* Bland JM, Altman DG (1999). Measuring agreement in method comparison studies. Stat Methods Med Res 8:135.
* Dice LR (1945). Measures of the amount of ecologic association between species. Ecology 26:297-302.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

DEFAULT_N_BOOT = 1000
DEFAULT_SEED = 20210101
# Bootstrap replicates are drawn in blocks of this many rows so memory stays ~O(block x n) however large
# the cohort; the block size is part of what makes a seed reproducible, so it is a constant.
_BOOT_BLOCK = 100
# The paper's (and Bland & Altman's) multiplier for the limits of agreement: mean +/- 1.96 SD.
LOA_MULTIPLIER = 1.96


def _z_quantile(alpha: float) -> float:
    """Two-sided standard normal quantile, e.g. 1.95996 for alpha=0.05."""
    _check_alpha(alpha)
    return float(sps.norm.ppf(1.0 - alpha / 2.0))


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1). Received: {alpha!r}")


def _as_1d_float(name: str, values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional. Received shape {array.shape}")
    return array


def _paired(
    name_a: str, a: ArrayLike, name_b: str, b: ArrayLike, min_n: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Two equal-length finite 1-D float arrays (copies), or a ValueError saying which input is bad."""
    x = _as_1d_float(name_a, a)
    y = _as_1d_float(name_b, b)
    if x.shape != y.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same length. Received {x.size} and {y.size}")
    for name, arr in ((name_a, x), (name_b, y)):
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise ValueError(f"{name} holds {bad} non-finite value(s): drop missing pairs first")
    if x.size < min_n:
        raise ValueError(f"at least {min_n} pairs are needed. Received {x.size}")
    return x, y


class _Result:
    """Shared behaviour: a one-row summary frame built from ``estimate``, ``conf_int`` and ``n``."""

    statistic: ClassVar[str] = "estimate"
    estimate: float
    n: int

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        """One row: estimate, ci_lower, ci_upper, n (the columns every results object shares)."""
        lower, upper = self.conf_int(alpha)
        return pd.DataFrame(
            {"estimate": [self.estimate], "ci_lower": [lower], "ci_upper": [upper], "n": [self.n]},
            index=pd.Index([self.statistic], name="statistic"),
        )


# --- Pearson correlation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CorrelationResult(_Result):
    """Pearson's r with Fisher's z interval.

    ``conf_int``: with z = atanh(r) and se = 1 / sqrt(n - 3), the interval is
    tanh(z -/+ q * se), q the 1 - alpha/2 standard normal quantile (Fisher 1921).
    """

    statistic: ClassVar[str] = "pearson_r"
    estimate: float
    n: int

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        q = _z_quantile(alpha)
        if self.n <= 3 or abs(self.estimate) >= 1.0:
            return (float("nan"), float("nan")) if self.n <= 3 else (self.estimate, self.estimate)
        z = float(np.arctanh(self.estimate))
        se = 1.0 / np.sqrt(self.n - 3)
        return float(np.tanh(z - q * se)), float(np.tanh(z + q * se))


def pearson(x: ArrayLike, y: ArrayLike) -> CorrelationResult:
    """Pearson's product-moment correlation r = cov(x, y) / (sd(x) sd(y)) over paired finite values."""
    a, b = _paired("x", x, "y", y, min_n=3)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ValueError("Pearson's r is undefined when either variable is constant")
    r = float(np.corrcoef(a, b)[0, 1])
    return CorrelationResult(estimate=float(np.clip(r, -1.0, 1.0)), n=int(a.size))


# --- Bootstrap of a mean (MAE) ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BootstrapResult(_Result):
    """A mean over participants with its participant-level bootstrap replicates.

    ``conf_int``: the percentile interval, the alpha/2 and 1 - alpha/2 quantiles of the replicates
    (numpy's default linear interpolation; Efron & Tibshirani 1993, ch. 13).
    """

    statistic: ClassVar[str] = "mean"
    estimate: float
    n: int
    replicates: NDArray[np.float64] = field(repr=False)
    seed: int
    name: str = "mean"

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        _check_alpha(alpha)
        lower, upper = np.quantile(self.replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
        return float(lower), float(upper)

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        frame = super().summary_frame(alpha)
        frame.index = pd.Index([self.name], name="statistic")
        return frame


def bootstrap_mean(
    values: ArrayLike, *, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED, name: str = "mean"
) -> BootstrapResult:
    """Mean of per-participant values with a nonparametric bootstrap over participants.

    Each replicate draws n participants with replacement (``numpy.random.default_rng(seed)``, in blocks
    of ``_BOOT_BLOCK`` replicates) and takes the mean; the same seed gives the same replicates.
    """
    v = _as_1d_float("values", values)
    if v.size < 2:
        raise ValueError(f"the bootstrap needs at least 2 values. Received {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values hold non-finite entries: drop missing pairs first")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1. Received: {n_boot!r}")
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, _BOOT_BLOCK):
        stop = min(start + _BOOT_BLOCK, n_boot)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        replicates[start:stop] = v[idx].mean(axis=1)
    return BootstrapResult(
        estimate=float(v.mean()), n=int(v.size), replicates=replicates, seed=int(seed), name=name
    )


def mean_absolute_error(
    predicted_g: ArrayLike, reference_g: ArrayLike, *, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED
) -> BootstrapResult:
    """MAE = mean |predicted - reference| with a percentile bootstrap CI over participants (the paper's
    1000-iteration bootstrap)."""
    p, r = _paired("predicted_g", predicted_g, "reference_g", reference_g, min_n=2)
    return bootstrap_mean(np.abs(p - r), n_boot=n_boot, seed=seed, name="mae")


# --- Dunn & Clark: two overlapping dependent correlations -------------------------------------------
def _fisher_ci(r: float, n: int, q: float) -> tuple[float, float]:
    se = 1.0 / np.sqrt(n - 3)
    z = np.arctanh(r)
    return float(np.tanh(z - q * se)), float(np.tanh(z + q * se))


def overlapping_correlation_covariance(r12: float, r13: float, r23: float) -> float:
    """Correlation between the Fisher-z of r12 and r13 when both share variable 1 (Dunn & Clark 1969):

    c = [r23 (1 - r12^2 - r13^2) - r12 r13 (1 - r12^2 - r13^2 - r23^2) / 2] / [(1 - r12^2)(1 - r13^2)]
    """
    num = r23 * (1 - r12**2 - r13**2) - 0.5 * r12 * r13 * (1 - r12**2 - r13**2 - r23**2)
    return float(num / ((1 - r12**2) * (1 - r13**2)))


@dataclass(frozen=True)
class DependentCorrelationTest(_Result):
    """Dunn & Clark's z for H0: rho12 = rho13 (variable 1 shared, e.g. manual mass vs two methods).

    ``statistic_z`` = (atanh r12 - atanh r13) sqrt(n - 3) / sqrt(2 - 2c), c from
    :func:`overlapping_correlation_covariance`; ``p_value`` = 2 (1 - Phi(|z|)).
    ``estimate`` is r12 - r13 and ``conf_int`` is Zou's (2007) interval for that difference:
    with (l_i, u_i) the Fisher intervals of r12 and r13,
    L = d - sqrt((r12 - l1)^2 + (u2 - r13)^2 - 2c (r12 - l1)(u2 - r13)),
    U = d + sqrt((u1 - r12)^2 + (r13 - l2)^2 - 2c (u1 - r12)(r13 - l2)).
    """

    statistic: ClassVar[str] = "r12_minus_r13"
    r12: float
    r13: float
    r23: float
    n: int
    statistic_z: float
    p_value: float

    @property
    def estimate(self) -> float:  # type: ignore[override]
        return self.r12 - self.r13

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        q = _z_quantile(alpha)
        c = overlapping_correlation_covariance(self.r12, self.r13, self.r23)
        l1, u1 = _fisher_ci(self.r12, self.n, q)
        l2, u2 = _fisher_ci(self.r13, self.n, q)
        d = self.estimate
        lower = d - np.sqrt(
            (self.r12 - l1) ** 2 + (u2 - self.r13) ** 2 - 2 * c * (self.r12 - l1) * (u2 - self.r13)
        )
        upper = d + np.sqrt(
            (u1 - self.r12) ** 2 + (self.r13 - l2) ** 2 - 2 * c * (u1 - self.r12) * (self.r13 - l2)
        )
        return float(lower), float(upper)

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        frame = super().summary_frame(alpha)
        frame["z"] = self.statistic_z
        frame["p_value"] = self.p_value
        return frame


def dunn_clark_test(r12: float, r13: float, r23: float, n: int) -> DependentCorrelationTest:
    """Dunn & Clark's (1969) z for two correlations that share variable 1, measured on the same n people.

    r12, r13: each method's correlation with the shared variable (manual mass); r23: the correlation
    between the two methods, which enters through the covariance term c (see the results class).
    """
    for name, r in (("r12", r12), ("r13", r13), ("r23", r23)):
        if not -1.0 < r < 1.0:
            raise ValueError(f"{name} must lie strictly between -1 and 1. Received: {r!r}")
    if n <= 3:
        raise ValueError(f"n must be > 3 for Fisher's z. Received: {n!r}")
    c = overlapping_correlation_covariance(r12, r13, r23)
    z = (np.arctanh(r12) - np.arctanh(r13)) * np.sqrt(n - 3) / np.sqrt(2.0 - 2.0 * c)
    p = 2.0 * sps.norm.sf(abs(z))
    return DependentCorrelationTest(
        r12=float(r12), r13=float(r13), r23=float(r23), n=int(n), statistic_z=float(z), p_value=float(p)
    )


def compare_dependent_correlations(
    reference: ArrayLike, method_a: ArrayLike, method_b: ArrayLike
) -> DependentCorrelationTest:
    """Dunn & Clark's test from data: is corr(reference, a) different from corr(reference, b)?

    All three arrays hold the same participants in the same order (finite values only).
    """
    ref, a = _paired("reference", reference, "method_a", method_a, min_n=4)
    _, b = _paired("reference", reference, "method_b", method_b, min_n=4)
    corr = np.corrcoef(np.vstack([ref, a, b]))
    return dunn_clark_test(float(corr[0, 1]), float(corr[0, 2]), float(corr[1, 2]), int(ref.size))


# --- Bland-Altman ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlandAltmanResult(_Result):
    """Bias (mean of method - reference) and limits of agreement, bias +/- 1.96 SD (SD with ddof=1).

    ``conf_int`` is the t interval of the bias: bias -/+ t(1 - alpha/2, n - 1) SD / sqrt(n).
    ``share_inside_loa`` is the fraction of pairs with a difference inside the limits (inclusive).
    """

    statistic: ClassVar[str] = "bias"
    estimate: float
    sd_difference: float
    n: int
    share_inside_loa: float
    loa_multiplier: float = LOA_MULTIPLIER

    @property
    def bias(self) -> float:
        return self.estimate

    def limits_of_agreement(self) -> tuple[float, float]:
        half = self.loa_multiplier * self.sd_difference
        return self.estimate - half, self.estimate + half

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        _check_alpha(alpha)
        t = float(sps.t.ppf(1.0 - alpha / 2.0, self.n - 1))
        half = t * self.sd_difference / np.sqrt(self.n)
        return self.estimate - half, self.estimate + half

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        frame = super().summary_frame(alpha)
        lower, upper = self.limits_of_agreement()
        frame["sd_difference"] = self.sd_difference
        frame["loa_lower"] = lower
        frame["loa_upper"] = upper
        frame["share_inside_loa"] = self.share_inside_loa
        return frame


def bland_altman(
    method_g: ArrayLike, reference_g: ArrayLike, *, loa_multiplier: float = LOA_MULTIPLIER
) -> BlandAltmanResult:
    """Bland & Altman agreement of a method against a reference: differences are method - reference
    (negative = the method underestimates), plotted against their pair means."""
    m, r = _paired("method_g", method_g, "reference_g", reference_g, min_n=2)
    diff = m - r
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1))
    lower, upper = bias - loa_multiplier * sd, bias + loa_multiplier * sd
    inside = float(np.mean((diff >= lower) & (diff <= upper)))
    return BlandAltmanResult(
        estimate=bias,
        sd_difference=sd,
        n=int(diff.size),
        share_inside_loa=inside,
        loa_multiplier=loa_multiplier,
    )


# --- Linear recalibration --------------------------------------------------------------------------
@dataclass(frozen=True)
class RecalibrationResult(_Result):
    """Ordinary least squares reference = intercept + slope x raw (the paper's InlineVF recalibration).

    slope = Sxy / Sxx, intercept = ybar - slope xbar; residual variance s^2 = SSE / (n - 2);
    se(slope) = s / sqrt(Sxx), se(intercept) = s sqrt(1/n + xbar^2 / Sxx); ``conf_int`` (of the slope)
    and ``intercept_conf_int`` use t(1 - alpha/2, n - 2). ``r_after`` is Pearson's r between the
    reference and the recalibrated values (equal to r with the raw values: the map is linear and
    increasing when the slope is positive).
    """

    statistic: ClassVar[str] = "slope"
    estimate: float
    intercept: float
    se_slope: float
    se_intercept: float
    r_after: float
    residual_sd: float
    n: int

    @property
    def slope(self) -> float:
        return self.estimate

    def _t(self, alpha: float) -> float:
        _check_alpha(alpha)
        return float(sps.t.ppf(1.0 - alpha / 2.0, self.n - 2))

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        half = self._t(alpha) * self.se_slope
        return self.estimate - half, self.estimate + half

    def intercept_conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        half = self._t(alpha) * self.se_intercept
        return self.intercept - half, self.intercept + half

    def apply(self, raw_g: ArrayLike) -> NDArray[np.float64]:
        """Recalibrated values slope x raw + intercept (a new array)."""
        return self.estimate * np.asarray(raw_g, dtype=np.float64) + self.intercept

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        frame = super().summary_frame(alpha)
        lower, upper = self.intercept_conf_int(alpha)
        frame["intercept"] = self.intercept
        frame["intercept_ci_lower"] = lower
        frame["intercept_ci_upper"] = upper
        frame["r_after"] = self.r_after
        frame["residual_sd"] = self.residual_sd
        return frame


def linear_recalibration(raw_g: ArrayLike, reference_g: ArrayLike) -> RecalibrationResult:
    """Regress the reference (manual mass) on the raw method values; see :class:`RecalibrationResult`."""
    x, y = _paired("raw_g", raw_g, "reference_g", reference_g, min_n=3)
    xbar, ybar = x.mean(), y.mean()
    sxx = float(np.sum((x - xbar) ** 2))
    if sxx == 0.0:
        raise ValueError("linear recalibration is undefined when the raw values are constant")
    slope = float(np.sum((x - xbar) * (y - ybar)) / sxx)
    intercept = float(ybar - slope * xbar)
    resid = y - (intercept + slope * x)
    s2 = float(np.sum(resid**2) / (x.size - 2))
    fitted = intercept + slope * x
    r_after = float(np.corrcoef(y, fitted)[0, 1]) if np.ptp(fitted) > 0 else float("nan")
    return RecalibrationResult(
        estimate=slope,
        intercept=intercept,
        se_slope=float(np.sqrt(s2 / sxx)),
        se_intercept=float(np.sqrt(s2 * (1.0 / x.size + xbar**2 / sxx))),
        r_after=r_after,
        residual_sd=float(np.sqrt(s2)),
        n=int(x.size),
    )


# --- Mean with a t interval (e.g. Dice across studies) ----------------------------------------------
@dataclass(frozen=True)
class MeanResult(_Result):
    """A sample mean with SD (ddof=1) and the t interval mean -/+ t(1 - alpha/2, n - 1) SD / sqrt(n)."""

    statistic: ClassVar[str] = "mean"
    estimate: float
    sd: float
    n: int
    name: str = "mean"

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        _check_alpha(alpha)
        if self.n < 2:
            return float("nan"), float("nan")
        half = float(sps.t.ppf(1.0 - alpha / 2.0, self.n - 1)) * self.sd / np.sqrt(self.n)
        return self.estimate - half, self.estimate + half

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        frame = super().summary_frame(alpha)
        frame.index = pd.Index([self.name], name="statistic")
        frame["sd"] = self.sd
        return frame


def mean_with_ci(values: ArrayLike, *, name: str = "mean") -> MeanResult:
    """Mean and SD of the finite values (NaN, e.g. an undefined Dice, is left out and not counted)."""
    v = _as_1d_float("values", values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite values to average")
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return MeanResult(estimate=float(v.mean()), sd=sd, n=int(v.size), name=name)
