"""Logistic associations: statsmodels GLM Binomial as the reference, statuses instead of dropped models,
and recovery of a known generating model's odds ratios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from analysis import associations as assoc
from analysis import io as aio
from analysis import tables
from analysis.cohort import build_cohort
from analysis.simulate import simulate_study
from lvmass.core.contracts import ALL_METHODS
from lvmass.core.schema import DISEASE_COLUMNS
from lvmass.core.truth import COHORT_KEY, DISEASE_MODEL_KEY, TRUE_OR_PER_SAMPLE_SD_KEY, TRUTH_LVMI_G_M2


def _draw(n: int, true_or_per_sd: float, seed: int, intercept: float = -1.0) -> dict[str, np.ndarray]:
    """Outcome from logit = intercept + log(OR) z + 0.04 (age - 63) + 0.3 male, z = standardised x."""
    rng = np.random.default_rng(seed)
    age = rng.normal(63.0, 7.5, n)
    male = (rng.random(n) < 0.5).astype(float)
    x = rng.normal(50.0, 9.0, n) + 6.0 * male
    z = (x - x.mean()) / x.std(ddof=1)
    lp = intercept + np.log(true_or_per_sd) * z + 0.04 * (age - 63.0) + 0.3 * male
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-lp))).astype(float)
    return {"y": y, "x": x, "age": age, "male": male}


class TestFitLogistic:
    def test_continuous_exposure_matches_glm_binomial(self):
        d = _draw(3000, 1.7, seed=1)
        result = assoc.fit_logistic(d["y"], d["x"], {"age": d["age"], "male": d["male"]})
        design = np.column_stack([np.ones(d["y"].size), d["x"], d["age"], d["male"]])
        glm = sm.GLM(d["y"], design, family=sm.families.Binomial()).fit()
        assert result.status == "ok"
        assert result.log_odds_ratio == pytest.approx(glm.params[1], rel=1e-6)
        assert result.se == pytest.approx(glm.bse[1], rel=1e-5)
        assert result.estimate == pytest.approx(np.exp(glm.params[1]), rel=1e-6)
        assert result.conf_int() == pytest.approx(tuple(np.exp(glm.conf_int(0.05)[1])), rel=1e-5)
        assert (result.n, result.n_events) == (3000, int(d["y"].sum()))
        assert result.covariates == ("age", "male")

    def test_per_sd_is_the_raw_coefficient_times_the_sd(self):
        d = _draw(2000, 1.5, seed=2)
        per_sd = assoc.fit_logistic(d["y"], d["x"], {"age": d["age"], "male": d["male"]}, per_sd=True)
        raw = assoc.fit_logistic(d["y"], d["x"], {"age": d["age"], "male": d["male"]})
        assert per_sd.exposure_sd == pytest.approx(d["x"].std(ddof=1))
        assert per_sd.log_odds_ratio == pytest.approx(raw.log_odds_ratio * d["x"].std(ddof=1), rel=1e-6)

    def test_binary_exposure_matches_glm_binomial(self):
        d = _draw(3000, 1.7, seed=3)
        lvh = (d["x"] > np.percentile(d["x"], 85)).astype(float)
        result = assoc.fit_logistic(d["y"], lvh, {"age": d["age"], "male": d["male"]})
        design = np.column_stack([np.ones(lvh.size), lvh, d["age"], d["male"]])
        glm = sm.GLM(d["y"], design, family=sm.families.Binomial()).fit()
        assert result.estimate == pytest.approx(np.exp(glm.params[1]), rel=1e-6)
        assert result.conf_int() == pytest.approx(tuple(np.exp(glm.conf_int(0.05)[1])), rel=1e-5)

    def test_missing_values_leave_the_model_as_complete_cases(self):
        d = _draw(1000, 1.5, seed=4)
        x = d["x"].copy()
        x[:100] = np.nan
        age = d["age"].copy()
        age[100:150] = np.nan
        result = assoc.fit_logistic(d["y"], x, {"age": age, "male": d["male"]})
        assert result.n == 850
        assert np.isnan(x[:100]).all() and not np.isnan(d["x"]).any()  # inputs untouched

    def test_too_few_events_is_a_status_not_an_error(self):
        d = _draw(500, 1.5, seed=5)
        y = np.zeros(500)
        y[:4] = 1.0
        result = assoc.fit_logistic(y, d["x"], {"age": d["age"]}, min_events=10)
        assert result.status == assoc.STATUS_TOO_FEW_EVENTS
        assert result.n_events == 4 and np.isnan(result.estimate)

    def test_empty_cell_of_a_binary_exposure_is_separation(self):
        d = _draw(800, 1.5, seed=6)
        lvh = (d["x"] > np.percentile(d["x"], 90)).astype(float)
        y = d["y"].copy()
        y[lvh == 1.0] = 0.0  # no event among the exposed: the MLE does not exist
        result = assoc.fit_logistic(y, lvh, {"age": d["age"]})
        assert result.status == assoc.STATUS_SEPARATION

    def test_continuous_perfect_separation_is_reported(self):
        d = _draw(400, 1.5, seed=7)
        y = (d["x"] > np.median(d["x"])).astype(float)
        result = assoc.fit_logistic(y, d["x"], {"age": d["age"]})
        assert result.status in {assoc.STATUS_SEPARATION, assoc.STATUS_NOT_CONVERGED}

    def test_constant_exposure_and_constant_covariate(self):
        d = _draw(600, 1.5, seed=8)
        flat = assoc.fit_logistic(d["y"], np.ones(600), {"age": d["age"]})
        assert flat.status == assoc.STATUS_NO_VARIATION
        one_sex = assoc.fit_logistic(d["y"], d["x"], {"age": d["age"], "male": np.ones(600)})
        assert one_sex.status == "ok" and one_sex.covariates == ("age",)

    def test_outcome_must_be_binary(self):
        with pytest.raises(ValueError, match="0/1"):
            assoc.fit_logistic(np.full(50, 2.0), np.arange(50.0), {})


class TestTruthRecovery:
    def test_intervals_cover_the_true_or_at_about_the_nominal_rate(self):
        # 40 independent cohorts x 1 model: a correct estimator's 95% intervals cover the truth ~38 times
        # (binomial sd 1.4); fewer than 33 would mean bias or too-narrow intervals. The mean log OR must
        # also sit within 4 standard errors of its own Monte Carlo mean of the truth.
        true_or = 1.6
        estimates, covered = [], 0
        for seed in range(40):
            d = _draw(1500, true_or, seed=100 + seed)
            fit = assoc.fit_logistic(d["y"], d["x"], {"age": d["age"], "male": d["male"]}, per_sd=True)
            lower, upper = fit.conf_int()
            covered += lower <= true_or <= upper
            estimates.append(fit.log_odds_ratio)
        assert covered >= 33
        estimates = np.asarray(estimates)
        assert abs(estimates.mean() - np.log(true_or)) < 4 * estimates.std(ddof=1) / np.sqrt(estimates.size)

    def test_recovers_the_simulated_cohorts_true_ors(self):
        study = simulate_study(12000, seed=3)
        frame = study.phenotypes.merge(study.truth, on="eid")
        true_ors = assoc.true_odds_ratios(study.parameters)
        assert set(true_ors) == set(DISEASE_COLUMNS)
        recovery = assoc.truth_recovery(frame, true_ors)
        assert list(recovery["status"]) == ["ok"] * 3
        assert recovery["recovered"].all(), recovery

    def test_reads_the_generators_own_truth_json_keys(self):
        # truth.json as lvmass.synth writes it (the key names imported from lvmass.core.truth): the
        # disease model's ORs are per SD of its reference population; the cohort section rescales them to
        # the realised cohort's SD, which is what a per-SD model fitted on that cohort estimates.
        parameters = {
            DISEASE_MODEL_KEY: {
                "diseases": {"hypertension": {"odds_ratios": {"or_per_sd_lvmi": 1.55}}}
            },
            COHORT_KEY: {
                TRUE_OR_PER_SAMPLE_SD_KEY: {"hypertension": 1.54, "heart_failure": 1.78, "other": 3.0}
            },
        }
        assert assoc.true_odds_ratios(parameters) == pytest.approx(
            {"hypertension": 1.54, "heart_failure": 1.78}
        )

    @pytest.mark.parametrize(
        ("parameters", "match"),
        [
            # another generator's layout, or the model's reference-SD ORs only: never guessed at
            ({"odds_ratios_per_sd_true_lvmi": {"hypertension": 1.5}}, r"truth.json has no 'cohort'"),
            (
                {"cohort": {"n_participants": 3}, "disease_model": {"diseases": {"hypertension": {}}}},
                r"truth.json has no 'cohort.true_odds_ratio_per_sample_sd_lvmi'",
            ),
            (
                {"cohort": {"true_odds_ratio_per_sample_sd_lvmi": {"hypertension": None}}},
                r"holds no odds ratio",
            ),
            (
                {"cohort": {"true_odds_ratio_per_sample_sd_lvmi": {"hypertension": "big"}}},
                r"\.hypertension must be a positive number, got 'big'",
            ),
        ],
    )
    def test_a_truth_json_without_them_is_a_clear_error(self, parameters, match):
        with pytest.raises(ValueError, match=match):
            assoc.true_odds_ratios(parameters)

    def test_recovers_the_true_ors_of_lvmass_synth_population(self, tmp_path):
        # 2,000 participants through lvmass.synth's own population -> anatomy -> true LVMI -> disease path
        # (generate_population: the truth generate_cohort writes, without images), read back with the
        # analysis readers; the true ORs are the ones the generator recorded in its truth.json. A correct
        # analysis covers each with its 95% CI in 95% of cohorts (this seed: |z| < 0.3 for all three).
        from lvmass.synth import generate_population

        paths = generate_population(tmp_path / "population", participants=2000, seed=2021)
        truth = aio.read_truth(paths.root)
        phenotypes = aio.read_phenotypes(paths.phenotypes_csv)
        frame = phenotypes.merge(
            truth.table[["eid", TRUTH_LVMI_G_M2]], on="eid", validate="one_to_one"
        )
        true_ors = assoc.true_odds_ratios(truth.parameters)
        assert true_ors == truth.parameters[COHORT_KEY][TRUE_OR_PER_SAMPLE_SD_KEY]
        assert set(true_ors) == set(DISEASE_COLUMNS)
        recovery = assoc.truth_recovery(frame, true_ors)
        assert (recovery["status"] == "ok").all() and (recovery["n"] == 2000).all()
        assert recovery["recovered"].all(), recovery


class TestAssociationTable:
    def test_every_disease_method_exposure_is_a_row_even_when_not_fitted(self):
        study = simulate_study(400, seed=5)
        cohort = build_cohort(study.results, study.phenotypes)
        frame = cohort.frame.copy()
        frame["heart_failure"] = 0.0
        frame.loc[frame.index[:3], "heart_failure"] = 1.0  # 3 events: too few for any model
        models = assoc.association_results(frame, cohort.methods, min_events=10)
        assert len(models) == len(DISEASE_COLUMNS) * len(ALL_METHODS) * len(assoc.EXPOSURES)
        hf = [m for m in models if m.outcome == "heart_failure"]
        assert {m.status for m in hf} == {assoc.STATUS_TOO_FEW_EVENTS}
        table = tables.table2(models)
        assert len(table) == len(DISEASE_COLUMNS) * len(ALL_METHODS)
        hf_rows = table[table["Disease"] == "Heart failure"]
        assert (hf_rows["LVMI (per 1 SD)"] == "too few events").all()
        htn = table[table["Disease"] == "Hypertension"].iloc[0]
        assert " (" in htn["LVMI (per 1 SD)"] and "–" in htn["LVMI (per 1 SD)"]

    def test_results_frame_keeps_status_rows(self):
        ok = assoc.OddsRatioResult(
            "hypertension", "lvh", np.log(2.0), 0.1, 100, 30, "ok", ("age",), label="m"
        )
        failed = assoc.OddsRatioResult(
            "hypertension", "lvh_p90", np.nan, np.nan, 100, 30, "separation", label="m"
        )
        frame = assoc.results_frame([ok, failed])
        assert list(frame["status"]) == ["ok", "separation"]
        assert frame.loc[0, "odds_ratio"] == pytest.approx(2.0)
        assert frame.loc[0, "ci_lower"] == pytest.approx(np.exp(np.log(2.0) - 1.959964 * 0.1), rel=1e-6)
        assert pd.isna(frame.loc[1, "odds_ratio"])
