"""analysis.stats against worked values computed independently (by hand, another library, a publication)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from analysis import stats

REFERENCE_VALUES = json.loads(
    (Path(__file__).parent / "data" / "analysis" / "reference_values.json").read_text(encoding="utf-8")
)


def _correlated(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(100.0, 20.0, n)
    y = rho * (x - 100.0) / 20.0 + np.sqrt(1 - rho**2) * rng.normal(0.0, 1.0, n)
    return x, 90.0 + 15.0 * y


class TestPearson:
    def test_r_and_fisher_ci_match_scipy(self):
        x, y = _correlated(300, 0.7, seed=1)
        result = stats.pearson(x, y)
        reference = sps.pearsonr(x, y)
        assert result.estimate == pytest.approx(reference.statistic, abs=1e-12)
        assert result.n == 300
        # scipy's PearsonRResult.confidence_interval is also Fisher's z interval: same formula, separate code.
        for alpha in (0.05, 0.10):
            ci = reference.confidence_interval(confidence_level=1 - alpha)
            assert result.conf_int(alpha) == pytest.approx((ci.low, ci.high), abs=1e-12)

    @pytest.mark.parametrize(
        "case", REFERENCE_VALUES["fisher_ci_khurshid_2021"]["cases"], ids=lambda c: c["method"]
    )
    def test_fisher_ci_reproduces_the_papers_published_intervals(self, case):
        n = REFERENCE_VALUES["fisher_ci_khurshid_2021"]["n"]
        lower, upper = stats.CorrelationResult(estimate=case["r"], n=n).conf_int()
        # Published r and bounds are rounded to 3 decimals: each moves a bound by up to ~0.0005.
        assert lower == pytest.approx(case["ci"][0], abs=0.0011)
        assert upper == pytest.approx(case["ci"][1], abs=0.0011)

    def test_summary_frame_has_estimate_ci_and_n(self):
        frame = stats.pearson([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]).summary_frame()
        assert list(frame.columns) == ["estimate", "ci_lower", "ci_upper", "n"]
        assert frame.loc["pearson_r", "estimate"] == pytest.approx(0.8)
        assert frame.loc["pearson_r", "n"] == 5

    def test_inputs_are_not_modified(self):
        x, y = _correlated(50, 0.5, seed=2)
        x0, y0 = x.copy(), y.copy()
        stats.pearson(x, y)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)

    @pytest.mark.parametrize(
        ("x", "y", "match"),
        [
            ([1.0, 2.0, 3.0], [1.0, 2.0], "same length"),
            ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "non-finite"),
            ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "constant"),
            ([1.0, 2.0], [1.0, 2.0], "at least 3"),
        ],
    )
    def test_bad_input_is_rejected_with_the_reason(self, x, y, match):
        with pytest.raises(ValueError, match=match):
            stats.pearson(x, y)


class TestBootstrapMae:
    def test_same_seed_same_replicates_and_interval(self):
        x, y = _correlated(400, 0.8, seed=3)
        a = stats.mean_absolute_error(x, y, n_boot=500, seed=11)
        b = stats.mean_absolute_error(x, y, n_boot=500, seed=11)
        np.testing.assert_array_equal(a.replicates, b.replicates)
        assert a.conf_int() == b.conf_int()

    def test_another_seed_gives_other_replicates(self):
        x, y = _correlated(400, 0.8, seed=3)
        a = stats.mean_absolute_error(x, y, n_boot=200, seed=1)
        b = stats.mean_absolute_error(x, y, n_boot=200, seed=2)
        assert not np.array_equal(a.replicates, b.replicates)

    def test_estimate_is_the_mae_and_interval_matches_the_normal_theory_one(self):
        x, y = _correlated(2000, 0.8, seed=4)
        errors = np.abs(x - y)
        result = stats.mean_absolute_error(x, y, n_boot=1000, seed=5)
        assert result.estimate == pytest.approx(errors.mean())
        assert result.n == 2000 and result.replicates.shape == (1000,)
        # The bootstrap SE of a mean converges to sd / sqrt(n); with 1000 replicates its Monte Carlo
        # error is ~2.2% (1 / sqrt(2 x 1000)), so 10% is a loose but meaningful bound.
        se = errors.std(ddof=1) / np.sqrt(errors.size)
        assert result.replicates.std(ddof=1) == pytest.approx(se, rel=0.10)
        lower, upper = result.conf_int()
        assert lower == pytest.approx(errors.mean() - 1.96 * se, abs=0.25 * se)
        assert upper == pytest.approx(errors.mean() + 1.96 * se, abs=0.25 * se)

    def test_percentile_interval_is_the_quantiles_of_the_replicates(self):
        result = stats.bootstrap_mean(np.arange(30.0), n_boot=250, seed=9)
        assert result.replicates.shape == (250,)  # not a multiple of the drawing block
        assert result.conf_int(0.1) == pytest.approx(tuple(np.quantile(result.replicates, [0.05, 0.95])))

    def test_bad_n_boot_is_rejected(self):
        with pytest.raises(ValueError, match="n_boot"):
            stats.bootstrap_mean([1.0, 2.0, 3.0], n_boot=0)


class TestDunnClark:
    @pytest.mark.parametrize("case", REFERENCE_VALUES["dunn_clark_1969"]["cases"], ids=str)
    def test_published_worked_values(self, case):
        result = stats.dunn_clark_test(case["r12"], case["r13"], case["r23"], case["n"])
        assert round(result.statistic_z, case["decimals"]) == pytest.approx(case["z"], abs=1e-12)
        assert round(result.p_value, case["decimals"]) == pytest.approx(case["p"], abs=1e-12)

    @pytest.mark.parametrize("case", REFERENCE_VALUES["zou_2007"]["cases"], ids=str)
    def test_zou_interval_of_the_difference(self, case):
        result = stats.dunn_clark_test(case["r12"], case["r13"], case["r23"], case["n"])
        lower, upper = result.conf_int()
        assert round(lower, case["decimals"]) == pytest.approx(case["ci"][0], abs=1e-12)
        assert round(upper, case["decimals"]) == pytest.approx(case["ci"][1], abs=1e-12)
        assert result.estimate == pytest.approx(case["r12"] - case["r13"])

    def test_the_correlation_between_methods_enters(self):
        # Same r12, r13 and n: the more the two methods agree with each other, the more precise their
        # comparison, so |z| grows with r23 (Dunn & Clark's covariance term). r23 values keep the 3 x 3
        # correlation matrix positive definite (r23 > r12 r13 - sqrt((1 - r12^2)(1 - r13^2)) = 0.38).
        z = [abs(stats.dunn_clark_test(0.86, 0.80, r23, 891).statistic_z) for r23 in (0.5, 0.7, 0.9)]
        assert z[0] < z[1] < z[2]

    def test_from_data_equals_from_correlations_and_is_antisymmetric(self):
        rng = np.random.default_rng(6)
        manual = rng.normal(90.0, 25.0, 500)
        a = manual + rng.normal(0.0, 10.0, 500)
        b = manual + rng.normal(0.0, 14.0, 500)
        result = stats.compare_dependent_correlations(manual, a, b)
        corr = np.corrcoef([manual, a, b])
        expected = stats.dunn_clark_test(corr[0, 1], corr[0, 2], corr[1, 2], 500)
        assert result.statistic_z == pytest.approx(expected.statistic_z)
        swapped = stats.compare_dependent_correlations(manual, b, a)
        assert swapped.statistic_z == pytest.approx(-result.statistic_z)
        assert swapped.p_value == pytest.approx(result.p_value)
        assert result.summary_frame().loc["r12_minus_r13", "p_value"] == pytest.approx(result.p_value)

    @pytest.mark.parametrize(
        ("r12", "r13", "r23", "n", "match"),
        [
            (1.0, 0.5, 0.5, 100, "r12"),
            (0.5, 0.5, -1.0, 100, "r23"),
            (0.5, 0.4, 0.3, 3, "n must be > 3"),
        ],
    )
    def test_invalid_arguments(self, r12, r13, r23, n, match):
        with pytest.raises(ValueError, match=match):
            stats.dunn_clark_test(r12, r13, r23, n)


class TestBlandAltman:
    def test_hand_worked_example(self):
        # differences method - reference = [-1, 1, -1, 3]: mean 0.5; squared deviations 2.25, 0.25, 2.25,
        # 6.25 sum to 11, so SD (ddof=1) = sqrt(11 / 3) = 1.914854; LoA = 0.5 -/+ 1.96 x 1.914854.
        result = stats.bland_altman([10.0, 12.0, 14.0, 20.0], [11.0, 11.0, 15.0, 17.0])
        sd = np.sqrt(11.0 / 3.0)
        assert result.bias == pytest.approx(0.5)
        assert result.sd_difference == pytest.approx(sd)
        assert result.limits_of_agreement() == pytest.approx((0.5 - 1.96 * sd, 0.5 + 1.96 * sd))
        assert result.share_inside_loa == 1.0
        # t interval of the bias: t(0.975, 3) = 3.182446
        assert result.conf_int() == pytest.approx(
            (0.5 - 3.182446 * sd / 2, 0.5 + 3.182446 * sd / 2), rel=1e-6
        )

    def test_share_inside_counts_points_outside(self):
        diffs = np.array([0.0] * 19 + [50.0])
        result = stats.bland_altman(100.0 + diffs, np.full(20, 100.0))
        # bias 50 / 20 = 2.5; squared deviations 19 x 2.5^2 + 47.5^2 = 118.75 + 2256.25 = 2375, / 19 = 125,
        # so SD = sqrt(125) and the limits are 2.5 -/+ 1.96 sqrt(125) = -19.413 and 24.413: the outlier
        # lies outside its own limits, the 19 zeros inside
        assert result.limits_of_agreement() == pytest.approx(
            (2.5 - 1.96 * np.sqrt(125.0), 2.5 + 1.96 * np.sqrt(125.0)))
        assert result.share_inside_loa == pytest.approx(19 / 20)

    def test_uses_ddof_1_not_ddof_0(self):
        rng = np.random.default_rng(7)
        m, r = rng.normal(0, 1, 8), rng.normal(0, 1, 8)
        result = stats.bland_altman(m, r)
        assert result.sd_difference == pytest.approx(np.std(m - r, ddof=1))
        assert result.sd_difference != pytest.approx(np.std(m - r, ddof=0))


class TestRecalibration:
    def test_matches_statsmodels_ols(self):
        rng = np.random.default_rng(8)
        raw = rng.normal(155.0, 38.0, 400)
        manual = 0.54 * raw + 6.0 + rng.normal(0.0, 12.0, 400)
        result = stats.linear_recalibration(raw, manual)
        ols = sm.OLS(manual, sm.add_constant(raw)).fit()
        assert (result.intercept, result.slope) == pytest.approx(tuple(ols.params), rel=1e-10)
        assert (result.se_intercept, result.se_slope) == pytest.approx(tuple(ols.bse), rel=1e-10)
        ci = ols.conf_int(0.05)
        assert result.conf_int() == pytest.approx(tuple(ci[1]), rel=1e-10)
        assert result.intercept_conf_int() == pytest.approx(tuple(ci[0]), rel=1e-10)
        assert result.r_after == pytest.approx(np.corrcoef(raw, manual)[0, 1])
        np.testing.assert_allclose(result.apply(raw), ols.fittedvalues)

    def test_recovers_the_papers_equation_from_exact_data(self):
        raw = np.linspace(80.0, 260.0, 25)
        manual = 0.543487 * raw + 5.808005
        result = stats.linear_recalibration(raw, manual)
        assert result.slope == pytest.approx(0.543487)
        assert result.intercept == pytest.approx(5.808005)


class TestMeanOfDice:
    """Dice itself is ``lvmass.core.metrics``' (tests/core/test_metrics.py)."""

    def test_mean_with_t_interval_leaves_out_undefined_values(self):
        values = [0.9, 0.8, np.nan, 0.85, 0.95]
        result = stats.mean_with_ci(values, name="dice")
        finite = np.array([0.9, 0.8, 0.85, 0.95])
        assert result.n == 4
        expected = sps.t.interval(0.95, 3, loc=finite.mean(), scale=sps.sem(finite))
        assert result.conf_int() == pytest.approx(expected)
