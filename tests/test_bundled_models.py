"""The bundled default models load through the pipeline's handler and, on fresh synthetic participants,
perform as their recorded evaluation says; their cards say plainly that they were trained on synthetic data.

The windows come from ``benchmarks/results/model_evaluation.json`` (the fresh cohort: 200 participants,
a seed never used in training), read here so that a re-recorded evaluation moves them too. The
participants are fresh as well: seed 77 was never used in training (1001, 1003, 2002). Every number the
models are judged on is computed here from the generator's truth by hand (voxel counts x voxel volume x
1.05 g/mL, Dice as 2|A and B| / (|A| + |B|), centering from the card's means), not by the pipeline's
functions.

How the windows follow from the record, for n participants and an error whose recorded mean absolute
value is MAE: with normal errors the sd is MAE x sqrt(pi / 2), so one participant beyond 4 sd happens
about once in 16,000; the mean |error| of n has a relative sd of sqrt(pi / 2 - 1) / sqrt(n), and
exceeds 2.5 x MAE for n = 4, or 2 x MAE for n = 12, about once in 2,000 and 30,000 draws (simulated).
A Dice below the recorded mean - 4 sd is as rare, and a mean of n below mean - 4 sd / sqrt(n). For r, the
one-sided 99.9% lower bound of a sample of 12 drawn at the recorded r (Fisher z: tanh(atanh r - 3.09 /
sqrt(12 - 3)) = 0.36 for r 0.886). So a retrained model as good as its record fails here about once in
a few hundred retrainings; the broken ones named in each test fail always (on these participants the
seg model's myocardium Dice is 0.67-0.78 against a floor of 0.56; with shuffled slices it is 0.26-0.44).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline.inference import SavedModelHandler
from lvmass.core import contracts
from lvmass.core.decode import decode_participant_zip
from lvmass.core.metrics import mask_dice
from lvmass.core.model_input import ModelInput
from lvmass.core.tensor import build_image_tensor, build_label_volume
from lvmass.storage.models import bundled_model_dir, read_model_card, resolve_model_dir

KINDS = (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG)
EVALUATION = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "model_evaluation.json"
SEED = 77
EIDS = tuple(range(5999001, 5999013))  # 12 participants for ML4H_reg (cheap to run) ...
# ... the first 4 for ML4H_seg: ~12 CPU s each on the 2-core machine of
# benchmarks/results/stage_cpu_seconds.json, so about 25 s of the test's time there
N_SEG = 4
SEG_MAE_FACTOR = 2.5  # for 4 participants (module docstring)
REG_MAE_FACTOR = 2.0  # for 12


def recorded(method: str) -> dict:
    """The recorded evaluation of ``method`` against the truth (fresh cohort, all participants)."""
    fresh = json.loads(EVALUATION.read_text())["cohorts"]["fresh"]
    return {"mass": fresh["mass_vs_truth"]["all"]["methods"][f"{method}/calibrated"],
            "dice": {k.split("/")[1]: v for k, v in fresh["dice_vs_truth"].items() if k.startswith(method)}}


def error_sd(mae_g: float) -> float:
    """The sd of a normal error whose mean absolute value is ``mae_g``."""
    return mae_g * math.sqrt(math.pi / 2)


@pytest.fixture(scope="module")
def participants():
    """Fresh synthetic participants, decoded and put on the models' grid as the pipeline does."""
    from lvmass.synth import render_participant

    cards = {kind: read_model_card(resolve_model_dir(bundled_model_dir(kind, "paper")), expected_kind=kind)
             for kind in KINDS}
    grid = {card.pixel_spacing_mm for card in cards.values()}
    assert len(grid) == 1, f"the bundled models disagree on their grid: {grid}"
    (grid_mm,) = grid
    out = []
    for eid in EIDS:
        data = render_participant(eid, SEED)
        study = decode_participant_zip(io.BytesIO(data.zip_bytes), data.zip_name)
        tensor = build_image_tensor(study, grid_pixel_mm=grid_mm)
        truth_labels = build_label_volume(
            [data.labels[..., k] for k in range(data.labels.shape[2])], slice_start=tensor.slice_start,
            acquired_pixel_spacing_mm=study.pixel_spacing_mm, grid_pixel_mm=grid_mm)
        out.append({"data": data, "tensor": tensor, "truth_labels": truth_labels,
                    "true_mass_g": float(data.truth["true_lv_mass_g"]), "sex": data.phenotype["sex"]})
    return {"cards": cards, "participants": out}


@pytest.mark.parametrize("kind", KINDS)
def test_bundled_model_is_shipped_with_an_honest_card(kind):
    model_dir = bundled_model_dir(kind, "paper")
    assert model_dir is not None, f"no bundled {kind} model under beam_pipeline/models/{kind}/"
    card = read_model_card(resolve_model_dir(model_dir), expected_kind=kind)
    assert card.trained_on_synthetic_data is True
    assert card.training_data and card.hyperparameters and card.metrics


def test_bundled_segmenter_matches_its_recorded_evaluation(participants):
    """Myocardium and cavity Dice against the true labels, and the mass centred with the card's means
    against the true mass, per participant and on average. Bugs caught: an all-background or all-one-class
    output (Dice 0), slices shuffled or reversed in the tensor (myocardium Dice ~0.35), labels shifted or
    on the wrong grid, a wrong voxel volume or calibration (masses off by tens of grams)."""
    kind = contracts.MODEL_KIND_SEG
    handler = SavedModelHandler(bundled_model_dir(kind, "paper"), kind=kind)
    model = handler.load_model()
    record = recorded(contracts.METHOD_ML4H_SEG)
    calibration = participants["cards"][kind].calibration
    myo_dice, cavity_dice, errors_g = [], [], []
    for p in participants["participants"][:N_SEG]:
        tensor = p["tensor"]
        [result] = handler.run_inference([ModelInput(tensor.image, tensor.spacing_mm)], model)
        labels = result.inference
        assert labels.shape == contracts.LABEL_VOLUME_SHAPE and labels.dtype == np.uint8
        truth = p["truth_labels"]
        myo_dice.append(mask_dice(labels == contracts.MYOCARDIUM, truth == contracts.MYOCARDIUM))
        cavity_dice.append(mask_dice(labels == contracts.LV_CAVITY, truth == contracts.LV_CAVITY))
        voxel_ml = float(np.prod(tensor.spacing_mm.astype(np.float64))) / 1000.0
        raw_g = np.count_nonzero(labels == contracts.MYOCARDIUM) * voxel_ml * 1.05
        sex = p["sex"]
        centred_g = raw_g + calibration["manual_mean_g"][sex] - calibration["raw_mean_g"][sex]
        errors_g.append(centred_g - p["true_mass_g"])
    myo, cavity = record["dice"]["myocardium"], record["dice"]["lv_cavity"]
    for name, values, rec in (("myocardium", myo_dice, myo), ("lv_cavity", cavity_dice, cavity)):
        low = rec["mean"] - 4 * rec["sd"]
        assert min(values) >= low, f"{name} Dice {np.round(values, 3)} below {low:.3f}"
        mean_low = rec["mean"] - 4 * rec["sd"] / math.sqrt(len(values))
        assert np.mean(values) >= mean_low, f"{name} mean Dice {np.mean(values):.3f} below {mean_low:.3f}"
    mae_g = record["mass"]["mae_g"]
    errors = np.abs(errors_g)
    assert errors.max() <= 4 * error_sd(mae_g), f"centred mass errors {np.round(errors_g, 1)} g"
    assert errors.mean() <= SEG_MAE_FACTOR * mae_g, (
        f"centred mass MAE {errors.mean():.1f} g vs recorded {mae_g} g")


def test_bundled_regressor_matches_its_recorded_evaluation(participants):
    """Mass against the true mass: per participant, the mean |error|, and the correlation. Bugs caught: a
    constant output (r undefined), masses in the wrong unit or off by a scale (errors of tens of grams), an
    output that ignores the image (r near 0)."""
    kind = contracts.MODEL_KIND_REG
    handler = SavedModelHandler(bundled_model_dir(kind, "paper"), kind=kind)
    model = handler.load_model()
    batch = [ModelInput(p["tensor"].image, p["tensor"].spacing_mm) for p in participants["participants"]]
    predicted_g = np.array([r.inference for r in handler.run_inference(batch, model)])
    true_g = np.array([p["true_mass_g"] for p in participants["participants"]])
    record = recorded(contracts.METHOD_ML4H_REG)["mass"]
    errors = np.abs(predicted_g - true_g)
    assert errors.max() <= 4 * error_sd(record["mae_g"]), f"errors {np.round(predicted_g - true_g, 1)} g"
    assert errors.mean() <= REG_MAE_FACTOR * record["mae_g"], (
        f"MAE {errors.mean():.1f} g vs recorded {record['mae_g']} g")
    r_low = math.tanh(math.atanh(record["r"]) - 3.09 / math.sqrt(len(true_g) - 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = float(np.corrcoef(predicted_g, true_g)[0, 1])
    assert r >= r_low, f"r {r:.3f} below {r_low:.3f} ({np.round(predicted_g, 1)} g)"
