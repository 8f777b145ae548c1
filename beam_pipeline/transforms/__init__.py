"""Beam composites of the pipeline: read, decode, infer, measure, calibrate, write.

A thin shell over :mod:`lvmass.core`: each DoFn only calls pure functions, counts what it does with
``Metrics`` and lets exceptions fall to a dead-letter output (``with_exception_handling()``), which
:class:`ToErrorRecords` turns into one :class:`~lvmass.core.schema.ErrorRecord` per failed participant.
Elements are keyed by the input's URI (unique per participant x instance) so every failure can be traced
back to its file; each input carries its :class:`~lvmass.core.identity.InputIdentity`, parsed once when it
is selected.

Composites, in pipeline order, and the module of each::

    ReadParticipants      inputs      glob -> ReadableFile per zip (fan-out via Reshuffle) and/or
                                      ParticipantFolder per matched folder of DICOMs (grouped by folder)
    SelectInputs          inputs      one ParticipantInput (source + identity) per participant and visit
    DecodeParticipants    inputs      ParticipantInput -> ParticipantTensor (+ errors: read, decode, tensor)
    SegmentAndMeasure     methods     ParticipantTensor -> Measurement  ML4H_seg
                                      (+ errors: inference, measure)
    RegressMass           methods     ParticipantTensor -> Measurement  ML4H_reg (+ errors: inference)
    MeasureInlineVF       methods     ParticipantTensor -> Measurement  InlineVF (+ errors: measure)
    ValidateMeasurements  outputs     Measurement -> a row of schema.MEASUREMENTS_SCHEMA (+ errors: write)
    WriteMeasurements / WriteErrors / WriteTFRecords   outputs: the run's files, in its own folder
    CommitRun             outputs     the run's last step: commit the run to the output's ledger, then
                                      finalise the folder (lvmass.storage.ledger: cohort values from every
                                      committed run)
    ToErrorRecords, RecordProgress    accounting: dead letters as rows; progress counts

``CalibrateAndIndex`` (Measurement + phenotypes -> ResultRecord) runs the same derivation
(``lvmass.core.derive``) inside a pipeline, for tests and for callers that want records, not files.
"""

from beam_pipeline.transforms.accounting import NAMESPACE, PROGRESS_COUNTERS, RecordProgress, ToErrorRecords
from beam_pipeline.transforms.inputs import (
    INPUT_KIND_AUTO,
    INPUT_KIND_FOLDER,
    INPUT_KIND_ZIP,
    INPUT_KINDS,
    DecodeFn,
    DecodeParticipants,
    DuplicateInput,
    ParticipantInput,
    ReadParticipants,
    SelectInputs,
    input_uri,
)
from beam_pipeline.transforms.methods import InferAndMeasure, MeasureInlineVF, RegressMass, SegmentAndMeasure
from beam_pipeline.transforms.outputs import (
    CalibrateAndIndex,
    CommitRun,
    EncodeExamples,
    ValidateMeasurements,
    WriteErrors,
    WriteMeasurements,
    WriteTFRecords,
    load_phenotypes,
)

__all__ = [
    "INPUT_KINDS", "INPUT_KIND_AUTO", "INPUT_KIND_FOLDER", "INPUT_KIND_ZIP", "NAMESPACE", "PROGRESS_COUNTERS",
    "CalibrateAndIndex", "CommitRun", "DecodeFn", "DecodeParticipants", "DuplicateInput", "EncodeExamples",
    "InferAndMeasure", "MeasureInlineVF", "ParticipantInput", "ReadParticipants", "RecordProgress",
    "RegressMass", "SegmentAndMeasure", "SelectInputs", "ToErrorRecords", "ValidateMeasurements",
    "WriteErrors", "WriteMeasurements", "WriteTFRecords", "input_uri", "load_phenotypes",
]
