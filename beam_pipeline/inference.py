"""Our own Beam ``ModelHandler`` over a TensorFlow SavedModel (ML4H_seg and ML4H_reg).

Why our own: Beam's ``TFModelHandlerNumpy`` loads through ``tf.keras.models.load_model``, which under
Keras 3 cannot read a SavedModel folder (apache/beam#30616). This handler loads with
``tf.saved_model.load`` and calls the ``serving_default`` signature (``beam_pipeline.contracts``) on a
batch. It reads the ``model_card.json`` next to the model, refuses a model built for another tensor
contract or of the wrong kind, and reports the card's version as each prediction's ``model_id``.

Examples are any objects with ``image`` (float32 ``contracts.TENSOR_SHAPE``) and ``spacing_mm``
(3 floats: row, col, slice mm) attributes, so the pipeline can pass its participant records through
``RunInference(KeyedModelHandler(...))`` without a join afterwards. Predictions are, per example:

* ``ml4h_seg``: the argmax label volume, uint8 ``contracts.LABEL_VOLUME_SHAPE`` (``argmax=True``, the
  default: taken inside TensorFlow so only 1/12 of the bytes leave the model), or the raw class
  probabilities float32 ``(256, 256, 13, 3)`` with ``argmax=False``;
* ``ml4h_reg``: the LV mass in grams (a Python float).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_pipeline import contracts, filesystems
from beam_pipeline.model_card import ModelCard

logger = logging.getLogger(__name__)

MODEL_KINDS = (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG)
# A model shipped inside the package (the trainer exports them to beam_pipeline/models/<kind>/) is named
# by this marker, never by an absolute path: the launcher's install path does not exist on Dataflow
# workers, so the marker travels in the pipeline and each machine resolves it in its own installation.
BUNDLED_PREFIX = "bundled:"
MODELS_PACKAGE_DIR = "models"


class ModelExample(Protocol):
    """What the handler needs from an example: the model tensor and its voxel size."""

    @property
    def image(self) -> np.ndarray: ...

    @property
    def spacing_mm(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelInput:
    """The minimal example: a ``contracts.TENSOR_SHAPE`` float32 image and its (row, col, slice) mm."""

    image: np.ndarray
    spacing_mm: np.ndarray


@dataclass(frozen=True)
class LoadedModel:
    """A loaded SavedModel: the serving function, its card, and the object that keeps it alive."""

    serve: Any
    card: ModelCard
    module: Any


def bundled_models_root() -> Path:
    """Where this installation of ``beam_pipeline`` keeps its bundled models (the package's own folder,
    looked up where the code runs: launcher or worker)."""
    from importlib import resources

    return Path(str(resources.files("beam_pipeline").joinpath(MODELS_PACKAGE_DIR)))


def bundled_model_dir(kind: str) -> str | None:
    """``"bundled:<kind>"`` when this installation ships a SavedModel for ``kind``, else None.

    The marker, not a path, goes into the pipeline; :func:`resolve_model_dir` turns it into a folder
    on whichever machine loads the model.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}. Received: {kind!r}")
    return f"{BUNDLED_PREFIX}{kind}" if (bundled_models_root() / kind / "saved_model.pb").exists() else None


def resolve_model_dir(model_dir: str) -> str:
    """A model folder TensorFlow and Beam's FileSystems can open: ``bundled:<kind>`` resolved in this
    installation's package, any other path (local, ``gs://``) unchanged."""
    if not model_dir.startswith(BUNDLED_PREFIX):
        return model_dir
    kind = model_dir[len(BUNDLED_PREFIX):]
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown bundled model {model_dir!r}; expected one of "
                         f"{[BUNDLED_PREFIX + k for k in MODEL_KINDS]}")
    return str(bundled_models_root() / kind)


def read_model_card(model_dir: str, *, expected_kind: str | None = None) -> ModelCard:
    """Read and check ``model_dir/model_card.json`` (``model_dir`` may be a ``bundled:<kind>`` marker).

    Raises ``FileNotFoundError`` naming the path when the card is missing and ``ValueError`` when its
    kind differs from ``expected_kind`` or its tensor contract/label map differ from the contracts.
    """
    card_path = filesystems.join(resolve_model_dir(model_dir), contracts.MODEL_CARD_FILENAME)
    if not filesystems.exists(card_path):
        raise FileNotFoundError(f"{card_path}: no model card next to the SavedModel")
    card = ModelCard.from_json(filesystems.read_text(card_path))
    if expected_kind is not None and card.kind != expected_kind:
        raise ValueError(f"{card_path}: model card kind is {card.kind!r}, expected {expected_kind!r}")
    try:
        card.check_compatible()
    except ValueError as exc:
        raise ValueError(f"{card_path}: {exc}") from exc
    return card


def stack_batch(batch: Sequence[ModelExample]) -> tuple[np.ndarray, np.ndarray]:
    """Stack examples into the signature's ``image`` (B, 256, 256, 13, 1) and ``spacing_mm`` (B, 3).

    Raises ``ValueError`` naming the offending example index when a shape differs from the contract.
    """
    if not batch:
        raise ValueError("cannot run inference on an empty batch")
    for i, example in enumerate(batch):
        shape = np.shape(example.image)
        if shape != contracts.TENSOR_SHAPE:
            raise ValueError(f"example {i}: image shape {shape}, expected {contracts.TENSOR_SHAPE}")
        if np.shape(example.spacing_mm) != (len(contracts.SPACING_FIELDS),):
            raise ValueError(f"example {i}: spacing_mm shape {np.shape(example.spacing_mm)}, expected (3,)")
    images = np.stack([np.asarray(e.image, dtype=np.float32) for e in batch])
    spacing = np.stack([np.asarray(e.spacing_mm, dtype=np.float32) for e in batch])
    return images, spacing


class SavedModelHandler(ModelHandler[ModelExample, Any, LoadedModel]):
    """Runs an lvmass SavedModel (``serving_default``) on batches of participant tensors.

    Args:
      model_dir: the SavedModel folder (local or any path TensorFlow can open), with
        ``model_card.json`` beside ``saved_model.pb``; or ``bundled:<kind>``, resolved where the model
        is loaded (the worker), not where the pipeline is built.
      kind: ``contracts.MODEL_KIND_SEG`` or ``contracts.MODEL_KIND_REG``; must match the card.
      argmax: for segmentation, return the argmax labels (uint8) rather than probabilities.
      min_batch_size, max_batch_size: Beam's batching bounds (a participant tensor is 3.4 MB).
      large_model: share one model per worker machine across processes (Beam multi-process shared).
    """

    def __init__(
        self,
        model_dir: str,
        *,
        kind: str,
        argmax: bool = True,
        min_batch_size: int = 1,
        max_batch_size: int = 8,
        large_model: bool = False,
    ):
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}. Received: {kind!r}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"need 1 <= min_batch_size <= max_batch_size. Received: {min_batch_size}, {max_batch_size}"
            )
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         large_model=large_model)
        self._model_dir = model_dir
        self._kind = kind
        self._argmax = argmax

    @property
    def model_dir(self) -> str:
        return self._model_dir

    @property
    def kind(self) -> str:
        return self._kind

    def load_model(self) -> LoadedModel:
        """Load the SavedModel once per worker (RunInference shares it between threads/processes)."""
        import tensorflow as tf

        card = read_model_card(self._model_dir, expected_kind=self._kind)
        module = tf.saved_model.load(resolve_model_dir(self._model_dir))
        if contracts.SERVING_SIGNATURE not in module.signatures:
            raise ValueError(
                f"{self._model_dir}: SavedModel has no {contracts.SERVING_SIGNATURE!r} signature "
                f"(has {sorted(module.signatures)})"
            )
        logger.info("loaded %s model %s version %s", self._kind, self._model_dir, card.version)
        return LoadedModel(serve=module.signatures[contracts.SERVING_SIGNATURE], card=card, module=module)

    def run_inference(
        self,
        batch: Sequence[ModelExample],
        model: LoadedModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One ``PredictionResult`` per example, in order: one signature call per example.

        Why not one call per batch: a participant's result must not depend on which others Beam batched
        it with (results are bit-identical run to run), and CPU kernels pick different blockings, and so
        round differently, for different batch shapes; one example per call also bounds the memory of a
        segmentation call to one participant's activations. The batch still amortises Beam's overhead.
        """
        images, spacing = stack_batch(batch)
        results = [self._run_one(images[i:i + 1], spacing[i:i + 1], model) for i in range(len(batch))]
        return [
            PredictionResult(example, prediction, model_id=model.card.version)
            for example, prediction in zip(batch, results, strict=True)
        ]

    def _run_one(self, image: np.ndarray, spacing: np.ndarray, model: LoadedModel) -> Any:
        """The prediction for one example (arrays with a batch axis of 1)."""
        import tensorflow as tf

        batch = [None]  # one example
        outputs = model.serve(**{
            contracts.SIGNATURE_INPUT_IMAGE: tf.constant(image),
            contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing),
        })
        if self._kind == contracts.MODEL_KIND_SEG:
            probabilities = outputs[contracts.SIGNATURE_OUTPUT_PROBABILITIES]
            expected = (len(batch), *contracts.LABEL_VOLUME_SHAPE, contracts.NUM_CLASSES)
            if tuple(probabilities.shape) != expected:
                raise ValueError(
                    f"{self._model_dir}: {contracts.SIGNATURE_OUTPUT_PROBABILITIES!r} has shape "
                    f"{tuple(probabilities.shape)}, expected {expected}"
                )
            if self._argmax:
                values = tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8).numpy()
            else:
                values = probabilities.numpy()
            predictions: list[Any] = list(values)
        else:
            mass = np.asarray(outputs[contracts.SIGNATURE_OUTPUT_MASS].numpy(), dtype=np.float64).reshape(-1)
            if mass.shape != (len(batch),):
                raise ValueError(
                    f"{self._model_dir}: {contracts.SIGNATURE_OUTPUT_MASS!r} has {mass.shape[0]} values "
                    f"for a batch of {len(batch)}"
                )
            predictions = [float(m) for m in mass]
        return predictions[0]

    def get_num_bytes(self, batch: Sequence[ModelExample]) -> int:
        return sum(int(np.asarray(e.image).nbytes) for e in batch)

    def get_metrics_namespace(self) -> str:
        return f"lvmass_{self._kind}"
