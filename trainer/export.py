"""Export a trained model: SavedModel with the pipeline's serving signature, ``model.keras``, model card.

Layout of an export directory (the pipeline loads the directory itself with ``tf.saved_model.load``)::

    saved_model.pb, variables/   serving_default: image (B,256,256,13,1) f32, spacing_mm (B,3) f32
                                 -> probabilities (B,256,256,13,3) f32   [ml4h_seg]
                                 -> lv_mass_g (B,) f32                   [ml4h_reg]
    model.keras                  the Keras model (custom layers registered in trainer.models / metrics)
    model_card.json              beam_pipeline.model_card.ModelCard

Names and shapes come from ``beam_pipeline.contracts``. ML4H_seg ignores ``spacing_mm`` (its mass comes
from voxel counts), but the signature takes it so that one handler serves both kinds.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from beam_pipeline import contracts
from beam_pipeline.model_card import ModelCard

KERAS_FILENAME = "model.keras"


def serving_input_signature() -> list[tf.TensorSpec]:
    """The two inputs of ``serving_default``, as in ``beam_pipeline.model_card.signature_contract``."""
    return [
        tf.TensorSpec([None, *contracts.TENSOR_SHAPE], tf.float32, name=contracts.SIGNATURE_INPUT_IMAGE),
        tf.TensorSpec(
            [None, len(contracts.SPACING_FIELDS)], tf.float32, name=contracts.SIGNATURE_INPUT_SPACING
        ),
    ]


def export_model(model: keras.Model, *, kind: str, export_dir: str, card: ModelCard) -> str:
    """Write the SavedModel, ``model.keras`` and ``model_card.json`` into ``export_dir``; return it.

    ``model`` takes the input dict of :mod:`trainer.models` (``image`` [+ ``spacing_mm``]). The card's
    kind must match ``kind``. Works for local paths and ``gs://``.
    """
    if kind not in (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG):
        raise ValueError(
            f"kind must be {contracts.MODEL_KIND_SEG!r} or {contracts.MODEL_KIND_REG!r}. Received: {kind!r}"
        )
    if card.kind != kind:
        raise ValueError(f"model card kind {card.kind!r} differs from the exported kind. Received: {kind!r}")
    card.check_compatible()
    is_seg = kind == contracts.MODEL_KIND_SEG
    input_names = set(model.input.keys()) if isinstance(model.input, dict) else set()
    wanted = {contracts.SIGNATURE_INPUT_IMAGE} | (set() if is_seg else {contracts.SIGNATURE_INPUT_SPACING})
    if input_names != wanted:
        raise ValueError(f"a {kind} model must take inputs {sorted(wanted)}. Received: {sorted(input_names)}")

    def serve(image: tf.Tensor, spacing_mm: tf.Tensor) -> dict[str, tf.Tensor]:
        if is_seg:
            probabilities = model({contracts.SIGNATURE_INPUT_IMAGE: image}, training=False)
            return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: tf.cast(probabilities, tf.float32)}
        inputs = {contracts.SIGNATURE_INPUT_IMAGE: image, contracts.SIGNATURE_INPUT_SPACING: spacing_mm}
        mass_g = tf.reshape(model(inputs, training=False), [-1])
        return {contracts.SIGNATURE_OUTPUT_MASS: tf.cast(mass_g, tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=contracts.SERVING_SIGNATURE, fn=serve, input_signature=serving_input_signature()
    )
    tf.io.gfile.makedirs(export_dir)
    archive.write_out(export_dir, verbose=False)
    keras_path = os.path.join(export_dir, KERAS_FILENAME)
    if export_dir.startswith("gs://"):  # Keras writes local files only
        local = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lvmass_{os.getpid()}_{KERAS_FILENAME}")
        model.save(local)
        tf.io.gfile.copy(local, keras_path, overwrite=True)
        os.remove(local)
    else:
        model.save(keras_path)
    with tf.io.gfile.GFile(os.path.join(export_dir, contracts.MODEL_CARD_FILENAME), "w") as handle:
        handle.write(card.to_json())
    return export_dir


def load_serving(export_dir: str):
    """The ``serving_default`` concrete function of an export (what the pipeline's handler calls)."""
    return tf.saved_model.load(export_dir).signatures[contracts.SERVING_SIGNATURE]


def load_card(export_dir: str) -> ModelCard:
    with tf.io.gfile.GFile(os.path.join(export_dir, contracts.MODEL_CARD_FILENAME)) as handle:
        return ModelCard.from_json(handle.read())
