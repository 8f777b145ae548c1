"""The default bundled models (per slice, trained on synthetic slices only) still do what their recorded
evaluations say, on a real heart and on synthetic stacks never used in training.

Oracles: the experts' contours of the real study in ``tests/data/real_cmr`` (Sunnybrook SC-HF-I-6, GE 1.5 T,
endocardial and epicardial contours at end diastole) and the generator's truth of fresh synthetic stacks.
The recorded numbers come from ``benchmarks/results/real_study_evaluation.json`` (entries
``default_ml4h_seg`` and ``default_ml4h_reg``) and ``benchmarks/results/synthetic_evaluation.json``; they are
read here, so a re-recorded evaluation moves the windows too.

Tolerances. The real study goes through the same code and weights as the recording, so its scores must be the
recorded ones up to floating-point differences between CPUs: 0.01 of Dice (a few boundary voxels whose two
most likely classes tie) and 1% of mass. The synthetic stacks are fresh (seed 77, never used in training or in
the recorded evaluation): with normal errors of the recorded mean absolute error MAE, the sd is MAE x
sqrt(pi / 2); one stack beyond 4 sd happens about once in 16,000, and the mean |error| of 3 stacks exceeds
2.5 x MAE about once in 1,000 draws.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline.inference import SavedModelHandler
from lvmass.core import contracts
from lvmass.core.postprocess import LV_WITH_CLOSED_RINGS
from lvmass.storage.models import bundled_model_dir, read_model_card
from tests.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "tests" / "data" / "real_cmr"
STUDY = "SCD0000501"
SEED = 77
N_STACKS = 3


_load = load_benchmark


def recorded_real(name: str) -> dict:
    entry = json.loads((RESULTS / "real_study_evaluation.json").read_text())["models"][name]
    return next(s for s in entry["studies"] if s["study"] == STUDY)


@pytest.fixture(scope="module")
def er():
    return _load("evaluate_real")


@pytest.mark.parametrize("kind", [contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG])
def test_default_cards_say_what_the_models_are(kind):
    card = read_model_card(bundled_model_dir(kind), expected_kind=kind)
    assert card.per_slice and card.label_source == "true_anatomy" and card.trained_on_synthetic_data
    assert card.pixel_spacing_mm == 1.5
    low, high = card.training_pixel_spacing_mm
    assert low <= 1.17 and high >= 1.92  # ordinary clinical pixels are inside the drawn range
    assert card.inference_memory is not None  # the pipeline's default batch size comes from it
    if kind == contracts.MODEL_KIND_SEG:
        assert card.postprocess == LV_WITH_CLOSED_RINGS and card.crop_inference.window_signature


def test_segmenter_on_the_real_study_is_what_was_recorded(er):
    """Through the pipeline's decode, tensor, handler (crop, window, post-processing) at the experts' end
    diastole: the recorded Dice, ring and QC, and a mass on the contoured slices within 15% of the
    experts'."""
    rs = er.rs
    [real] = rs.find_studies(DATA)
    predict, card = er.handler_predictor(bundled_model_dir(contracts.MODEL_KIND_SEG))
    scored = er.evaluate_study(real, predict, card.pixel_spacing_mm, card.training_pixel_spacing_mm)
    got = scored["expert_frame"]
    want = recorded_real("default_ml4h_seg")["expert_frame"]
    assert got["myocardium_dice_mean"] == pytest.approx(want["myocardium_dice_mean"], abs=0.01)
    assert got["cavity_dice_mean"] == pytest.approx(want["cavity_dice_mean"], abs=0.01)
    assert got["mass_on_contoured_slices_g"] == pytest.approx(want["mass_on_contoured_slices_g"], rel=0.01)
    assert abs(got["mass_error_percent"]) < 15.0
    assert got["ring_on_every_contoured_slice"] and got["qc_pass"]


def test_regressor_on_the_real_study_is_what_was_recorded(er):
    [real] = er.rs.find_studies(DATA)
    predict, card = er.reg_handler_predictor(bundled_model_dir(contracts.MODEL_KIND_REG))
    got = er.evaluate_regression(real, predict, card.pixel_spacing_mm)
    want = recorded_real("default_ml4h_reg")
    assert got["mass_on_contoured_slices_g"] == pytest.approx(want["mass_on_contoured_slices_g"], rel=0.01)


def test_segmenter_crop_gives_the_whole_field_of_views_mass():
    """The heart-centred crop and window (the default) against the whole field of view, on the real study:
    the same LV, to a few boundary voxels."""
    from lvmass.core.measure import participant_from_study

    rs = _load("real_studies")
    [real] = rs.find_studies(DATA)
    study = rs.decode_pipeline_frame(real.zip_path)
    model_dir = bundled_model_dir(contracts.MODEL_KIND_SEG)
    card = read_model_card(model_dir)
    participant = participant_from_study(study, with_inlinevf=False, grid_pixel_mm=card.pixel_spacing_mm,
                                         n_slots=card.tensor_slices)
    labels = {}
    for name, crop in (("crop", {}), ("whole", {"crop_policy": None})):
        handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG, **crop)
        [result] = handler.run_inference([participant], handler.load_model())
        labels[name] = result.inference
    differing = int((labels["crop"] != labels["whole"]).sum())
    lv = int((labels["whole"] != contracts.BACKGROUND).sum())
    assert lv > 1000 and differing <= 0.01 * lv


@pytest.fixture(scope="module")
def stacks():
    from lvmass.synth.slice_stack import draw_stack

    return [draw_stack((SEED, 9, i)) for i in range(N_STACKS)]


def test_fresh_synthetic_stacks_within_the_recorded_error(stacks):
    """ML4H_seg's raw mass and ML4H_reg's mass against the true mass of fresh stacks, within windows from
    the recorded synthetic evaluation (module docstring); every slice of each stack is measured."""
    evaluate_synthetic = _load("evaluate_synthetic")
    record = json.loads((RESULTS / "synthetic_evaluation.json").read_text())["models"][
        evaluate_synthetic.DEFAULT_NAME
    ]
    seg = (SavedModelHandler(bundled_model_dir(contracts.MODEL_KIND_SEG), kind=contracts.MODEL_KIND_SEG),)
    reg = (SavedModelHandler(bundled_model_dir(contracts.MODEL_KIND_REG), kind=contracts.MODEL_KIND_REG),)
    seg, reg = (seg[0], seg[0].load_model()), (reg[0], reg[0].load_model())
    card = seg[1].card
    rows = [evaluate_synthetic.measure_stack(s, seg, reg, card.pixel_spacing_mm, card.tensor_slices)
            for s in stacks]
    for key in ("seg", "reg"):
        mae = record[f"{key}_agreement"]["mae_g"]
        errors = np.array([r[f"{key}_mass_g"] - r["true_lv_mass_g"] for r in rows])
        assert np.abs(errors).max() < 4 * mae * math.sqrt(math.pi / 2), (key, errors)
        assert np.abs(errors).mean() < 2.5 * mae, (key, errors)
    assert all(r["n_slices"] >= 8 for r in rows)


def test_the_synthetic_record_is_the_bundled_models_under_todays_truth():
    """``synthetic_evaluation.md`` is rendered from its JSON; its bundled models' entry scored the bundled
    models against the generator's truth as it is now (the experts' endocardium and its wall cap), so the
    windows above compare like with like."""
    from lvmass.synth import slice_image as si

    evaluate_synthetic = _load("evaluate_synthetic")
    recorded = json.loads((RESULTS / "synthetic_evaluation.json").read_text())
    assert (RESULTS / "synthetic_evaluation.md").read_text() == evaluate_synthetic.markdown(recorded)
    default = recorded["models"][evaluate_synthetic.DEFAULT_NAME]
    assert (default["model_seg"], default["model_reg"]) == ("bundled:ml4h_seg", "bundled:ml4h_reg")
    assert default["experts_max_wall_fraction"] == si.EXPERTS_MAX_WALL_FRACTION
    assert default["experts_endocardium"] == si.AppearanceRanges().experts_endocardium
