"""Our own Beam ``ModelHandler`` over a TensorFlow SavedModel (ML4H_seg and ML4H_reg).

Why our own: Beam's ``TFModelHandlerNumpy`` loads through ``tf.keras.models.load_model``, which under
Keras 3 cannot read a SavedModel folder (apache/beam#30616). This handler loads with
``tf.saved_model.load`` and calls the ``serving_default`` signature (``lvmass.core.contracts``) on a
batch. It reads the ``model_card.json`` next to the model (``lvmass.storage.models``), refuses a model built
for another tensor contract or of the wrong kind, and reports the card's version as each prediction's
``model_id``.

Examples are any objects with ``image`` (float32 ``contracts.TENSOR_SHAPE``) and ``spacing_mm``
(3 floats: row, col, slice mm) attributes (``lvmass.core.model_input``), so the pipeline can pass its
participant records through ``RunInference(KeyedModelHandler(...))`` without a join afterwards.
Predictions are, per example:

* ``ml4h_seg``: the argmax label volume, uint8 ``contracts.LABEL_VOLUME_SHAPE`` (``argmax=True``, the
  default: taken inside TensorFlow so only 1/12 of the bytes leave the model), or the raw class
  probabilities float32 ``(256, 256, 13, 3)`` with ``argmax=False``; then the card's ``postprocess``
  (``lvmass.core.postprocess``);
* ``ml4h_reg``: the LV mass in grams (a Python float).

**Heart-centred crop (ML4H_seg).** The handler is given a crop policy (``crop_policy``,
``lvmass.core.crop.CropPolicy``), as Beam's handlers are given an inference function: the policy decides
which windows of the tensor to segment and whether what came back holds the LV; the handler only calls the
model on them. It does so when the card has ``crop_inference`` (a ``serving_crop`` signature with open rows
and columns, ``trainer/export.py``) and the labels are taken by argmax; otherwise, or when the policy finds
no LV, the whole field of view is segmented with ``serving_default``. When the card also names a
``serving_window`` signature with the policy's margin (``window_signature``, ``window_margin_px``), that
signature is called instead of ``serving_crop``: it takes the same crop and returns only the kept window,
computing each decoder layer only where the window needs it (``trainer/windowed.py``): the same
probabilities (measured: within 2e-12), 31 instead of 53 GFLOP for a 128 px crop.

**oneDNN.** TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI and the like
(Intel Cascade Lake and later); elsewhere (AMD EPYC, as on n2d machines) its convolutions run on Eigen at
about half the speed. Importing this module sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless the environment says
otherwise; it must be set before TensorFlow is imported. The labels were the same with and without it on
every participant we measured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from lvmass.core import contracts
from lvmass.core.crop import PATHS, CropPolicy, Window, lv_hint_box
from lvmass.core.model_card import MODEL_KINDS, ModelCard
from lvmass.core.model_input import ModelExample, check_example
from lvmass.core.postprocess import POSTPROCESSING
from lvmass.storage.models import read_model_card, resolve_model_dir

# read by TensorFlow when it is imported (tensorflow/core/util/util.cc): set before any import of it
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class LoadedModel:
    """A loaded SavedModel: the serving function, its card, the object that keeps it alive, and the
    crop signatures (ML4H_seg with ``crop_inference`` on its card; else None)."""

    serve: Any
    card: ModelCard
    module: Any
    serve_crop: Any = None
    serve_window: Any = None  # serving_window: the crop's inner window only (trainer/windowed.py)


def seg_probabilities(serve: Any, inputs: dict[str, Any], *, flips: bool) -> Any:
    """A segmentation signature's probabilities for ``inputs``; with ``flips``, the mean of those of the
    image and of its left-right mirror, mirrored back (the card's ``test_time_flips``). The image is
    ``(1, rows, cols, slices, 1)`` and the probabilities ``(1, rows, cols, slices, classes)``: the columns
    are axis 2 of both."""
    import tensorflow as tf

    probabilities = serve(**inputs)[contracts.SIGNATURE_OUTPUT_PROBABILITIES]
    if not flips:
        return probabilities
    mirrored = dict(inputs)
    mirrored[contracts.SIGNATURE_INPUT_IMAGE] = tf.reverse(inputs[contracts.SIGNATURE_INPUT_IMAGE], axis=[2])
    back = tf.reverse(serve(**mirrored)[contracts.SIGNATURE_OUTPUT_PROBABILITIES], axis=[2])
    return (probabilities + back) / 2.0


class SavedModelHandler(ModelHandler[ModelExample, Any, LoadedModel]):
    """Runs an lvmass SavedModel (``serving_default``) on batches of participant tensors.

    Args:
      model_dir: the SavedModel folder (local or any path TensorFlow can open), with
        ``model_card.json`` beside ``saved_model.pb``; or ``bundled:<name>``, resolved where the model
        is loaded (the worker), not where the pipeline is built.
      kind: ``contracts.MODEL_KIND_SEG`` or ``contracts.MODEL_KIND_REG``; must match the card.
      argmax: for segmentation, return the argmax labels (uint8) rather than probabilities.
      min_batch_size, max_batch_size: Beam's batching bounds (a participant tensor is 3.4 MB;
        ``model_card.batch_size_for_memory`` sizes it from the card).
      large_model: share one model per worker machine across processes (Beam multi-process shared).
      crop_policy: ML4H_seg's heart-centred crop (module docstring), used when the card has
        ``crop_inference``; None: always the whole field of view.
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
        crop_policy: CropPolicy | None = CropPolicy(),  # noqa: B008  # frozen: one shared default is safe
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
        self._crop = crop_policy
        namespace = self.get_metrics_namespace()
        self._crop_counters = {path: Metrics.counter(namespace, f"segmented_{path}") for path in PATHS}

    @property
    def model_dir(self) -> str:
        return self._model_dir

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def crop_policy(self) -> CropPolicy | None:
        return self._crop

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
        serve_crop, serve_window = self._crop_signatures(card, module)
        crop = ""
        if serve_crop is not None and self._crop is not None:
            crop = " (heart-centred crop, decoder on its kept window)" if serve_window is not None else (
                " (heart-centred crop)")
        logger.info("loaded %s model %s version %s%s", self._kind, self._model_dir, card.version, crop)
        return LoadedModel(serve=module.signatures[contracts.SERVING_SIGNATURE], card=card, module=module,
                           serve_crop=serve_crop, serve_window=serve_window)

    def _crop_signatures(self, card: ModelCard, module: Any) -> tuple[Any, Any]:
        """``serving_crop`` and, where its margin is the policy's, ``serving_window``, as the card names
        them (None, None without ``crop_inference``); ValueError when the SavedModel lacks one."""
        crop = card.crop_inference
        if self._kind != contracts.MODEL_KIND_SEG or crop is None:
            return None, None
        names = [crop.signature] + ([crop.window_signature] if crop.window_signature is not None else [])
        for name in names:
            if name not in module.signatures:
                raise ValueError(f"{self._model_dir}: the card's crop_inference names signature {name!r}, "
                                 f"which the SavedModel lacks (has {sorted(module.signatures)})")
        serve_window = None
        # the window signature leaves a fixed margin off the crop: usable when it is the policy's
        if (crop.window_signature is not None and self._crop is not None
                and crop.window_margin_px == self._crop.margin_px):
            serve_window = module.signatures[crop.window_signature]
        if self._crop is not None and self._crop.crop_px % crop.align_px:
            raise ValueError(f"crop_px must be a multiple of the model's align_px {crop.align_px}. "
                             f"Received: {self._crop.crop_px}")
        return module.signatures[crop.signature], serve_window

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
        if not batch:
            raise ValueError("cannot run inference on an empty batch")
        slices = model.card.tensor_slices
        results = []
        for i, example in enumerate(batch):
            image, spacing = check_example(example, i, slices)
            prediction = self._run_one(image, spacing, model, lv_hint_box(example))
            if self._kind == contracts.MODEL_KIND_SEG and self._argmax and model.card.postprocess:
                prediction = POSTPROCESSING[model.card.postprocess](prediction, spacing_mm=spacing[0])
            results.append(prediction)
        return [
            PredictionResult(example, prediction, model_id=model.card.version)
            for example, prediction in zip(batch, results, strict=True)
        ]

    def _run_one(self, image: np.ndarray, spacing: np.ndarray, model: LoadedModel,
                 hint_box: tuple[int, int, int, int] | None = None) -> Any:
        """The prediction for one example (arrays with a batch axis of 1): through the crop policy when
        it applies (argmax labels of an ML4H_seg with a crop signature), else the whole field of view."""
        crop = model.card.crop_inference
        if (self._kind == contracts.MODEL_KIND_SEG and self._argmax and self._crop is not None
                and model.serve_crop is not None and crop is not None):
            labels, path = self._crop.segment(
                lambda window: self._kept_labels(image, spacing, window, model),
                n_slices=image.shape[3], spacing_mm=spacing[0], align_px=crop.align_px,
                card_crop_px=crop.crop_px, hint=hint_box)
            self._crop_counters[path].inc()
            if labels is not None:
                return labels
        return self._run_full(image, spacing, model)

    def _kept_labels(self, image: np.ndarray, spacing: np.ndarray, window: Window,
                     model: LoadedModel) -> tuple[Window, np.ndarray]:
        """The kept window of a crop (the crop less the policy's margin; on ``serving_crop``, not at the
        grid's own edges) and its argmax labels: from ``serving_window`` when the model has it, which
        computes only that window, else from ``serving_crop`` on the whole crop."""
        import tensorflow as tf

        assert self._crop is not None
        grid = contracts.LABEL_VOLUME_SHAPE[:2]
        margin = self._crop.margin_px
        rows, cols = window.index
        inputs = {contracts.SIGNATURE_INPUT_IMAGE: tf.constant(np.ascontiguousarray(image[:, rows, cols])),
                  contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing)}
        flips = model.card.test_time_flips
        if model.serve_window is not None:
            kept = window.shrunk(margin)  # the same margin on both sides: the mirror of a window is a window
            offset = (margin, margin)
            probabilities = seg_probabilities(model.serve_window, inputs, flips=flips)
            computed = (kept.rows, kept.cols)
        else:
            kept = window.inner(margin, grid)
            offset = (kept.row0 - window.row0, kept.col0 - window.col0)
            probabilities = seg_probabilities(model.serve_crop, inputs, flips=flips)
            computed = (window.rows, window.cols)
        expected = (1, *computed, image.shape[3], contracts.NUM_CLASSES)
        if tuple(probabilities.shape) != expected:
            raise ValueError(f"{self._model_dir}: crop {contracts.SIGNATURE_OUTPUT_PROBABILITIES!r} has "
                             f"shape {tuple(probabilities.shape)}, expected {expected}")
        labels = tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8).numpy()[0]
        if model.serve_window is None:
            labels = labels[offset[0]:offset[0] + kept.rows, offset[1]:offset[1] + kept.cols]
        return kept, labels

    def _run_full(self, image: np.ndarray, spacing: np.ndarray, model: LoadedModel) -> Any:
        """The prediction for one example from ``serving_default`` (the whole field of view)."""
        import tensorflow as tf

        inputs = {contracts.SIGNATURE_INPUT_IMAGE: tf.constant(image),
                  contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing)}
        if self._kind == contracts.MODEL_KIND_SEG:
            probabilities = seg_probabilities(model.serve, inputs, flips=model.card.test_time_flips)
            expected = (1, *image.shape[1:4], contracts.NUM_CLASSES)
            if tuple(probabilities.shape) != expected:
                raise ValueError(
                    f"{self._model_dir}: {contracts.SIGNATURE_OUTPUT_PROBABILITIES!r} has shape "
                    f"{tuple(probabilities.shape)}, expected {expected}"
                )
            if self._argmax:
                return tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8).numpy()[0]
            return probabilities.numpy()[0]
        outputs = model.serve(**inputs)
        mass = np.asarray(outputs[contracts.SIGNATURE_OUTPUT_MASS].numpy(), dtype=np.float64).reshape(-1)
        if mass.shape != (1,):
            raise ValueError(
                f"{self._model_dir}: {contracts.SIGNATURE_OUTPUT_MASS!r} has {mass.shape[0]} values "
                f"for a batch of 1"
            )
        return float(mass[0])

    def get_num_bytes(self, batch: Sequence[ModelExample]) -> int:
        return sum(int(np.asarray(e.image).nbytes) for e in batch)

    def get_metrics_namespace(self) -> str:
        return f"lvmass_{self._kind}"
