"""Participants: demographics, true LV mass targets, disease status and the simulated manual reader.

Distributions follow Khurshid et al. 2021, Table 1 (age 64 +/- 8 years, 52% female) and UK Biobank imaging
visit body sizes. The LV mass *target* drawn here drives the anatomy; the participant's *true* mass is then
measured on the built anatomy (``anatomy.py``) and that true mass, indexed by body surface area, is what the
disease models use. Diseases follow logistic models of true LVMI (per reference SD), age and sex whose
coefficients are known, so an analysis can be checked against them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from lvmass.core.mass import bsa_dubois_m2
from lvmass.core.schema import DISEASE_COLUMNS

FEMALE_FRACTION = 0.52
AGE_MEAN_Y, AGE_SD_Y, AGE_RANGE_Y = 64.0, 7.6, (44.0, 84.0)
HEIGHT_CM = {"female": (163.0, 6.3), "male": (176.5, 6.8)}
WEIGHT_KG = {"female": (69.5, 12.5), "male": (84.5, 12.5)}
# True LV mass (g) at the sex's reference BSA, its allometric exponent on BSA and lognormal spread:
# overall about 90 +/- 25 g, men higher (manual UK Biobank reference ranges: ~70 g women, ~105 g men).
LV_MASS_AT_REF_BSA_G = {"female": 74.0, "male": 106.0}
REF_BSA_M2 = {"female": 1.75, "male": 2.02}
LV_MASS_BSA_EXPONENT = 1.1
LV_MASS_AGE_SLOPE_PER_Y = -0.002  # relative change per year from AGE_MEAN_Y (slight decline with age)
LV_MASS_LOG_SD = 0.16


@dataclass(frozen=True)
class DiseaseSpec:
    """Logistic model of one prevalent disease. Odds ratios are per 1 reference SD of true LVMI, per
    10 years of age, and male vs female; ``prevalence`` is the target marginal prevalence (it fixes the
    intercept)."""

    name: str
    prevalence: float
    or_per_sd_lvmi: float
    or_per_10y_age: float
    or_male: float


# Prevalences are raised above UK Biobank's (HTN 30%, AF 3%, HF 0.6%) so that a few hundred synthetic
# participants can estimate the odds ratios; the LVMI odds ratios echo Table 2 (segmentation, per 1 SD).
DEFAULT_DISEASES: tuple[DiseaseSpec, ...] = (
    DiseaseSpec("hypertension", 0.30, 1.55, 1.60, 1.30),
    DiseaseSpec("atrial_fibrillation", 0.12, 1.35, 1.90, 1.60),
    DiseaseSpec("heart_failure", 0.08, 1.80, 1.70, 1.50),
)


@dataclass(frozen=True)
class Demographics:
    """What UK Biobank tabulates for a participant (heights and weights rounded as written to CSV)."""

    sex: str
    age: float
    height_cm: float
    weight_kg: float
    bsa_m2: float
    target_lv_mass_g: float


# The pipeline's DuBois BSA (lvmass.core.mass, the one definition), element-wise over arrays.
_bsa_m2 = np.vectorize(bsa_dubois_m2, otypes=[np.float64])


def _draw_arrays(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Vectorised draws of the demographic model (used per participant and for the reference sample)."""
    male = rng.random(n) >= FEMALE_FRACTION
    age = np.clip(rng.normal(AGE_MEAN_Y, AGE_SD_Y, n), *AGE_RANGE_Y)
    h_mu = np.where(male, HEIGHT_CM["male"][0], HEIGHT_CM["female"][0])
    h_sd = np.where(male, HEIGHT_CM["male"][1], HEIGHT_CM["female"][1])
    height = np.round(np.clip(rng.normal(h_mu, h_sd), 140.0, 205.0), 1)
    # weight correlates with height (~0.45 kg per cm) plus a lognormal-ish residual
    w_mu = np.where(male, WEIGHT_KG["male"][0], WEIGHT_KG["female"][0]) + 0.45 * (height - h_mu)
    w_sd = np.where(male, WEIGHT_KG["male"][1], WEIGHT_KG["female"][1])
    weight = np.round(np.clip(w_mu + w_sd * rng.standard_normal(n), 40.0, 160.0), 1)
    bsa = _bsa_m2(height, weight)
    ref_mass = np.where(male, LV_MASS_AT_REF_BSA_G["male"], LV_MASS_AT_REF_BSA_G["female"])
    ref_bsa = np.where(male, REF_BSA_M2["male"], REF_BSA_M2["female"])
    mass = (
        ref_mass
        * (bsa / ref_bsa) ** LV_MASS_BSA_EXPONENT
        * (1.0 + LV_MASS_AGE_SLOPE_PER_Y * (age - AGE_MEAN_Y))
        * np.exp(LV_MASS_LOG_SD * rng.standard_normal(n) - 0.5 * LV_MASS_LOG_SD**2)
    )
    return {
        "male": male,
        "age": np.round(age, 1),
        "height_cm": height,
        "weight_kg": weight,
        "bsa_m2": bsa,
        "target_lv_mass_g": mass,
    }


def draw_demographics(rng: np.random.Generator) -> Demographics:
    """One participant's sex, age, height, weight, BSA and LV mass target."""
    a = _draw_arrays(rng, 1)
    return Demographics(
        sex="male" if bool(a["male"][0]) else "female",
        age=float(a["age"][0]),
        height_cm=float(a["height_cm"][0]),
        weight_kg=float(a["weight_kg"][0]),
        bsa_m2=float(a["bsa_m2"][0]),
        target_lv_mass_g=float(a["target_lv_mass_g"][0]),
    )


@dataclass(frozen=True)
class DiseaseModel:
    """Fitted logistic disease models: logit p = b0 + b_lvmi z_lvmi + b_age (age-64)/10 + b_male male,
    with ``z_lvmi = (LVMI - lvmi_ref_mean) / lvmi_ref_sd`` (reference moments of the population model)."""

    lvmi_ref_mean_g_m2: float
    lvmi_ref_sd_g_m2: float
    intercepts: tuple[float, ...]
    specs: tuple[DiseaseSpec, ...]

    def probabilities(self, lvmi_g_m2: float, age: float, male: bool) -> dict[str, float]:
        """P(disease) for each disease of the model."""
        z = (lvmi_g_m2 - self.lvmi_ref_mean_g_m2) / self.lvmi_ref_sd_g_m2
        out = {}
        for b0, spec in zip(self.intercepts, self.specs, strict=True):
            eta = (
                b0
                + math.log(spec.or_per_sd_lvmi) * z
                + math.log(spec.or_per_10y_age) * (age - AGE_MEAN_Y) / 10.0
                + math.log(spec.or_male) * float(male)
            )
            out[spec.name] = 1.0 / (1.0 + math.exp(-eta))
        return out

    def to_json(self) -> dict:
        """The model as truth.json records it: log-odds coefficients and the odds ratios they mean."""
        diseases = {}
        for b0, spec in zip(self.intercepts, self.specs, strict=True):
            diseases[spec.name] = {
                "target_prevalence": spec.prevalence,
                "log_odds": {
                    "intercept": b0,
                    "lvmi_per_ref_sd": math.log(spec.or_per_sd_lvmi),
                    "age_per_10y": math.log(spec.or_per_10y_age),
                    "male": math.log(spec.or_male),
                },
                "odds_ratios": asdict(spec)
                | {"lvmi_per_g_m2": spec.or_per_sd_lvmi ** (1.0 / self.lvmi_ref_sd_g_m2)},
            }
        return {
            "formula": (
                "logit p = intercept + lvmi_per_ref_sd*(LVMI - ref_mean)/ref_sd + age_per_10y*(age-64)/10 "
                "+ male*is_male; LVMI = true_lv_mass_g / DuBois BSA"
            ),
            "lvmi_ref_mean_g_m2": self.lvmi_ref_mean_g_m2,
            "lvmi_ref_sd_g_m2": self.lvmi_ref_sd_g_m2,
            "age_centre_y": AGE_MEAN_Y,
            "diseases": diseases,
        }


@functools.lru_cache(maxsize=8)
def fit_disease_model(
    specs: tuple[DiseaseSpec, ...] = DEFAULT_DISEASES, n_reference: int = 200_000
) -> DiseaseModel:
    """Solve each intercept so the marginal prevalence over a fixed reference sample of the population model
    equals the target. Deterministic (fixed reference seed), so every worker computes the same model."""
    for spec in specs:
        if not 0.0 < spec.prevalence < 1.0:
            raise ValueError(
                f"disease {spec.name!r}: prevalence must be in (0, 1). Received {spec.prevalence}"
            )
        if min(spec.or_per_sd_lvmi, spec.or_per_10y_age, spec.or_male) <= 0:
            raise ValueError(f"disease {spec.name!r}: odds ratios must be positive. Received {spec}")
    ref = _draw_arrays(np.random.default_rng(20210101), n_reference)
    lvmi = ref["target_lv_mass_g"] / ref["bsa_m2"]
    mean, sd = float(lvmi.mean()), float(lvmi.std(ddof=1))
    z = (lvmi - mean) / sd
    intercepts = []
    for spec in specs:
        eta0 = (
            math.log(spec.or_per_sd_lvmi) * z
            + math.log(spec.or_per_10y_age) * (ref["age"] - AGE_MEAN_Y) / 10.0
            + math.log(spec.or_male) * ref["male"]
        )
        lo, hi = -20.0, 20.0
        for _ in range(60):  # bisection on the monotone marginal prevalence
            mid = 0.5 * (lo + hi)
            if float(np.mean(1.0 / (1.0 + np.exp(-(mid + eta0))))) < spec.prevalence:
                lo = mid
            else:
                hi = mid
        intercepts.append(0.5 * (lo + hi))
    return DiseaseModel(mean, sd, tuple(intercepts), specs)


def draw_diseases(
    rng: np.random.Generator, model: DiseaseModel, lvmi_g_m2: float, age: float, male: bool
) -> dict[str, int]:
    """0/1 status for each disease column, from the model's probabilities."""
    probs = model.probabilities(lvmi_g_m2, age, male)
    status = {name: int(rng.random() < probs[name]) for name in DISEASE_COLUMNS if name in probs}
    return status
