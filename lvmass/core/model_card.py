"""The model card that travels next to every exported SavedModel (``model_card.json``).

The trainer writes it; the pipeline reads it (kind, version, calibration) and refuses a model whose
tensor contract differs from ``lvmass.core.contracts``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from lvmass.core import contracts

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
    # ML4H_seg only, None when the SavedModel has no crop signature: {"signature": "serving_crop",
    # "align_px": crop sides and origins must be multiples of it (the in-plane pooling factor),
    # "receptive_field_px": in-plane radius of an output voxel's receptive field, optionally "crop_px": the
    # first crop's side (else the handler's 128)}. The handler then segments
    # a heart-centred crop (beam_pipeline.inference); trainer/export.py writes it.
    crop_inference: dict[str, Any] | None = None
    # Measured memory of one process serving this model (benchmarks/bench_inference.py memory):
    # {"peak_mb": peak RSS after loading it and segmenting / regressing one participant,
    #  "per_example_mb": RSS added by each further participant of a batch, "command": ..., "machine": ...}.
    # The pipeline's default --batch_size comes from it (inference.batch_size_for_memory).
    inference_memory: dict[str, Any] | None = None
    # Label post-processing the handler applies to this model's argmax: "largest_component" keeps only the
    # largest 3-D connected LV (cavity and myocardium) and clears the rest (beam_pipeline.inference).
    postprocess: str | None = None

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
        if self.crop_inference is not None:
            align = self.crop_inference.get("align_px")
            if self.kind != contracts.MODEL_KIND_SEG or not self.crop_inference.get("signature") or not (
                    isinstance(align, int) and align >= 1):
                raise ValueError("model card crop_inference must be an ML4H_seg card's {signature, "
                                 "align_px >= 1, receptive_field_px}. "
                                 f"Received: {self.crop_inference!r} on {self.kind!r}")
        if self.inference_memory is not None and not (
                float(self.inference_memory.get("peak_mb", 0)) > 0
                and float(self.inference_memory.get("per_example_mb", 0)) > 0):
            raise ValueError("model card inference_memory needs peak_mb > 0 and per_example_mb > 0. "
                             f"Received: {self.inference_memory!r}")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"model card label_source must be one of {LABEL_SOURCES}. "
                             f"Received: {self.label_source!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

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
