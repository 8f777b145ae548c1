"""Export a trained model: SavedModel with the pipeline's serving signature, ``model.keras``, model card.

Layout of an export directory (the pipeline loads the directory itself with ``tf.saved_model.load``)::

    saved_model.pb, variables/   serving_default: image (B,256,256,13,1) f32, spacing_mm (B,3) f32
                                 -> probabilities (B,256,256,13,3) f32   [ml4h_seg]
                                 -> lv_mass_g (B,) f32                   [ml4h_reg]
                                 serving_crop [ml4h_seg]: the same network and weights on an in-plane
                                 crop, image (B,rows,cols,13,1) -> probabilities (B,rows,cols,13,3)
                                 serving_window [ml4h_seg]: the same crop -> probabilities of its inner
                                 window only, (B,rows-2m,cols-2m,13,3), m = SEG_WINDOW_MARGIN_PX (32)
    model.keras                  the Keras model (custom layers registered in trainer.models / metrics)
    model_card.json              lvmass.core.model_card.ModelCard

Names and shapes come from ``lvmass.core.contracts``. ML4H_seg ignores ``spacing_mm`` (its mass comes
from voxel counts), but the signature takes it so that one handler serves both kinds.

A U-Net is fully convolutional, so ML4H_seg also gets ``serving_crop``: rows and columns left open, for
crops whose sides are multiples of the model's in-plane pooling factor (:func:`in_plane_alignment_px`; 8
for three (2, 2, 1) poolings). The card's ``crop_inference`` records the signature, that alignment and the
receptive field (:func:`receptive_field_px`); the pipeline's handler uses it to segment a heart-centred crop
(``beam_pipeline.inference``). The handler keeps only the crop's inner window, so ``serving_window``
(:mod:`trainer.windowed`) computes each layer only where that window needs it: the same values, half the
operations; the card records its signature and margin. All signatures call one set of variables. An
ML4H_seg export made before these signatures existed gets them, without touching its weights or
``serving_default``, with::

    python -m trainer.export add_crop_signature --model_dir beam_pipeline/models/ml4h_seg
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lvmass.core import contracts
from lvmass.core.model_card import ModelCard
from trainer.windowed import window_demands, windowed_forward

logger = logging.getLogger(__name__)

KERAS_FILENAME = "model.keras"
CROP_SIGNATURE = contracts.SEG_CROP_SIGNATURE
WINDOW_SIGNATURE = contracts.SEG_WINDOW_SIGNATURE
# what a SavedModel folder holds besides model.keras and the card (replaced by add_crop_signature)
SAVED_MODEL_ENTRIES = ("saved_model.pb", "variables", "fingerprint.pb", "assets")


def serving_input_signature(slices: int | None = contracts.TENSOR_SLICES) -> list[tf.TensorSpec]:
    """The two inputs of ``serving_default``, as in ``lvmass.core.model_card.signature_contract``:
    ``slices`` slots (13) or any number (None, a per-slice model)."""
    return [
        tf.TensorSpec([None, contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slices, contracts.TENSOR_CHANNELS],
                      tf.float32, name=contracts.SIGNATURE_INPUT_IMAGE),
        tf.TensorSpec(
            [None, len(contracts.SPACING_FIELDS)], tf.float32, name=contracts.SIGNATURE_INPUT_SPACING
        ),
    ]


def crop_input_signature(slices: int | None = contracts.TENSOR_SLICES) -> list[tf.TensorSpec]:
    """The inputs of ``serving_crop``: ``image`` with open rows and columns, ``spacing_mm`` as usual."""
    return [
        tf.TensorSpec([None, None, None, slices, contracts.TENSOR_CHANNELS], tf.float32,
                      name=contracts.SIGNATURE_INPUT_IMAGE),
        tf.TensorSpec(
            [None, len(contracts.SPACING_FIELDS)], tf.float32, name=contracts.SIGNATURE_INPUT_SPACING
        ),
    ]


def size_agnostic_twin(model: keras.Model) -> keras.Model:
    """The same functional network with rows and columns of its ``image`` input left open, holding a copy
    of ``model``'s weights (a U-Net is fully convolutional: only the declared input shape fixes 256)."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer" and layer["config"]["name"] == contracts.SIGNATURE_INPUT_IMAGE:
            shape = layer["config"]["batch_shape"]
            layer["config"]["batch_shape"] = [shape[0], None, None, *shape[3:]]
    twin = keras.Model.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def in_plane_alignment_px(model: keras.Model) -> int:
    """Crop rows and columns (and crop origins) must be multiples of this: the product of the in-plane
    pooling factors, so that a crop's pooling windows fall where the full tensor's do.

    Raises ``ValueError`` when a pooling layer pools rows and columns differently.
    """
    align = 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.MaxPooling3D | keras.layers.AveragePooling3D):
            rows, cols = layer.pool_size[:2]
            strides = tuple(layer.strides[:2]) if layer.strides is not None else (rows, cols)
            if rows != cols or strides != (rows, cols):
                raise ValueError(f"layer {layer.name}: in-plane pooling must be square and non-overlapping. "
                                 f"Received: pool_size={layer.pool_size}, strides={layer.strides}")
            align *= rows
    return align


def receptive_field_px(model: keras.Model) -> int:
    """The in-plane receptive-field radius of ``model``'s output, in input pixels (rounded up).

    Walks the functional graph: a k-wide convolution adds ``(k - 1) / 2`` pixels at the current stride, a
    pooling of p adds ``(p - 1) / 2`` and multiplies the stride by p, an upsampling of p adds
    ``(p - 1) / 2`` at the finer stride and divides it by p; a merge takes the largest of its inputs. An
    output voxel further than this from a crop's edge sees only pixels inside the crop.
    """
    radius: dict[str, tuple[float, float]] = {}  # layer name -> (radius px, stride px)
    for layer in model.layers:
        inbound = [radius[t._keras_history.operation.name] for t in _input_tensors(layer)]
        r, stride = max(inbound) if inbound else (0.0, 1.0)
        if isinstance(layer, keras.layers.Conv3D):
            r += (layer.kernel_size[0] - 1) / 2 * layer.dilation_rate[0] * stride
            stride *= layer.strides[0]
        elif isinstance(layer, keras.layers.MaxPooling3D | keras.layers.AveragePooling3D):
            r += (layer.pool_size[0] - 1) / 2 * stride
            stride *= layer.pool_size[0]
        elif isinstance(layer, keras.layers.UpSampling3D):
            stride /= layer.size[0]
            r += (layer.size[0] - 1) / 2 * stride
        radius[layer.name] = (r, stride)
    return math.ceil(max(r for r, _ in (radius[t._keras_history.operation.name]
                                         for t in keras.tree.flatten(model.outputs))))


def _input_tensors(layer: keras.layers.Layer) -> list[Any]:
    if isinstance(layer, keras.layers.InputLayer):
        return []
    return [t for node in layer._inbound_nodes for t in keras.tree.flatten(node.input_tensors)]


def windowable(model: keras.Model) -> bool:
    """Whether :mod:`trainer.windowed` can run ``model`` (a U-Net of the layers it knows)."""
    try:
        window_demands(model, contracts.SEG_WINDOW_MARGIN_PX)
    except ValueError as exc:
        logger.warning("no %s signature: %s", WINDOW_SIGNATURE, exc)
        return False
    return True


def crop_inference_card(model: keras.Model) -> dict[str, Any]:
    """What the card records about ``serving_crop`` and ``serving_window`` (``ModelCard.crop_inference``)."""
    card: dict[str, Any] = {"signature": CROP_SIGNATURE, "align_px": in_plane_alignment_px(model),
                            "receptive_field_px": receptive_field_px(model)}
    if windowable(model):
        card.update(window_signature=WINDOW_SIGNATURE, window_margin_px=contracts.SEG_WINDOW_MARGIN_PX)
    return card


def _write_archive(model: keras.Model, export_dir: str, *, is_seg: bool,
                   slices: int | None = contracts.TENSOR_SLICES) -> None:
    """The SavedModel: ``serving_default`` and, for ML4H_seg, ``serving_crop`` on the same variables."""
    network = size_agnostic_twin(model) if is_seg else model

    def serve(image: tf.Tensor, spacing_mm: tf.Tensor) -> dict[str, tf.Tensor]:
        if is_seg:
            probabilities = network({contracts.SIGNATURE_INPUT_IMAGE: image}, training=False)
            return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: tf.cast(probabilities, tf.float32)}
        inputs = {contracts.SIGNATURE_INPUT_IMAGE: image, contracts.SIGNATURE_INPUT_SPACING: spacing_mm}
        mass_g = tf.reshape(network(inputs, training=False), [-1])
        return {contracts.SIGNATURE_OUTPUT_MASS: tf.cast(mass_g, tf.float32)}

    def serve_window(image: tf.Tensor, spacing_mm: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = windowed_forward(network, image, contracts.SEG_WINDOW_MARGIN_PX)
        return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: tf.cast(probabilities, tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(
        name=contracts.SERVING_SIGNATURE, fn=serve, input_signature=serving_input_signature(slices)
    )
    if is_seg:
        archive.add_endpoint(name=CROP_SIGNATURE, fn=serve, input_signature=crop_input_signature(slices))
        if windowable(network):
            archive.add_endpoint(name=WINDOW_SIGNATURE, fn=serve_window,
                                 input_signature=crop_input_signature(slices))
    tf.io.gfile.makedirs(export_dir)
    archive.write_out(export_dir, verbose=False)


def export_model(model: keras.Model, *, kind: str, export_dir: str, card: ModelCard) -> str:
    """Write the SavedModel, ``model.keras`` and ``model_card.json`` into ``export_dir``; return it.

    ``model`` takes the input dict of :mod:`trainer.models` (``image`` [+ ``spacing_mm``]). The card's
    kind must match ``kind``; an ML4H_seg card gets ``crop_inference`` (``serving_crop``). Works for local
    paths and ``gs://``.
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

    if is_seg:
        crop = crop_inference_card(model)
        if card.crop_inference is not None and card.crop_inference.crop_px:  # the trainer's first crop
            crop["crop_px"] = int(card.crop_inference.crop_px)
        card = dataclasses.replace(card, crop_inference=crop)
    _write_archive(model, export_dir, is_seg=is_seg, slices=card.tensor_slices)
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


def _variable_values(saved: Any) -> list[np.ndarray]:
    return sorted((v.numpy() for v in saved.variables), key=lambda a: (a.shape, a.tobytes()))


def add_crop_signature(model_dir: str, *, probe_seed: int = 0) -> dict[str, Any]:
    """Give an existing local ML4H_seg export ``serving_crop`` and ``serving_window``, keeping its weights
    and ``serving_default``.

    Rebuilds the SavedModel from the folder's ``model.keras`` into a temporary folder and checks, before
    replacing anything, that the new one holds exactly the old variables (bit for bit), that its
    ``serving_default`` returns bit-identical probabilities on a random probe tensor and that its
    ``serving_window`` equals ``serving_crop``'s inner window on a crop of it. Then swaps the
    SavedModel files and adds ``crop_inference`` to the card (``model.keras`` and every other card field
    are left as they were). Returns what was checked.
    """
    card = load_card(model_dir)
    if card.kind != contracts.MODEL_KIND_SEG:
        raise ValueError(f"{model_dir}: serving_crop is for {contracts.MODEL_KIND_SEG}. "
                         f"Received: {card.kind!r}")
    # the custom objects model.keras may name are registered when these are imported
    import trainer.metrics
    import trainer.models  # noqa: F401

    model = keras.models.load_model(os.path.join(model_dir, KERAS_FILENAME), compile=False)
    old = tf.saved_model.load(model_dir)
    probe = np.random.default_rng(probe_seed).standard_normal((1, *contracts.TENSOR_SHAPE)).astype(np.float32)
    spacing = np.float32([[1.8, 1.8, 10.0]])
    inputs = {contracts.SIGNATURE_INPUT_IMAGE: tf.constant(probe),
              contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing)}
    before = old.signatures[contracts.SERVING_SIGNATURE](**inputs)[contracts.SIGNATURE_OUTPUT_PROBABILITIES]
    staging = tempfile.mkdtemp(prefix="lvmass_crop_export_")
    try:
        _write_archive(model, staging, is_seg=True)
        new = tf.saved_model.load(staging)
        after = new.signatures[contracts.SERVING_SIGNATURE](**inputs)[
            contracts.SIGNATURE_OUTPUT_PROBABILITIES]
        old_values, new_values = _variable_values(old), _variable_values(new)
        same_weights = len(old_values) == len(new_values) and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(old_values, new_values, strict=True))
        if not same_weights:
            raise ValueError(f"{model_dir}: the rebuilt SavedModel's variables differ from the old ones")
        if not np.array_equal(before.numpy(), after.numpy()):
            raise ValueError(f"{model_dir}: the rebuilt serving_default differs from the old one on the "
                             "probe")
        window_gap = window_difference(new, probe, spacing)
        for entry in SAVED_MODEL_ENTRIES:
            target = os.path.join(model_dir, entry)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
            source = os.path.join(staging, entry)
            if os.path.isfile(source) or (os.path.isdir(source) and os.listdir(source)):
                shutil.move(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    crop = crop_inference_card(model)
    with tf.io.gfile.GFile(os.path.join(model_dir, contracts.MODEL_CARD_FILENAME), "w") as handle:
        handle.write(dataclasses.replace(card, crop_inference=crop).to_json())
    return {"model_dir": model_dir, "variables": len(new_values), "variables_identical": True,
            "serving_default_identical_on_probe": True,
            "serving_window_max_abs_difference_from_serving_crop": window_gap, "crop_inference": crop}


def window_difference(saved: Any, image: np.ndarray, spacing: np.ndarray, *, crop_px: int = 128,
                      tolerance: float = 1e-5) -> float | None:
    """The largest difference between ``serving_window`` and the inner window of ``serving_crop`` on a
    centred ``crop_px`` crop of ``image``; None when ``saved`` has no ``serving_window``. Raises
    ``ValueError`` above ``tolerance`` (the two compute the same sums; only rounding may differ)."""
    if WINDOW_SIGNATURE not in saved.signatures:
        return None
    start = [(n - crop_px) // 2 for n in image.shape[1:3]]
    crop = image[:, start[0]:start[0] + crop_px, start[1]:start[1] + crop_px]
    inputs = {contracts.SIGNATURE_INPUT_IMAGE: tf.constant(crop),
              contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing)}
    margin = contracts.SEG_WINDOW_MARGIN_PX
    whole = saved.signatures[CROP_SIGNATURE](**inputs)[contracts.SIGNATURE_OUTPUT_PROBABILITIES].numpy()
    window = saved.signatures[WINDOW_SIGNATURE](**inputs)[contracts.SIGNATURE_OUTPUT_PROBABILITIES].numpy()
    inner = whole[:, margin:-margin, margin:-margin]
    if window.shape != inner.shape:
        raise ValueError(f"serving_window gave shape {window.shape}, expected {inner.shape}")
    gap = float(np.abs(window - inner).max())
    if gap > tolerance:
        raise ValueError(f"serving_window differs from serving_crop's inner window by {gap:.3g} "
                         f"(tolerance {tolerance})")
    return gap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.export add_crop_signature --model_dir DIR``."""
    import json

    from lvmass.cli_args import ArgumentParser, configure_logging

    parser = ArgumentParser(prog="python -m trainer.export",
                            description="Maintain an exported model folder (see the module docstring).")
    sub = parser.add_subparsers(dest="command", required=True, help="what to do")
    add = sub.add_parser("add_crop_signature",
                         help="give an ML4H_seg export serving_crop and serving_window (weights and "
                              "serving_default unchanged)")
    add.add_argument("--model_dir", required=True, help="a local ML4H_seg export folder")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(getattr(args, "log_level", "INFO"))
    print(json.dumps(add_crop_signature(args.model_dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
