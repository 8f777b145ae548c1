"""The model card that travels next to every exported SavedModel (``model_card.json``).

The trainer writes it; the pipeline reads it (kind, version, calibration) and refuses a model whose
tensor contract differs from ``lvmass.core.contracts``. The card's sections with a meaning of their own are
parsed once, into typed objects, when the card is read: ``crop_inference`` as :class:`CropInference`. The
card's ``pixel_spacing_mm`` is the model grid's pixel size (the code's ``grid_pixel_mm``; the file keeps its
name).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lvmass.core import contracts
from lvmass.core.postprocess import POSTPROCESSING

MODEL_KINDS = (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG)
# Per-process memory budget the default --batch_size is sized for (batch_size_for_memory): one Dataflow
# SDK process per vCPU of an n2-standard machine has 4 GB; 2.5 GB leaves room for the harness and Beam.
PROCESS_MEMORY_BUDGET_MB = 2500.0

LABEL_SOURCE_INLINEVF = "inlinevf_outline"
LABEL_SOURCE_TRUE_ANATOMY = "true_anatomy"
LABEL_SOURCE_MANUAL_MASS = "manual_mass"  # ML4H_reg: regressed on readers' manual masses
LABEL_SOURCES = (LABEL_SOURCE_INLINEVF, LABEL_SOURCE_TRUE_ANATOMY, LABEL_SOURCE_MANUAL_MASS)


def tensor_contract(slices: int | None = contracts.TENSOR_SLICES) -> dict[str, Any]:
    """The tensor layout a model was trained on, as recorded in its card: ``slices`` slots (the paper's
    13) or ``None`` for a per-slice model, which takes every acquired slice (``contracts``)."""
    return {
        "input_shape": [contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slices, contracts.TENSOR_CHANNELS],
        "dtype": contracts.TENSOR_DTYPE,
        "slice_order": contracts.SLICE_ORDER,
        "padding": contracts.PADDING,
        "normalisation": contracts.NORMALISATION,
        "spacing_fields": list(contracts.SPACING_FIELDS),
        "in_plane_view": contracts.IN_PLANE_VIEW,
        "grid": contracts.GRID,
    }


def signature_contract(kind: str, slices: int | None = contracts.TENSOR_SLICES) -> dict[str, Any]:
    outputs = (
        {
            contracts.SIGNATURE_OUTPUT_PROBABILITIES: [
                None, contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slices, contracts.NUM_CLASSES,
            ]
        }
        if kind == contracts.MODEL_KIND_SEG
        else {contracts.SIGNATURE_OUTPUT_MASS: [None]}
    )
    return {
        "name": contracts.SERVING_SIGNATURE,
        "inputs": {
            contracts.SIGNATURE_INPUT_IMAGE: [None, contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slices,
                                              contracts.TENSOR_CHANNELS],
            contracts.SIGNATURE_INPUT_SPACING: [None, len(contracts.SPACING_FIELDS)],
        },
        "outputs": outputs,
    }


@dataclass(frozen=True)
class CropInference:
    """An ML4H_seg card's ``crop_inference``: its SavedModel segments crops of any size (trainer/export.py).

    ``signature``: the crop signature (``serving_crop``); ``align_px``: crop sides and origins must be
    multiples of it (the in-plane pooling factor); ``receptive_field_px``: the in-plane radius of an output
    voxel's receptive field; ``crop_px``: the first crop's side the trainer prefers (else the handler's,
    ``lvmass.core.crop.CROP_PX``); ``window_signature`` and ``window_margin_px``: a signature that returns
    only a crop's inner window, less that margin (``trainer/windowed.py``)."""

    signature: str
    align_px: int
    receptive_field_px: int | None = None
    crop_px: int | None = None
    window_signature: str | None = None
    window_margin_px: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, kind: str) -> CropInference:
        """The section as a card holds it; ValueError unless it is an ML4H_seg card's with a signature and
        an integer ``align_px >= 1``."""
        align = data.get("align_px")
        if kind != contracts.MODEL_KIND_SEG or not data.get("signature") or not (
                isinstance(align, int) and align >= 1):
            raise ValueError("model card crop_inference must be an ML4H_seg card's {signature, "
                             "align_px >= 1, receptive_field_px}. "
                             f"Received: {dict(data)!r} on {kind!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The section as the card's JSON holds it (fields that are None left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelCard:
    """Everything a user needs to know to trust, reproduce or reject a model."""

    kind: str  # contracts.MODEL_KIND_SEG | contracts.MODEL_KIND_REG
    version: str
    label_map: dict[str, int] = field(default_factory=lambda: dict(contracts.LABEL_MAP))
    tensor: dict[str, Any] = field(default_factory=tensor_contract)
    signature: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Optional sex-stratified centering learned at training time: {"raw_mean_g": {"female": .., "male": ..},
    # "manual_mean_g": {...}}; used by the pipeline when a run has no manual masses of its own.
    calibration: dict[str, Any] = field(default_factory=dict)
    trained_on_synthetic_data: bool = False
    notes: str = ""
    # The tensor grid's in-plane pixel size (mm) the model was trained on: the pipeline resamples every
    # slice to it. None (older cards): the pixels as acquired.
    pixel_spacing_mm: float | None = None
    # [min, max] acquired pixel sizes (mm) of the training data: outside, results are flagged
    # ``pixel_spacing_outside_training``.
    training_pixel_spacing_mm: list[float] | None = None
    # What the model learned from: "inlinevf_outline" (the paper's recipe for ML4H_seg: learn InlineVF,
    # then centre on manual masses), "true_anatomy" (a raw mass that needs no centering) or
    # "manual_mass" (ML4H_reg).
    label_source: str = "inlinevf_outline"
    # ML4H_seg only, None when the SavedModel has no crop signature (:class:`CropInference`; a mapping as the
    # JSON holds it is parsed on construction). The handler then segments a heart-centred crop
    # (lvmass.core.crop); trainer/export.py writes it.
    crop_inference: CropInference | None = None
    # Measured memory of one process serving this model (benchmarks/bench_inference.py memory):
    # {"peak_mb": peak RSS after loading it and segmenting / regressing one participant,
    #  "per_example_mb": RSS added by each further participant of a batch, "command": ..., "machine": ...}.
    # The pipeline's default --batch_size comes from it (batch_size_for_memory).
    inference_memory: dict[str, Any] | None = None
    # Label post-processing the handler applies to this model's argmax (lvmass.core.postprocess):
    # "largest_component" keeps only the largest 3-D connected LV (cavity and myocardium) and clears the rest;
    # "largest_component+closed_rings" then closes short gaps in each slice's myocardial ring.
    postprocess: str | None = None
    # ML4H_seg only: the handler averages the probabilities of the image and of its left-right mirror
    # (mirrored back) before the argmax. Why: a model that never saw a real image errs differently on the
    # two; the mean is steadier on real hearts (benchmarks/results/real_study_evaluation.md), at twice the
    # cost.
    test_time_flips: bool = False

    def __post_init__(self) -> None:
        if self.kind not in (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG):
            raise ValueError(
                f"model card kind must be {contracts.MODEL_KIND_SEG!r} or {contracts.MODEL_KIND_REG!r}. "
                f"Received: {self.kind!r}"
            )
        if not self.signature:
            object.__setattr__(self, "signature", signature_contract(self.kind, self.tensor_slices))
        if self.pixel_spacing_mm is not None and not float(self.pixel_spacing_mm) > 0:
            raise ValueError(f"model card pixel_spacing_mm must be > 0. Received: {self.pixel_spacing_mm!r}")
        if self.training_pixel_spacing_mm is not None and (
            len(self.training_pixel_spacing_mm) != 2
            or not 0 < self.training_pixel_spacing_mm[0] <= self.training_pixel_spacing_mm[1]
        ):
            raise ValueError("model card training_pixel_spacing_mm must be [min, max] with 0 < min <= max. "
                             f"Received: {self.training_pixel_spacing_mm!r}")
        if isinstance(self.crop_inference, Mapping):
            object.__setattr__(self, "crop_inference", CropInference.from_dict(self.crop_inference,
                                                                               kind=self.kind))
        elif self.crop_inference is not None and self.kind != contracts.MODEL_KIND_SEG:
            raise ValueError(f"model card crop_inference must be an ML4H_seg card's. Received one on "
                             f"{self.kind!r}")
        if self.inference_memory is not None and not (
                float(self.inference_memory.get("peak_mb", 0)) > 0
                and float(self.inference_memory.get("per_example_mb", 0)) > 0):
            raise ValueError("model card inference_memory needs peak_mb > 0 and per_example_mb > 0. "
                             f"Received: {self.inference_memory!r}")
        if self.postprocess is not None and self.postprocess not in POSTPROCESSING:
            raise ValueError(f"model card postprocess must be one of {sorted(POSTPROCESSING)} or null. "
                             f"Received: {self.postprocess!r}")
        if self.test_time_flips and self.kind != contracts.MODEL_KIND_SEG:
            raise ValueError(f"model card test_time_flips is for an ML4H_seg card. Received it on "
                             f"{self.kind!r}")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"model card label_source must be one of {LABEL_SOURCES}. "
                             f"Received: {self.label_source!r}")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["crop_inference"] = None if self.crop_inference is None else self.crop_inference.to_dict()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def tensor_slices(self) -> int | None:
        """The slice slots the model takes: 13 (the paper's 3-D models) or None (per slice: every slice)."""
        shape = self.tensor.get("input_shape") or list(contracts.TENSOR_SHAPE)
        return None if shape[2] is None else int(shape[2])

    @property
    def per_slice(self) -> bool:
        return self.tensor_slices is None

    def check_compatible(self) -> None:
        """Raise ValueError when the card's tensor contract is not one this code builds (13 slots, or every
        slice for a per-slice model)."""
        if self.tensor_slices not in (contracts.TENSOR_SLICES, contracts.PER_SLICE_SLICES):
            raise ValueError(f"model expects {self.tensor_slices} slices; lvmass builds "
                             f"{contracts.TENSOR_SLICES} slots or every slice (null)")
        expected = tensor_contract(self.tensor_slices)
        for key, value in expected.items():
            if self.tensor.get(key) != value:
                raise ValueError(
                    f"model expects tensor {key}={self.tensor.get(key)!r} but lvmass builds {value!r}"
                )
        if self.label_map != contracts.LABEL_MAP:
            raise ValueError(f"model label map {self.label_map!r} differs from {contracts.LABEL_MAP!r}")


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
