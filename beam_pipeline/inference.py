"""Our own Beam ``ModelHandler`` over a TensorFlow SavedModel (ML4H_seg and ML4H_reg).

Why our own: Beam's ``TFModelHandlerNumpy`` loads through ``tf.keras.models.load_model``, which under
Keras 3 cannot read a SavedModel folder (apache/beam#30616). This handler loads with
``tf.saved_model.load`` and calls the ``serving_default`` signature (``lvmass.core.contracts``) on a
batch. It reads the ``model_card.json`` next to the model, refuses a model built for another tensor
contract or of the wrong kind, and reports the card's version as each prediction's ``model_id``.

Examples are any objects with ``image`` (float32 ``contracts.TENSOR_SHAPE``) and ``spacing_mm``
(3 floats: row, col, slice mm) attributes, so the pipeline can pass its participant records through
``RunInference(KeyedModelHandler(...))`` without a join afterwards. Predictions are, per example:

* ``ml4h_seg``: the argmax label volume, uint8 ``contracts.LABEL_VOLUME_SHAPE`` (``argmax=True``, the
  default: taken inside TensorFlow so only 1/12 of the bytes leave the model), or the raw class
  probabilities float32 ``(256, 256, 13, 3)`` with ``argmax=False``;
* ``ml4h_reg``: the LV mass in grams (a Python float).

**Heart-centred crop (ML4H_seg).** The tensor is 256 x 256 pixels of 1.86 mm, a 476 mm field of view; the
heart fills a 40-50 pixel square of it. When the model's card has ``crop_inference`` (a ``serving_crop``
signature with open rows and columns, ``trainer/export.py``), the handler segments a ``crop_px`` square
(128, the bundled model's training crop) instead of the whole tensor, and keeps only its inner window, the
crop less ``crop_margin_px`` (32 px, 60 mm) on each side:

1. first pass: the crop around the LV of the participant's InlineVF outlines when it carries them (the
   pipeline decodes them for the InlineVF method anyway; :func:`lv_hint_box`), else at the centre of the
   grid. The hint only places the crop; where it finds no LV, the centred crop is tried next;
2. the LV is the largest connected component of cavity and myocardium in the kept window. If it does not
   touch the window's edges (other than the grid's own), its labels are kept and everything outside the
   window is background;
3. otherwise a second crop is centred on that LV (its cut-off side extended, :meth:`Window.extend_clipped`;
   larger, in steps of ``align_px``, if the LV needs it) and checked the same way; if that fails too, or no
   LV of at least ``MIN_LV_ML`` is found, or ``argmax=False``, the whole field of view is segmented with
   ``serving_default``, as without a crop.

When the card also names a ``serving_window`` signature with this handler's margin (``window_signature``,
``window_margin_px``), that signature is called instead of ``serving_crop``: it takes the same crop and
returns only the kept window, computing each decoder layer only where the window needs it
(``trainer/windowed.py``): the same probabilities (measured: within 2e-12), 31 instead of 53 GFLOP for a
128 px crop.

Why the labels are the same: a U-Net is fully convolutional; crop origins and sizes are multiples of the
pooling factor (``align_px``, 8) so every pooling window falls where it does on the full tensor, and an
output voxel depends only on the pixels within ``receptive_field_px`` (52) of it. Measured on synthetic
cohorts and the real study (``benchmarks/bench_inference.py speed``, ``tests/test_inference_crop.py``):
inside the kept window the labels equal the full field of view's, except, rarely, a voxel whose two most
likely classes are within 0.01 of each other (a coin toss either way; 0.036 g); what the crop drops are
labels 60 mm or more from the LV, never part of it (on the real study, 39 voxels of false-positive
"myocardium" 190 mm away). ``crop_px=None`` turns the crop off.

**oneDNN.** TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI and the like
(Intel Cascade Lake and later); elsewhere (AMD EPYC, as on n2d machines) its convolutions run on Eigen at
about half the speed. Importing this module sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless the environment says
otherwise; it must be set before TensorFlow is imported. The labels were the same with and without it on
every participant we measured.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from lvmass.core import contracts
from lvmass.core.model_card import ModelCard
from lvmass.storage import filesystems

# read by TensorFlow when it is imported (tensorflow/core/util/util.cc): set before any import of it
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

logger = logging.getLogger(__name__)

MODEL_KINDS = (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG)
# A model shipped inside the package (the trainer exports them to beam_pipeline/models/<kind>/) is named
# by this marker, never by an absolute path: the launcher's install path does not exist on Dataflow
# workers, so the marker travels in the pipeline and each machine resolves it in its own installation.
BUNDLED_PREFIX = "bundled:"
MODELS_PACKAGE_DIR = "models"
# The package ships two sets: the default models (any scanner; trainer.synthslice) and the paper's recipe
# (3-D, InlineVF outlines then centring; trainer.portable / trainer.task), the latter as ``<kind>_paper``.
BUNDLED_DEFAULT = "default"
BUNDLED_VARIANTS = ("default", "paper")

# ML4H_seg crop policy (module docstring). 128 px: the bundled model's training crop (its card's
# hyperparameters.crop_px). 32 px: no labels within 60 mm of a crop edge; crops with at least this margin
# gave the full field of view's labels on every participant measured, 20-30 px did not always.
CROP_PX = 128
# --seg_field_of_view: the heart-centred crop (default) or the whole tensor, as the paper segmented it
SEG_FIELDS_OF_VIEW = ("crop", "whole")
CROP_MARGIN_PX = contracts.SEG_WINDOW_MARGIN_PX
MIN_LV_ML = 20.0  # smaller "LV" (cavity + myocardium) in a crop: no heart found there
# Per-process memory budget the default --batch_size is sized for (batch_size_for_memory): one Dataflow
# SDK process per vCPU of an n2-standard machine has 4 GB; 2.5 GB leaves room for the harness and Beam.
PROCESS_MEMORY_BUDGET_MB = 2500.0


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
    """A loaded SavedModel: the serving function, its card, the object that keeps it alive, and the
    crop signatures (ML4H_seg with ``crop_inference`` on its card; else None)."""

    serve: Any
    card: ModelCard
    module: Any
    serve_crop: Any = None
    serve_window: Any = None  # serving_window: the crop's inner window only (trainer/windowed.py)


@dataclass(frozen=True)
class Window:
    """An in-plane window of the tensor grid: rows ``row0:row0 + rows``, columns ``col0:col0 + cols``."""

    row0: int
    col0: int
    rows: int
    cols: int

    @property
    def index(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row0 + self.rows), slice(self.col0, self.col0 + self.cols)

    def inner(self, margin_px: int, grid: tuple[int, int]) -> Window:
        """This window less ``margin_px`` on each side that is not the grid's own edge."""
        top = margin_px if self.row0 > 0 else 0
        left = margin_px if self.col0 > 0 else 0
        bottom = margin_px if self.row0 + self.rows < grid[0] else 0
        right = margin_px if self.col0 + self.cols < grid[1] else 0
        return Window(self.row0 + top, self.col0 + left, self.rows - top - bottom, self.cols - left - right)

    def clear_of_edges(self, box: tuple[int, int, int, int], grid: tuple[int, int]) -> bool:
        """Whether the inclusive box lies inside this window without touching an edge of it that is not
        the grid's own edge: a labelled component that touches such an edge may go on beyond it."""
        return (self.holds(box)
                and (box[0] > self.row0 or self.row0 == 0)
                and (box[1] < self.row0 + self.rows - 1 or self.row0 + self.rows == grid[0])
                and (box[2] > self.col0 or self.col0 == 0)
                and (box[3] < self.col0 + self.cols - 1 or self.col0 + self.cols == grid[1]))

    def extend_clipped(self, box: tuple[int, int, int, int],
                       grid: tuple[int, int]) -> tuple[int, int, int, int]:
        """Where a box cut by this window's edges (not the grid's) probably ends, to place the next crop
        (whatever that crop finds is checked again): in short axis an LV is about as long as it is wide,
        so an axis cut on one side is taken to be as long as the other axis, and at least 16 px longer
        than what was seen; an axis cut on both sides grows 16 px each way."""
        low_cut = (box[0] == self.row0 and self.row0 > 0, box[2] == self.col0 and self.col0 > 0)
        high_cut = (box[1] == self.row0 + self.rows - 1 and self.row0 + self.rows < grid[0],
                    box[3] == self.col0 + self.cols - 1 and self.col0 + self.cols < grid[1])
        extent = (box[1] - box[0] + 1, box[3] - box[2] + 1)
        grown = list(box)
        for axis in (0, 1):
            other = 1 - axis
            clean_other = not (low_cut[other] or high_cut[other])
            span = max(extent[axis] + 16, extent[other] if clean_other else 0)
            if low_cut[axis] and high_cut[axis]:
                grown[2 * axis] -= 16
                grown[2 * axis + 1] += 16
            elif low_cut[axis]:
                grown[2 * axis] = grown[2 * axis + 1] - span + 1
            elif high_cut[axis]:
                grown[2 * axis + 1] = grown[2 * axis] + span - 1
        return (max(0, grown[0]), min(grid[0] - 1, grown[1]), max(0, grown[2]), min(grid[1] - 1, grown[3]))

    def holds(self, box: tuple[int, int, int, int]) -> bool:
        """Whether the inclusive box ``(row_min, row_max, col_min, col_max)`` lies inside this window."""
        return (self.row0 <= box[0] and box[1] < self.row0 + self.rows
                and self.col0 <= box[2] and box[3] < self.col0 + self.cols)


def _aligned_span(centre: float, size: int, extent: int, align: int) -> int:
    """Origin of a ``size``-wide span centred near ``centre``, a multiple of ``align``, inside ``extent``."""
    origin = round((centre - size / 2) / align) * align
    return int(min(max(origin, 0), extent - size))


def crop_window(centre: tuple[float, float], size: tuple[int, int], grid: tuple[int, int],
                align: int) -> Window:
    """A window of ``size`` (multiples of ``align``) centred near ``centre``, with aligned origins."""
    return Window(_aligned_span(centre[0], size[0], grid[0], align),
                  _aligned_span(centre[1], size[1], grid[1], align), size[0], size[1])


def window_around(box: tuple[int, int, int, int], *, crop_px: int, margin_px: int, grid: tuple[int, int],
                  align: int) -> Window | None:
    """The crop centred on the inclusive ``box`` that keeps ``margin_px`` around it: ``crop_px`` square,
    or larger in steps of ``align`` where the box needs it; None when that is the whole grid."""
    sizes = []
    for extent, low, high in ((grid[0], box[0], box[1]), (grid[1], box[2], box[3])):
        need = high - low + 1 + 2 * margin_px
        sizes.append(max(crop_px, math.ceil(need / align) * align))
        if sizes[-1] >= extent:
            return None
    centre = ((box[0] + box[1] + 1) / 2, (box[2] + box[3] + 1) / 2)
    return crop_window(centre, (sizes[0], sizes[1]), grid, align)


def lv_box(labels: np.ndarray, *, min_voxels: int) -> tuple[int, int, int, int] | None:
    """Inclusive in-plane box (row_min, row_max, col_min, col_max) of the largest connected component of
    cavity and myocardium in a ``(rows, cols, slices)`` label volume; None below ``min_voxels``."""
    from scipy import ndimage

    components, count = ndimage.label(labels != contracts.LABEL_MAP["background"])
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    if sizes[largest - 1] < min_voxels:
        return None
    rows, cols, _ = np.nonzero(components == largest)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def lv_hint_box(example: Any) -> tuple[int, int, int, int] | None:
    """Where the example's InlineVF outlines put the LV on the tensor grid (the in-plane box of its
    labels), if it carries them (``inlinevf_labels``, as the pipeline's participants do); else None.

    Only where ML4H_seg's first crop goes: the labels it keeps are checked the same way wherever the crop
    is, so the hint saves a second crop, never changes a label.
    """
    labels = getattr(example, "inlinevf_labels", None)
    if labels is None or np.shape(labels)[:2] != contracts.LABEL_VOLUME_SHAPE[:2]:
        return None
    rows = np.flatnonzero(np.any(labels, axis=(1, 2)))
    cols = np.flatnonzero(np.any(labels, axis=(0, 2)))
    if rows.size == 0 or cols.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def bundled_models_root() -> Path:
    """Where this installation of ``beam_pipeline`` keeps its bundled models (the package's own folder,
    looked up where the code runs: launcher or worker)."""
    from importlib import resources

    return Path(str(resources.files("beam_pipeline").joinpath(MODELS_PACKAGE_DIR)))


def bundled_model_name(kind: str, variant: str = BUNDLED_DEFAULT) -> str:
    """The bundled model folder of ``kind`` and ``variant``: ``ml4h_seg`` (the default models, trained on
    synthetic anatomy for any scanner) or ``ml4h_seg_paper`` (the paper's recipe on InlineVF outlines)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}. Received: {kind!r}")
    if variant not in BUNDLED_VARIANTS:
        raise ValueError(f"variant must be one of {BUNDLED_VARIANTS}. Received: {variant!r}")
    return kind if variant == BUNDLED_DEFAULT else f"{kind}_{variant}"


BUNDLED_MODELS = tuple(bundled_model_name(k, v) for v in ("default", "paper") for k in MODEL_KINDS)


def bundled_model_dir(kind: str, variant: str = BUNDLED_DEFAULT) -> str | None:
    """``"bundled:<name>"`` (:func:`bundled_model_name`) when this installation ships that SavedModel, else
    None.

    The marker, not a path, goes into the pipeline; :func:`resolve_model_dir` turns it into a folder
    on whichever machine loads the model.
    """
    name = bundled_model_name(kind, variant)
    return f"{BUNDLED_PREFIX}{name}" if (bundled_models_root() / name / "saved_model.pb").exists() else None


def resolve_model_dir(model_dir: str) -> str:
    """A model folder TensorFlow and Beam's FileSystems can open: ``bundled:<name>`` resolved in this
    installation's package, any other path (local, ``gs://``) unchanged."""
    if not model_dir.startswith(BUNDLED_PREFIX):
        return model_dir
    name = model_dir[len(BUNDLED_PREFIX):]
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {model_dir!r}; expected one of "
                         f"{[BUNDLED_PREFIX + k for k in BUNDLED_MODELS]}")
    return str(bundled_models_root() / name)


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


def check_example(example: ModelExample, index: int, slices: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One example's ``image`` (1, 256, 256, S, 1) and ``spacing_mm`` (1, 3) for a signature call; ``slices``
    the model's slots (13) or None (a per-slice model: any number of slices).

    Raises ``ValueError`` naming the example's index when a shape differs from the contract."""
    shape = np.shape(example.image)
    grid = (contracts.TENSOR_ROWS, contracts.TENSOR_COLS)
    if (len(shape) != 4 or shape[:2] != grid or shape[3] != contracts.TENSOR_CHANNELS
            or (slices is not None and shape[2] != slices)
            or not 1 <= shape[2] <= max(contracts.MAX_PER_SLICE_SLICES, contracts.TENSOR_SLICES)):
        expected = (*grid, "any" if slices is None else slices, contracts.TENSOR_CHANNELS)
        raise ValueError(f"example {index}: image shape {shape}, expected {expected}")
    if np.shape(example.spacing_mm) != (len(contracts.SPACING_FIELDS),):
        raise ValueError(f"example {index}: spacing_mm shape {np.shape(example.spacing_mm)}, expected (3,)")
    return (np.asarray(example.image, dtype=np.float32)[None],
            np.asarray(example.spacing_mm, dtype=np.float32)[None])


def largest_lv_component(labels: np.ndarray, *, spacing_mm: Sequence[float] | None = None,
                         max_offset_mm: float = 30.0) -> np.ndarray:
    """``labels`` (rows, cols, slices) with only the LV kept; a new array.

    The LV is the largest 3-D connected component of cavity and myocardium together. On each slice, of
    its 2-D components only the one nearest the LV's axis is kept (the axis: the main component's
    cavity centroid on that slice, else on the whole stack), and only if its centroid lies within
    ``max_offset_mm`` of it (``spacing_mm``: the grid's row and column mm; without it, pixels are taken as
    mm). What a per-slice model finds elsewhere (the RV, a vessel, the stomach, a bright blob above the base)
    is not the LV that the other slices outline, even where it touches the LV's component on a neighbouring
    slice."""
    from scipy import ndimage

    arr = np.asarray(labels)
    lv = arr != contracts.BACKGROUND
    components, count = ndimage.label(lv)
    if count == 0:
        return arr.copy()
    sizes = np.bincount(components.ravel())[1:]
    main = components == int(np.argmax(sizes)) + 1
    cavity = main & (arr == contracts.LV_CAVITY)
    axis_all = np.argwhere(cavity if cavity.any() else main)[:, :2].mean(axis=0)
    row_mm, col_mm = (float(spacing_mm[0]), float(spacing_mm[1])) if spacing_mm is not None else (1.0, 1.0)
    keep = np.zeros(arr.shape, dtype=bool)
    for k in range(arr.shape[2]):
        if not main[:, :, k].any():
            continue
        here = np.argwhere(cavity[:, :, k])
        axis = here.mean(axis=0) if here.size else axis_all
        pieces, n = ndimage.label(lv[:, :, k])
        best, best_mm = 0, max_offset_mm
        for piece in range(1, n + 1):
            centre = np.argwhere(pieces == piece).mean(axis=0)
            offset_mm = float(np.hypot((centre[0] - axis[0]) * row_mm, (centre[1] - axis[1]) * col_mm))
            if offset_mm <= best_mm:
                best, best_mm = piece, offset_mm
        if best:
            keep[:, :, k] = pieces == best
    return np.where(keep, arr, contracts.BACKGROUND).astype(arr.dtype)


POSTPROCESSING = {"largest_component": largest_lv_component}


class SavedModelHandler(ModelHandler[ModelExample, Any, LoadedModel]):
    """Runs an lvmass SavedModel (``serving_default``) on batches of participant tensors.

    Args:
      model_dir: the SavedModel folder (local or any path TensorFlow can open), with
        ``model_card.json`` beside ``saved_model.pb``; or ``bundled:<kind>``, resolved where the model
        is loaded (the worker), not where the pipeline is built.
      kind: ``contracts.MODEL_KIND_SEG`` or ``contracts.MODEL_KIND_REG``; must match the card.
      argmax: for segmentation, return the argmax labels (uint8) rather than probabilities.
      min_batch_size, max_batch_size: Beam's batching bounds (a participant tensor is 3.4 MB;
        :func:`batch_size_for_memory` sizes it from the card).
      large_model: share one model per worker machine across processes (Beam multi-process shared).
      crop_px, crop_margin_px: ML4H_seg's heart-centred crop (module docstring), used when the card has
        ``crop_inference``; ``crop_px=None``: always the whole field of view.
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
        crop_px: int | None = CROP_PX,
        crop_margin_px: int = CROP_MARGIN_PX,
    ):
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}. Received: {kind!r}")
        if crop_px is not None and not 0 <= 2 * crop_margin_px < crop_px:
            raise ValueError(f"need 0 <= 2 * crop_margin_px < crop_px. Received: {crop_margin_px}, {crop_px}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"need 1 <= min_batch_size <= max_batch_size. Received: {min_batch_size}, {max_batch_size}"
            )
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         large_model=large_model)
        self._model_dir = model_dir
        self._kind = kind
        self._argmax = argmax
        self._crop_px = crop_px
        self._crop_margin_px = crop_margin_px
        namespace = self.get_metrics_namespace()
        self._crop_counters = {path: Metrics.counter(namespace, f"segmented_{path}")
                               for path in ("crop_first_pass", "crop_second_pass", "full_field_of_view")}

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
        serve_crop = serve_window = None
        if self._kind == contracts.MODEL_KIND_SEG and card.crop_inference:
            names = [card.crop_inference["signature"]]
            window_name = card.crop_inference.get("window_signature")
            window_margin = card.crop_inference.get("window_margin_px")
            if window_name is not None:
                names.append(window_name)
            for name in names:
                if name not in module.signatures:
                    raise ValueError(f"{self._model_dir}: the card's crop_inference names signature "
                                     f"{name!r}, which the SavedModel lacks "
                                     f"(has {sorted(module.signatures)})")
            serve_crop = module.signatures[names[0]]
            # the window signature leaves a fixed margin off the crop: usable when it is this handler's
            if window_name is not None and window_margin == self._crop_margin_px:
                serve_window = module.signatures[window_name]
            if self._crop_px is not None and self._crop_px % int(card.crop_inference["align_px"]):
                raise ValueError(f"crop_px must be a multiple of the model's align_px "
                                 f"{card.crop_inference['align_px']}. Received: {self._crop_px}")
        crop = ""
        if serve_crop is not None and self._crop_px:
            crop = " (heart-centred crop, decoder on its kept window)" if serve_window is not None else (
                " (heart-centred crop)")
        logger.info("loaded %s model %s version %s%s", self._kind, self._model_dir, card.version, crop)
        return LoadedModel(serve=module.signatures[contracts.SERVING_SIGNATURE], card=card, module=module,
                           serve_crop=serve_crop, serve_window=serve_window)

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
        """The prediction for one example (arrays with a batch axis of 1)."""
        if (self._kind == contracts.MODEL_KIND_SEG and self._argmax and self._crop_px is not None
                and model.serve_crop is not None):
            return self._segment_cropped(image, spacing, model, hint_box)
        return self._run_full(image, spacing, model)

    def _segment_cropped(self, image: np.ndarray, spacing: np.ndarray, model: LoadedModel,
                         hint_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """ML4H_seg labels from heart-centred crops, else the whole field of view (module docstring)."""
        grid = contracts.LABEL_VOLUME_SHAPE[:2]
        labels_shape = (*grid, image.shape[3])
        align = int(model.card.crop_inference["align_px"])
        voxel_ml = float(np.prod(spacing[0], dtype=np.float64)) / 1000.0
        min_voxels = max(1, math.ceil(MIN_LV_ML / voxel_ml)) if voxel_ml > 0 else 1
        crop_px = self._card_crop_px(model)
        centred = crop_window((grid[0] / 2, grid[1] / 2), (crop_px, crop_px), grid, align)
        hinted = None if hint_box is None else window_around(
            hint_box, crop_px=crop_px, margin_px=self._crop_margin_px, grid=grid, align=align)
        window: Window | None = hinted or centred
        for path in ("crop_first_pass", "crop_second_pass"):
            kept, labels = self._kept_labels(image, spacing, window, model)
            box = lv_box(labels, min_voxels=min_voxels)
            if box is None:
                if window == hinted and hinted != centred:  # a wrong hint: look where there is none
                    window = centred
                    continue
                break
            box = (box[0] + kept.row0, box[1] + kept.row0, box[2] + kept.col0, box[3] + kept.col0)
            if kept.clear_of_edges(box, grid):
                self._crop_counters[path].inc()
                full = np.zeros(labels_shape, dtype=np.uint8)
                full[kept.index] = labels
                return full
            window = window_around(kept.extend_clipped(box, grid), crop_px=crop_px,
                                   margin_px=self._crop_margin_px, grid=grid, align=align)
            if window is None:
                break
        self._crop_counters["full_field_of_view"].inc()
        return self._run_full(image, spacing, model)

    def _card_crop_px(self, model: LoadedModel) -> int:
        """The first crop's size: the card's ``crop_inference.crop_px`` when the handler was left at its
        default, else the handler's."""
        assert self._crop_px is not None
        card_px = (model.card.crop_inference or {}).get("crop_px")
        return int(card_px) if card_px and self._crop_px == CROP_PX else self._crop_px

    def _kept_labels(self, image: np.ndarray, spacing: np.ndarray, window: Window,
                     model: LoadedModel) -> tuple[Window, np.ndarray]:
        """The kept window of a crop (the crop less the margin; on ``serving_crop``, not at the grid's
        own edges) and its argmax labels: from ``serving_window`` when the model has it, which computes
        only that window, else from ``serving_crop`` on the whole crop."""
        import tensorflow as tf

        grid = contracts.LABEL_VOLUME_SHAPE[:2]
        margin = self._crop_margin_px
        rows, cols = window.index
        inputs = {contracts.SIGNATURE_INPUT_IMAGE: tf.constant(np.ascontiguousarray(image[:, rows, cols])),
                  contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing)}
        if model.serve_window is not None:
            kept = Window(window.row0 + margin, window.col0 + margin, window.rows - 2 * margin,
                          window.cols - 2 * margin)
            offset = (margin, margin)
            probabilities = model.serve_window(**inputs)[contracts.SIGNATURE_OUTPUT_PROBABILITIES]
            computed = (kept.rows, kept.cols)
        else:
            kept = window.inner(margin, grid)
            offset = (kept.row0 - window.row0, kept.col0 - window.col0)
            probabilities = model.serve_crop(**inputs)[contracts.SIGNATURE_OUTPUT_PROBABILITIES]
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

        batch = [None]  # one example
        outputs = model.serve(**{
            contracts.SIGNATURE_INPUT_IMAGE: tf.constant(image),
            contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing),
        })
        if self._kind == contracts.MODEL_KIND_SEG:
            probabilities = outputs[contracts.SIGNATURE_OUTPUT_PROBABILITIES]
            expected = (len(batch), *image.shape[1:4], contracts.NUM_CLASSES)
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


def batch_size_for_memory(cards: Iterable[ModelCard], *,
                          budget_mb: float = PROCESS_MEMORY_BUDGET_MB) -> int | None:
    """The largest inference batch whose memory fits ``budget_mb`` per process, by the cards' measured
    ``inference_memory``: ``max(1, floor((budget_mb - max(peak_mb)) / sum(per_example_mb)))``; None when
    no card carries a measurement.

    ``peak_mb`` is a whole process (TensorFlow, the model, one participant's activations); the models of a
    run share one SDK process, so TensorFlow is counted once (the largest peak), while each model's
    ``RunInference`` holds its own batch, so the per-participant figures add up. ``per_example_mb`` is what
    each further participant of a batch adds: the handler calls a model one participant at a time, so
    activations do not grow with the batch, only the batch's tensors do.
    """
    measured = [card.inference_memory for card in cards if card.inference_memory]
    if not measured:
        return None
    spare_mb = budget_mb - max(float(m["peak_mb"]) for m in measured)
    return max(1, math.floor(spare_mb / sum(float(m["per_example_mb"]) for m in measured)))
