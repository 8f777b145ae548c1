"""Beam composites of the pipeline: read, decode, infer, measure, calibrate, write.

A thin shell over the pure core (``decode``, ``tensor``, ``overlay``, ``mass``, ``qc``, ``phenotypes``):
each DoFn only calls pure functions, counts what it does with ``Metrics`` and lets exceptions fall to
a dead-letter output (``with_exception_handling()``), which :class:`ToErrorRecords` turns into one
:class:`~lvmass.core.schema.ErrorRecord` per failed participant. Elements are keyed by the input's
URI (unique per participant x instance) so every failure can be traced back to its file.

Composites, in pipeline order::

    ReadParticipants      glob -> ReadableFile per zip (fan-out via Reshuffle) and/or
                          ParticipantFolder per matched folder of DICOMs (grouped by folder)
    DecodeParticipants    ReadableFile | ParticipantFolder -> ParticipantTensor
                                                               (+ errors: read, decode, tensor)
    SegmentAndMeasure     ParticipantTensor -> Measurement  ML4H_seg   (+ errors: inference, measure)
    RegressMass           ParticipantTensor -> Measurement  ML4H_reg   (+ errors: inference)
    MeasureInlineVF       ParticipantTensor -> Measurement  InlineVF   (+ errors: measure)
    ValidateMeasurements  Measurement -> a row of schema.MEASUREMENTS_SCHEMA       (+ errors: write)
    WriteMeasurements / WriteErrors / WriteTFRecords   the run's files, in its own folder
    CommitRun             the run's last step: commit the run to the output's ledger, then finalise
                          the folder (lvmass.storage.ledger: cohort values from every committed run)

``CalibrateAndIndex`` (Measurement + phenotypes -> ResultRecord) runs the same derivation
(``lvmass.core.derive``) inside a pipeline, for tests and for callers that want records, not files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.fileio import EmptyMatchTreatment
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.io.tfrecordio import WriteToTFRecord
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_pipeline.progress import EVENTS as PROGRESS_EVENTS
from beam_pipeline.progress import BoardWriter
from lvmass.core import budget, contracts, label_files
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.dead_letters import error_record
from lvmass.core.decode import (
    DecodeStats,
    ParticipantFolder,
    decode_dicom_members,
    decode_participant_file,
    folder_member_name,
)
from lvmass.core.derive import DerivationSettings, derive_results, measurement_row
from lvmass.core.derive import phenotype_error_records as phenotype_error_records
from lvmass.core.identity import check_input_name, ids_from_name, input_key, is_nifti_name
from lvmass.core.measure import (
    DEFAULT_MIN_CALIBRATION_N,
    Measurement,
    ParticipantTensor,
    acquisition_label_volume,
    label_volume_npz,
    measure_inlinevf,
    measure_labels,
    measure_regression,
    participant_from_study,
)
from lvmass.core.nifti import image_volume, nifti_bytes
from lvmass.core.phenotypes import PhenotypeTable, read_phenotype_table
from lvmass.core.qc import pixel_spacing_qc_flags
from lvmass.core.schema import (
    ERRORS_SCHEMA,
    MEASUREMENTS_SCHEMA,
    STAGE_DECODE,
    STAGE_INFERENCE,
    STAGE_MEASURE,
    STAGE_PHENOTYPES,
    STAGE_READ,
    STAGE_TENSOR,
    STAGE_WRITE,
    ErrorRecord,
    check_measurement_row,
    writable_error_row,
)
from lvmass.core.study import DecodedStudy, DecodeError
from lvmass.storage import filesystems, ledger
from lvmass.storage.tfrecord import tfrecord_bytes

logger = logging.getLogger(__name__)

NAMESPACE = "lvmass"
PROGRESS_EVERY = 50  # a progress log line per worker every this many decoded participants
INPUT_KIND_AUTO = "auto"
INPUT_KIND_ZIP = "zip"
INPUT_KIND_FOLDER = "folder"
INPUT_KINDS = (INPUT_KIND_AUTO, INPUT_KIND_ZIP, INPUT_KIND_FOLDER)


# --- Input/output helpers of the shell (through Beam's FileSystems) --------------------------------


def label_volume_path(output: str, method: str, participant_id: str, instance: int,
                      suffix: str = label_files.NPZ_SUFFIX) -> str:
    """Where ``--save_labels`` puts a label volume (``lvmass.core.label_files``):
    ``OUTPUT/labels/method=<m>/<participant_id>_<instance>.npz`` (the eid for UK Biobank), and
    ``.nii.gz`` beside it on the acquisition grid."""
    return label_files.label_path(output, method, participant_id, instance, suffix=suffix)


def lookup_phenotype(table: PhenotypeTable, eid: int | None, instance: int) -> Any:
    """The phenotype row of a participant (None without one, or without an eid to join on)."""
    return None if eid is None else table.lookup(eid, instance)


def save_label_volume(output: str, method: str, participant: ParticipantTensor, labels: np.ndarray, *,
                      native_labels: np.ndarray | None = None) -> str:
    """Write ``labels`` (tensor layout) as ``measure.label_volume_npz`` encodes them and, beside them, the
    same labels on the acquisition grid as NIfTI (``native_labels`` when given: labels already on the
    acquired slices, InlineVF's); returns the ``.npz`` path. A study whose slices differ in size has no
    acquisition grid: its NIfTI file is left out and logged."""
    path = label_volume_path(output, method, participant.participant_id, participant.instance)
    filesystems.write_bytes(path, label_volume_npz(participant, labels))
    if participant.acquisition is None:
        logger.warning("%s: no NIfTI labels written (slices of different sizes have no one grid)",
                       participant.source_uri)
        return path
    on_grid = acquisition_label_volume(participant, labels if native_labels is None else native_labels,
                                       native=native_labels is not None)
    nifti_path = label_volume_path(output, method, participant.participant_id, participant.instance,
                                   suffix=label_files.NIFTI_SUFFIX)
    description = f"lvmass {method} ED labels: 1 LV cavity, 2 myocardium"
    filesystems.write_bytes(nifti_path, nifti_bytes(on_grid, participant.acquisition, labels=True,
                                                    description=description))
    return path


def save_ed_image(output: str, participant: ParticipantTensor, study: DecodedStudy) -> str | None:
    """Write the study's ED slices as NIfTI on the acquisition grid (``label_files.ed_image_path``), the
    image the saved labels open over; returns the path (None without an acquisition grid)."""
    if participant.acquisition is None:
        return None
    path = label_files.ed_image_path(output, participant.participant_id, participant.instance)
    volume = image_volume(study.images, participant.acquisition)
    filesystems.write_bytes(path, nifti_bytes(volume, participant.acquisition, description="lvmass ED image"))
    return path



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
                record = error_record(stage, item, exc_type, exc_repr, traceback_lines)
                counter.inc()
                logger.warning("dead letter (%s) %s: %s", record.stage, record.source_uri, record.message)
                logger.debug("traceback of %s:\n%s", record.source_uri, "".join(traceback_lines))
                yield record

        return bad | "ToErrorRecord" >> beam.FlatMap(to_records)


# Beam counters of the progress events that have none elsewhere (matched and skipped are counted on input)
PROGRESS_COUNTERS = {"done": "participants_done", "failed": "participants_done_with_error"}


class RecordProgress(beam.PTransform):
    """Count each element as the progress ``events`` of ``beam_pipeline.progress`` (``matched``,
    ``skipped``, ``done``, ``failed``): ``done`` and ``failed`` as Beam counters (``participants_done``,
    ``participants_done_with_error``; ``matched`` and ``skipped`` have theirs already), which Dataflow's job
    metrics show live, and, for a local run, on the progress board ``board_folder`` that the launcher reads
    every few seconds. A branch that emits nothing: its input goes on unchanged to its other consumers."""

    def __init__(self, events: Sequence[str], board_folder: str | None = None):
        super().__init__()
        unknown = sorted(set(events) - set(PROGRESS_EVENTS))
        if unknown or not events:
            raise ValueError(f"events must be some of {PROGRESS_EVENTS}. Received: {list(events)}")
        self._events = tuple(events)
        self._folder = board_folder

    def expand(self, pcoll):
        return pcoll | "Record" >> beam.ParDo(_RecordProgressFn(self._events, self._folder))


class _RecordProgressFn(beam.DoFn):
    def __init__(self, events: tuple[str, ...], folder: str | None):
        super().__init__()
        self._events = events
        self._folder = folder
        self._counters = [Metrics.counter(NAMESPACE, PROGRESS_COUNTERS[e])
                          for e in events if e in PROGRESS_COUNTERS]
        self._writer: BoardWriter | None = None

    def setup(self):
        self._writer = BoardWriter(self._folder) if self._folder else None

    def process(self, element):
        for counter in self._counters:
            counter.inc()
        if self._writer is not None:
            self._writer.add(*self._events)
        return ()


# --- Composites -------------------------------------------------------------------------------------


def input_uri(element: Any) -> str:
    """The URI a participant input is known by (rows' and errors' ``source_uri``): a zip's path or a
    folder's path."""
    if isinstance(element, ParticipantFolder):
        return element.path
    return element.metadata.path


class SelectInputs(beam.PTransform):
    """Matched inputs -> ``(inputs, errors, skipped)``: one input per participant and visit.

    Inputs are keyed by what their names say (``identity.input_key``). Two inputs of one participant
    and visit (the same zip in two folders, a zip and its unzipped folder) would write the same rows
    twice: the first URI in sort order is kept and every other becomes a ``read``-stage dead letter
    naming the one kept. With ``existing_keys`` (``--skip_existing``) inputs already in the output are
    left out, and returned as ``skipped`` URIs (counted, not errors).
    """

    def __init__(self, existing_keys: frozenset[tuple[str, int]] = frozenset()):
        super().__init__()
        self._existing = frozenset(existing_keys)

    def expand(self, inputs):
        existing = self._existing
        skipped_counter = Metrics.counter(NAMESPACE, "inputs_skipped_existing")
        duplicate_counter = Metrics.counter(NAMESPACE, "inputs_duplicated")

        def key(element):
            return input_key(input_uri(element)), element

        def choose(participant_key, elements):
            ordered = sorted(elements, key=input_uri)
            if participant_key in existing:
                for element in ordered:
                    skipped_counter.inc()
                    yield beam.pvalue.TaggedOutput("skipped", input_uri(element))
                return
            kept, *others = ordered
            yield kept
            for element in others:
                duplicate_counter.inc()
                uri = input_uri(element)
                participant_id, instance = participant_key
                yield beam.pvalue.TaggedOutput("duplicates", ErrorRecord(
                    source_uri=uri, participant_id=participant_id, eid=ids_from_name(uri)[0],
                    instance=instance, stage=STAGE_READ, error_type="DuplicateInput",
                    message=f"{uri}: participant {participant_id} visit {instance} is also "
                            f"{input_uri(kept)}, which is the one processed",
                    pipeline_version=PIPELINE_VERSION))

        selected = (
            inputs
            | "KeyByParticipant" >> beam.Map(key)
            | "GroupByParticipant" >> beam.GroupByKey()
            | "Choose" >> beam.FlatMapTuple(choose).with_outputs("duplicates", "skipped", main="kept")
        )
        return selected.kept, selected.duplicates, selected.skipped


def _reads_folders(pattern: str, input_kind: str) -> bool:
    if input_kind == INPUT_KIND_ZIP:
        return False
    if input_kind == INPUT_KIND_FOLDER:
        return True
    last = pattern.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return "**" not in pattern and not last.lower().endswith(".zip") and not is_nifti_name(last)


class ReadParticipants(beam.PTransform):
    """Glob -> one element per participant input, fanned out over workers.

    ``input_kind``:

    * ``zip``: every file ``pattern`` matches is a participant zip, or by its name a NIfTI file
      (``.nii``, ``.nii.gz``: ``'subjects/*/sa.nii.gz'``) -> ``ReadableFile``;
    * ``folder``: every folder ``pattern`` matches holds one participant's DICOMs (any depth below it,
      e.g. ``--input 'dicoms/*'`` with ``dicoms/<eid>/...``) -> ``ParticipantFolder`` (files listed
      through Beam's FileSystems, so local paths and ``gs://`` prefixes work alike);
    * ``auto`` (default): files matched are zips (or NIfTI files) and folders matched are folders.

    Every folder the pattern matches is an input, whatever the kind and whatever its name: a folder named
    like a zip (``1000123_20209_2_0.zip/``, a zip someone unzipped in place) is read as the folder of
    DICOMs it holds, and an empty one is a ``read`` dead letter, never skipped without a trace. Only a
    pattern holding ``**`` is read as files alone (it matches every folder on the way).

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
            if "**" not in self._pattern:  # a local folder named without a wildcard matches as a "file"
                zips = zips | "SkipFolders" >> beam.Filter(
                    lambda m: not (filesystems.is_local(m.path) and os.path.isdir(m.path)))
            outputs.append(
                zips
                | "CountMatches" >> beam.Map(count)
                | "FanOut" >> beam.Reshuffle()
                | "ReadMatches" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
            )
        if "**" not in self._pattern:  # every folder matched is an input (named like a zip or not)
            pattern = self._pattern.rstrip("/\\")
            folder_re = filesystems.folder_pattern(pattern)

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
            outputs.append(  # folders with no file below (local only: gs:// has no empty folders)
                pbegin
                | "FolderPattern" >> beam.Create([pattern])
                | "EmptyFolders" >> beam.FlatMap(
                    lambda pat: [ParticipantFolder(path=f, files=()) for f in filesystems.empty_folders(pat)])
                | "CountEmptyFolders" >> beam.Map(count)
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
    """``ReadableFile`` (a zip, or a NIfTI file by its name: ``decode.decode_participant_file``) or
    ``ParticipantFolder`` -> ``DecodedStudy``: only the ED frames are decoded.

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
        self._notes = Metrics.counter(NAMESPACE, "decode_notes")
        self._seen = 0  # per DoFn instance: progress lines every PROGRESS_EVERY participants

    def process(self, element):
        uri = input_uri(element)
        try:
            yield from self._decode(element, uri)
        except DecodeError:
            raise
        except Exception as exc:  # a decoder failure it did not put in words: still name the input
            raise DecodeError(uri, "unexpected", f"{type(exc).__name__}: {exc}") from exc

    def _decode(self, element, uri: str):
        stats = DecodeStats()
        try:
            check_input_name(uri)  # an id the results cannot hold is a read failure, before any work
        except ValueError as exc:
            raise DecodeError(uri, STAGE_READ, str(exc)) from exc
        if isinstance(element, ParticipantFolder):
            uri, size = element.path, element.size_in_bytes
            if not element.files:
                zip_like = uri.rstrip("/\\").lower().endswith(".zip")
                raise DecodeError(uri, STAGE_READ, "an empty folder" + (
                    " named like a zip (expected a zip file, or a folder of the participant's DICOMs)"
                    if zip_like else ": no files to read"))
            members = {folder_member_name(uri, f): (lambda f=f: _open_seekable(f)) for f in element.files}
            study = decode_dicom_members(members, uri, ed_rule=self._ed_rule, stats=stats,
                                         with_inlinevf=self._with_inlinevf)
        else:
            uri, size = element.metadata.path, int(element.metadata.size_in_bytes or 0)
            if not filesystems.is_local(uri) and size > budget.MAX_PARTICIPANT_BYTES:
                raise DecodeError(uri, STAGE_READ, f"the file is {size / budget.MIB:.0f} MiB: a remote input "
                                  f"is read whole into memory, and one participant may use at most "
                                  f"{budget.MAX_PARTICIPANT_BYTES / budget.MIB:.0f} MiB "
                                  "(lvmass.core.budget.MAX_PARTICIPANT_BYTES)")
            with element.open(mime_type="application/octet-stream",
                              compression_type=CompressionTypes.UNCOMPRESSED) as stream:
                seekable, fetched = filesystems.random_access(stream, uri)
                self._bytes_fetched.inc(fetched)
                study = decode_participant_file(seekable, uri, ed_rule=self._ed_rule, stats=stats,
                                                with_inlinevf=self._with_inlinevf,
                                                budget_bytes=budget.MAX_PARTICIPANT_BYTES - fetched)
        self._bytes_read.inc(stats.bytes_read)
        self._bytes_total.inc(size)
        self._pixel_decodes.inc(stats.pixel_frames_decoded)
        self._overlay_decodes.inc(stats.overlay_frames_decoded)
        for note in stats.notes:  # the decoder's decisions a user should see (an overlay left out, why)
            self._notes.inc()
            logger.warning("decode note for %s: %s", uri, note)
        self._decoded.inc()
        self._seen += 1
        level = logging.INFO if self._seen % PROGRESS_EVERY == 1 or PROGRESS_EVERY == 1 else logging.DEBUG
        logger.log(level, "decoded %s (%d slices, %d of %d bytes read); %d participants in this worker",
                   uri, study.n_slices, stats.bytes_read, size, self._seen)
        yield study


class DecodeParticipants(beam.PTransform):
    """``ReadableFile`` / ``ParticipantFolder`` -> ``ParticipantTensor``; returns ``(participants, errors)``.

    ``with_inlinevf``: decode InlineVF overlays and build their labels (``--methods`` with inlinevf,
    and tensorize); without it neither is done. ``grid_pixel_mm``: the tensor grid's pixel size (the
    models' card; None keeps the acquired pixels). ``n_slots``: the tensor's slices (13 for the paper's
    models; None: every slice, for per-slice models). ``images_output`` (``--save_labels``): also write
    each study's ED image as NIfTI under it (``save_ed_image``), for the saved labels to open over."""

    def __init__(self, *, ed_rule: str = "first_trigger_time", with_inlinevf: bool = True,
                 grid_pixel_mm: float | None = None, n_slots: int | None = contracts.TENSOR_SLICES,
                 images_output: str | None = None):
        super().__init__()
        self._ed_rule = ed_rule
        self._with_inlinevf = with_inlinevf
        self._grid_pixel_mm = grid_pixel_mm
        self._n_slots = n_slots
        self._images_output = images_output

    def expand(self, files):
        with_inlinevf, grid_pixel_mm, n_slots = self._with_inlinevf, self._grid_pixel_mm, self._n_slots
        images_output = self._images_output

        def build(study: DecodedStudy) -> ParticipantTensor:
            participant = participant_from_study(study, with_inlinevf=with_inlinevf,
                                                 grid_pixel_mm=grid_pixel_mm, n_slots=n_slots)
            if images_output is not None:
                save_ed_image(images_output, participant, study)
            return participant

        studies, bad_decode = (
            files
            | "Decode" >> beam.ParDo(DecodeFn(self._ed_rule, with_inlinevf=with_inlinevf))
            .with_exception_handling()
        )
        tensors, bad_tensor = (
            studies
            | "BuildTensor" >> beam.Map(build).with_exception_handling()
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


def load_phenotypes(path: str | None) -> Any:
    """The ``phenotypes.PhenotypeTable`` (empty without a file); a file that cannot be read fails the
    run, loudly (implausible values in it are recorded as unknown, see ``lvmass.core.phenotypes``)."""
    if not path:
        return PhenotypeTable()
    with filesystems.open_read(path) as stream:
        table = read_phenotype_table(filesystems.ensure_seekable(stream), source=path, lenient=True)
    logger.info("read %d phenotype rows from %s (%s); %d rows left out", len(table), path,
                "per eid x instance" if table.per_instance else "per eid", len(table.rejected))
    return table


class CalibrateAndIndex(beam.PTransform):
    """Measurements + phenotypes -> ``ResultRecord``s with calibrated mass, BSA, LVMI, LVH, LVH_p90.

    The derivation of ``lvmass.core.derive.derive_results`` (the one the pipeline's finalise runs over
    every committed measurement of an output folder), inside a pipeline: every measurement is gathered
    into one list first, because each derived value depends on the whole cohort (the per-sex centering
    of each centred method, the per-sex 90th percentiles). Centering is chosen per sex: fitted on the
    QC-passing participants with a manual mass when at least ``min_calibration_n`` of that sex have one,
    else ``fallback_centering`` (``--calibration`` or the model card) for that sex if it has one, else
    the fit however small; the row's ``calibration`` names the source.

    A record that fails here (a phenotype the arithmetic rejects...) becomes an ``ErrorRecord`` at stage
    ``phenotypes``, never a failed job. With ``with_errors`` the transform returns ``(records, errors)``;
    without, only the records, and the errors are logged and counted (``failed_phenotypes``).
    """

    def __init__(self, phenotypes_path: str | None, fallback_centering: Mapping[str, Any] | None = None, *,
                 min_calibration_n: int = DEFAULT_MIN_CALIBRATION_N, with_errors: bool = False,
                 raw_is_estimate: frozenset[str] = frozenset()):
        super().__init__()
        self._settings = DerivationSettings(fallback_centering=dict(fallback_centering or {}),
                                            min_calibration_n=min_calibration_n,
                                            raw_is_estimate=frozenset(raw_is_estimate))
        self._phenotypes_path = phenotypes_path
        self._with_errors = with_errors

    def expand(self, measurements):
        settings, path = self._settings, self._phenotypes_path
        failed = Metrics.counter(NAMESPACE, f"failed_{STAGE_PHENOTYPES}")
        written = Metrics.counter(NAMESPACE, "result_rows")

        def derive(all_measurements):
            derived = derive_results(all_measurements, load_phenotypes(path), settings)
            for record in derived.records:
                written.inc()
                yield record
            for error in derived.errors:
                failed.inc()
                logger.warning("dead letter (%s) %s: %s", error.stage, error.source_uri, error.message)
                yield beam.pvalue.TaggedOutput("errors", error)

        derived = (
            measurements
            | "Gather" >> beam.combiners.ToList()
            | "Derive" >> beam.FlatMap(derive).with_outputs("errors", main="records")
        )
        return (derived.records, derived.errors) if self._with_errors else derived.records


# --- Tensorize (training data for the trainer) -----------------------------------------------------


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
            data = tfrecord_bytes(participant, lookup_phenotype(table, participant.eid, participant.instance))
            encoded.inc()
            return participant.source_uri, data

        examples, bad = (
            participants
            | "Encode" >> beam.Map(encode, beam.pvalue.AsSingleton(phenotypes)).with_exception_handling()
        )
        return examples, bad | "EncodeErrors" >> ToErrorRecords(STAGE_TENSOR)


# --- Writers ---------------------------------------------------------------------------------------


class ValidateMeasurements(beam.PTransform):
    """``Measurement``s -> ``(rows, errors)``: each as its ``MEASUREMENTS_SCHEMA`` row, checked against the
    Parquet types first, so a value the file cannot hold (an int64 overflow, a wrong type) costs that
    measurement a ``write``-stage dead letter instead of failing the writer, and with it the whole run."""

    def expand(self, measurements):
        counted = Metrics.counter(NAMESPACE, "measurement_rows")

        def check(measurement):
            row = measurement_row(measurement, pipeline_version=PIPELINE_VERSION)
            check_measurement_row(row)
            counted.inc()
            return row

        valid, bad = measurements | "Check" >> beam.Map(check).with_exception_handling()
        return valid, bad | "WriteErrors" >> ToErrorRecords(STAGE_WRITE)


class WriteMeasurements(beam.PTransform):
    """Measurement rows -> ``prefix-*.parquet`` (snappy, ``MEASUREMENTS_SCHEMA``): the run's facts, in the
    run's own folder (``ledger.staged_prefix``), where the sink's temp files stay too."""

    def __init__(self, prefix: str, *, num_shards: int = 1):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, rows):
        return rows | "Write" >> WriteToParquet(
            self._prefix, MEASUREMENTS_SCHEMA, codec="snappy", file_name_suffix=".parquet",
            num_shards=self._num_shards, use_compliant_nested_type=True)


class WriteErrors(beam.PTransform):
    """``ErrorRecord``s -> ``prefix-*.parquet`` (``ERRORS_SCHEMA``); an empty-but-valid file when none."""

    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    def expand(self, errors):
        return (
            errors
            | "Rows" >> beam.Map(lambda e: writable_error_row(e.to_row()))
            | "Write" >> WriteToParquet(self._prefix, ERRORS_SCHEMA, codec="snappy",
                                        file_name_suffix=".parquet", num_shards=1,
                                        use_compliant_nested_type=True)
        )


class WriteTFRecords(beam.PTransform):
    """(URI, serialised Example) -> ``prefix-*.tfrecord.gz`` (GZIP, for the trainer): the run's folder,
    from which the finalise moves them to ``OUTPUT/tfrecords/`` once the run is committed."""

    def __init__(self, prefix: str, *, num_shards: int = 0):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, examples):
        return (
            examples
            | "Values" >> beam.Values()
            | "Write" >> WriteToTFRecord(self._prefix, file_name_suffix=".tfrecord.gz",
                                         compression_type=CompressionTypes.GZIP, num_shards=self._num_shards)
        )


class CommitRun(beam.PTransform):
    """The run's last step: commit it to the output's ledger, then finalise the folder.

    ``inputs`` is ``(uris, fact_uris, errors, skipped_uris, written_files)``: the inputs processed, the
    input of every fact row (measurement or training example) the run wrote, its dead letters, the inputs
    left out as already in the folder, and the file names the sinks emit once they have finalised their
    files. All are side inputs of one element, so the step runs only after every file is final. It then
    calls ``ledger.commit_run`` (the files are read back; the run's manifest is written only when they
    hold every row) and ``ledger.finalise`` (the cohort values of every committed run; ``_SUCCESS``).
    Idempotent, so a retried bundle does no harm; a kill anywhere leaves the last commit in force."""

    def __init__(self, output: str, *, run_id: str, fact_options: Mapping[str, Any],
                 options: Mapping[str, Any], settings: ledger.FinaliseSettings, fact_kind: str):
        super().__init__()
        self._output = output
        self._run_id = run_id
        self._fact_options = dict(fact_options)
        self._options = dict(options)
        self._settings = settings
        self._fact_kind = fact_kind

    def expand(self, inputs):
        uris, fact_uris, errors, skipped, written = inputs
        output, run_id, settings, fact_kind = self._output, self._run_id, self._settings, self._fact_kind
        fact_options, options = self._fact_options, self._options

        def commit(_, uri_list, fact_list, error_list, skipped_list, file_list):
            entries = ledger.input_entries(uri_list, fact_list, [e.source_uri for e in error_list])
            ledger.commit_run(output, run_id=run_id, mode=settings.mode, fact_options=fact_options,
                              options=options, inputs=entries, inputs_skipped_existing=len(set(skipped_list)),
                              files=file_list,
                              expected_rows={fact_kind: len(fact_list), ledger.KIND_ERRORS: len(error_list)})
            commit_record = ledger.finalise(output, settings, load_phenotypes(settings.phenotypes_path),
                                            latest_run=run_id)
            return commit_record.generation

        return (
            uris.pipeline
            | "Trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, beam.pvalue.AsList(uris), beam.pvalue.AsList(fact_uris),
                                   beam.pvalue.AsList(errors), beam.pvalue.AsList(skipped),
                                   beam.pvalue.AsList(written))
        )
