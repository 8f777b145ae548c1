"""The methods: ML4H_seg and ML4H_reg through ``RunInference`` with the model handler, InlineVF from the
outlines decoded with the study; each ``ParticipantTensor`` -> one raw ``Measurement``
(``lvmass.core.measure``), failures as dead letters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_pipeline.transforms.accounting import ToErrorRecords
from lvmass.core import contracts
from lvmass.core.measure import (
    Measurement,
    ParticipantTensor,
    measure_inlinevf,
    measure_labels,
    measure_regression,
)
from lvmass.core.qc import pixel_spacing_qc_flags
from lvmass.core.schema import STAGE_INFERENCE, STAGE_MEASURE
from lvmass.storage.labels import save_label_volume


class InferAndMeasure(beam.PTransform):
    """Keyed, batched ``RunInference`` with the model handler, then ``measure(example, prediction,
    model_id) -> Measurement`` on each result; failed batches and failed measurements become error rows.

    The shared shape of both ML4H methods (the handler decides what a prediction is)."""

    def __init__(self, model_handler, measure: Callable[[Any, Any, str | None], Measurement]):
        super().__init__()
        self._handler = model_handler
        self._measure = measure

    def expand(self, participants):
        results, dlq = (
            participants
            | "Key" >> beam.Map(lambda p: (p.source_uri, p))
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        measure_fn = self._measure
        measured, bad_measure = results | "Measure" >> beam.MapTuple(
            lambda _, result: measure_fn(result.example, result.inference, result.model_id)
        ).with_exception_handling()
        errors = (
            (dlq.failed_inferences | "InferenceErrors" >> ToErrorRecords(STAGE_INFERENCE, batched=True),
             bad_measure | "MeasureErrors" >> ToErrorRecords(STAGE_MEASURE))
            | "FlattenErrors" >> beam.Flatten()
        )
        return measured, errors


class SegmentAndMeasure(beam.PTransform):
    """ML4H_seg: RunInference (keyed, batched) -> argmax labels -> volumes -> raw mass.

    With ``labels_output`` the argmax label volumes are also written (``save_label_volume``)."""

    def __init__(self, model_handler, *, labels_output: str | None = None,
                 training_pixel_spacing_mm: Sequence[float] | None = None):
        super().__init__()
        self._handler = model_handler
        self._labels_output = labels_output
        self._training_range = tuple(training_pixel_spacing_mm) if training_pixel_spacing_mm else None

    def expand(self, participants):
        labels_output, training_range = self._labels_output, self._training_range

        def measure(participant: ParticipantTensor, labels: np.ndarray, model_id: str | None) -> Measurement:
            if labels_output is not None:
                save_label_volume(labels_output, contracts.METHOD_ML4H_SEG, participant, labels)
            return measure_labels(
                participant, labels, method=contracts.METHOD_ML4H_SEG, model_version=model_id,
                extra_flags=pixel_spacing_qc_flags(participant.acquired_pixel_spacing_mm, training_range))

        return participants | "Segment" >> InferAndMeasure(self._handler, measure)


class RegressMass(beam.PTransform):
    """ML4H_reg: RunInference (keyed, batched) -> mass in grams, as is."""

    def __init__(self, model_handler, *, training_pixel_spacing_mm: Sequence[float] | None = None):
        super().__init__()
        self._handler = model_handler
        self._training_range = tuple(training_pixel_spacing_mm) if training_pixel_spacing_mm else None

    def expand(self, participants):
        training_range = self._training_range

        def measure(participant: ParticipantTensor, mass_g: float, model_id: str | None) -> Measurement:
            return measure_regression(
                participant, mass_g, model_version=model_id,
                extra_flags=pixel_spacing_qc_flags(participant.acquired_pixel_spacing_mm, training_range))

        return participants | "Regress" >> InferAndMeasure(self._handler, measure)


class MeasureInlineVF(beam.PTransform):
    """InlineVF: outline-derived labels (built at decode time) -> volumes -> raw mass.

    With ``labels_output`` the InlineVF label volumes are also written (``save_label_volume``)."""

    def __init__(self, *, labels_output: str | None = None):
        super().__init__()
        self._labels_output = labels_output

    def expand(self, participants):
        labels_output = self._labels_output

        def measure(participant: ParticipantTensor) -> Measurement:
            if labels_output is not None and participant.inlinevf_labels is not None:
                save_label_volume(labels_output, contracts.METHOD_INLINEVF, participant,
                                  participant.inlinevf_labels,
                                  native_labels=participant.inlinevf_native_labels)
            return measure_inlinevf(participant)

        measured, bad = participants | "Measure" >> beam.Map(measure).with_exception_handling()
        return measured, bad | "MeasureErrors" >> ToErrorRecords(STAGE_MEASURE)
