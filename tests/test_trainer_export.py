"""Export round trip: train two steps, export, load through the pipeline's handler: same outputs as Keras."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from beam_pipeline.inference import SavedModelHandler  # noqa: E402
from lvmass.core import contracts  # noqa: E402
from lvmass.core.model_card import ModelCard  # noqa: E402
from lvmass.core.model_input import ModelInput  # noqa: E402
from tests.phantom import toy_example  # noqa: E402
from trainer import models  # noqa: E402
from trainer.export import KERAS_FILENAME, export_model, load_card, load_serving  # noqa: E402

TINY_SEG = dict(stem_filters=2, dense_blocks=(2, 4), convs_per_block=1)
TINY_REG = dict(input_pool=(4, 4, 1), stem_filters=2, conv_blocks=(4,), convs_per_block=1, dense_units=(4,))


@pytest.fixture(scope="module")
def batch():
    examples = [toy_example(e) for e in (11, 12)]
    return (np.stack([e.image for e in examples]), np.float32([e.spacing_mm for e in examples]),
            np.stack([e.labels for e in examples]).astype("int32"), np.float32([e.mass_g for e in examples]))


def _trained(kind: str, batch) -> keras.Model:
    images, spacing, labels, mass = batch
    keras.utils.set_random_seed(0)
    if kind == contracts.MODEL_KIND_SEG:
        model = models.build_ml4h_seg(models.seg_config("cpu", **TINY_SEG))
        inputs, target = {"image": images[:, 96:160, 96:160]}, labels[:, 96:160, 96:160]
        fit_model = models.build_ml4h_seg(models.seg_config("cpu", **TINY_SEG), fully_convolutional=True)
        fit_model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy())
        for _ in range(2):
            fit_model.train_on_batch(inputs, target)
        model.set_weights(fit_model.get_weights())
        return model
    model = models.build_ml4h_reg(models.reg_config("cpu", **TINY_REG))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.LogCosh())
    for _ in range(2):
        model.train_on_batch({"image": images, "spacing_mm": spacing}, mass)
    return model


def _card(kind: str) -> ModelCard:
    return ModelCard(kind=kind, version="test-1", training_data={"count": 2, "seed": 0},
                     trained_on_synthetic_data=True)


@pytest.mark.parametrize("kind", [contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG])
def test_round_trip_through_the_pipeline_handler(tmp_path, batch, kind):
    images, spacing, _, _ = batch
    model = _trained(kind, batch)
    export_dir = str(tmp_path / kind)
    export_model(model, kind=kind, export_dir=export_dir, card=_card(kind))

    handler = SavedModelHandler(export_dir, kind=kind, argmax=False)
    loaded = handler.load_model()
    examples = [ModelInput(image=images[i], spacing_mm=spacing[i]) for i in range(len(images))]
    results = list(handler.run_inference(examples, loaded))
    assert [r.model_id for r in results] == ["test-1", "test-1"]

    if kind == contracts.MODEL_KIND_SEG:
        expected = model.predict({"image": images}, verbose=0)
        got = np.stack([r.inference for r in results])
        assert got.shape == (2, *contracts.LABEL_VOLUME_SHAPE, contracts.NUM_CLASSES)
    else:
        expected = model.predict({"image": images, "spacing_mm": spacing}, verbose=0)
        got = np.float32([r.inference for r in results])
        assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    # the raw signature (what any TF user would call) and model.keras agree too
    serve = load_serving(export_dir)
    raw = serve(image=images, spacing_mm=spacing)
    assert set(raw) == {contracts.SIGNATURE_OUTPUT_PROBABILITIES if kind == contracts.MODEL_KIND_SEG
                        else contracts.SIGNATURE_OUTPUT_MASS}
    reloaded = keras.models.load_model(str(tmp_path / kind / KERAS_FILENAME))
    inputs = {"image": images}
    if kind == contracts.MODEL_KIND_REG:
        inputs["spacing_mm"] = spacing
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), expected, rtol=1e-5, atol=1e-5)

    card = load_card(export_dir)
    assert card.kind == kind and card.trained_on_synthetic_data
    on_disk = json.loads((tmp_path / kind / contracts.MODEL_CARD_FILENAME).read_text())
    assert on_disk["signature"]["name"] == contracts.SERVING_SIGNATURE
    assert on_disk["tensor"]["input_shape"] == list(contracts.TENSOR_SHAPE)


def test_refuses_a_card_of_another_kind(tmp_path):
    model = models.build_ml4h_reg(models.reg_config("cpu", **TINY_REG))
    with pytest.raises(ValueError, match="model card kind 'ml4h_seg' differs"):
        export_model(model, kind=contracts.MODEL_KIND_REG, export_dir=str(tmp_path / "x"),
                     card=_card(contracts.MODEL_KIND_SEG))
    with pytest.raises(ValueError, match=r"a ml4h_seg model must take inputs \['image'\]"):
        export_model(model, kind=contracts.MODEL_KIND_SEG, export_dir=str(tmp_path / "y"),
                     card=_card(contracts.MODEL_KIND_SEG))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
