"""SavedModelHandler against real (tiny) SavedModels written by tests/savedmodel_factory.py."""

from __future__ import annotations

import json
import pickle
import shutil

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.inference import SavedModelHandler
from lvmass.core import contracts
from lvmass.core.model_input import ModelInput
from lvmass.storage.models import read_model_card, resolve_model_dir
from tests.savedmodel_factory import band_labels, band_mass_g, save_band_regressor, save_band_segmenter

LOW, HIGH = 0.5, 1.5


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
    return save_band_segmenter(tmp_path_factory.mktemp("seg") / "model", low=LOW, high=HIGH)


@pytest.fixture(scope="module")
def reg_dir(tmp_path_factory):
    return save_band_regressor(tmp_path_factory.mktemp("reg") / "model", high=HIGH)


def _examples(n: int, seed: int = 0) -> list[ModelInput]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = rng.integers(0, 3, size=contracts.TENSOR_SHAPE).astype(np.float32)
        spacing = rng.uniform(1.5, 2.5, size=3).astype(np.float32)
        spacing[2] = 10.0
        out.append(ModelInput(image=image, spacing_mm=spacing))
    return out


class TestSegHandler:
    def test_batch_argmax_equals_band_labels(self, seg_dir):
        handler = SavedModelHandler(str(seg_dir), kind=contracts.MODEL_KIND_SEG)
        model = handler.load_model()
        batch = _examples(3)
        copies = [e.image.copy() for e in batch]
        results = list(handler.run_inference(batch, model))
        assert len(results) == 3
        for example, result, original in zip(batch, results, copies, strict=True):
            assert result.example is example
            assert result.model_id == "band-seg-1"
            assert result.inference.dtype == np.uint8
            assert result.inference.shape == contracts.LABEL_VOLUME_SHAPE
            np.testing.assert_array_equal(result.inference, band_labels(example.image, low=LOW, high=HIGH))
            np.testing.assert_array_equal(example.image, original)  # input not mutated

    def test_probabilities_equal_the_signature_output(self, seg_dir):
        """With ``argmax=False`` the handler returns the signature's probabilities untouched: they equal a
        direct call and, independently, the one-hot of the numpy band labels. Bug caught: a handler that
        reorders the batch, drops the class axis or returns another output."""
        import tensorflow as tf

        handler = SavedModelHandler(str(seg_dir), kind=contracts.MODEL_KIND_SEG, argmax=False)
        model = handler.load_model()
        batch = _examples(2, seed=1)
        results = list(handler.run_inference(batch, model))
        images = np.stack([e.image for e in batch])
        spacing = np.stack([e.spacing_mm for e in batch])
        direct = tf.saved_model.load(str(seg_dir)).signatures["serving_default"](
            image=tf.constant(images), spacing_mm=tf.constant(spacing))["probabilities"].numpy()
        for i, result in enumerate(results):
            assert result.inference.shape == (*contracts.LABEL_VOLUME_SHAPE, contracts.NUM_CLASSES)
            np.testing.assert_array_equal(result.inference, direct[i])
            one_hot = np.eye(contracts.NUM_CLASSES, dtype=np.float32)[
                band_labels(batch[i].image, low=LOW, high=HIGH)]
            np.testing.assert_array_equal(result.inference, one_hot)

    def test_wrong_kind_is_refused(self, seg_dir):
        handler = SavedModelHandler(str(seg_dir), kind=contracts.MODEL_KIND_REG)
        with pytest.raises(ValueError, match="model card kind is 'ml4h_seg', expected 'ml4h_reg'"):
            handler.load_model()

    def test_bad_image_shape_names_the_example(self, seg_dir):
        handler = SavedModelHandler(str(seg_dir), kind=contracts.MODEL_KIND_SEG)
        model = handler.load_model()
        bad = [*_examples(1), ModelInput(np.zeros((256, 256, 12, 1), np.float32), np.ones(3, np.float32))]
        with pytest.raises(ValueError, match=r"example 1: image shape \(256, 256, 12, 1\), expected "
                                             r"\(256, 256, 13, 1\)"):
            list(handler.run_inference(bad, model))

    def test_large_model_shares_across_processes(self, seg_dir):
        shared = SavedModelHandler(str(seg_dir), kind="ml4h_seg", large_model=True)
        assert shared.share_model_across_processes()
        assert not SavedModelHandler(str(seg_dir), kind="ml4h_seg").share_model_across_processes()
        assert SavedModelHandler(str(seg_dir), kind="ml4h_seg", max_batch_size=4).batch_elements_kwargs() == {
            "min_batch_size": 1, "max_batch_size": 4}

    def test_bad_arguments(self, seg_dir):
        with pytest.raises(ValueError, match="kind must be one of"):
            SavedModelHandler(str(seg_dir), kind="unet")
        with pytest.raises(ValueError, match="min_batch_size <= max_batch_size"):
            SavedModelHandler(str(seg_dir), kind="ml4h_seg", min_batch_size=4, max_batch_size=2)


class TestTestTimeFlips:
    def test_the_mirrored_images_probabilities_are_mirrored_back_and_averaged(self):
        """A signature that is not mirror-symmetric (each column scaled by its index): with flips, the mean
        of its output and of the mirror of its output on the mirrored image; without, its output."""
        import tensorflow as tf

        from beam_pipeline.inference import seg_probabilities

        ramp = tf.reshape(tf.range(1.0, 5.0), (1, 1, 4, 1, 1))

        def serve(image, spacing_mm):
            return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: tf.concat([image * ramp] * 3, axis=-1)}

        image = np.random.default_rng(0).random((1, 3, 4, 2, 1)).astype(np.float32)
        inputs = {contracts.SIGNATURE_INPUT_IMAGE: tf.constant(image),
                  contracts.SIGNATURE_INPUT_SPACING: tf.constant(np.ones((1, 3), np.float32))}
        plain = image * np.arange(1.0, 5.0).reshape(1, 1, 4, 1, 1)
        mirrored = (image[:, :, ::-1] * np.arange(1.0, 5.0).reshape(1, 1, 4, 1, 1))[:, :, ::-1]
        unflipped = seg_probabilities(serve, inputs, flips=False).numpy()
        np.testing.assert_allclose(unflipped[..., 0], plain[..., 0])
        np.testing.assert_allclose(seg_probabilities(serve, inputs, flips=True).numpy()[..., 0],
                                   ((plain + mirrored) / 2)[..., 0], rtol=1e-6)

    def test_the_default_ml4h_seg_averages_the_mirror_as_its_card_says(self):
        """The bundled ML4H_seg's card asks for flips: the handler's probabilities on the whole field of view
        equal the mean of two direct calls of its SavedModel, on the image and on its mirror."""
        import dataclasses

        import tensorflow as tf

        from lvmass.storage.models import bundled_model_dir

        model_dir = bundled_model_dir(contracts.MODEL_KIND_SEG)
        handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG, argmax=False, crop_policy=None)
        model = handler.load_model()
        assert model.card.test_time_flips
        rng = np.random.default_rng(3)
        image = rng.normal(size=(256, 256, 2, 1)).astype(np.float32)
        spacing = np.array([1.5, 1.5, 10.0], np.float32)
        [result] = handler.run_inference([ModelInput(image, spacing)], model)
        call = tf.saved_model.load(resolve_model_dir(model_dir)).signatures["serving_default"]
        direct = call(image=tf.constant(image[None]), spacing_mm=tf.constant(spacing[None]))["probabilities"]
        mirror = call(image=tf.constant(image[None, :, ::-1].copy()),
                      spacing_mm=tf.constant(spacing[None]))["probabilities"].numpy()[:, :, ::-1]
        np.testing.assert_allclose(result.inference, ((direct.numpy() + mirror) / 2)[0], atol=1e-6)
        assert np.abs(direct.numpy() - mirror).max() > 1e-3  # the model is not mirror-symmetric: a real test
        plain = dataclasses.replace(model, card=dataclasses.replace(model.card, test_time_flips=False))
        [unflipped] = handler.run_inference([ModelInput(image, spacing)], plain)
        np.testing.assert_allclose(unflipped.inference, direct.numpy()[0], atol=1e-6)


class TestRegHandler:
    def test_batch_masses_equal_reference(self, reg_dir):
        handler = SavedModelHandler(str(reg_dir), kind=contracts.MODEL_KIND_REG)
        model = handler.load_model()
        batch = _examples(4, seed=2)
        results = list(handler.run_inference(batch, model))
        images = np.stack([e.image for e in batch])
        spacing = np.stack([e.spacing_mm for e in batch])
        expected = band_mass_g(images, spacing, high=HIGH)
        got = np.array([r.inference for r in results])
        # the model returns float32 grams: 7 significant digits
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert all(isinstance(r.inference, float) for r in results)


class TestModelCard:
    def test_missing_card(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="no model card next to the SavedModel"):
            read_model_card(str(tmp_path))

    def test_incompatible_tensor_contract(self, tmp_path, seg_dir):
        card = json.loads((seg_dir / "model_card.json").read_text())
        card["tensor"]["padding"] = "top_left"
        (tmp_path / "model_card.json").write_text(json.dumps(card))
        with pytest.raises(ValueError, match="model expects tensor padding='top_left'"):
            read_model_card(str(tmp_path))


def test_keyed_run_inference_in_a_pipeline(seg_dir):
    """RunInference(KeyedModelHandler(handler)) keeps keys and batches across elements."""
    examples = _examples(3, seed=3)
    expected = {f"p{i}": int(band_labels(e.image, low=LOW, high=HIGH).sum()) for i, e in enumerate(examples)}
    handler = KeyedModelHandler(SavedModelHandler(str(seg_dir), kind=contracts.MODEL_KIND_SEG,
                                                  max_batch_size=2))

    def check(actual):
        assert dict(actual) == expected

    with BeamTestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create([(f"p{i}", e) for i, e in enumerate(examples)])
            | RunInference(handler)
            | beam.MapTuple(lambda key, result: (key, int(result.inference.sum())))
        )
        assert_that(out, check)


class TestBundledModel:
    """A bundled model travels as ``bundled:<kind>`` and is found in the package where it is loaded
    (a Dataflow worker), not at the launcher's absolute install path."""

    def test_marker_resolved_where_the_model_is_loaded(self, seg_dir, tmp_path, monkeypatch):
        from beam_pipeline.options import parse_args
        from lvmass.storage import models

        launcher, worker = tmp_path / "launcher" / "models", tmp_path / "worker" / "models"
        shutil.copytree(seg_dir, launcher / "ml4h_seg")
        monkeypatch.setattr(models, "bundled_models_root", lambda: launcher)
        config, _ = parse_args([f"--input={tmp_path}/*.zip", f"--output={tmp_path}/out",
                                "--methods=ml4h_seg,inlinevf"])
        assert config.model_seg == "bundled:ml4h_seg"
        handler = SavedModelHandler(config.model_seg, kind=contracts.MODEL_KIND_SEG)
        handler = pickle.loads(pickle.dumps(handler))  # as shipped to a worker

        # the "worker": the package lives elsewhere and the launcher's path does not exist there
        shutil.copytree(seg_dir, worker / "ml4h_seg")
        shutil.rmtree(launcher)
        monkeypatch.setattr(models, "bundled_models_root", lambda: worker)
        model = handler.load_model()
        assert model.card.version == "band-seg-1"
        assert read_model_card("bundled:ml4h_seg", expected_kind="ml4h_seg").kind == "ml4h_seg"
        assert resolve_model_dir("bundled:ml4h_seg") == str(worker / "ml4h_seg")
        assert resolve_model_dir("gs://b/seg") == "gs://b/seg"
        with pytest.raises(ValueError, match="unknown bundled model 'bundled:unet'"):
            resolve_model_dir("bundled:unet")


class TestBatchSizeFromTheCards:
    """The default --batch_size comes from the cards' measured inference_memory, not a constant."""

    @staticmethod
    def _card(kind, peak_mb, per_example_mb):
        from lvmass.core.model_card import ModelCard

        return ModelCard(kind=kind, version="m", inference_memory={"peak_mb": peak_mb,
                                                                  "per_example_mb": per_example_mb})

    def test_largest_batch_within_the_budget_smallest_over_the_models(self):
        from lvmass.core.model_card import batch_size_for_memory

        seg = self._card(contracts.MODEL_KIND_SEG, 1500.0, 10.0)  # (2500 - 1500) / 10 = 100
        reg = self._card(contracts.MODEL_KIND_REG, 900.0, 40.0)
        assert batch_size_for_memory([seg]) == 100
        assert batch_size_for_memory([reg]) == 40  # (2500 - 900) / 40
        # one process: TensorFlow once (the larger peak), a batch per model: (2500 - 1500) / (10 + 40)
        assert batch_size_for_memory([seg, reg]) == 20
        assert batch_size_for_memory([seg], budget_mb=1505.0) == 1  # never below one
        assert batch_size_for_memory([]) is None

    def test_card_fields_are_checked(self):
        from lvmass.core.model_card import ModelCard

        with pytest.raises(ValueError, match="inference_memory needs peak_mb > 0 and per_example_mb > 0"):
            self._card(contracts.MODEL_KIND_SEG, 1500.0, 0.0)
        with pytest.raises(ValueError, match="crop_inference must be an ML4H_seg card's"):
            ModelCard(kind=contracts.MODEL_KIND_REG, version="r",
                      crop_inference={"signature": "serving_crop", "align_px": 8})
        old = json.loads(ModelCard(kind=contracts.MODEL_KIND_SEG, version="s").to_json())
        del old["crop_inference"], old["inference_memory"]  # a card written before these fields
        card = ModelCard.from_json(json.dumps(old))
        assert card.crop_inference is None and card.inference_memory is None

    def test_pipeline_default_comes_from_the_bundled_cards(self, tmp_path):
        from beam_pipeline.options import parse_args
        from lvmass.core.model_card import batch_size_for_memory
        from lvmass.storage.models import bundled_model_dir

        cards = [read_model_card(bundled_model_dir(k)) for k in (contracts.MODEL_KIND_SEG,
                                                                 contracts.MODEL_KIND_REG)]
        assert all(card.inference_memory for card in cards), "run benchmarks/bench_inference.py memory"
        memory = [c.inference_memory for c in cards]
        expected = max(1, int((2500.0 - max(m["peak_mb"] for m in memory))
                              // sum(m["per_example_mb"] for m in memory)))
        argv = [f"--input={tmp_path}/*.zip", f"--output={tmp_path}/out"]
        config, _ = parse_args(argv)
        assert config.batch_size == expected == batch_size_for_memory(cards)
        assert parse_args([*argv, "--batch_size=3"])[0].batch_size == 3

    def test_a_card_without_an_estimate_gives_batches_of_one(self, seg_dir, tmp_path):
        from beam_pipeline.options import parse_args

        config, _ = parse_args([f"--input={tmp_path}/*.zip", f"--output={tmp_path}/out",
                                "--methods=ml4h_seg", f"--model_seg={seg_dir}"])
        assert config.batch_size == 1


class TestLVPostProcessing:
    """``largest_lv_component``: what a per-slice model finds beside the LV goes, the LV stays whole."""

    @staticmethod
    def _ring(shape, centre, inner, outer):
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        r = np.hypot(yy - centre[0], xx - centre[1])
        return np.where(r < inner, contracts.LV_CAVITY, np.where(r < outer, contracts.MYOCARDIUM, 0)).astype(
            np.uint8
        )

    def test_blobs_beside_the_lv_go_even_when_they_touch_it_on_another_slice(self):
        from lvmass.core.postprocess import largest_lv_component

        volume = np.stack([self._ring((96, 96), (48, 48), 12, 18) for _ in range(5)], axis=-1)
        volume[40:56, 5:20, 1] = contracts.MYOCARDIUM  # an "RV" 35 px from the axis on slice 1 ...
        volume[44:50, 20:31, 2] = contracts.MYOCARDIUM  # ... bridged to the ring on slice 2
        volume[5:9, 80:84, 4] = contracts.LV_CAVITY  # a bright vessel far away
        kept = largest_lv_component(volume, spacing_mm=(1.5, 1.5))
        expected = np.stack([self._ring((96, 96), (48, 48), 12, 18) for _ in range(5)], axis=-1)
        expected[44:50, 20:31, 2] = volume[44:50, 20:31, 2]  # part of slice 2's one component: kept
        np.testing.assert_array_equal(kept, expected)
        assert volume[40:56, 5:20, 1].any()  # the input is not changed

    def test_empty_and_single_component_volumes_are_returned_as_they_are(self):
        from lvmass.core.postprocess import largest_lv_component

        empty = np.zeros((32, 32, 3), np.uint8)
        np.testing.assert_array_equal(largest_lv_component(empty), empty)
        ring = np.stack([self._ring((64, 64), (30, 34), 8, 12)] * 3, axis=-1)
        np.testing.assert_array_equal(largest_lv_component(ring, spacing_mm=(1.8, 1.8)), ring)
