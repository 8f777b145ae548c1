"""A simulated pipeline output with known truth, for tests and for trying the report without the pipeline.

``simulate_study`` draws a cohort from a stated model and returns what the pipeline and the synthetic
generator would write: long results rows (RESULTS_SCHEMA), the phenotype table, per-participant truth and
the model's true parameters. ``write_study`` writes them in the real layouts (hive-partitioned Parquet with
RESULTS_FILE_SCHEMA, phenotypes.csv, truth.csv, truth.json). Nothing in the analysis depends on it.

The model (all drawn with ``numpy.random.default_rng(seed)``):

* sex 50/50; age ~ N(63, 7.5) years; height, weight by sex; BSA by DuBois;
* true LVMI ~ N(47, 7) g/m2 (women) / N(58, 8) (men); true mass = LVMI x BSA;
* disease d: logit P = a_d + log(OR_d) z + b_age (age - 63) + b_male male, z = true LVMI standardised
  by its sample mean and SD, so OR_d is the true odds ratio per 1 SD of true LVMI;
* manual mass (a ``manual_share`` of participants) = true + N(0, 8 g);
* each method = a distortion of the true mass plus noise; InlineVF and ML4H_seg are then centred per sex
  on the manual mean of that sex, as the pipeline does; LVH and LVH_p90 follow the paper's definitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lvmass.core.contracts import (
    INLINEVF_RECALIBRATION_INTERCEPT_G,
    INLINEVF_RECALIBRATION_SLOPE,
    LVH_LVMI_THRESHOLD_G_M2,
    LVH_PERCENTILE,
    METHOD_INLINEVF,
    METHOD_INLINEVF_RECALIBRATED,
    METHOD_ML4H_REG,
    METHOD_ML4H_SEG,
    MYOCARDIAL_DENSITY_G_PER_ML,
)
from lvmass.core.mass import bsa_dubois_m2
from lvmass.core.schema import (
    DISEASE_COLUMNS,
    PHENOTYPE_COLUMNS,
    RESULTS_DIRNAME,
    RESULTS_FILE_SCHEMA,
    RESULTS_SCHEMA,
)
from lvmass.core.truth import (
    COHORT_KEY,
    TRUE_OR_PER_SAMPLE_SD_KEY,
    TRUTH_CSV,
    TRUTH_EID,
    TRUTH_JSON,
    TRUTH_LV_MASS_G,
    TRUTH_LVMI_G_M2,
)

DEFAULT_TRUE_ODDS_RATIOS: dict[str, float] = {
    "hypertension": 1.6,
    "atrial_fibrillation": 1.2,
    "heart_failure": 1.9,
}
DEFAULT_INTERCEPTS: dict[str, float] = {
    "hypertension": -1.0,
    "atrial_fibrillation": -3.3,
    "heart_failure": -4.3,
}
AGE_LOG_OR_PER_YEAR = 0.04
MALE_LOG_OR = 0.3
MANUAL_NOISE_SD_G = 8.0
PHENOTYPES_CSV = "phenotypes.csv"  # the name write_study gives the phenotype table (any name would do)


# The pipeline's DuBois BSA (lvmass.core.mass, the one definition), element-wise over arrays.
_bsa_m2 = np.vectorize(bsa_dubois_m2, otypes=[np.float64])


@dataclass(frozen=True)
class SimulatedStudy:
    results: pd.DataFrame  # RESULTS_SCHEMA columns, one row per participant x instance x method
    phenotypes: pd.DataFrame  # PHENOTYPE_COLUMNS
    truth: pd.DataFrame  # eid, true_lv_mass_g, true_lvmi_g_m2, true_bsa_m2
    parameters: dict[str, object]  # truth.json


def _centre_by_sex(raw: np.ndarray, sex: np.ndarray, manual: np.ndarray) -> np.ndarray:
    out = raw.copy()
    for s in ("female", "male"):
        m = sex == s
        target = np.nanmean(np.where(m, manual, np.nan))
        out[m] = raw[m] - raw[m].mean() + target
    return out


def _flags(mass: np.ndarray, sex: np.ndarray, bsa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lvmi = mass / bsa
    threshold = np.where(sex == "male", LVH_LVMI_THRESHOLD_G_M2["male"], LVH_LVMI_THRESHOLD_G_M2["female"])
    p90 = np.zeros(mass.size, dtype=bool)
    for s in ("female", "male"):
        m = sex == s
        p90[m] = mass[m] > np.percentile(mass[m], LVH_PERCENTILE)
    return lvmi, lvmi > threshold, p90


def simulate_study(
    n: int = 2000,
    *,
    seed: int = 0,
    true_odds_ratios: Mapping[str, float] = DEFAULT_TRUE_ODDS_RATIOS,
    manual_share: float = 0.25,
    qc_fail_share: float = 0.01,
    repeat_visit_share: float = 0.02,
) -> SimulatedStudy:
    """Draw a cohort of ``n`` participants from the model in the module docstring."""
    if n < 20:
        raise ValueError(f"n must be at least 20. Received: {n!r}")
    rng = np.random.default_rng(seed)
    eid = np.arange(1_000_001, 1_000_001 + n, dtype=np.int64)
    male = rng.random(n) < 0.5
    sex = np.where(male, "male", "female")
    age = np.clip(rng.normal(63.0, 7.5, n), 45.0, 82.0)
    height = np.where(male, rng.normal(176.0, 7.0, n), rng.normal(163.0, 6.5, n))
    weight = np.clip(np.where(male, rng.normal(84.0, 13.0, n), rng.normal(70.0, 12.0, n)), 40.0, 160.0)
    bsa = _bsa_m2(height, weight)
    true_lvmi = np.where(male, rng.normal(58.0, 8.0, n), rng.normal(47.0, 7.0, n)) + 0.15 * (age - 63.0)
    true_mass = true_lvmi * bsa
    z = (true_lvmi - true_lvmi.mean()) / true_lvmi.std(ddof=1)
    diseases = {}
    for disease in DISEASE_COLUMNS:
        log_or = np.log(true_odds_ratios[disease])
        lp = (
            DEFAULT_INTERCEPTS[disease] + log_or * z + AGE_LOG_OR_PER_YEAR * (age - 63.0) + MALE_LOG_OR * male
        )
        diseases[disease] = (rng.random(n) < 1.0 / (1.0 + np.exp(-lp))).astype(int)
    has_manual = rng.random(n) < manual_share
    manual = np.where(has_manual, true_mass + rng.normal(0.0, MANUAL_NOISE_SD_G, n), np.nan)
    phenotypes = pd.DataFrame(
        {
            "eid": eid,
            "sex": sex,
            "age": np.round(age, 1),
            "height_cm": np.round(height, 1),
            "weight_kg": np.round(weight, 1),
            **diseases,
            "manual_lv_mass_g": np.round(manual, 2),
        }
    )[list(PHENOTYPE_COLUMNS)]

    raw = {
        METHOD_INLINEVF: 1.65 * true_mass + 8.0 + rng.normal(0.0, 16.0, n),
        METHOD_ML4H_SEG: 1.12 * true_mass + rng.normal(0.0, 9.0, n),
        METHOD_ML4H_REG: 0.6 * true_mass + 0.4 * true_mass.mean() + rng.normal(0.0, 9.0, n),
    }
    calibrated = {
        METHOD_INLINEVF: _centre_by_sex(raw[METHOD_INLINEVF], sex, manual),
        METHOD_ML4H_SEG: _centre_by_sex(raw[METHOD_ML4H_SEG], sex, manual),
        METHOD_ML4H_REG: raw[METHOD_ML4H_REG],
        METHOD_INLINEVF_RECALIBRATED: INLINEVF_RECALIBRATION_SLOPE * raw[METHOD_INLINEVF]
        + INLINEVF_RECALIBRATION_INTERCEPT_G,
    }
    calibration = {
        METHOD_INLINEVF: "sex_mean_centered",
        METHOD_ML4H_SEG: "sex_mean_centered",
        METHOD_ML4H_REG: "none",
        METHOD_INLINEVF_RECALIBRATED: "linear_recalibration",
    }
    qc_fail = rng.random(n) < qc_fail_share
    frames = []
    for method, mass in calibrated.items():
        raw_mass = raw[METHOD_INLINEVF] if method == METHOD_INLINEVF_RECALIBRATED else raw[method]
        lvmi, lvh, p90 = _flags(mass, sex, bsa)
        frames.append(
            pd.DataFrame(
                {
                    "participant_id": [str(e) for e in eid],
                    "eid": eid,
                    "instance": 2,
                    "method": method,
                    "lv_mass_raw_g": raw_mass,
                    "lv_mass_g": mass,
                    "calibration": calibration[method],
                    "myocardium_volume_ml": raw_mass / MYOCARDIAL_DENSITY_G_PER_ML,
                    "lv_cavity_volume_ml": 1.4 * true_mass,
                    "bsa_m2": bsa,
                    "lvmi_g_m2": lvmi,
                    "lvh": lvh,
                    "lvh_p90": p90,
                    "sex": sex,
                    "age": age,
                    "n_slices": 10,
                    "pixel_spacing_row_mm": 1.83,
                    "pixel_spacing_col_mm": 1.83,
                    "slice_spacing_mm": 10.0,
                    "tensor_pixel_spacing_mm": 1.83,
                    "in_plane_scale": 1.0,
                    "qc_flags": [["mass_implausible"] if f else [] for f in qc_fail],
                    "qc_pass": ~qc_fail,
                    "model_version": None if method.startswith("inlinevf") else "sim-1",
                    "pipeline_version": "sim",
                    "source_uri": [f"sim://{e}_20209_2_0.zip" for e in eid],
                }
            )
        )
    results = pd.concat(frames, ignore_index=True)
    repeat = results[results["eid"].isin(eid[rng.random(n) < repeat_visit_share])].copy()
    repeat["instance"] = 3
    repeat["lv_mass_g"] = repeat["lv_mass_g"] + rng.normal(0.0, 5.0, len(repeat))
    results = pd.concat([results, repeat], ignore_index=True)[RESULTS_SCHEMA.names]
    truth = pd.DataFrame(
        {TRUTH_EID: eid, TRUTH_LV_MASS_G: true_mass, TRUTH_LVMI_G_M2: true_lvmi, "true_bsa_m2": bsa}
    )
    parameters: dict[str, object] = {  # truth.json, with the truth contract's keys (lvmass.core.truth)
        COHORT_KEY: {TRUE_OR_PER_SAMPLE_SD_KEY: {d: float(true_odds_ratios[d]) for d in DISEASE_COLUMNS}},
        "intercepts": dict(DEFAULT_INTERCEPTS),
        "age_log_or_per_year": AGE_LOG_OR_PER_YEAR,
        "male_log_or": MALE_LOG_OR,
        "seed": seed,
    }
    return SimulatedStudy(results=results, phenotypes=phenotypes, truth=truth, parameters=parameters)


def write_results(results: pd.DataFrame, out_dir: str | Path, *, files_per_method: int = 2) -> Path:
    """Write results rows as the pipeline does: ``out_dir/lvmass/method=<m>/part-<k>.parquet`` with
    RESULTS_FILE_SCHEMA (snappy). Returns ``out_dir``."""
    out = Path(out_dir)
    for method, group in results.groupby("method", sort=False):
        folder = out / RESULTS_DIRNAME / f"method={method}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, chunk in enumerate(np.array_split(np.arange(len(group)), files_per_method)):
            part = group.iloc[chunk].drop(columns="method")
            table = pa.Table.from_pandas(part, schema=RESULTS_FILE_SCHEMA, preserve_index=False)
            pq.write_table(table, folder / f"part-{k:05d}.parquet", compression="snappy")
    return out


def write_study(study: SimulatedStudy, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results/`` (hive Parquet), ``phenotypes.csv``, ``truth.csv`` and ``truth.json``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": write_results(study.results, out / "results"),
        "phenotypes": out / PHENOTYPES_CSV,
        "truth": out / TRUTH_CSV,
        "truth_json": out / TRUTH_JSON,
    }
    study.phenotypes.to_csv(paths["phenotypes"], index=False)
    study.truth.to_csv(paths["truth"], index=False)
    paths["truth_json"].write_text(json.dumps(study.parameters, indent=2), encoding="utf-8")
    return paths
