"""Beam composites of the pipeline: read, decode, infer, measure, calibrate, write.

A thin shell over the pure core (``decode``, ``tensor``, ``overlay``, ``mass``, ``qc``, ``phenotypes``):
each DoFn only calls pure functions, counts what it does with ``Metrics`` and lets exceptions fall to
a dead-letter output (``with_exception_handling()``), which :class:`ToErrorRecords` turns into one
:class:`~beam_pipeline.schema.ErrorRecord` per failed participant. Elements are keyed by the input's
URI (unique per participant x instance) so every failure can be traced back to its file.

Composites, in pipeline order::

    ReadParticipants      glob -> ReadableFile per zip (fan-out via Reshuffle) and/or
                          ParticipantFolder per matched folder of DICOMs (grouped by folder)
    DecodeParticipants    ReadableFile | ParticipantFolder -> ParticipantTensor
                                                               (+ errors: read, decode, tensor)
    SegmentAndMeasure     ParticipantTensor -> Measurement  ML4H_seg   (+ errors: inference, measure)
    RegressMass           ParticipantTensor -> Measurement  ML4H_reg   (+ errors: inference)
    MeasureInlineVF       ParticipantTensor -> Measurement  InlineVF   (+ errors: measure)
    CalibrateAndIndex     Measurement + phenotypes -> ResultRecord (side inputs: centering, p90)
                                                                         (+ errors: phenotypes)
    WriteResults / WriteErrors / WriteTFRecords / WriteSummary
"""

from __future__ import annotations

import ast
import io
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
DEFAULT_MIN_CALIBRATION_N = 10  # manual masses of a sex below which a fallback centering is preferred
ANY_VENDOR_INSTANCE = 0  # the visit of an any-vendor input whose name does not say it
_ANY_VENDOR_NAME = re.compile(r"^(\d+)(?:_(\d+))?(?:\.[A-Za-z0-9]+)*$")
_UKBB_FOLDER_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)$")  # an unzipped {eid}_{field}_{instance}_{array}
INPUT_KIND_AUTO = "auto"
INPUT_KIND_ZIP = "zip"
INPUT_KIND_FOLDER = "folder"
INPUT_KINDS = (INPUT_KIND_AUTO, INPUT_KIND_ZIP, INPUT_KIND_FOLDER)
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
    n_slices: int  # acquired slices (the Parquet's n_slices)
    n_slices_used: int  # slices placed in the 13-slot tensor (the TFRecord's n_slices)
    qc_flags: tuple[str, ...]
    inlinevf_labels: np.ndarray | None = None
    inlinevf_flags: tuple[str, ...] = ()
    slice_start: int = 0  # first acquired slice placed in the tensor (> 0 only past 13 slices)


@dataclass(frozen=True)
class ParticipantFolder:
    """One participant's folder of DICOMs (the any-vendor layout): its path and its files' paths."""

    path: str
    files: tuple[str, ...]
    size_in_bytes: int = 0


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


def ids_from_name(uri: str) -> tuple[int | None, int | None]:
    """(eid, instance) from the last component of a file or folder name, (None, None) when it says neither.

    In order: a UK Biobank zip (``{eid}_{field}_{instance}_{array}.zip``) or its unzipped folder
    (``{eid}_{field}_{instance}_{array}``); then ``{eid}``, ``{eid}.zip``, ``{eid}_{instance}`` or
    ``{eid}_{instance}.zip`` (instance ``ANY_VENDOR_INSTANCE`` when absent: visit unknown).
    """
    from beam_pipeline.decode import parse_ukbb_zip_name

    base = uri.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    parsed = parse_ukbb_zip_name(base)
    if parsed is not None:
        return parsed[0], parsed[2]
    folder = _UKBB_FOLDER_NAME.match(base)
    if folder is not None:
        return int(folder.group(1)), int(folder.group(3))
    match = _ANY_VENDOR_NAME.match(base)
    if match is None:
        return None, None
    instance = match.group(2)
    return int(match.group(1)), int(instance) if instance is not None else ANY_VENDOR_INSTANCE


def participant_ids(study: DecodedStudy) -> tuple[int, int]:
    """(eid, instance) of a study, the file or folder name first, the DICOM PatientID last.

    1. the decoder's (a UK Biobank zip name ``{eid}_20209_{instance}_{array}.zip``);
    2. the name of any other zip or folder (:func:`ids_from_name`: ``{eid}.zip``, ``{eid}_{instance}.zip``,
       a folder named by the eid); the instance defaults to ``ANY_VENDOR_INSTANCE`` (0: visit unknown);
    3. a numeric PatientID (0010,0020) shared by the slices (instance ``ANY_VENDOR_INSTANCE``): scanners
       and anonymisers put all sorts of numbers there, so it never overrides a name.

    Anything else cannot be joined to phenotypes or written as a row, so it is an error naming the file.
    """
    if study.eid is not None:
        return int(study.eid), int(study.instance if study.instance is not None else ANY_VENDOR_INSTANCE)
    eid, instance = ids_from_name(study.source_uri)
    if eid is not None:
        return eid, int(instance if instance is not None else ANY_VENDOR_INSTANCE)
    if study.patient_id.isdigit():
        return int(study.patient_id), ANY_VENDOR_INSTANCE
    raise ValueError(
        f"{study.source_uri}: no participant id: not a UK Biobank zip name, the file or folder name does not "
        "start with the eid ('{eid}.zip' or '{eid}_{instance}.zip'), and no numeric PatientID (0010,0020)"
    )


def participant_from_study(study: DecodedStudy, *, with_inlinevf: bool) -> ParticipantTensor:
    """Build the model tensor (the one shared ``build_image_tensor``) and, optionally, InlineVF labels."""
    from beam_pipeline.overlay import inlinevf_labels
    from beam_pipeline.qc import inlinevf_qc_flags
    from beam_pipeline.tensor import build_image_tensor, build_label_volume

    eid, instance = participant_ids(study)
    tensor = build_image_tensor(study)
    # the decoder already put the geometry flags (qc.geometry_qc_flags) into study.qc_flags
    flags = _unique([*study.qc_flags, *tensor.qc_flags])
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
        slice_start=int(tensor.slice_start),
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
    (key ``labels``, plus ``spacing_mm``, ``n_slices`` placed and the acquisition's ``slice_start``, which
    ``tensor.unplace_label_volume`` needs to map it back) for QC review and Dice; returns the path."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=np.asarray(labels, dtype=np.uint8),
                        spacing_mm=np.asarray(participant.spacing_mm, dtype=np.float64),
                        n_slices=np.int64(participant.n_slices_used),
                        slice_start=np.int64(participant.slice_start))
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
    disguise, and ``calibration`` says ``none``. ``calibration`` names the centering's source for that
    sex: ``sex_mean_centered`` when fitted on this run's manual masses, ``sex_mean_centered:<source>``
    otherwise (``calibration_file``, ``model_card``; :func:`calibration_label`).
    ``inlinevf_recalibrated`` uses the paper's linear formula; ML4H_reg is taken as is (``none``).
    Without a phenotype row the raw masses stay and the sex-dependent fields are None.
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
            calibration = calibration_label(sex_centering.source_for(sex))

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


def calibration_label(source: str) -> str:
    """The ``calibration`` column of a sex-centred row: ``sex_mean_centered`` for a centering fitted on
    the run itself (source ``run``), ``sex_mean_centered:<source>`` for any other (a fallback)."""
    return CALIBRATION_SEX_CENTERED if source == "run" else f"{CALIBRATION_SEX_CENTERED}:{source}"


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
    if isinstance(element, tuple) and element and isinstance(element[0], Measurement):
        element = element[0]  # (measurement, phenotype) joined for calibration
    if isinstance(element, ParticipantTensor | Measurement | ResultRecord):
        return element.source_uri, element.eid, element.instance
    if isinstance(element, DecodedStudy):
        return element.source_uri, element.eid, element.instance
    metadata = getattr(element, "metadata", None)
    uri = getattr(metadata, "path", None) or getattr(element, "path", None) or str(element)
    eid, instance = _ids_from_name(uri)
    return uri, eid, instance


def _ids_from_name(uri: str) -> tuple[int | None, int | None]:
    """eid and instance from the input's name (:func:`ids_from_name`), or (None, None)."""
    try:
        return ids_from_name(uri)
    except (ValueError, TypeError, AttributeError):
        return None, None


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


def input_uri(element: Any) -> str:
    """The URI a participant input is known by (rows' and errors' ``source_uri``): a zip's path or a
    folder's path."""
    if isinstance(element, ParticipantFolder):
        return element.path
    return element.metadata.path


def folder_pattern(pattern: str) -> re.Pattern[str]:
    """A regex whose match at the start of a file path is the participant folder ``pattern`` matched.

    Beam's glob (``FileSystem.translate_pattern``): ``*`` never crosses ``/``, so the prefix of a path
    below the folder that matches ``pattern`` and is followed by a separator is exactly that folder.
    """
    from apache_beam.io.filesystem import FileSystem

    anchored = FileSystem.translate_pattern(pattern.rstrip("/\\"))
    if not anchored.endswith(r"\Z"):  # pragma: no cover - Beam's translation always ends so
        raise ValueError(f"unexpected glob translation of {pattern!r}: {anchored!r}")
    return re.compile(anchored[: -len(r"\Z")] + r"(?=[/\\])")


def folder_member_name(folder: str, path: str) -> str:
    """A file's name inside its participant folder (``series1/IM0001`` for ``folder/series1/IM0001``)."""
    if path.startswith(folder):
        return path[len(folder):].lstrip("/\\")
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _reads_folders(pattern: str, input_kind: str) -> bool:
    if input_kind == INPUT_KIND_ZIP:
        return False
    if input_kind == INPUT_KIND_FOLDER:
        return True
    last = pattern.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return "**" not in pattern and not last.lower().endswith(".zip")


class ReadParticipants(beam.PTransform):
    """Glob -> one element per participant input, fanned out over workers.

    ``input_kind``:

    * ``zip``: every file ``pattern`` matches is a participant zip -> ``ReadableFile``;
    * ``folder``: every folder ``pattern`` matches holds one participant's DICOMs (any depth below it,
      e.g. ``--input 'dicoms/*'`` with ``dicoms/<eid>/...``) -> ``ParticipantFolder`` (files listed
      through Beam's FileSystems, so local paths and ``gs://`` prefixes work alike);
    * ``auto`` (default): files matched are zips and folders matched are folders; a pattern whose last
      component ends in ``.zip`` (or holds ``**``) is read as zips only, without listing below it.

    ``MatchFiles`` emits every match from one element; the ``Reshuffle`` spreads the (small) file
    metadata so decoding runs in parallel (the folder grouping's shuffle does the same for folders).
    Bytes are read later by the decoder.
    """

    def __init__(self, pattern: str, *, input_kind: str = INPUT_KIND_AUTO):
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}. Received: {input_kind!r}")
        if input_kind == INPUT_KIND_FOLDER and "**" in pattern:
            raise ValueError(f"a folder pattern cannot hold '**' (one folder per participant). Received: "
                             f"{pattern!r}")
        self._pattern = pattern
        self._input_kind = input_kind

    def expand(self, pbegin):
        from apache_beam.io.fileio import EmptyMatchTreatment

        matched = Metrics.counter(NAMESPACE, "inputs_matched")

        def count(element):
            matched.inc()
            return element

        outputs = []
        folders_too = _reads_folders(self._pattern, self._input_kind)
        if self._input_kind != INPUT_KIND_FOLDER:
            zips = (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(
                    self._pattern,
                    EmptyMatchTreatment.ALLOW if folders_too else EmptyMatchTreatment.ALLOW_IF_WILDCARD)
            )
            if folders_too:  # a local folder named without a wildcard matches as a "file" of its own
                zips = zips | "SkipFolders" >> beam.Filter(
                    lambda m: not (filesystems.is_local(m.path) and os.path.isdir(m.path)))
            outputs.append(
                zips
                | "CountMatches" >> beam.Map(count)
                | "FanOut" >> beam.Reshuffle()
                | "ReadMatches" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
            )
        if folders_too:
            pattern = self._pattern.rstrip("/\\")
            folder_re = folder_pattern(pattern)

            def key_by_folder(metadata):
                found = folder_re.match(metadata.path)
                if found is not None:  # always, for a path that matched pattern + "/**"
                    yield found.group(0), (metadata.path, int(metadata.size_in_bytes or 0))

            def to_folder(path, files):
                files = sorted(files)
                return ParticipantFolder(path=path, files=tuple(f for f, _ in files),
                                         size_in_bytes=sum(size for _, size in files))

            outputs.append(
                pbegin
                | "MatchFolderFiles" >> fileio.MatchFiles(pattern + "/**", EmptyMatchTreatment.ALLOW)
                | "KeyByFolder" >> beam.FlatMap(key_by_folder)
                | "GroupByFolder" >> beam.GroupByKey()
                | "ToFolder" >> beam.MapTuple(to_folder)
                | "CountFolders" >> beam.Map(count)
            )
        if len(outputs) == 1:
            return outputs[0]
        return tuple(outputs) | "FlattenInputs" >> beam.Flatten()


def _open_seekable(path: str):
    """One file of a participant folder, seekable (a remote one read whole, once)."""
    stream = filesystems.open_read(path)
    seekable, _ = filesystems.random_access(stream, path)
    if seekable is not stream:
        stream.close()
    return seekable


class DecodeFn(beam.DoFn):
    """``ReadableFile`` (zip) or ``ParticipantFolder`` -> ``DecodedStudy``: only the ED frames are decoded.

    A local zip is streamed (seekable reads of the members needed); a remote one (``gs://``) is read
    once, whole, into memory first (``filesystems.random_access``): the decoder visits it in several
    forward passes, and a remote buffered reader would fetch it again on each. ``with_inlinevf=False``
    skips InlineVF headers (where the manifest allows) and overlays.
    """

    def __init__(self, ed_rule: str, *, with_inlinevf: bool = True):
        super().__init__()
        self._ed_rule = ed_rule
        self._with_inlinevf = with_inlinevf
        self._decoded = Metrics.counter(NAMESPACE, "participants_decoded")
        self._bytes_read = Metrics.counter(NAMESPACE, "input_bytes_read")
        self._bytes_fetched = Metrics.counter(NAMESPACE, "input_bytes_fetched_whole")
        self._bytes_total = Metrics.counter(NAMESPACE, "input_bytes_total")
        self._pixel_decodes = Metrics.counter(NAMESPACE, "pixel_frames_decoded")
        self._overlay_decodes = Metrics.counter(NAMESPACE, "overlay_frames_decoded")
        self._seen = 0  # per DoFn instance: progress lines every PROGRESS_EVERY participants

    def process(self, element):
        from beam_pipeline.decode import DecodeStats, decode_dicom_members, decode_participant_zip

        stats = DecodeStats()
        if isinstance(element, ParticipantFolder):
            uri, size = element.path, element.size_in_bytes
            members = {folder_member_name(uri, f): (lambda f=f: _open_seekable(f)) for f in element.files}
            study = decode_dicom_members(members, uri, ed_rule=self._ed_rule, stats=stats,
                                         with_inlinevf=self._with_inlinevf)
        else:
            uri, size = element.metadata.path, int(element.metadata.size_in_bytes or 0)
            with element.open(mime_type="application/octet-stream",
                              compression_type=CompressionTypes.UNCOMPRESSED) as stream:
                seekable, fetched = filesystems.random_access(stream, uri)
                self._bytes_fetched.inc(fetched)
                study = decode_participant_zip(seekable, uri, ed_rule=self._ed_rule, stats=stats,
                                               with_inlinevf=self._with_inlinevf)
        self._bytes_read.inc(stats.bytes_read)
        self._bytes_total.inc(size)
        self._pixel_decodes.inc(stats.pixel_frames_decoded)
        self._overlay_decodes.inc(stats.overlay_frames_decoded)
        self._decoded.inc()
        self._seen += 1
        level = logging.INFO if self._seen % PROGRESS_EVERY == 1 or PROGRESS_EVERY == 1 else logging.DEBUG
        logger.log(level, "decoded %s (%d slices, %d of %d bytes read); %d participants in this worker",
                   uri, study.n_slices, stats.bytes_read, size, self._seen)
        yield study


class DecodeParticipants(beam.PTransform):
    """``ReadableFile`` / ``ParticipantFolder`` -> ``ParticipantTensor``; returns ``(participants, errors)``.

    ``with_inlinevf``: decode InlineVF overlays and build their labels (``--methods`` with inlinevf,
    and tensorize); without it neither is done."""

    def __init__(self, *, ed_rule: str = "first_trigger_time", with_inlinevf: bool = True):
        super().__init__()
        self._ed_rule = ed_rule
        self._with_inlinevf = with_inlinevf

    def expand(self, files):
        with_inlinevf = self._with_inlinevf
        studies, bad_decode = (
            files
            | "Decode" >> beam.ParDo(DecodeFn(self._ed_rule, with_inlinevf=with_inlinevf))
            .with_exception_handling()
        )
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


class InferAndMeasure(beam.PTransform):
    """Keyed, batched ``RunInference`` with the model handler, then ``measure(example, prediction,
    model_id) -> Measurement`` on each result; failed batches and failed measurements become error rows.

    The shared shape of both ML4H methods (the handler decides what a prediction is)."""

    def __init__(self, model_handler, measure: Callable[[Any, Any, str | None], Measurement]):
        super().__init__()
        self._handler = model_handler
        self._measure = measure

    def expand(self, participants):
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

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

    def __init__(self, model_handler, *, labels_output: str | None = None):
        super().__init__()
        self._handler = model_handler
        self._labels_output = labels_output

    def expand(self, participants):
        labels_output = self._labels_output

        def measure(participant: ParticipantTensor, labels: np.ndarray, model_id: str | None) -> Measurement:
            if labels_output is not None:
                save_label_volume(labels_output, contracts.METHOD_ML4H_SEG, participant, labels)
            return measure_labels(participant, labels, method=contracts.METHOD_ML4H_SEG,
                                  model_version=model_id)

        return participants | "Segment" >> InferAndMeasure(self._handler, measure)


class RegressMass(beam.PTransform):
    """ML4H_reg: RunInference (keyed, batched) -> mass in grams, as is."""

    def __init__(self, model_handler):
        super().__init__()
        self._handler = model_handler

    def expand(self, participants):
        def measure(participant: ParticipantTensor, mass_g: float, model_id: str | None) -> Measurement:
            return measure_regression(participant, mass_g, model_version=model_id)

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
                                  participant.inlinevf_labels)
            return measure_inlinevf(participant)

        measured, bad = participants | "Measure" >> beam.Map(measure).with_exception_handling()
        return measured, bad | "MeasureErrors" >> ToErrorRecords(STAGE_MEASURE)


def load_phenotypes(path: str | None) -> Any:
    """The ``phenotypes.PhenotypeTable`` (empty without a file); a file that cannot be read fails the
    run, loudly (implausible values in it are recorded as unknown, see ``beam_pipeline.phenotypes``)."""
    from beam_pipeline.phenotypes import PhenotypeTable, read_phenotype_table

    if not path:
        return PhenotypeTable()
    with filesystems.open_read(path) as stream:
        table = read_phenotype_table(filesystems.ensure_seekable(stream), source=path)
    logger.info("read %d phenotype rows from %s (%s)", len(table), path,
                "per eid x instance" if table.per_instance else "per eid")
    return table


def merged_centering(
    fitted: Mapping[str, Any], fallback: Mapping[str, Any], *, min_calibration_n: int
) -> dict[str, Any]:
    """Per centred method, the run's fit and the fallback merged sex by sex (``mass.merge_sex_centering``)."""
    from beam_pipeline.mass import merge_sex_centering

    out = {}
    for method in CENTERED_METHODS:
        merged = merge_sex_centering(fitted.get(method), fallback.get(method), min_manual_n=min_calibration_n)
        if merged is not None:
            logger.info("sex centering for %s: offsets %s from %s", method, dict(merged.offsets_g),
                        dict(merged.sources_by_sex))
            out[method] = merged
    return out


class CalibrateAndIndex(beam.PTransform):
    """Measurements + phenotypes -> ``ResultRecord``s with calibrated mass, BSA, LVMI, LVH, LVH_p90.

    Phenotypes join each measurement on (eid, instance) (``PhenotypeTable.lookup``). Global statistics are
    side inputs computed from the run itself: the per-sex centering of each centred method and the per-sex
    90th percentiles of calibrated mass. Centering is chosen per sex: fitted on the run's QC-passing
    participants with a manual mass when at least ``min_calibration_n`` of that sex have one, else
    ``fallback_centering`` (``--calibration`` or the model card) for that sex if it has one, else the
    run's fit however small; the row's ``calibration`` names the source (:func:`calibration_label`).

    A record that fails here (a phenotype the arithmetic rejects...) becomes an ``ErrorRecord`` at stage
    ``phenotypes``, never a failed job. With ``with_errors`` the transform returns ``(records, errors)``;
    without, only the records, and the errors are logged and counted (``failed_phenotypes``).
    """

    def __init__(self, phenotypes_path: str | None, fallback_centering: Mapping[str, Any] | None = None, *,
                 min_calibration_n: int = DEFAULT_MIN_CALIBRATION_N, with_errors: bool = False):
        super().__init__()
        if min_calibration_n < 1:
            raise ValueError(f"min_calibration_n must be >= 1. Received: {min_calibration_n}")
        self._phenotypes_path = phenotypes_path
        self._fallback = dict(fallback_centering or {})
        self._min_calibration_n = min_calibration_n
        self._with_errors = with_errors

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
            return measurement, table.lookup(measurement.eid, measurement.instance)

        joined, bad_join = (
            measurements | "JoinPhenotypes" >> beam.Map(join, phenotypes_si).with_exception_handling())

        def centering_input(pair):
            measurement, phenotype = pair
            sex = phenotype.sex if phenotype is not None else None
            try:
                usable = (measurement.method in CENTERED_METHODS and sex is not None
                          and qc_pass(measurement.qc_flags))
            except ValueError as exc:  # the same record fails (and is reported) in Calibrate
                logger.warning("%s: left out of the centering fit: %s", measurement.source_uri, exc)
                return
            if usable:
                yield measurement.method, (sex, measurement.lv_mass_raw_g, phenotype.manual_lv_mass_g)

        def fit(method, triples):
            triples = sorted(triples, key=repr)  # deterministic order, None-safe
            try:
                centering = fit_sex_centering([t[1] for t in triples], [t[2] for t in triples],
                                              [t[0] for t in triples], source="run")
            except ValueError as exc:  # no manual masses in this run: fall back (or leave raw)
                logger.info("no sex centering fitted for %s from this run: %s", method, exc)
                return
            logger.info("sex centering for %s fitted on the run: offsets %s (n manual %s)", method,
                        dict(centering.offsets_g), dict(centering.n_manual))
            yield method, centering

        fallback, min_n = dict(self._fallback), self._min_calibration_n
        centering = (
            joined
            | "CenteringInputs" >> beam.FlatMap(centering_input)
            | "GroupCenteringInputs" >> beam.GroupByKey()
            | "FitCentering" >> beam.FlatMapTuple(fit)
            | "CollectCentering" >> beam.combiners.ToList()
            | "MergeCentering" >> beam.Map(
                lambda fitted: merged_centering(dict(fitted), fallback, min_calibration_n=min_n))
        )

        def calibrate_all(pair, centering_by_method):
            measurement, phenotype = pair
            yield calibrate(measurement, phenotype, centering_by_method)
            if measurement.method == contracts.METHOD_INLINEVF:
                yield calibrate(recalibrated_inlinevf(measurement), phenotype, centering_by_method)

        calibrated, bad_calibrate = (
            joined
            | "Calibrate" >> beam.FlatMap(calibrate_all, beam.pvalue.AsSingleton(centering))
            .with_exception_handling()
        )

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
            out = apply_p90(record, dict(thresholds_list))
            written.inc()
            Metrics.counter(NAMESPACE, f"rows_{record.method}").inc()
            return out

        records, bad_p90 = (
            calibrated
            | "LVHp90" >> beam.Map(finish, beam.pvalue.AsList(p90)).with_exception_handling()
        )
        errors = (
            (bad_join | "JoinErrors" >> ToErrorRecords(STAGE_PHENOTYPES),
             bad_calibrate | "CalibrateErrors" >> ToErrorRecords(STAGE_PHENOTYPES),
             bad_p90 | "LVHp90Errors" >> ToErrorRecords(STAGE_PHENOTYPES))
            | "FlattenErrors" >> beam.Flatten()
        )
        return (records, errors) if self._with_errors else records


# --- Tensorize (training data for the trainer) -----------------------------------------------------


def tfrecord_bytes(participant: ParticipantTensor, phenotype: Any | None) -> bytes:
    """One ``tf.train.Example`` (``beam_pipeline.tfrecord``): tensor, InlineVF labels, sex, manual mass,
    and ``n_slices`` = the slices placed in the tensor (at most 13), which is what the trainer needs.
    ``phenotype`` is the row for this participant *and visit* (``PhenotypeTable.lookup``)."""
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
            data = tfrecord_bytes(participant, table.lookup(participant.eid, participant.instance))
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
