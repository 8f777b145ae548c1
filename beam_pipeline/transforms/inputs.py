"""Inputs: the glob matched (:class:`ReadParticipants`), one input per participant and visit with its
identity parsed once (:class:`SelectInputs` -> :class:`ParticipantInput`), decoded and built into the model
tensor (:class:`DecodeParticipants`, the decoder of ``lvmass.core.decode``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.fileio import EmptyMatchTreatment
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from beam_pipeline.transforms.accounting import NAMESPACE, ToErrorRecords
from lvmass.core import budget, contracts
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.decode import (
    DecodeRequest,
    ParticipantFolder,
    decode_file,
    decode_folder,
    folder_member_name,
)
from lvmass.core.identity import InputIdentity, input_identity, is_nifti_name
from lvmass.core.measure import ParticipantTensor, participant_from_study
from lvmass.core.schema import STAGE_DECODE, STAGE_READ, STAGE_TENSOR, ErrorRecord
from lvmass.core.study import DecodedStudy, DecodeError
from lvmass.storage import filesystems
from lvmass.storage.labels import save_ed_image

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 50  # a progress log line per worker every this many decoded participants
INPUT_KIND_AUTO = "auto"
INPUT_KIND_ZIP = "zip"
INPUT_KIND_FOLDER = "folder"
INPUT_KINDS = (INPUT_KIND_AUTO, INPUT_KIND_ZIP, INPUT_KIND_FOLDER)


@dataclass(frozen=True)
class ParticipantInput:
    """A matched input (a Beam ``ReadableFile``: a zip or a NIfTI file; or a ``ParticipantFolder`` of
    DICOMs) and its identity, parsed from its name once, where it is selected (:class:`SelectInputs`)."""

    source: Any
    identity: InputIdentity

    @property
    def uri(self) -> str:
        return self.identity.uri

    @classmethod
    def of(cls, element: Any) -> ParticipantInput:
        """``element`` as an input: itself when it is one, else a matched file or folder with its name
        parsed (for callers that decode without selecting first)."""
        if isinstance(element, ParticipantInput):
            return element
        return cls(element, input_identity(source_uri(element)))


def source_uri(element: Any) -> str:
    """The URI a matched file or folder is known by: a zip's path or a folder's path."""
    if isinstance(element, ParticipantFolder):
        return element.path
    return element.metadata.path


def input_uri(element: Any) -> str:
    """The URI a participant input is known by (rows' and errors' ``source_uri``)."""
    return element.uri if isinstance(element, ParticipantInput) else source_uri(element)


class SelectInputs(beam.PTransform):
    """Matched inputs -> ``(inputs, errors, skipped)``: one :class:`ParticipantInput` per participant and
    visit.

    Each input's name is parsed here, once (``identity.input_identity``), and the identity travels with
    it. Inputs are keyed by what their names say (``InputIdentity.key``). Two inputs of one participant
    and visit (the same zip in two folders, a zip and its unzipped folder) would write the same rows
    twice: the first URI in sort order is kept and every other becomes a ``read``-stage dead letter
    naming the one kept (``duplicates``: :class:`DuplicateInput`). With ``existing_keys``
    (``--skip_existing``) inputs already in the output are left out, and returned as ``skipped`` URIs
    (counted, not errors).
    """

    def __init__(self, existing_keys: frozenset[tuple[str, int]] = frozenset()):
        super().__init__()
        self._existing = frozenset(existing_keys)

    def expand(self, inputs):
        existing = self._existing
        skipped_counter = Metrics.counter(NAMESPACE, "inputs_skipped_existing")
        duplicate_counter = Metrics.counter(NAMESPACE, "inputs_duplicated")

        def key(element):
            participant = ParticipantInput.of(element)
            return participant.identity.key, participant

        def choose(participant_key, elements):
            ordered = sorted(elements, key=lambda e: e.uri)
            if participant_key in existing:
                for element in ordered:
                    skipped_counter.inc()
                    yield beam.pvalue.TaggedOutput("skipped", element.uri)
                return
            kept, *others = ordered
            yield kept
            for element in others:
                duplicate_counter.inc()
                yield beam.pvalue.TaggedOutput("duplicates", DuplicateInput(element.identity, kept.uri))

        selected = (
            inputs
            | "KeyByParticipant" >> beam.Map(key)
            | "GroupByParticipant" >> beam.GroupByKey()
            | "Choose" >> beam.FlatMapTuple(choose).with_outputs("duplicates", "skipped", main="kept")
        )
        return selected.kept, selected.duplicates, selected.skipped


@dataclass(frozen=True)
class DuplicateInput:
    """An input whose participant and visit another input (``kept_uri``, the one processed) holds."""

    identity: InputIdentity
    kept_uri: str

    def error_record(self) -> ErrorRecord:
        """Its ``read``-stage dead letter (``DuplicateInput``)."""
        participant_id, instance = self.identity.key
        return ErrorRecord(
            source_uri=self.identity.uri, participant_id=participant_id, eid=self.identity.eid,
            instance=instance, stage=STAGE_READ, error_type="DuplicateInput",
            message=f"{self.identity.uri}: participant {participant_id} visit {instance} is also "
                    f"{self.kept_uri}, which is the one processed",
            pipeline_version=PIPELINE_VERSION)


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
    """:class:`ParticipantInput` (a zip, or a NIfTI file by its name: ``decode.decode_file``; or a folder
    of DICOMs: ``decode.decode_folder``) -> ``DecodedStudy``: only the ED frames are decoded.

    A local zip is streamed (seekable reads of the members needed); a remote one (``gs://``) is read
    once, whole, into memory first (``filesystems.random_access``): the decoder visits it in several
    forward passes, and a remote buffered reader would fetch it again on each. ``with_inlinevf=False``
    skips InlineVF headers (where the manifest allows) and overlays. A matched file or folder that did not
    go through :class:`SelectInputs` is taken too (its name parsed here).
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
        participant = ParticipantInput.of(element)
        try:
            yield self._decode(participant)
        except DecodeError:
            raise
        except Exception as exc:  # a decoder failure it did not put in words: still name the input
            raise DecodeError(participant.uri, "unexpected", f"{type(exc).__name__}: {exc}") from exc

    def _decode(self, participant: ParticipantInput) -> DecodedStudy:
        uri = participant.uri
        try:
            participant.identity.check()  # an id the results cannot hold is a read failure, before any work
        except ValueError as exc:
            raise DecodeError(uri, STAGE_READ, str(exc)) from exc
        request = DecodeRequest(uri, ed_rule=self._ed_rule, with_inlinevf=self._with_inlinevf,
                                identity=participant.identity)
        source = participant.source
        if isinstance(source, ParticipantFolder):
            size = source.size_in_bytes
            decoded = decode_folder(_folder_members(source), request)
        else:
            size = int(source.metadata.size_in_bytes or 0)
            decoded = self._decode_file(source, request, size)
        self._count(uri, decoded.study, decoded.stats, size)
        return decoded.study

    def _decode_file(self, readable: Any, request: DecodeRequest, size: int):
        """A zip or NIfTI file: streamed when local, fetched whole (within the budget) when remote."""
        uri = request.source_uri
        if not filesystems.is_local(uri) and size > budget.MAX_PARTICIPANT_BYTES:
            raise DecodeError(uri, STAGE_READ, f"the file is {size / budget.MIB:.0f} MiB: a remote input "
                              f"is read whole into memory, and one participant may use at most "
                              f"{budget.MAX_PARTICIPANT_BYTES / budget.MIB:.0f} MiB "
                              "(lvmass.core.budget.MAX_PARTICIPANT_BYTES)")
        with readable.open(mime_type="application/octet-stream",
                           compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            seekable, fetched = filesystems.random_access(stream, uri)
            self._bytes_fetched.inc(fetched)
            request = DecodeRequest(uri, ed_rule=request.ed_rule, with_inlinevf=request.with_inlinevf,
                                    budget_bytes=budget.MAX_PARTICIPANT_BYTES - fetched,
                                    identity=request.identity)
            return decode_file(seekable, request)

    def _count(self, uri: str, study: DecodedStudy, stats: Any, size: int) -> None:
        """The decode's counters, its notes as warnings, and a progress line now and then."""
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


def _folder_members(folder: ParticipantFolder) -> dict[str, Any]:
    """A participant folder's files by their names inside it, each opened seekable on demand; an empty
    folder is a ``read`` failure."""
    if not folder.files:
        zip_like = folder.path.rstrip("/\\").lower().endswith(".zip")
        raise DecodeError(folder.path, STAGE_READ, "an empty folder" + (
            " named like a zip (expected a zip file, or a folder of the participant's DICOMs)"
            if zip_like else ": no files to read"))
    return {folder_member_name(folder.path, f): (lambda f=f: _open_seekable(f)) for f in folder.files}


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
