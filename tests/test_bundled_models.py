"""The bundled default models load through the pipeline's handler and give plausible answers on a
synthetic participant; their cards say plainly that they were trained on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from beam_pipeline import contracts
from beam_pipeline.decode import decode_participant_zip
from beam_pipeline.inference import (
    ModelInput,
    SavedModelHandler,
    bundled_model_dir,
    read_model_card,
    resolve_model_dir,
)
from beam_pipeline.mass import measure_label_volume
from beam_pipeline.tensor import build_image_tensor

KINDS = (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG)


@pytest.fixture(scope="module")
def participant(tmp_path_factory):
    from lvmass.synth import render_participant

    data = render_participant(5999001, 77)
    path = tmp_path_factory.mktemp("bundled") / data.zip_name
    path.write_bytes(data.zip_bytes)
    with open(path, "rb") as fh:
        study = decode_participant_zip(fh, str(path))
    tensor = build_image_tensor(study)
    return data, tensor


@pytest.mark.parametrize("kind", KINDS)
def test_bundled_model_is_shipped_with_an_honest_card(kind):
    model_dir = bundled_model_dir(kind)
    assert model_dir is not None, f"no bundled {kind} model under beam_pipeline/models/{kind}/"
    card = read_model_card(resolve_model_dir(model_dir), expected_kind=kind)
    assert card.trained_on_synthetic_data is True
    assert card.training_data and card.hyperparameters and card.metrics


def test_bundled_segmenter_measures_a_synthetic_heart(participant):
    data, tensor = participant
    handler = SavedModelHandler(bundled_model_dir(contracts.MODEL_KIND_SEG), kind=contracts.MODEL_KIND_SEG)
    model = handler.load_model()
    [result] = handler.run_inference([ModelInput(tensor.image, tensor.spacing_mm)], model)
    labels = result.inference
    assert labels.shape == contracts.LABEL_VOLUME_SHAPE
    assert set(np.unique(labels)) <= set(contracts.LABEL_MAP.values())
    raw_mass_g = measure_label_volume(labels, tensor.spacing_mm).lv_mass_raw_g
    # trained on InlineVF labels, which run ~1.8x heavy on this generator: the raw mass sits between the
    # truth and twice the truth
    true_mass_g = float(data.truth["true_lv_mass_g"])
    assert 0.8 * true_mass_g < raw_mass_g < 2.4 * true_mass_g


def test_bundled_regressor_gives_a_mass_in_grams(participant):
    _, tensor = participant
    handler = SavedModelHandler(bundled_model_dir(contracts.MODEL_KIND_REG), kind=contracts.MODEL_KIND_REG)
    [result] = handler.run_inference([ModelInput(tensor.image, tensor.spacing_mm)], handler.load_model())
    lo, hi = contracts.PLAUSIBLE_LV_MASS_RANGE_G
    assert lo < result.inference < hi
