"""ML4H_seg / ML4H_reg builders: documented shapes, the paper's configuration, config checks, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lvmass.core import contracts  # noqa: E402
from tests.phantom import toy_example  # noqa: E402
from trainer import models  # noqa: E402

TINY_SEG = dict(stem_filters=4, dense_blocks=(4, 8), convs_per_block=1)
TINY_REG = dict(input_pool=(4, 4, 1), stem_filters=4, conv_blocks=(4, 8), convs_per_block=1, dense_units=(8,))
# Learning tests run on the central in-plane crop that holds the phantom's LV (the fully convolutional
# segmenter trains on crops, as trainer.task does on a CPU): conv3d gradients are slow on 2 cores.
CROP = slice(80, 176)


def _conv_params(cin: int, cout: int, kernel, bias: bool = True) -> int:
    return math.prod(kernel) * cin * cout + (cout if bias else 0)


def _expected_seg_params(c: models.SegConfig) -> int:
    """Parameter count of the documented design, derived independently of the builder's code."""
    total = _conv_params(1, c.stem_filters, c.stem_kernel)
    channels, skips = c.stem_filters, []
    for level, f in enumerate(c.dense_blocks):
        total += sum(_conv_params(channels + j * f, f, c.kernel_size) for j in range(c.convs_per_block))
        channels = c.convs_per_block * f
        if level < len(c.dense_blocks) - 1:
            skips.append(channels)
    for level in reversed(range(len(skips))):
        f = c.dense_blocks[level]
        total += _conv_params(channels, f, (1, 1, 1))
        channels = f + skips[level]
        total += sum(_conv_params(channels + j * f, f, c.kernel_size) for j in range(c.convs_per_block))
        channels = c.convs_per_block * f
    return total + _conv_params(channels, contracts.NUM_CLASSES, (1, 1, 1))


class TestPaperPreset:
    def test_seg_is_the_released_configuration(self):
        config = models.seg_config("paper")
        model = models.build_ml4h_seg(config)
        assert (config.stem_filters, config.stem_kernel) == (32, (3, 3, 3))
        assert config.dense_blocks == (32, 32, 32) and config.convs_per_block == 3
        assert config.pool_size == (2, 2, 1) and config.activation == "mish"
        assert model.input[contracts.SIGNATURE_INPUT_IMAGE].shape == (None, *contracts.TENSOR_SHAPE)
        assert model.output.shape == (None, *contracts.LABEL_VOLUME_SHAPE, contracts.NUM_CLASSES)
        assert model.count_params() == _expected_seg_params(config)
        pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling3D)]
        assert [p.pool_size for p in pools] == [(2, 2, 1), (2, 2, 1)]
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
        assert convs[0].filters == 32 and convs[0].kernel_size == (3, 3, 3)
        head = model.get_layer("head_softmax")
        assert head.kernel_size == (1, 1, 1) and head.filters == 3
        assert sum(isinstance(layer, keras.layers.Concatenate) and layer.name.endswith("_skip")
                   for layer in model.layers) == 2  # U-Net long-range connections

    def test_reg_takes_spacing_into_its_dense_layers(self):
        model = models.build_ml4h_reg(models.reg_config("paper"))
        assert model.output.shape == (None,)
        assert set(model.input) == {contracts.SIGNATURE_INPUT_IMAGE, contracts.SIGNATURE_INPUT_SPACING}
        concat = model.get_layer("head_concat")
        sources = {t._keras_history.operation.name for t in concat.input}
        assert "head_spacing_relative" in sources
        assert model.get_layer("head_dense0").input.shape[-1] == concat.output.shape[-1]

    def test_every_layer_is_named_from_a_block_prefix(self):
        prefixes = ("stem_", "down", "up", "head_", contracts.SIGNATURE_INPUT_IMAGE,
                    contracts.SIGNATURE_INPUT_SPACING, contracts.SIGNATURE_OUTPUT_MASS)
        for model in (models.build_ml4h_seg(models.seg_config("paper")),
                      models.build_ml4h_reg(models.reg_config("paper"))):
            assert all(layer.name.startswith(prefixes) for layer in model.layers), [
                layer.name for layer in model.layers if not layer.name.startswith(prefixes)]


class TestCpuPreset:
    def test_seg_runs_on_one_full_tensor(self):
        model = models.build_ml4h_seg(models.seg_config("cpu"))
        example = toy_example(1)
        image = example.image[None]
        before = image.copy()
        probabilities = model.predict({contracts.SIGNATURE_INPUT_IMAGE: image}, verbose=0)
        assert probabilities.shape == (1, *contracts.LABEL_VOLUME_SHAPE, contracts.NUM_CLASSES)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(image, before)
        assert models.build_ml4h_seg(models.seg_config("cpu")).count_params() < (
            models.build_ml4h_seg(models.seg_config("paper")).count_params() / 5)

    def test_fully_convolutional_seg_takes_crops(self):
        model = models.build_ml4h_seg(models.seg_config("cpu", **TINY_SEG), fully_convolutional=True)
        crops = np.zeros((2, 64, 96, 13, 1), "float32")
        out = model.predict({contracts.SIGNATURE_INPUT_IMAGE: crops}, verbose=0)
        assert out.shape == (2, 64, 96, 13, 3)

    def test_reg_output_scales_with_voxel_volume(self):
        # The untrained head outputs its offset; with scale_by_voxel_volume the grams follow the voxel size.
        config = models.reg_config("cpu", **TINY_REG, mass_offset_g=100.0)
        model = models.build_ml4h_reg(config)
        image = np.repeat(toy_example(2).image[None], 2, axis=0)
        spacing = np.float32([[1.8, 1.8, 10.0], [3.6, 3.6, 10.0]])
        mass = model.predict({"image": image, "spacing_mm": spacing}, verbose=0)
        assert mass.shape == (2,)
        np.testing.assert_allclose(mass, [100.0, 400.0], rtol=1e-5)


class TestConfigChecks:
    @pytest.mark.parametrize(
        ("factory", "overrides", "match"),
        [
            (models.seg_config, {"activation": "tanhh"}, "activation must be one of .* Received: 'tanhh'"),
            (models.seg_config, {"dense_blocks": ()}, r"dense_blocks .* Received: \(\)"),
            (models.seg_config, {"pool_size": (2, 2)}, r"pool_size must be 3 positive .* Received: \(2, 2\)"),
            (models.seg_config, {"pool_size": (2, 2, 2), "dense_blocks": (4, 4)},
             "not divisible by pool_size"),
            (models.seg_config, {"num_classes": 4}, "num_classes must be 3 .* Received: 4"),
            (models.seg_config, {"input_shape": (128, 128, 13, 1)}, "input_shape must be the tensor"),
            (models.reg_config, {"dropout": 1.5}, r"dropout must be in \[0, 1\). Received: 1.5"),
            (models.reg_config, {"normalization": "group"}, "normalization must be .* Received: 'group'"),
            (models.reg_config, {"mass_scale_g": 0}, "mass_scale_g must be > 0. Received: 0"),
        ],
    )
    def test_bad_config(self, factory, overrides, match):
        with pytest.raises(ValueError, match=match):
            factory("paper", **overrides)

    def test_unknown_preset_and_kind(self):
        with pytest.raises(ValueError, match=r"preset must be one of .* Received: 'gpu'"):
            models.seg_config("gpu")
        with pytest.raises(ValueError, match=r"kind must be .* Received: 'unet'"):
            models.build_model("unet")
        with pytest.raises(ValueError, match=r"config must be a SegConfig\. Received: RegConfig"):
            models.build_ml4h_seg(models.RegConfig())


class TestLearning:
    def test_tiny_seg_loss_falls_on_a_few_examples(self):
        keras.utils.set_random_seed(0)
        examples = [toy_example(e) for e in (1, 2)]
        images = np.stack([e.image[CROP, CROP] for e in examples])
        labels = np.stack([e.labels[CROP, CROP] for e in examples]).astype("int32")
        assert (labels == contracts.MYOCARDIUM).any()
        model = models.build_ml4h_seg(models.seg_config("cpu", **TINY_SEG), fully_convolutional=True)
        model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy())
        losses = [float(model.train_on_batch({"image": images}, labels)) for _ in range(20)]
        assert losses[-1] < 0.5 * losses[0], losses

    def test_tiny_reg_loss_falls_on_a_few_examples(self):
        keras.utils.set_random_seed(0)
        examples = [toy_example(e) for e in (1, 2, 3, 4)]
        inputs = {"image": np.stack([e.image for e in examples]),
                  "spacing_mm": np.float32([e.spacing_mm for e in examples])}
        mass = np.float32([e.mass_g for e in examples])
        config = models.reg_config("cpu", **TINY_REG, mass_offset_g=40.0, mass_scale_g=20.0)
        model = models.build_ml4h_reg(config)
        model.compile(keras.optimizers.Adam(1e-2), keras.losses.LogCosh())
        losses = [float(model.train_on_batch(inputs, mass)) for _ in range(30)]
        assert losses[-1] < 0.5 * losses[0], losses
