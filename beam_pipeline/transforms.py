"""Beam composites of the pipeline: read, decode, infer, measure, calibrate, write.

A thin shell over the pure core (``decode``, ``tensor``, ``overlay``, ``mass``, ``qc``, ``phenotypes``):
each DoFn only calls pure functions, counts what it does with ``Metrics`` and lets exceptions fall to
a dead-letter output (``with_exception_handling()``), which :class:`ToErrorRecords` turns into one
:class:`~beam_pipeline.schema.ErrorRecord` per failed participant. Elements are keyed by the input's
URI (unique per participant x instance) so every failure can be traced back to its file.

Composites, in pipeline order::

    ReadParticipants      glob -> FileMetadata (fan-out via Reshuffle) -> ReadableFile
    DecodeParticipants    ReadableFile -> ParticipantTensor            (+ errors: read, decode, tensor)
    SegmentAndMeasure     ParticipantTensor -> Measurement  ML4H_seg   (+ errors: inference, measure)
    RegressMass           ParticipantTensor -> Measurement  ML4H_reg   (+ errors: inference)
    MeasureInlineVF       ParticipantTensor -> Measurement  InlineVF   (+ errors: measure)
    CalibrateAndIndex     Measurement + phenotypes -> ResultRecord (side inputs: centering, p90)
    WriteResults / WriteErrors / WriteTFRecords / WriteSummary
"""

from __future__ import annotations

import ast
import io
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from beam_pipeline import PIPELINE_VERSION, contracts, filesystems
from beam_pipeline.schema import ErrorRecord, ResultRecord
from beam_pipeline.study import DecodedStudy, DecodeError

logger = logging.getLogger(__name__)

NAMESPACE = "lvmass"
PROGRESS_EVERY = 50  # a progress log line per worker every this many decoded participants
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_TENSOR = "tensor"
STAGE_INFERENCE = "inference"
STAGE_MEASURE = "measure"
STAGE_PHENOTYPES = "phenotypes"

CALIBRATION_SEX_CENTERED = "sex_mean_centered"
CALIBRATION_LINEAR = "linear_recalibration"
CALIBRATION_NONE = "none"
ANY_VENDOR_INSTANCE = 0  # the visit of an any-vendor input whose name does not say it
_ANY_VENDOR_NAME = re.compile(r"^(\d+)(?:_(\d+))?(?:\.[A-Za-z0-9]+)*$")
# Methods whose raw mass the paper centres on the manual mean of each sex.
CENTERED_METHODS = (contracts.METHOD_ML4H_SEG, contracts.METHOD_INLINEVF)


# --- Records flowing between the composites ---------------------------------------------------------


@dataclass(frozen=True)
class ParticipantTensor:
    """One decoded participant x instance: the model tensor, its voxel size, and what measurement needs.

    ``image``/``spacing_mm`` follow ``contracts`` (the ``SavedModelHandler`` reads just these two);
    ``inlinevf_labels`` is the InlineVF label volume (uint8 ``contracts.LABEL_VOLUME_SHAPE``) or None
    when the scanner drew no contour or the method was not requested.
    """

    source_uri: str
    eid: int
    instance: int
    image: np.ndarray
    spacing_mm: np.ndarray
    n_slices: int  # acquired slices
    n_slices_used: int  # slices placed in the 13-slot tensor
    qc_flags: tuple[str, ...]
    inlinevf_labels: np.ndarray | None = None
    inlinevf_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measurement:
    """One method's raw measurement of one participant, before phenotypes and calibration."""

    source_uri: str
    eid: int
    instance: int
    method: str
    lv_mass_raw_g: float | None
    myocardium_volume_ml: float | None
    lv_cavity_volume_ml: float | None
    n_slices: int
    spacing_mm: tuple[float, float, float]
    qc_flags: tuple[str, ...] = ()
    model_version: str | None = None


@dataclass(frozen=True)
class Calibration:
    """The side inputs that turn raw masses into calibrated ones, per method (None: leave raw)."""

    centering: Mapping[str, Any] = field(default_factory=dict)  # method -> mass.SexCentering


# --- Pure helpers (tested without Beam) -------------------------------------------------------------


def _unique(flags: Iterable[str]) -> tuple[str, ...]:
    """Flags in first-seen order without repeats (deterministic rows)."""
    return tuple(dict.fromkeys(flags))


def participant_ids(study: DecodedStudy) -> tuple[int, int]:
    """(eid, instance) of a study: the decoder's (UK Biobank zip name), else the file name's digits.

    Any-vendor inputs may be named ``{eid}.zip`` or ``{eid}_{instance}.zip``; the instance defaults to
    ``ANY_VENDOR_INSTANCE`` (0: visit unknown). Anything else cannot be joined to phenotypes or written
    as a row, so it is an error naming the file.
    """
    if study.eid is not None:
        return int(study.eid), int(study.instance if study.instance is not None else ANY_VENDOR_INSTANCE)
    base = study.source_uri.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    match = _ANY_VENDOR_NAME.match(base)
    if match is None:
        raise ValueError(
            f"{study.source_uri}: no participant id: not a UK Biobank zip name and the file name does not "
            "start with the eid ('{eid}.zip' or '{eid}_{instance}.zip')"
        )
    instance = match.group(2)
    return int(match.group(1)), int(instance) if instance is not None else ANY_VENDOR_INSTANCE


def participant_from_study(study: DecodedStudy, *, with_inlinevf: bool) -> ParticipantTensor:
    """Build the model tensor (the one shared ``build_image_tensor``) and, optionally, InlineVF labels."""
    from beam_pipeline.overlay import inlinevf_labels
    from beam_pipeline.qc import inlinevf_qc_flags, study_qc_flags
    from beam_pipeline.tensor import build_image_tensor, build_label_volume

    eid, instance = participant_ids(study)
    tensor = build_image_tensor(study)
    flags = _unique([*study.qc_flags, *tensor.qc_flags, *study_qc_flags(study)])
    labels = None
    vf_flags: tuple[str, ...] = ()
    if with_inlinevf:
        per_slice = inlinevf_labels(study)
        vf_flags = tuple(inlinevf_qc_flags(study, per_slice))
        if study.has_inlinevf:
            labels = build_label_volume(per_slice, slice_start=tensor.slice_start)
    return ParticipantTensor(
        source_uri=study.source_uri,
        eid=eid,
        instance=instance,
        image=tensor.image,
        # float64 from the headers (the tensor's copy is float32): masses and Parquet keep full precision
        spacing_mm=np.array([*study.pixel_spacing_mm, study.slice_spacing_mm], dtype=np.float64),
        n_slices=int(study.n_slices),
        n_slices_used=int(tensor.n_slices_used),
        qc_flags=flags,
        inlinevf_labels=labels,
        inlinevf_flags=vf_flags,
    )


def measure_labels(
    participant: ParticipantTensor, labels: np.ndarray, *, method: str, model_version: str | None,
    extra_flags: Sequence[str] = (),
) -> Measurement:
    """Volumes and raw mass of a label volume (model argmax or InlineVF labels), with its QC flags."""
    from beam_pipeline.mass import measure_label_volume
    from beam_pipeline.qc import label_qc_flags, mass_qc_flags

    volume = measure_label_volume(labels, participant.spacing_mm)
    flags = _unique([
        *participant.qc_flags, *extra_flags,
        *label_qc_flags(labels, participant.n_slices_used),
        *mass_qc_flags(volume.lv_mass_raw_g),
    ])
    return Measurement(
        source_uri=participant.source_uri,
        eid=participant.eid,
        instance=participant.instance,
        method=method,
        lv_mass_raw_g=float(volume.lv_mass_raw_g),
        myocardium_volume_ml=float(volume.myocardium_volume_ml),
        lv_cavity_volume_ml=float(volume.lv_cavity_volume_ml),
        n_slices=participant.n_slices,
        spacing_mm=_spacing_tuple(participant.spacing_mm),
        qc_flags=flags,
        model_version=model_version,
    )


LABELS_DIRNAME = "labels"


def label_volume_path(output: str, method: str, eid: int, instance: int) -> str:
    """Where ``--save_labels`` puts a label volume: ``OUTPUT/labels/method=<m>/<eid>_<instance>.npz``."""
    return filesystems.join(output, LABELS_DIRNAME, f"method={method}", f"{eid}_{instance}.npz")


def save_label_volume(output: str, method: str, participant: ParticipantTensor, labels: np.ndarray) -> str:
    """Write ``labels`` (uint8 ``contracts.LABEL_VOLUME_SHAPE``, tensor layout) as a compressed ``.npz``
    (key ``labels``, plus ``spacing_mm`` and ``n_slices``) for QC review and Dice; returns the path."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=np.asarray(labels, dtype=np.uint8),
                        spacing_mm=np.asarray(participant.spacing_mm, dtype=np.float64),
                        n_slices=np.int64(participant.n_slices_used))
    path = label_volume_path(output, method, participant.eid, participant.instance)
    filesystems.write_bytes(path, buffer.getvalue())
    return path


def measure_inlinevf(participant: ParticipantTensor) -> Measurement:
    """InlineVF's raw mass from its outline-derived labels (no contour: mass unknown, flagged)."""
    if participant.inlinevf_labels is None:
        return Measurement(
            source_uri=participant.source_uri, eid=participant.eid, instance=participant.instance,
            method=contracts.METHOD_INLINEVF, lv_mass_raw_g=None, myocardium_volume_ml=None,
            lv_cavity_volume_ml=None, n_slices=participant.n_slices,
            spacing_mm=_spacing_tuple(participant.spacing_mm),
            qc_flags=_unique([*participant.qc_flags, *participant.inlinevf_flags,
                              contracts.QC_INLINEVF_CONTOUR_MISSING]),
        )
    return measure_labels(participant, participant.inlinevf_labels, method=contracts.METHOD_INLINEVF,
                          model_version=None, extra_flags=participant.inlinevf_flags)


def measure_regression(
    participant: ParticipantTensor, mass_g: float, *, model_version: str | None
) -> Measurement:
    """ML4H_reg's mass, taken as is (no volumes: the model regresses mass directly)."""
    from beam_pipeline.qc import mass_qc_flags

    return Measurement(
        source_uri=participant.source_uri, eid=participant.eid, instance=participant.instance,
        method=contracts.METHOD_ML4H_REG, lv_mass_raw_g=float(mass_g), myocardium_volume_ml=None,
        lv_cavity_volume_ml=None, n_slices=participant.n_slices,
        spacing_mm=_spacing_tuple(participant.spacing_mm),
        qc_flags=_unique([*participant.qc_flags, *mass_qc_flags(float(mass_g))]),
        model_version=model_version,
    )


def _spacing_tuple(spacing_mm: np.ndarray | Sequence[float]) -> tuple[float, float, float]:
    row_mm, col_mm, slice_mm = (float(v) for v in np.asarray(spacing_mm, dtype=np.float64))
    return (row_mm, col_mm, slice_mm)


def recalibrated_inlinevf(measurement: Measurement) -> Measurement:
    """The paper's InlineVF recalibration as its own method row (``inlinevf_recalibrated``)."""
    return replace(measurement, method=contracts.METHOD_INLINEVF_RECALIBRATED)


def calibrate(
    measurement: Measurement, phenotype: Any | None, centering: Mapping[str, Any],
) -> ResultRecord:
    """Raw -> calibrated mass, then BSA (DuBois), LVMI and LVH; ``lvh_p90`` is set later.

    ML4H_seg and InlineVF are centred on the manual mean of the participant's sex; where that cannot be
    done (sex unknown, or no centering for the method and sex: no manual masses in the run, no
    ``--calibration``, no model card calibration) the calibrated mass is None, never a raw mass in
    disguise, and ``calibration`` says ``none``. ``inlinevf_recalibrated`` uses the paper's linear
    formula; ML4H_reg is taken as is (``none``). Without a phenotype row the raw masses stay and the
    sex-dependent fields are None.
    """
    from beam_pipeline.mass import bsa_dubois_m2, is_lvh, lvmi_g_m2, recalibrate_inlinevf_g
    from beam_pipeline.qc import qc_pass

    raw = measurement.lv_mass_raw_g
    sex = phenotype.sex if phenotype is not None else None
    flags = list(measurement.qc_flags)
    if phenotype is None:
        flags.append(contracts.QC_NO_PHENOTYPE)

    calibration = CALIBRATION_NONE
    mass: float | None = raw
    if measurement.method == contracts.METHOD_INLINEVF_RECALIBRATED:
        calibration = CALIBRATION_LINEAR
        mass = recalibrate_inlinevf_g(raw)
    elif measurement.method in CENTERED_METHODS:
        sex_centering = centering.get(measurement.method)
        mass = sex_centering.apply(raw, sex) if sex_centering is not None else None
        if mass is not None:
            calibration = CALIBRATION_SEX_CENTERED

    bsa = lvmi = lvh = None
    if phenotype is not None:
        bsa = bsa_dubois_m2(phenotype.height_cm, phenotype.weight_kg)
        lvmi = lvmi_g_m2(mass, bsa)
        lvh = is_lvh(lvmi, sex)

    flags_t = _unique(flags)
    row_mm, col_mm, slice_mm = measurement.spacing_mm
    return ResultRecord(
        eid=measurement.eid,
        instance=measurement.instance,
        method=measurement.method,
        lv_mass_raw_g=raw,
        lv_mass_g=mass,
        calibration=calibration,
        myocardium_volume_ml=measurement.myocardium_volume_ml,
        lv_cavity_volume_ml=measurement.lv_cavity_volume_ml,
        bsa_m2=bsa,
        lvmi_g_m2=lvmi,
        lvh=lvh,
        lvh_p90=None,
        sex=sex,
        age=phenotype.age if phenotype is not None else None,
        n_slices=measurement.n_slices,
        pixel_spacing_row_mm=row_mm,
        pixel_spacing_col_mm=col_mm,
        slice_spacing_mm=slice_mm,
        qc_flags=list(flags_t),
        qc_pass=bool(qc_pass(flags_t)) and measurement.lv_mass_raw_g is not None,
        model_version=measurement.model_version,
        pipeline_version=PIPELINE_VERSION,
        source_uri=measurement.source_uri,
    )


def apply_p90(record: ResultRecord, thresholds: Mapping[str, Mapping[str, float]]) -> ResultRecord:
    """Set ``lvh_p90``: calibrated mass above the method's 90th percentile for the participant's sex."""
    from beam_pipeline.mass import is_lvh_percentile

    method_thresholds = thresholds.get(record.method)
    if not method_thresholds:
        return record
    return replace(record, lvh_p90=is_lvh_percentile(record.lv_mass_g, record.sex, method_thresholds))


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def _float_or_none(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def results_file_row(record: ResultRecord) -> dict[str, Any]:
    """A Parquet row of ``RESULTS_FILE_SCHEMA``: the partition column (method) lives in the path."""
    row = record.to_row()
    row.pop("method")
    return row


# --- Dead letters -----------------------------------------------------------------------------------


def _message_from_repr(exc_type: type, exc_repr: str) -> str:
    """``str(exc)`` recovered from the ``repr`` Beam keeps of a dead letter's exception."""
    name = getattr(exc_type, "__name__", "")
    if exc_repr.startswith(f"{name}(") and exc_repr.endswith(")"):
        inner = exc_repr[len(name) + 1:-1]
        try:
            value = ast.literal_eval(inner) if inner else ""
        except (ValueError, SyntaxError):
            return exc_repr
        if isinstance(value, tuple):
            return ", ".join(str(v) for v in value)
        return str(value)
    return exc_repr


def _identity_of(element: Any) -> tuple[str, int | None, int | None]:
    """(source URI, eid, instance) of any element a step may fail on."""
    if isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], str):
        key, element = element  # keyed by source URI (RunInference's KeyedModelHandler)
        if not isinstance(element, ParticipantTensor | Measurement | DecodedStudy):
            eid, instance = _ids_from_name(key)
            return key, eid, instance
    if isinstance(element, ParticipantTensor | Measurement):
        return element.source_uri, element.eid, element.instance
    if isinstance(element, DecodedStudy):
        return element.source_uri, element.eid, element.instance
    metadata = getattr(element, "metadata", None)
    uri = getattr(metadata, "path", None) or getattr(element, "path", None) or str(element)
    eid, instance = _ids_from_name(uri)
    return uri, eid, instance


def _ids_from_name(uri: str) -> tuple[int | None, int | None]:
    """eid and instance from a UK Biobank zip name, or (None, None) for any other name."""
    from beam_pipeline.decode import parse_ukbb_zip_name

    try:
        parsed = parse_ukbb_zip_name(uri)
    except (ValueError, TypeError):
        return None, None
    if parsed is None:
        return None, None
    eid, _field, instance, _array = parsed
    return eid, instance


def error_record(stage: str, element: Any, exc_type: type, exc_repr: str) -> ErrorRecord:
    """One dead-letter row: where it failed, on which input, and the error's own message."""
    uri, eid, instance = _identity_of(element)
    message = _message_from_repr(exc_type, exc_repr)
    if exc_type is DecodeError or getattr(exc_type, "__name__", "") == "DecodeError":
        step = message[len(uri) + 2:].split(":", 1)[0] if message.startswith(f"{uri}: ") else ""
        stage = STAGE_READ if step == STAGE_READ else STAGE_DECODE
    return ErrorRecord(
        source_uri=uri, eid=eid, instance=instance, stage=stage,
        error_type=getattr(exc_type, "__name__", str(exc_type)), message=message,
        pipeline_version=PIPELINE_VERSION,
    )


class ToErrorRecords(beam.PTransform):
    """Dead letters ``(element, (exc_type, repr, traceback))`` -> ``ErrorRecord`` (one per element).

    With ``batched=True`` the dead letter is a failed RunInference batch (a list of keyed examples):
    every participant of the batch gets its own row.
    """

    def __init__(self, stage: str, *, batched: bool = False):
        super().__init__()
        self._stage = stage
        self._batched = batched

    def expand(self, bad):
        stage, batched = self._stage, self._batched
        counter = Metrics.counter(NAMESPACE, f"failed_{stage}")

        def to_records(dead_letter):
            element, (exc_type, exc_repr, traceback_lines) = dead_letter
            elements = list(element) if batched else [element]
            for item in elements:
                record = error_record(stage, item, exc_type, exc_repr)
                counter.inc()
                logger.warning("dead letter (%s) %s: %s", record.stage, record.source_uri, record.message)
                logger.debug("traceback of %s:\n%s", record.source_uri, "".join(traceback_lines))
                yield record

        return bad | "ToErrorRecord" >> beam.FlatMap(to_records)


# --- Composites -------------------------------------------------------------------------------------


class ReadParticipants(beam.PTransform):
    """Glob -> ``ReadableFile`` per participant, fanned out over workers.

    ``MatchFiles`` emits every match from one element; the ``Reshuffle`` spreads the (small) file
    metadata so decoding runs in parallel. Bytes are read later, on demand, by the decoder.
    """

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        matched = Metrics.counter(NAMESPACE, "inputs_matched")

        def count(metadata):
            matched.inc()
            return metadata

        return (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._pattern)
            | "CountMatches" >> beam.Map(count)
            | "FanOut" >> beam.Reshuffle()
            | "ReadMatches" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
        )


class DecodeFn(beam.DoFn):
    """``ReadableFile`` -> ``DecodedStudy``: stream the zip (seekable), decode only the ED frames."""

    def __init__(self, ed_rule: str):
        super().__init__()
        self._ed_rule = ed_rule
        self._decoded = Metrics.counter(NAMESPACE, "participants_decoded")
        self._bytes_read = Metrics.counter(NAMESPACE, "input_bytes_read")
        self._bytes_total = Metrics.counter(NAMESPACE, "input_bytes_total")
        self._pixel_decodes = Metrics.counter(NAMESPACE, "pixel_frames_decoded")
        self._overlay_decodes = Metrics.counter(NAMESPACE, "overlay_frames_decoded")
        self._seen = 0  # per DoFn instance: progress lines every PROGRESS_EVERY participants

    def process(self, readable_file):
        from beam_pipeline.decode import DecodeStats, decode_participant_zip

        uri = readable_file.metadata.path
        stats = DecodeStats()
        with readable_file.open(mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            study = decode_participant_zip(filesystems.ensure_seekable(stream), uri,
                                           ed_rule=self._ed_rule, stats=stats)
        self._bytes_read.inc(stats.bytes_read)
        self._bytes_total.inc(int(readable_file.metadata.size_in_bytes or 0))
        self._pixel_decodes.inc(stats.pixel_frames_decoded)
        self._overlay_decodes.inc(stats.overlay_frames_decoded)
        self._decoded.inc()
        self._seen += 1
        level = logging.INFO if self._seen % PROGRESS_EVERY == 1 or PROGRESS_EVERY == 1 else logging.DEBUG
        size = readable_file.metadata.size_in_bytes or 0
        logger.log(level, "decoded %s (%d slices, %d of %d bytes read); %d participants in this worker",
                   uri, study.n_slices, stats.bytes_read, size, self._seen)
        yield study


class DecodeParticipants(beam.PTransform):
    """``ReadableFile`` -> ``ParticipantTensor``; returns ``(participants, errors)``."""

    def __init__(self, *, ed_rule: str = "first_trigger_time", with_inlinevf: bool = True):
        super().__init__()
        self._ed_rule = ed_rule
        self._with_inlinevf = with_inlinevf

    def expand(self, files):
        studies, bad_decode = (
            files | "Decode" >> beam.ParDo(DecodeFn(self._ed_rule)).with_exception_handling()
        )
        with_inlinevf = self._with_inlinevf
        tensors, bad_tensor = (
            studies
            | "BuildTensor" >> beam.Map(participant_from_study, with_inlinevf=with_inlinevf)
            .with_exception_handling()
        )
        errors = (
            (bad_decode | "DecodeErrors" >> ToErrorRecords(STAGE_DECODE),
             bad_tensor | "TensorErrors" >> ToErrorRecords(STAGE_TENSOR))
            | "FlattenErrors" >> beam.Flatten()
        )
        return tensors, errors


class SegmentAndMeasure(beam.PTransform):
    """ML4H_seg: RunInference (keyed, batched) -> argmax labels -> volumes -> raw mass.

    With ``labels_output`` the argmax label volumes are also written (``save_label_volume``)."""

    def __init__(self, model_handler, *, labels_output: str | None = None):
        super().__init__()
        self._handler = model_handler
        self._labels_output = labels_output

    def expand(self, participants):
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        results, dlq = (
            participants
            | "Key" >> beam.Map(lambda p: (p.source_uri, p))
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )

        labels_output = self._labels_output

        def measure(keyed_result):
            _, result = keyed_result
            if labels_output is not None:
                save_label_volume(labels_output, contracts.METHOD_ML4H_SEG, result.example, result.inference)
            return measure_labels(result.example, result.inference, method=contracts.METHOD_ML4H_SEG,
                                  model_version=result.model_id)

        measured, bad_measure = results | "Measure" >> beam.Map(measure).with_exception_handling()
        errors = (
            (dlq.failed_inferences | "InferenceErrors" >> ToErrorRecords(STAGE_INFERENCE, batched=True),
             bad_measure | "MeasureErrors" >> ToErrorRecords(STAGE_MEASURE))
            | "FlattenErrors" >> beam.Flatten()
        )
        return measured, errors


class RegressMass(beam.PTransform):
    """ML4H_reg: RunInference (keyed, batched) -> mass in grams, as is."""

    def __init__(self, model_handler):
        super().__init__()
        self._handler = model_handler

    def expand(self, participants):
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        results, dlq = (
            participants
            | "Key" >> beam.Map(lambda p: (p.source_uri, p))
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )

        def measure(keyed_result):
            _, result = keyed_result
            return measure_regression(result.example, result.inference, model_version=result.model_id)

        measured, bad_measure = results | "Measure" >> beam.Map(measure).with_exception_handling()
        errors = (
            (dlq.failed_inferences | "InferenceErrors" >> ToErrorRecords(STAGE_INFERENCE, batched=True),
             bad_measure | "MeasureErrors" >> ToErrorRecords(STAGE_MEASURE))
            | "FlattenErrors" >> beam.Flatten()
        )
        return measured, errors


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
                                  participant.inlinevf_labels)
            return measure_inlinevf(participant)

        measured, bad = participants | "Measure" >> beam.Map(measure).with_exception_handling()
        return measured, bad | "MeasureErrors" >> ToErrorRecords(STAGE_MEASURE)


def load_phenotypes(path: str | None) -> dict[int, Any]:
    """The phenotype table by eid (empty without a file); a bad file fails the run, loudly."""
    if not path:
        return {}
    from beam_pipeline.phenotypes import read_phenotypes

    with filesystems.open_read(path) as stream:
        table = read_phenotypes(filesystems.ensure_seekable(stream), source=path)
    logger.info("read %d phenotype rows from %s", len(table), path)
    return dict(table)


class CalibrateAndIndex(beam.PTransform):
    """Measurements + phenotypes -> ``ResultRecord``s with calibrated mass, BSA, LVMI, LVH, LVH_p90.

    Global statistics are side inputs computed from the run itself: the per-sex centering of each
    centred method (fitted on QC-passing participants with a manual mass; else ``fallback_centering``
    from ``--calibration`` or the model card) and the per-sex 90th percentiles of calibrated mass.
    """

    def __init__(self, phenotypes_path: str | None, fallback_centering: Mapping[str, Any] | None = None):
        super().__init__()
        self._phenotypes_path = phenotypes_path
        self._fallback = dict(fallback_centering or {})

    def expand(self, measurements):
        from beam_pipeline.mass import fit_sex_centering, sex_percentile_thresholds
        from beam_pipeline.qc import qc_pass

        pipeline = measurements.pipeline
        phenotypes = (
            pipeline
            | "PhenotypesPath" >> beam.Create([self._phenotypes_path or ""])
            | "ReadPhenotypes" >> beam.Map(load_phenotypes)
        )
        phenotypes_si = beam.pvalue.AsSingleton(phenotypes)

        def join(measurement, table):
            return measurement, table.get(measurement.eid)

        joined = measurements | "JoinPhenotypes" >> beam.Map(join, phenotypes_si)

        def centering_input(pair):
            measurement, phenotype = pair
            sex = phenotype.sex if phenotype is not None else None
            if (measurement.method in CENTERED_METHODS and sex is not None
                    and qc_pass(measurement.qc_flags)):
                yield measurement.method, (sex, measurement.lv_mass_raw_g, phenotype.manual_lv_mass_g)

        def fit(method, triples):
            triples = sorted(triples, key=repr)  # deterministic order, None-safe
            try:
                centering = fit_sex_centering([t[1] for t in triples], [t[2] for t in triples],
                                              [t[0] for t in triples], source="run")
            except ValueError as exc:  # no manual masses in this run: fall back (or leave raw)
                logger.info("no sex centering fitted for %s from this run: %s", method, exc)
                return
            logger.info("sex centering for %s: offsets %s", method, dict(centering.offsets_g))
            yield method, centering

        fitted = (
            joined
            | "CenteringInputs" >> beam.FlatMap(centering_input)
            | "GroupCenteringInputs" >> beam.GroupByKey()
            | "FitCentering" >> beam.FlatMapTuple(fit)
        )
        fallback = dict(self._fallback)

        def calibrate_all(pair, fitted_centering):
            measurement, phenotype = pair
            centering = {**fallback, **dict(fitted_centering)}
            yield calibrate(measurement, phenotype, centering)
            if measurement.method == contracts.METHOD_INLINEVF:
                yield calibrate(recalibrated_inlinevf(measurement), phenotype, centering)

        calibrated = joined | "Calibrate" >> beam.FlatMap(calibrate_all, beam.pvalue.AsList(fitted))

        def percentile_input(record):
            if record.sex is not None and record.lv_mass_g is not None and record.qc_pass:
                yield record.method, (record.sex, float(record.lv_mass_g))

        def thresholds(method, pairs):
            pairs = sorted(pairs)
            return method, sex_percentile_thresholds(
                [p[1] for p in pairs], [p[0] for p in pairs], contracts.LVH_PERCENTILE)

        p90 = (
            calibrated
            | "PercentileInputs" >> beam.FlatMap(percentile_input)
            | "GroupPercentileInputs" >> beam.GroupByKey()
            | "SexPercentiles" >> beam.MapTuple(thresholds)
        )
        written = Metrics.counter(NAMESPACE, "result_rows")

        def finish(record, thresholds_list):
            written.inc()
            Metrics.counter(NAMESPACE, f"rows_{record.method}").inc()
            return apply_p90(record, dict(thresholds_list))

        return calibrated | "LVHp90" >> beam.Map(finish, beam.pvalue.AsList(p90))


# --- Tensorize (training data for the trainer) -----------------------------------------------------


def tfrecord_bytes(participant: ParticipantTensor, phenotype: Any | None) -> bytes:
    """One ``tf.train.Example`` (``beam_pipeline.tfrecord``): tensor, InlineVF labels, sex, manual mass."""
    from beam_pipeline.tfrecord import encode_example

    manual = phenotype.manual_lv_mass_g if phenotype is not None else None
    return encode_example(
        eid=participant.eid,
        instance=participant.instance,
        image=participant.image,
        labels=participant.inlinevf_labels,
        spacing_mm=participant.spacing_mm,
        sex=phenotype.sex if phenotype is not None else None,
        manual_lv_mass_g=manual,
        n_slices=participant.n_slices_used,
    )


class EncodeExamples(beam.PTransform):
    """``ParticipantTensor`` + phenotypes -> (source URI, serialised Example); returns (examples, errors)."""

    def __init__(self, phenotypes_path: str | None):
        super().__init__()
        self._phenotypes_path = phenotypes_path

    def expand(self, participants):
        phenotypes = (
            participants.pipeline
            | "PhenotypesPath" >> beam.Create([self._phenotypes_path or ""])
            | "ReadPhenotypes" >> beam.Map(load_phenotypes)
        )
        encoded = Metrics.counter(NAMESPACE, "examples_encoded")

        def encode(participant, table):
            data = tfrecord_bytes(participant, table.get(participant.eid))
            encoded.inc()
            return participant.source_uri, data

        examples, bad = (
            participants
            | "Encode" >> beam.Map(encode, beam.pvalue.AsSingleton(phenotypes)).with_exception_handling()
        )
        return examples, bad | "EncodeErrors" >> ToErrorRecords(STAGE_TENSOR)


# --- Writers ---------------------------------------------------------------------------------------


class WriteResults(beam.PTransform):
    """``ResultRecord``s -> ``OUTPUT/lvmass/method=<m>/results-*.parquet`` (snappy, explicit schema).

    One write per method gives the hive partitioning BigQuery and DuckDB read; every requested
    method writes at least one (possibly empty) file, so readers never meet a missing partition.
    """

    def __init__(self, output: str, methods: Sequence[str], *, num_shards: int = 1):
        super().__init__()
        self._output = output
        self._methods = tuple(methods)
        self._num_shards = num_shards

    def expand(self, records):
        from apache_beam.io.parquetio import WriteToParquet

        from beam_pipeline.schema import RESULTS_DIRNAME, RESULTS_FILE_SCHEMA

        methods = self._methods
        parts = records | "ByMethod" >> beam.Partition(
            lambda record, _n: methods.index(record.method), len(methods))
        writes = []
        for method, part in zip(methods, parts, strict=True):
            prefix = filesystems.join(self._output, RESULTS_DIRNAME, f"method={method}", "results")
            writes.append(
                part
                | f"Rows[{method}]" >> beam.Map(results_file_row)
                | f"Write[{method}]" >> WriteToParquet(
                    prefix, RESULTS_FILE_SCHEMA, codec="snappy", file_name_suffix=".parquet",
                    num_shards=self._num_shards)
            )
        return writes


class WriteErrors(beam.PTransform):
    """``ErrorRecord``s -> ``OUTPUT/errors/errors-*.parquet``; an empty-but-valid file when none."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, errors):
        from apache_beam.io.parquetio import WriteToParquet

        from beam_pipeline.schema import ERRORS_DIRNAME, ERRORS_SCHEMA

        prefix = filesystems.join(self._output, ERRORS_DIRNAME, "errors")
        return (
            errors
            | "Rows" >> beam.Map(lambda e: e.to_row())
            | "Write" >> WriteToParquet(prefix, ERRORS_SCHEMA, codec="snappy", file_name_suffix=".parquet",
                                        num_shards=1)
        )


class WriteTFRecords(beam.PTransform):
    """(URI, serialised Example) -> ``OUTPUT/tfrecords/examples-*.tfrecord.gz`` (GZIP, for the trainer)."""

    TFRECORDS_DIRNAME = "tfrecords"

    def __init__(self, output: str, *, num_shards: int = 0):
        super().__init__()
        self._output = output
        self._num_shards = num_shards

    def expand(self, examples):
        from apache_beam.io.tfrecordio import WriteToTFRecord

        prefix = filesystems.join(self._output, self.TFRECORDS_DIRNAME, "examples")
        return (
            examples
            | "Values" >> beam.Values()
            | "Write" >> WriteToTFRecord(prefix, file_name_suffix=".tfrecord.gz",
                                         compression_type=CompressionTypes.GZIP, num_shards=self._num_shards)
        )


class WriteSummary(beam.PTransform):
    """One JSON summary (``OUTPUT/summary.json``) from the run's inputs, rows and errors (side inputs)."""

    def __init__(self, output: str, *, mode: str, options: Mapping[str, Any]):
        super().__init__()
        self._output = output
        self._mode = mode
        self._options = dict(options)

    def expand(self, inputs):
        from beam_pipeline.schema import SUMMARY_FILENAME
        from beam_pipeline.summary import build_summary, summary_json

        uris, rows, errors = inputs
        path = filesystems.join(self._output, SUMMARY_FILENAME)
        mode, options = self._mode, self._options

        def write(_, uri_list, row_list, error_list):
            summary = build_summary(input_uris=uri_list, rows=row_list, errors=error_list, mode=mode,
                                    options=options)
            filesystems.write_text(path, summary_json(summary), mime_type="application/json")
            logger.info(
                "summary: %d inputs, %d written, %d failed (reconciled=%s) -> %s",
                summary["inputs_matched"], summary["participants_written"], summary["participants_failed"],
                summary["reconciled"], path,
            )
            return summary

        return (
            inputs[0].pipeline
            | "Trigger" >> beam.Create([None])
            | "Write" >> beam.Map(write, beam.pvalue.AsList(uris), beam.pvalue.AsList(rows),
                                  beam.pvalue.AsList(errors))
        )
