"""``python -m beam_pipeline`` / ``lvmass run``: participant zips -> LV mass, LVMI, LVH -> Parquet.

Our flags are parsed with argparse (``parse_known_args``); everything else becomes Beam
``PipelineOptions`` (``--runner``, ``--direct_num_workers``, Dataflow's ``--project``...), so the same
command runs locally (FnApiRunner / DirectRunner multi-processing) and on Dataflow::

    python -m beam_pipeline --input 'gs://bucket/20209/*_20209_*.zip' --phenotypes gs://bucket/pheno.csv \\
        --output gs://bucket/lvmass-run --methods ml4h_seg,ml4h_reg,inlinevf --runner DataflowRunner ...

``--input`` may also match folders of DICOMs, one participant each (``--input 'dicoms/*'``, the
any-vendor layout; ``--input_kind``). ``--mode tensorize`` decodes the same way and writes TFRecords for
the trainer instead.
Outputs (``lvmass.core.schema``, ``lvmass.storage.ledger``): the run writes its measurements and dead
letters into its own folder (``OUTPUT/_runs/<run_id>/``), commits them to the folder's ledger
(``OUTPUT/_ledger/runs/<run_id>.json``), then derives the cohort values of every committed run:
``OUTPUT/lvmass/method=<m>/results-*.parquet``, ``OUTPUT/errors/errors-*.parquet``, ``OUTPUT/summary.json``
and the commit record ``OUTPUT/_SUCCESS`` (and ``OUTPUT/tfrecords/`` in tensorize mode).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.inference import SavedModelHandler
from beam_pipeline.options import (
    MODE_INFER,
    MODE_TENSORIZE,
    SEG_FIELDS_OF_VIEW,
    ConfigError,
    ModelGrid,
    NoInputsError,
    OutputError,
    RunConfig,
    check_inputs,
    fact_options,
    finalise_settings,
    model_grid,
    parse_args,
    progress_method,
)
from beam_pipeline.progress import ProgressReporter, read_board
from beam_pipeline.transforms import (
    CommitRun,
    DecodeParticipants,
    DuplicateInput,
    EncodeExamples,
    MeasureInlineVF,
    ReadParticipants,
    RecordProgress,
    RegressMass,
    SegmentAndMeasure,
    SelectInputs,
    ValidateMeasurements,
    WriteErrors,
    WriteMeasurements,
    WriteTFRecords,
    load_phenotypes,
)
from lvmass.cli_args import configure_logging, log_level_of
from lvmass.core import contracts
from lvmass.core.crop import CropPolicy
from lvmass.core.schema import SUCCESS_FILENAME
from lvmass.storage import filesystems, ledger

logger = logging.getLogger(__name__)


def build_pipeline(
    p: beam.Pipeline, config: RunConfig, *, existing_keys: frozenset[tuple[str, int]] = frozenset(),
    progress_folder: str | None = None,
) -> None:
    """Add the whole job to ``p`` (not run): read -> select -> decode -> methods -> write the run's
    measurements and dead letters into its own folder, then, once every file is final, commit the run
    and finalise the folder (``CommitRun``: calibration, LVMI, LVH, LVH_p90 and the summary from every
    committed run; ``_SUCCESS``). ``existing_keys``: the (participant_id, instance) pairs already in the
    output (``--skip_existing``), left out.
    ``progress_folder``: the local progress board (``beam_pipeline.progress``) the launcher reads; the
    progress counters are kept either way."""
    job = _Job(config, progress_folder)
    matched = p | "ReadParticipants" >> ReadParticipants(config.input, input_kind=config.input_kind)
    files, duplicates, skipped = matched | "SelectInputs" >> SelectInputs(existing_keys)
    duplicate_errors = duplicates | "DuplicateErrors" >> beam.Map(DuplicateInput.error_record)
    job.progress(matched, "ProgressMatched", "matched")
    job.progress(skipped, "ProgressSkipped", "skipped")
    job.progress(duplicate_errors, "ProgressDuplicates", "done", "failed")
    identities = (  # every input processed, with the identity its name was given when selected
        (files | "InputURIs" >> beam.Map(lambda f: f.identity),
         duplicates | "DuplicateURIs" >> beam.Map(lambda d: d.identity))
        | "AllInputURIs" >> beam.Flatten()
    )
    with_inlinevf = config.mode == MODE_TENSORIZE or contracts.METHOD_INLINEVF in config.methods
    logger.info("tensor grid: %s", f"{job.grid.grid_pixel_mm} mm pixels" if job.grid.grid_pixel_mm
                else "pixels as acquired")
    participants, decode_errors = files | "DecodeParticipants" >> DecodeParticipants(
        ed_rule=config.ed_rule, with_inlinevf=with_inlinevf, grid_pixel_mm=job.grid.grid_pixel_mm,
        n_slots=job.grid.n_slots,
        images_output=config.output if config.save_labels and config.mode == MODE_INFER else None)
    job.errors += [duplicate_errors, decode_errors]
    job.progress(decode_errors, "ProgressDecodeErrors", "done", "failed")
    if config.mode == MODE_TENSORIZE:
        fact_uris, fact_kind = _tensorize(job, participants)
    else:
        fact_uris, fact_kind = _measure(job, participants)
    errors = tuple(job.errors) | "FlattenErrors" >> beam.Flatten()
    job.written.append(errors | "WriteErrors" >> WriteErrors(job.staged[ledger.KIND_ERRORS]))
    written = tuple(job.written) | "FilesWritten" >> beam.Flatten()
    _ = (identities, fact_uris, errors, skipped, written) | "CommitRun" >> CommitRun(
        config.output, run_id=config.run_id, fact_options=fact_options(config, job.grid),
        options=config.as_dict(), settings=finalise_settings(config), fact_kind=fact_kind)


class _Job:
    """What the branches of one pipeline share while it is built: the options, the tensor grid, the
    error and written-file collections gathered for the commit, the run's staged file prefixes, and the
    progress counting."""

    def __init__(self, config: RunConfig, progress_folder: str | None):
        self.config = config
        self.grid: ModelGrid = model_grid(config)
        self.errors: list[Any] = []
        self.written: list[Any] = []
        self.staged = {kind: ledger.staged_prefix(config.output, config.run_id, kind)
                       for kind in ledger.STAGED_KINDS}
        self._progress_folder = progress_folder

    def progress(self, pcoll: Any, label: str, *events: str) -> None:
        _ = pcoll | label >> RecordProgress(events, self._progress_folder)

    def add_method(self, measured: Any, errors: Any, method: str, labels: tuple[str, str]) -> None:
        """A method's dead letters; the slowest method's results and failures mark participants done
        (``labels``: those two progress steps')."""
        self.errors.append(errors)
        if method == progress_method(self.config.methods):
            self.progress(measured, labels[0], "done")
            self.progress(errors, labels[1], "done", "failed")


def _tensorize(job: _Job, participants: Any) -> tuple[Any, str]:
    """``--mode tensorize``: training examples written as TFRecords; (fact URIs, fact kind)."""
    config = job.config
    examples, encode_errors = participants | "EncodeExamples" >> EncodeExamples(config.phenotypes)
    job.errors.append(encode_errors)
    job.progress(examples, "ProgressEncoded", "done")
    job.progress(encode_errors, "ProgressEncodeErrors", "done", "failed")
    job.written.append(examples | "WriteTFRecords" >> WriteTFRecords(job.staged[ledger.KIND_TFRECORDS],
                                                                     num_shards=config.num_shards))
    return examples | "FactURIs" >> beam.Keys(), ledger.KIND_TFRECORDS


def _measure(job: _Job, participants: Any) -> tuple[Any, str]:
    """``--mode infer``: every method's measurements, checked and written; (fact URIs, fact kind)."""
    config, grid = job.config, job.grid
    labels_output = config.output if config.save_labels else None
    measurement_sets = []
    if config.model_seg is not None:
        cropped = config.seg_field_of_view == SEG_FIELDS_OF_VIEW[0]
        handler = SavedModelHandler(config.model_seg, kind=contracts.MODEL_KIND_SEG,
                                    max_batch_size=config.batch_size, large_model=config.large_model,
                                    crop_policy=CropPolicy() if cropped else None)
        measured, errors = participants | "ML4H_seg" >> SegmentAndMeasure(
            handler, labels_output=labels_output,
            training_pixel_spacing_mm=grid.training_pixel_spacing_mm.get(contracts.METHOD_ML4H_SEG))
        measurement_sets.append(measured)
        job.add_method(measured, errors, contracts.METHOD_ML4H_SEG,
                       ("ProgressSegmented", "ProgressSegmentErrors"))
    if config.model_reg is not None:
        handler = SavedModelHandler(config.model_reg, kind=contracts.MODEL_KIND_REG,
                                    max_batch_size=config.batch_size, large_model=config.large_model)
        measured, errors = participants | "ML4H_reg" >> RegressMass(
            handler, training_pixel_spacing_mm=grid.training_pixel_spacing_mm.get(contracts.METHOD_ML4H_REG))
        measurement_sets.append(measured)
        job.add_method(measured, errors, contracts.METHOD_ML4H_REG,
                       ("ProgressRegressed", "ProgressRegressErrors"))
    if contracts.METHOD_INLINEVF in config.methods:
        measured, errors = participants | "InlineVF" >> MeasureInlineVF(labels_output=labels_output)
        measurement_sets.append(measured)
        job.add_method(measured, errors, contracts.METHOD_INLINEVF,
                       ("ProgressInlineVF", "ProgressInlineVFErrors"))
    measurements = measurement_sets | "FlattenMeasurements" >> beam.Flatten()
    rows, write_errors = measurements | "ValidateMeasurements" >> ValidateMeasurements()
    job.errors.append(write_errors)
    job.written.append(rows | "WriteMeasurements" >> WriteMeasurements(
        job.staged[ledger.KIND_MEASUREMENTS], num_shards=config.num_shards))
    return rows | "FactURIs" >> beam.Map(lambda row: row["source_uri"]), ledger.KIND_MEASUREMENTS


def _log_counters(result: Any) -> dict[str, int]:
    """The run's Beam counters, logged and returned: ours (namespace ``lvmass``) and the model handlers'
    own (``lvmass_<kind>``: ML4H_seg's ``segmented_*`` paths, as ``ml4h_seg_segmented_*``), not Beam's
    RunInference timings."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter())["counters"]
    except (AttributeError, NotImplementedError, KeyError):  # some runners report no metrics
        return {}
    totals: dict[str, int] = {}
    for counter in counters:
        namespace, name = counter.key.metric.namespace, counter.key.metric.name
        if namespace.startswith("lvmass_") and name.startswith("segmented_"):
            name = f"{namespace[len('lvmass_'):]}_{name}"
        elif namespace != "lvmass":
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + int(value or 0)
    for name in sorted(totals):
        logger.info("counter %s = %d", name, totals[name])
    return totals



EXIT_OK, EXIT_NOT_RECONCILED, EXIT_BAD_OPTIONS, EXIT_NO_INPUTS, EXIT_BAD_OUTPUT = 0, 1, 2, 3, 4


def _check_phenotype_file(config: RunConfig) -> None:
    """A phenotype file that cannot be read as a table at all (wrong delimiter, missing eid/sex
    columns, not CSV or Parquet) stops the run before any work; bad rows in a good file do not."""
    if not config.phenotypes:
        return
    try:
        load_phenotypes(config.phenotypes)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--phenotypes {config.phenotypes}: {exc}") from exc


def _check_inputs_match(config: RunConfig) -> None:
    """At least one input file (or folder holding files) matches ``--input``."""
    pattern = config.input.rstrip("/\\")
    try:
        found = bool(filesystems.match(pattern)) or bool(filesystems.match(filesystems.join(pattern, "**")))
    except (OSError, ValueError) as exc:
        raise NoInputsError(f"--input {config.input!r}: cannot be listed ({exc})") from exc
    if not found:
        raise NoInputsError(f"--input {config.input!r} matches no participant zip or folder")


def prepare_output(config: RunConfig) -> frozenset[tuple[str, int]]:
    """Make the output folder ready; returns the (participant_id, instance) pairs it already holds.

    A folder holding files is refused (a rerun with other ``--methods`` would leave the old method
    partitions beside the new ones, and readers would mix runs) unless ``--overwrite`` (its files are
    deleted first, the commit record first of all) or ``--skip_existing`` (the new run adds the inputs
    no committed run accounts for; ``existing_participants``). Then a probe file is written and deleted:
    an unwritable output fails here, not after the work."""
    output = config.output
    keys: frozenset[tuple[str, int]] = frozenset()
    try:
        holds_files = filesystems.has_files(output)
    except (OSError, ValueError):
        holds_files = False
    if holds_files:
        if config.overwrite:
            old = filesystems.list_files(output)
            logger.warning("--overwrite: deleting %d files under %s", len(old), output)
            ledger.delete_all(output)
            if filesystems.is_local(output):  # local folders stay behind empty; partitions must go too
                for child in Path(output).iterdir():
                    if child.is_dir():
                        shutil.rmtree(child)
        elif config.skip_existing:
            keys = existing_participants(output, config)
        else:
            raise OutputError(f"--output {output} already holds files: pass --overwrite to replace them, "
                              "or --skip_existing to add only the participants it does not hold yet (and "
                              "to resume a run that was stopped)")
    probe = filesystems.join(output, ".lvmass-write-probe")
    try:
        filesystems.write_text(probe, "probe")
        FileSystems.delete([probe])
    except Exception as exc:  # any filesystem's refusal: permissions, a file in the way, no bucket
        raise OutputError(f"--output {output} is not writable ({type(exc).__name__}: {exc})") from exc
    return keys


def existing_participants(output: str, config: RunConfig) -> frozenset[tuple[str, int]]:
    """(participant_id, instance) of every input a committed run of the folder wrote or failed.

    First the folder is brought back to its last committed state (``ledger.recover``: what a killed
    run left is deleted). Only the ledger counts: files no committed run names are not "existing", so
    a run killed at any point is resumed by the same command with ``--skip_existing``. The committed
    runs must have measured with the same settings (methods, models, grid), so that the folder keeps
    one set of comparable measurements."""
    if not ledger.is_ledger_folder(output):
        raise OutputError(f"--skip_existing: {output} holds files but no ledger ({SUCCESS_FILENAME} of an "
                          "earlier lvmass, or files of something else): rerun it with --overwrite")
    try:
        cleaned = ledger.recover(output)
        runs = ledger.committed_runs(output)
        ledger.check_compatible(runs, fact_options(config), output)
    except ValueError as exc:  # a ledger that cannot be read (LedgerError), runs measured otherwise
        raise OutputError(f"--skip_existing: {exc}") from exc
    if cleaned:
        logger.warning("--skip_existing: %d files an interrupted run left in %s were deleted", len(cleaned),
                       output)
    keys = ledger.done_keys(runs)
    pending = ledger.pending_runs(output)
    logger.info("--skip_existing: %d participant-visits already in %s (%d committed runs%s)", len(keys),
                output, len(runs), f"; {len(pending)} not yet finalised, finalised now" if pending else "")
    return keys


# Runners whose workers share the launcher's machine, and so can write the local progress board.
LOCAL_RUNNERS = frozenset({"DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner",
                           "PrismRunner"})


def _shows_progress(p: beam.Pipeline, config: RunConfig) -> bool:
    """Progress lines on a local runner with ``--progress_every_s`` > 0 (elsewhere: the job's counters)."""
    return config.progress_every_s > 0 and type(p.runner).__name__ in LOCAL_RUNNERS


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Build and run the pipeline; return the run summary (``OUTPUT/summary.json``) once it finished.

    Before any work: options, models, the phenotype file, the inputs and the output are checked
    (``ConfigError``, ``NoInputsError``, ``OutputError``). ``test_pipeline`` lets a test inject its own
    pipeline (e.g. ``TestPipeline(runner="FnApiRunner")``).
    """
    config, beam_args = parse_args(argv)
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    check_inputs(config)
    _check_phenotype_file(config)
    _check_inputs_match(config)
    existing = prepare_output(config)
    logger.info("lvmass %s %s: %s -> %s (methods %s)", config.mode, config.run_id, config.input,
                config.output, ",".join(config.methods))
    p = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    board = tempfile.mkdtemp(prefix="lvmass-progress-") if _shows_progress(p, config) else None
    try:
        build_pipeline(p, config, existing_keys=existing, progress_folder=board)
        reporter = (ProgressReporter(lambda: read_board(board), every_s=config.progress_every_s).start()
                    if board is not None else None)
        try:
            result = p.run()
            result.wait_until_finish()
        finally:
            if reporter is not None:
                reporter.stop()
    finally:
        if board is not None:
            shutil.rmtree(board, ignore_errors=True)
    counters = _log_counters(result)
    commit = ledger.read_commit(config.output)
    if commit is None or commit.latest_run != config.run_id:
        raise RuntimeError(f"{config.output}: the run {config.run_id} finished without committing "
                           f"(no {SUCCESS_FILENAME} of it)")
    run_manifest = next(r for r in ledger.committed_runs(config.output) if r.run_id == config.run_id)
    summary = dict(commit.summary)
    summary["run"] = {"run_id": config.run_id, **run_manifest.counts()}
    summary["counters"] = counters
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry. Exit codes: 0 the run finished and its counts reconcile; 1 it finished but they do
    not; 2 bad options (models, phenotype file); 3 no input matched; 4 the output cannot be used."""
    configure_logging(log_level_of(argv))
    try:
        summary = run(argv)
    except NoInputsError as exc:
        print(f"lvmass run: {exc}", file=sys.stderr)
        return EXIT_NO_INPUTS
    except OutputError as exc:
        print(f"lvmass run: {exc}", file=sys.stderr)
        return EXIT_BAD_OUTPUT
    except ConfigError as exc:
        print(f"lvmass run: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTIONS
    shown = ("inputs_matched", "participants_written", "participants_failed", "rows_per_method",
             "reconciled", "run")
    print(json.dumps({k: summary[k] for k in shown}, indent=2))
    return EXIT_OK if summary["reconciled"] else EXIT_NOT_RECONCILED


if __name__ == "__main__":
    sys.exit(main())
