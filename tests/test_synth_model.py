"""The generator's models checked on their own: population (Table 1), the disease models' odds ratios,
volume conservation of the contraction, and the appearance spread. These use generator code directly;
the file-level checks are in test_synth.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm

from lvmass.core.mass import bsa_dubois_m2
from lvmass.synth.anatomy import build_anatomy, continuous_myocardium_volume_ml, plane_areas_mm2
from lvmass.synth.population import (
    AGE_MEAN_Y,
    DEFAULT_DISEASES,
    draw_demographics,
    draw_diseases,
    fit_disease_model,
)
from lvmass.synth.render import draw_appearance


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(123)
    people = [draw_demographics(rng) for _ in range(6000)]
    return people


def test_population_matches_table_1(population):
    age = np.array([p.age for p in population])
    male = np.array([p.sex == "male" for p in population])
    mass = np.array([p.target_lv_mass_g for p in population])
    # Khurshid 2021 Table 1: age 64.2 +/- 7.5, 52.0% female; sampling error at n=6000 is ~0.1 y, ~0.7%
    assert age.mean() == pytest.approx(64.0, abs=0.6)
    assert age.std() == pytest.approx(7.5, abs=0.6)
    assert (~male).mean() == pytest.approx(0.52, abs=0.02)
    # manual LV mass ~90 g overall (the paper's centred InlineVF 90.0 g), men heavier
    assert mass.mean() == pytest.approx(90.0, abs=6.0)
    assert 18.0 < mass.std() < 32.0
    assert mass[male].mean() - mass[~male].mean() > 20.0
    bsa = np.array([p.bsa_m2 for p in population])
    assert np.corrcoef(bsa[male], mass[male])[0, 1] > 0.3  # mass rises with body size


def test_bsa_is_the_pipelines_dubois(population):
    # one definition (lvmass.core.mass): the population's BSA, which sizes the heart, is the pipeline's
    assert bsa_dubois_m2(180.0, 80.0) == pytest.approx(0.007184 * 80**0.425 * 180**0.725)
    for p in population[:50]:
        assert p.bsa_m2 == pytest.approx(bsa_dubois_m2(p.height_cm, p.weight_kg), rel=1e-12)


def test_disease_models_have_their_stated_odds_ratios(population):
    model = fit_disease_model(DEFAULT_DISEASES)
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(5):  # 30,000 draws: standard errors of the log-ORs ~0.02-0.05
        for p in population:
            lvmi = p.target_lv_mass_g / p.bsa_m2
            status = draw_diseases(rng, model, lvmi, p.age, p.sex == "male")
            rows.append((lvmi, p.age, p.sex == "male", *status.values()))
    data = np.array(rows, float)
    z = (data[:, 0] - model.lvmi_ref_mean_g_m2) / model.lvmi_ref_sd_g_m2
    x = sm.add_constant(np.column_stack([z, (data[:, 1] - AGE_MEAN_Y) / 10.0, data[:, 2]]))
    for j, spec in enumerate(DEFAULT_DISEASES):
        y = data[:, 3 + j]
        assert y.mean() == pytest.approx(spec.prevalence, abs=0.02)
        fit = sm.Logit(y, x).fit(disp=0)
        ors = np.exp(fit.params[1:])
        # recovered within ~4 standard errors
        assert ors[0] == pytest.approx(spec.or_per_sd_lvmi, rel=0.12)
        assert ors[1] == pytest.approx(spec.or_per_10y_age, rel=0.15)
        assert ors[2] == pytest.approx(spec.or_male, rel=0.2)


def test_contraction_conserves_myocardium_and_ejects():
    rng = np.random.default_rng(3)
    anatomy = build_anatomy(rng, target_mass_g=95.0, bsa_m2=1.9, rv_angle_rad=math.pi)
    ed = continuous_myocardium_volume_ml(anatomy, 0)
    # the continuous volume hits the mass target (the shell is solved for it)
    assert ed * 1.05 == pytest.approx(95.0, rel=0.05)
    for phase in (10, 17, 30, 45):
        assert continuous_myocardium_volume_ml(anatomy, phase) == pytest.approx(ed, rel=0.01)
    mid = 0.5 * anatomy.endo_apex_z_mm
    cav_ed = plane_areas_mm2(anatomy, mid, 0)[1]
    cav_es = min(plane_areas_mm2(anatomy, mid, p)[1] for p in range(50))
    assert 0.3 < cav_es / cav_ed < 0.7


def test_appearance_scale_widens_the_spread():
    def spread(scale):
        rng = np.random.default_rng(1)
        values = [draw_appearance(rng, scale) for _ in range(200)]
        return np.std([v.myocardium for v in values]), np.std([math.log(v.snr) for v in values])

    narrow, wide = spread(0.5), spread(2.0)
    assert wide[0] > 2.5 * narrow[0] and wide[1] > 2.5 * narrow[1]
    fixed = spread(0.0)
    assert fixed == pytest.approx((0.0, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match=r"appearance_scale must be >= 0\. Received -1"):
        draw_appearance(np.random.default_rng(0), -1.0)
