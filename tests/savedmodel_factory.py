"""Tiny SavedModels whose outputs are known exactly, following the serving contract.

Built with ``tf.Module`` + ``tf.saved_model.save`` (no Keras, no training: a few KB, saved in ~1 s),
each with a ``model_card.json`` next to it, so the pipeline's handler, the ML4H_seg/ML4H_reg paths
and the model-card checks run against real SavedModel folders.

* :func:`save_band_segmenter`: one-hot encodes intensity bands. A voxel of the (normalised) image
  below ``low`` is background, from ``low`` up to ``high`` LV cavity, ``high`` and above myocardium.
  Fed a tensor built from a label-valued image, it returns that label volume exactly.
* :func:`save_band_regressor`: "mass" = number of voxels >= ``high`` x row_mm x col_mm x slice_mm
  x 1.05 / 1000, i.e. exactly the myocardial mass of the same band labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvmass.core import contracts
from lvmass.core.model_card import ModelCard


def band_labels(image: np.ndarray, *, low: float, high: float) -> np.ndarray:
    """The numpy reference of the band models: uint8 labels of a ``(..., 256, 256, 13, 1)`` image."""
    values = np.asarray(image)[..., 0]
    return ((values >= low).astype(np.uint8) + (values >= high).astype(np.uint8)).astype(np.uint8)


def band_mass_g(image: np.ndarray, spacing_mm: np.ndarray, *, high: float) -> np.ndarray:
    """The numpy reference of :func:`save_band_regressor`: (B,) grams for a batch."""
    voxels = np.sum(np.asarray(image)[..., 0] >= high, axis=(1, 2, 3)).astype(np.float64)
    voxel_ml = np.prod(np.asarray(spacing_mm, dtype=np.float64), axis=1) / 1000.0
    return voxels * voxel_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML


def _signature_specs():
    import tensorflow as tf

    return (
        tf.TensorSpec([None, *contracts.TENSOR_SHAPE], tf.float32, name=contracts.SIGNATURE_INPUT_IMAGE),
        tf.TensorSpec([None, len(contracts.SPACING_FIELDS)], tf.float32,
                      name=contracts.SIGNATURE_INPUT_SPACING),
    )


def _write_card(model_dir: Path, kind: str, version: str, calibration: dict | None) -> None:
    card = ModelCard(kind=kind, version=version, calibration=calibration or {},
                     trained_on_synthetic_data=True, notes="test model from tests/savedmodel_factory.py")
    (model_dir / contracts.MODEL_CARD_FILENAME).write_text(card.to_json())


def save_band_segmenter(
    model_dir: Path, *, low: float, high: float, version: str = "band-seg-1",
    calibration: dict | None = None,
) -> Path:
    """Save the band segmenter (``probabilities`` = one-hot of :func:`band_labels`) with its card."""
    import tensorflow as tf

    image_spec, spacing_spec = _signature_specs()

    class BandSegmenter(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.low = tf.Variable(low, dtype=tf.float32, trainable=False)
            self.high = tf.Variable(high, dtype=tf.float32, trainable=False)

        @tf.function(input_signature=[image_spec, spacing_spec])
        def serve(self, image, spacing_mm):
            values = image[..., 0]
            labels = tf.cast(values >= self.low, tf.int32) + tf.cast(values >= self.high, tf.int32)
            probabilities = tf.one_hot(labels, contracts.NUM_CLASSES, dtype=tf.float32)
            return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: probabilities}

    module = BandSegmenter()
    model_dir = Path(model_dir)
    tf.saved_model.save(module, str(model_dir), signatures={contracts.SERVING_SIGNATURE: module.serve})
    _write_card(model_dir, contracts.MODEL_KIND_SEG, version, calibration)
    return model_dir


def save_band_segmenter_with_crops(
    model_dir: Path, *, low: float, high: float, window_margin_px: int | None = None,
    version: str = "band-crop-1",
) -> Path:
    """The band segmenter with ML4H_seg's crop signatures (``lvmass.core.contracts``): ``serving_crop``
    (any in-plane crop) and, with ``window_margin_px``, ``serving_window`` (the crop's inner window only),
    named in its card's ``crop_inference`` as ``trainer/export.py`` names them. Labels are a pure function
    of each voxel, so any crop must give exactly the whole field of view's labels."""
    import tensorflow as tf

    image_spec, spacing_spec = _signature_specs()
    open_rows = tf.TensorSpec([None, None, None, *contracts.TENSOR_SHAPE[2:]], tf.float32,
                              name=contracts.SIGNATURE_INPUT_IMAGE)

    def probabilities(image):
        values = image[..., 0]
        labels = tf.cast(values >= low, tf.int32) + tf.cast(values >= high, tf.int32)
        return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: tf.one_hot(labels, contracts.NUM_CLASSES)}

    class Band(tf.Module):
        @tf.function(input_signature=[image_spec, spacing_spec])
        def serve(self, image, spacing_mm):
            return probabilities(image)

        @tf.function(input_signature=[open_rows, spacing_spec])
        def serve_crop(self, image, spacing_mm):
            return probabilities(image)

        @tf.function(input_signature=[open_rows, spacing_spec])
        def serve_window(self, image, spacing_mm):
            margin = window_margin_px or 0
            return probabilities(image[:, margin:tf.shape(image)[1] - margin,
                                       margin:tf.shape(image)[2] - margin])

    module = Band()
    signatures = {contracts.SERVING_SIGNATURE: module.serve, contracts.SEG_CROP_SIGNATURE: module.serve_crop}
    crop_inference: dict = {"signature": contracts.SEG_CROP_SIGNATURE, "align_px": 8, "receptive_field_px": 0}
    if window_margin_px is not None:
        signatures[contracts.SEG_WINDOW_SIGNATURE] = module.serve_window
        crop_inference.update(window_signature=contracts.SEG_WINDOW_SIGNATURE,
                              window_margin_px=window_margin_px)
    model_dir = Path(model_dir)
    tf.saved_model.save(module, str(model_dir), signatures=signatures)
    card = ModelCard(kind=contracts.MODEL_KIND_SEG, version=version, crop_inference=crop_inference)
    (model_dir / contracts.MODEL_CARD_FILENAME).write_text(card.to_json())
    return model_dir


def save_band_regressor(
    model_dir: Path, *, high: float, version: str = "band-reg-1", calibration: dict | None = None,
) -> Path:
    """Save the band regressor (``lv_mass_g`` = :func:`band_mass_g`) with its card."""
    import tensorflow as tf

    image_spec, spacing_spec = _signature_specs()

    class BandRegressor(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.high = tf.Variable(high, dtype=tf.float32, trainable=False)

        @tf.function(input_signature=[image_spec, spacing_spec])
        def serve(self, image, spacing_mm):
            voxels = tf.reduce_sum(tf.cast(image[..., 0] >= self.high, tf.float64), axis=[1, 2, 3])
            voxel_ml = tf.reduce_prod(tf.cast(spacing_mm, tf.float64), axis=1) / 1000.0
            mass = voxels * voxel_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML
            return {contracts.SIGNATURE_OUTPUT_MASS: tf.cast(mass, tf.float32)}

    module = BandRegressor()
    model_dir = Path(model_dir)
    tf.saved_model.save(module, str(model_dir), signatures={contracts.SERVING_SIGNATURE: module.serve})
    _write_card(model_dir, contracts.MODEL_KIND_REG, version, calibration)
    return model_dir
