"""The output folder's ledger: what counts as written, and the finalise step every run ends with.

Why: a run can be killed at any moment (a preempted worker, a cancelled job, a SIGKILL), and an
incremental run (``--skip_existing``) trusts what the folder says it holds. Files that merely exist prove
nothing (a sink finalises its files one by one), so what counts is what a committed run says it wrote.

Layout of ``OUTPUT`` (names from ``lvmass.core.schema``)::

    _runs/<run_id>/measurements/*.parquet  a run's facts: one row per input x method (MEASUREMENTS_SCHEMA),
    _runs/<run_id>/errors/*.parquet        its dead letters, and (tensorize) its TFRecords, with the
                                           sinks' temp files; never read unless a manifest names them
    _ledger/runs/<run_id>.json             a run's manifest (its commit marker): inputs and their outcome,
                                           files with their row counts; written only after the files are
                                           final and read back
    lvmass/method=<m>/results-<h>.parquet  the derived table (RESULTS_FILE_SCHEMA), one file per method,
    errors/errors-<h>.parquet              and every dead letter: both rebuilt by :func:`finalise` from
                                           every committed run, named by their content hash <h>
    _SUCCESS                               the folder's commit record (:class:`Commit`): which derived
                                           files are current, from which runs, and the summary
    summary.json, _ledger/bigquery/*.manifest  copies of what _SUCCESS says, written after it
    _tmp/                                  local temp files of atomic writes

Every write is atomic (``filesystems.write_bytes_atomic``), derived files are never overwritten (a new
content has a new name), and the commit points are single files: a run's manifest commits its facts;
``_SUCCESS`` commits a generation of the derived tables. So a process killed at any point leaves a folder
whose ledger reads as the last committed state, and :func:`recover` (every run starts with it) deletes what
the killed process left: runs without a manifest, derived files no commit names, temp files.

Readers read what ``_SUCCESS`` names (:func:`read_commit`, :func:`committed_files`): ``analysis.io``,
``lvmass export``, ``queries.connect`` (DuckDB) and BigQuery (through the manifests). The runs' facts are
read only through the manifests (:func:`committed_runs`), by ``--skip_existing`` and :func:`finalise`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lvmass.core import contracts
from lvmass.core.dead_letters import error_record
from lvmass.core.derive import (
    DerivationSettings,
    derive_results,
    measurement_from_row,
    ordered_errors,
    phenotype_error_records,
)
from lvmass.core.identity import InputIdentity
from lvmass.core.measure import results_file_row
from lvmass.core.phenotypes import PhenotypeTable
from lvmass.core.schema import (
    ERRORS_DIRNAME,
    ERRORS_MANIFEST,
    ERRORS_SCHEMA,
    LEDGER_DIRNAME,
    MEASUREMENTS_DIRNAME,
    RESULTS_DIRNAME,
    RESULTS_FILE_SCHEMA,
    RESULTS_MANIFEST,
    RUNS_DIRNAME,
    STAGE_WRITE,
    SUCCESS_FILENAME,
    SUMMARY_FILENAME,
    ErrorRecord,
    check_result_row,
    writable_error_row,
)
from lvmass.core.summary import OutputRow, folder_summary, summary_json
from lvmass.storage import filesystems

logger = logging.getLogger(__name__)

LEDGER_VERSION = 1
COMMIT_FORMAT = "lvmass-ledger"
RUN_MANIFESTS_DIRNAME = "runs"  # OUTPUT/_ledger/runs/<run_id>.json
TEMP_DIRNAME = "_tmp"
TFRECORDS_DIRNAME = "tfrecords"
KIND_MEASUREMENTS = MEASUREMENTS_DIRNAME
KIND_ERRORS = ERRORS_DIRNAME
KIND_TFRECORDS = TFRECORDS_DIRNAME
KIND_RESULTS = RESULTS_DIRNAME
STAGED_KINDS = (KIND_MEASUREMENTS, KIND_ERRORS, KIND_TFRECORDS)
OUTCOME_WRITTEN = "written"  # the input has facts (measurement rows or training examples)
OUTCOME_FAILED = "failed"  # the input has dead letters only
OUTCOME_UNACCOUNTED = "unaccounted"  # neither: not done, so a later --skip_existing run processes it
DONE_OUTCOMES = (OUTCOME_WRITTEN, OUTCOME_FAILED)
MODE_TENSORIZE = "tensorize"


class LedgerError(ValueError):
    """The folder's ledger cannot be read or contradicts its files: the message names the file."""


class CommitError(RuntimeError):
    """A run's files do not hold what the run produced: the run is not committed."""


# --- Paths ------------------------------------------------------------------------------------------


def path_in(output: str, relative: str) -> str:
    """The full path of ``relative`` (``/``-separated, as the ledger stores it) inside ``output``."""
    return filesystems.join(output, *relative.split("/"))


def relative_to(output: str, path: str) -> str:
    """``path`` relative to ``output``, ``/``-separated; ValueError when it lies outside. Local paths are
    compared absolute (a sink may report ``out/x`` as ``/abs/out/x``)."""
    root = output.rstrip("/\\")
    if "://" not in root and "://" not in path:
        import os

        root, path = os.path.abspath(root), os.path.abspath(path)
    normalised = path.replace("\\", "/")
    prefix = root.replace("\\", "/") + "/"
    if not normalised.startswith(prefix):
        raise ValueError(f"{path} is not inside the output folder {output}")
    return normalised[len(prefix):]


def run_folder(output: str, run_id: str) -> str:
    """``OUTPUT/_runs/<run_id>``: everything one run writes before it commits."""
    return path_in(output, f"{RUNS_DIRNAME}/{run_id}")


def staged_prefix(output: str, run_id: str, kind: str) -> str:
    """The file prefix a run's sink of ``kind`` writes to (``_runs/<run_id>/<kind>/<kind>``): its
    temp files go beside it, inside the run's folder, never under a folder readers list."""
    if kind not in STAGED_KINDS:
        raise ValueError(f"kind must be one of {STAGED_KINDS}. Received: {kind!r}")
    return path_in(output, f"{RUNS_DIRNAME}/{run_id}/{kind}/{kind}")


def run_manifest_path(output: str, run_id: str) -> str:
    return path_in(output, f"{LEDGER_DIRNAME}/{RUN_MANIFESTS_DIRNAME}/{run_id}.json")


def temp_folder(output: str) -> str:
    return path_in(output, TEMP_DIRNAME)


def _write(output: str, relative: str, data: bytes) -> None:
    """The ledger's one way to write: atomic, temp files under ``OUTPUT/_tmp``."""
    filesystems.write_bytes_atomic(path_in(output, relative), data, temp_folder=temp_folder(output))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- Records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """A file the ledger vouches for: ``path`` relative to the output folder, what it holds (``kind``:
    measurements, errors, tfrecords, results), its rows (read back), size and, for derived files, the
    method and the SHA-256 of its bytes."""

    path: str
    kind: str
    rows: int
    bytes: int
    method: str | None = None
    sha256: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        return cls(path=str(data["path"]), kind=str(data["kind"]), rows=int(data["rows"]),
                   bytes=int(data["bytes"]), method=data.get("method"), sha256=data.get("sha256"))


@dataclass(frozen=True)
class InputEntry:
    """One input a run processed: its URI, the (participant_id, instance) its name promises
    (its ``identity.InputIdentity.key``, what ``--skip_existing`` compares) and its outcome."""

    uri: str
    participant_id: str
    instance: int
    outcome: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputEntry:
        return cls(uri=str(data["uri"]), participant_id=str(data["participant_id"]),
                   instance=int(data["instance"]), outcome=str(data["outcome"]))


@dataclass(frozen=True)
class RunManifest:
    """A committed run (``_ledger/runs/<run_id>.json``).

    ``fact_options``: what shapes a measurement (methods, models, tensor grid, ED rule); a folder's runs
    must agree on them, or its derived table would mix incomparable numbers. ``options``: all of the
    run's options, for the record."""

    run_id: str
    mode: str
    fact_options: Mapping[str, Any]
    options: Mapping[str, Any]
    inputs: tuple[InputEntry, ...]
    inputs_skipped_existing: int
    files: tuple[FileEntry, ...]

    def to_json(self) -> bytes:
        data = asdict(self)
        data["ledger_version"] = LEDGER_VERSION
        data["marker"] = f"{LEDGER_DIRNAME}/{RUN_MANIFESTS_DIRNAME}/{self.run_id}.json"
        return _json_bytes(data)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> RunManifest:
        try:
            data = json.loads(text)
            return cls(run_id=str(data["run_id"]), mode=str(data["mode"]),
                       fact_options=dict(data["fact_options"]), options=dict(data["options"]),
                       inputs=tuple(InputEntry.from_dict(i) for i in data["inputs"]),
                       inputs_skipped_existing=int(data["inputs_skipped_existing"]),
                       files=tuple(FileEntry.from_dict(f) for f in data["files"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"{source}: not a run manifest ({type(exc).__name__}: {exc})") from exc

    def done_keys(self) -> set[tuple[str, int]]:
        """(participant_id, instance) of every input this run wrote or failed."""
        return {(i.participant_id, i.instance) for i in self.inputs if i.outcome in DONE_OUTCOMES}

    def counts(self) -> dict[str, int]:
        """The run's own counts: inputs processed, skipped, written, failed, unaccounted; rows per kind."""
        outcomes = [i.outcome for i in self.inputs]
        rows: dict[str, int] = {}
        for entry in self.files:
            rows[entry.kind] = rows.get(entry.kind, 0) + entry.rows
        return {"inputs_matched": len(self.inputs), "inputs_skipped_existing": self.inputs_skipped_existing,
                "participants_written": outcomes.count(OUTCOME_WRITTEN),
                "participants_failed": outcomes.count(OUTCOME_FAILED),
                "inputs_unaccounted": outcomes.count(OUTCOME_UNACCOUNTED),
                **{f"{kind}_rows": n for kind, n in sorted(rows.items())}}


@dataclass(frozen=True)
class Commit:
    """``_SUCCESS``: the folder's current generation of derived files, the runs it was derived from, and
    the summary (``summary.json`` is its copy)."""

    generation: str
    runs: tuple[str, ...]
    latest_run: str
    files: tuple[FileEntry, ...]
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reconciled(self) -> bool:
        return bool(self.summary.get("reconciled"))

    def to_json(self) -> bytes:
        return _json_bytes({"format": COMMIT_FORMAT, "ledger_version": LEDGER_VERSION,
                            "generation": self.generation, "runs": list(self.runs),
                            "latest_run": self.latest_run, "files": [asdict(f) for f in self.files],
                            "reconciled": self.reconciled, "summary": dict(self.summary)})

    def files_of(self, kind: str) -> list[FileEntry]:
        return [f for f in self.files if f.kind == kind]


def input_entries(
    inputs: Iterable[InputIdentity], written: Iterable[str], failed: Iterable[str]
) -> tuple[InputEntry, ...]:
    """Each input once, sorted by URI, keyed by what its name promised (its identity, parsed when it was
    selected), with its outcome: written when its URI has facts, failed when it has dead letters only,
    unaccounted otherwise."""
    written_set, failed_set = set(written), set(failed)
    out = []
    for identity in sorted({i.uri: i for i in inputs}.values(), key=lambda i: i.uri):
        uri = identity.uri
        outcome = (OUTCOME_WRITTEN if uri in written_set else OUTCOME_FAILED if uri in failed_set
                   else OUTCOME_UNACCOUNTED)
        participant_id, instance = identity.key
        out.append(InputEntry(uri=uri, participant_id=participant_id, instance=instance, outcome=outcome))
    return tuple(out)


# --- Reading the ledger -----------------------------------------------------------------------------


def read_commit(output: str) -> Commit | None:
    """The folder's commit record, or None when ``_SUCCESS`` is absent or was written before the ledger
    (an empty file, or the older ``{"run_id", "summary", "reconciled"}`` marker)."""
    path = path_in(output, SUCCESS_FILENAME)
    if not filesystems.exists(path):
        return None
    try:
        data = json.loads(filesystems.read_text(path) or "null")
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != COMMIT_FORMAT:
        return None
    try:
        return Commit(generation=str(data["generation"]), runs=tuple(data["runs"]),
                      latest_run=str(data["latest_run"]),
                      files=tuple(FileEntry.from_dict(f) for f in data["files"]),
                      summary=dict(data["summary"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"{path}: not a commit record ({type(exc).__name__}: {exc})") from exc


def is_ledger_folder(output: str) -> bool:
    """Whether ``output`` is managed by the ledger: a ledger commit, manifests, or a run's files."""
    if read_commit(output) is not None:
        return True
    return any(filesystems.has_files(path_in(output, name)) for name in (LEDGER_DIRNAME, RUNS_DIRNAME))


def committed_runs(output: str) -> list[RunManifest]:
    """Every committed run of the folder, oldest first (run ids begin with their UTC start time)."""
    folder = path_in(output, f"{LEDGER_DIRNAME}/{RUN_MANIFESTS_DIRNAME}")
    manifests = [p for p in filesystems.list_files(folder) if p.endswith(".json")]
    runs = [RunManifest.from_json(filesystems.read_text(p), source=p) for p in manifests]
    return sorted(runs, key=lambda r: r.run_id)


def committed_files(output: str, kind: str) -> list[str] | None:
    """Full paths of the derived files of ``kind`` (``lvmass`` results, ``errors``) the folder's commit
    names; None for a folder without a ledger commit."""
    commit = read_commit(output)
    if commit is None:
        return None
    return [path_in(output, f.path) for f in commit.files_of(kind)]


def pending_runs(output: str, commit: Commit | None = None) -> list[str]:
    """Committed runs the current derived tables do not include yet (a run killed while finalising):
    the next run's finalise takes them in."""
    commit = commit if commit is not None else read_commit(output)
    derived = set(commit.runs) if commit is not None else set()
    return [r.run_id for r in committed_runs(output) if r.run_id not in derived]


def done_keys(runs: Iterable[RunManifest]) -> frozenset[tuple[str, int]]:
    """(participant_id, instance) of every input the runs wrote or failed: what ``--skip_existing``
    leaves out."""
    keys: set[tuple[str, int]] = set()
    for run in runs:
        keys |= run.done_keys()
    return frozenset(keys)


# --- Reading files back -----------------------------------------------------------------------------


def _read_parquet(path: str) -> pa.Table:
    try:
        return pq.read_table(path, filesystem=filesystems.arrow_filesystem(path))
    except (OSError, pa.ArrowException) as exc:
        raise LedgerError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


def _parquet_rows(path: str) -> int:
    try:
        with filesystems.open_read(path) as stream:
            return pq.ParquetFile(filesystems.ensure_seekable(stream)).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise CommitError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


_TFRECORD_HEADER = struct.Struct("<QI")  # length, masked CRC of the length


def _tfrecord_rows(path: str) -> int:
    """Records of a GZIP TFRecord file, from the framing alone (length, CRC, data, CRC; no TensorFlow)."""
    count = 0
    with filesystems.open_read(path) as raw, gzip.GzipFile(fileobj=raw) as stream:
        while True:
            header = stream.read(_TFRECORD_HEADER.size)
            if not header:
                return count
            if len(header) < _TFRECORD_HEADER.size:
                raise CommitError(f"{path}: truncated TFRecord header after {count} records")
            (length, _) = _TFRECORD_HEADER.unpack(header)
            body = stream.read(length + 4)
            if len(body) < length + 4:
                raise CommitError(f"{path}: truncated TFRecord after {count} records")
            count += 1


def _file_size(path: str) -> int:
    size = filesystems.size(path)
    if size is None:
        raise CommitError(f"{path}: the file is missing")
    return size


# --- Committing a run -------------------------------------------------------------------------------


def commit_run(
    output: str, *, run_id: str, mode: str, fact_options: Mapping[str, Any], options: Mapping[str, Any],
    inputs: Sequence[InputEntry], inputs_skipped_existing: int, files: Iterable[str],
    expected_rows: Mapping[str, int],
) -> RunManifest:
    """Read back the files a run's sinks finalised and, when they hold every row the run produced,
    commit the run: write its manifest, atomically. Idempotent (a retried step finds the manifest).

    ``files``: full paths the sinks reported; ``expected_rows``: rows per kind the run produced. Raises
    :class:`CommitError` naming the kind when a file is missing or the rows differ: nothing is committed,
    and the next run deletes the files."""
    path = run_manifest_path(output, run_id)
    if filesystems.exists(path):
        return RunManifest.from_json(filesystems.read_text(path), source=path)
    entries = []
    for full in sorted(set(files)):
        relative = relative_to(output, full)
        kind = relative.split("/")[2] if relative.startswith(f"{RUNS_DIRNAME}/{run_id}/") else None
        if kind not in STAGED_KINDS:
            raise CommitError(f"{full}: a sink wrote outside the run's folder {run_folder(output, run_id)}")
        rows = _tfrecord_rows(full) if kind == KIND_TFRECORDS else _parquet_rows(full)
        entries.append(FileEntry(path=relative, kind=kind, rows=rows, bytes=_file_size(full)))
    found: dict[str, int] = {}
    for entry in entries:
        found[entry.kind] = found.get(entry.kind, 0) + entry.rows
    for kind, expected in sorted(expected_rows.items()):
        if found.get(kind, 0) != expected:
            raise CommitError(f"run {run_id}: its {kind} files hold {found.get(kind, 0)} rows, the run "
                              f"produced {expected}; the run is not committed")
    manifest = RunManifest(run_id=run_id, mode=mode, fact_options=dict(fact_options), options=dict(options),
                           inputs=tuple(inputs), inputs_skipped_existing=int(inputs_skipped_existing),
                           files=tuple(entries))
    _write(output, f"{LEDGER_DIRNAME}/{RUN_MANIFESTS_DIRNAME}/{run_id}.json", manifest.to_json())
    logger.info("run %s committed: %s", run_id, manifest.counts())
    return manifest


def check_compatible(runs: Sequence[RunManifest], fact_options: Mapping[str, Any], output: str) -> None:
    """A new run's measurements must be comparable with the folder's: same fact options as every
    committed run (ValueError naming the first that differs)."""
    for run in runs:
        differ = sorted(k for k in set(run.fact_options) | set(fact_options)
                        if run.fact_options.get(k) != fact_options.get(k))
        if differ:
            shown = ", ".join(f"{k}: {run.fact_options.get(k)!r} there, {fact_options.get(k)!r} now"
                              for k in differ)
            raise ValueError(f"{output} holds run {run.run_id} measured with other settings ({shown}); "
                             "use the same settings, or --overwrite")


# --- Finalising the folder ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FinaliseSettings:
    """What the derived tables depend on besides the facts: the mode, the result methods written (every
    one gets a file), the phenotype file's path (its rejected rows are dead letters), the derivation's
    settings, and the options the summary records."""

    mode: str
    result_methods: tuple[str, ...]
    phenotypes_path: str | None
    derivation: DerivationSettings
    options: Mapping[str, Any]


def _folder_inputs(runs: Sequence[RunManifest]) -> dict[str, tuple[InputEntry, str]]:
    """URI -> (its entry, the run that accounts for it): the first run that wrote or failed it (a later
    run only takes over an input an earlier one left unaccounted)."""
    chosen: dict[str, tuple[InputEntry, str]] = {}
    for run in runs:
        for entry in run.inputs:
            held = chosen.get(entry.uri)
            if held is None or (held[0].outcome == OUTCOME_UNACCOUNTED and entry.outcome in DONE_OUTCOMES):
                chosen[entry.uri] = (entry, run.run_id)
    return chosen


def _read_facts(output: str, runs: Sequence[RunManifest], chosen: Mapping[str, tuple[InputEntry, str]]):
    """The measurements and dead letters of every input, each from the run that accounts for it; a
    (participant, visit, method) measured by two runs (two runs at once into one folder) is kept once,
    from the earlier run, and logged."""
    measurements, errors, seen = [], [], {}
    for run in runs:
        for entry in run.files:
            if entry.kind not in (KIND_MEASUREMENTS, KIND_ERRORS):
                continue
            full = path_in(output, entry.path)
            if not filesystems.exists(full):
                raise LedgerError(f"{full}: named by run {run.run_id}'s manifest but missing")
            for row in _read_parquet(full).to_pylist():
                uri = row["source_uri"]
                if chosen.get(uri, (None, None))[1] != run.run_id:
                    continue
                if entry.kind == KIND_ERRORS:
                    errors.append(ErrorRecord(**{k: row[k] for k in ERRORS_SCHEMA.names}))
                    continue
                measurement = measurement_from_row(row)
                key = (measurement.participant_id, measurement.instance, measurement.method)
                if key in seen and seen[key] != uri:
                    logger.warning("%s: %s visit %s %s already measured from %s; kept once", uri, *key,
                                   seen[key])
                    continue
                seen[key] = uri
                measurements.append(measurement)
    return measurements, errors


def parquet_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    """One Parquet file, the same bytes for the same rows: snappy, the compliant nested list layout
    BigQuery reads as ARRAY, no pandas metadata, no timestamps."""
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy", use_compliant_nested_type=True)
    return sink.getvalue().to_pybytes()


def _derived_file(output: str, folder: str, stem: str, kind: str, data: bytes, rows: int,
                  method: str | None = None) -> FileEntry:
    """Write a derived file named by its content (never overwriting another content) and describe it."""
    digest = _sha256(data)
    relative = f"{folder}/{stem}-{digest[:16]}.parquet"
    if not filesystems.exists(path_in(output, relative)):  # same name, same bytes: already there
        _write(output, relative, data)
    return FileEntry(path=relative, kind=kind, rows=rows, bytes=len(data), method=method, sha256=digest)


def _centering_summary(derived) -> dict[str, Any]:
    return {"centering": {method: {"offsets_g": dict(sorted(c.offsets_g.items())),
                                   "sources": {s: c.source_for(s) for s in sorted(c.offsets_g)},
                                   "n_manual": dict(sorted(c.n_manual.items()))}
                          for method, c in sorted(derived.centering.items())},
            "p90_thresholds_g": {m: dict(sorted(t.items()))
                                 for m, t in sorted(derived.p90_thresholds_g.items())}}


def _publish_tfrecords(output: str, run: RunManifest) -> list[FileEntry]:
    """A tensorize run's TFRecords, moved from its folder to ``OUTPUT/tfrecords/`` (where the trainer's
    glob reads them) once the run is committed; a move killed half-way is finished by the next call."""
    published = []
    for entry in run.files:
        if entry.kind != KIND_TFRECORDS:
            continue
        name = entry.path.rsplit("/", 1)[-1].replace(f"{KIND_TFRECORDS}-", f"examples-{run.run_id}-", 1)
        relative = f"{TFRECORDS_DIRNAME}/{name}"
        source, destination = path_in(output, entry.path), path_in(output, relative)
        if not filesystems.exists(destination):
            if not filesystems.exists(source):
                raise LedgerError(f"{source}: named by run {run.run_id}'s manifest but missing")
            filesystems.rename(source, destination)
        published.append(FileEntry(path=relative, kind=KIND_TFRECORDS, rows=entry.rows, bytes=entry.bytes))
    return published


def finalise(
    output: str, settings: FinaliseSettings, phenotypes: PhenotypeTable, *, latest_run: str
) -> Commit:
    """Derive every cohort value from every committed run and commit the result: the step every run
    ends with. Idempotent, and a kill at any point leaves the previous commit in force.

    1. the facts of every committed run, each input from the run that accounts for it;
    2. ``derive.derive_results`` with the phenotypes (whose rejected rows are dead letters too); a
       derived row the Parquet file cannot hold is a ``write`` dead letter;
    3. the derived files, named by content: ``lvmass/method=<m>/results-<h>.parquet`` (one per result
       method, empty ones too) and ``errors/errors-<h>.parquet``;
    4. ``_SUCCESS`` (the commit), then its copies (``summary.json``, the BigQuery manifests), then the
       derived files no commit names are deleted."""
    runs = committed_runs(output)
    if not runs:
        raise LedgerError(f"{output}: no committed run to finalise")
    chosen = _folder_inputs(runs)
    measurements, errors = _read_facts(output, runs, chosen)
    files: list[FileEntry] = []
    calibration: dict[str, Any] = {}
    if settings.mode == MODE_TENSORIZE:
        for run in runs:
            files.extend(_publish_tfrecords(output, run))
        written = {uri for uri, (entry, _) in chosen.items() if entry.outcome == OUTCOME_WRITTEN}
        rows = [OutputRow(uri, KIND_TFRECORDS, True) for uri in sorted(written)]
    else:
        derived = derive_results(measurements, phenotypes, settings.derivation)
        errors.extend(derived.errors)
        by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in settings.result_methods}
        rows = []
        for record in derived.records:
            row = results_file_row(record)
            try:
                check_result_row(row)
            except ValueError as exc:
                errors.append(error_record(STAGE_WRITE, record, type(exc), repr(exc), [f"ValueError: {exc}"]))
                continue
            by_method.setdefault(record.method, []).append(row)
            rows.append(OutputRow(record.source_uri, record.method, record.qc_pass))
        for method, method_rows in by_method.items():
            data = parquet_bytes(method_rows, RESULTS_FILE_SCHEMA)
            files.append(_derived_file(output, f"{RESULTS_DIRNAME}/method={method}", "results", KIND_RESULTS,
                                       data, len(method_rows), method=method))
        calibration = _centering_summary(derived)
    if settings.phenotypes_path:
        errors.extend(phenotype_error_records(settings.phenotypes_path, phenotypes))
    errors_out = ordered_errors(errors)
    data = parquet_bytes([writable_error_row(e.to_row()) for e in errors_out], ERRORS_SCHEMA)
    files.append(_derived_file(output, ERRORS_DIRNAME, "errors", KIND_ERRORS, data, len(errors_out)))
    files.sort(key=lambda f: f.path)
    generation = _sha256("\n".join(f"{f.path} {f.sha256 or f.bytes}" for f in files).encode())[:16]
    summary = folder_summary(input_uris=list(chosen), rows=rows, errors=errors_out, mode=settings.mode,
                             options=settings.options, files=[f.path for f in files], generation=generation,
                             calibration=calibration)
    commit = Commit(generation=generation, runs=tuple(r.run_id for r in runs), latest_run=latest_run,
                    files=tuple(files), summary=summary)
    _write(output, SUCCESS_FILENAME, commit.to_json())
    logger.info("finalised %s: generation %s from %d runs, %d inputs (%d written, %d failed), "
                "reconciled=%s", output, generation, len(runs), summary["inputs_matched"],
                summary["participants_written"], summary["participants_failed"], summary["reconciled"])
    write_copies(output, commit)
    collect_garbage(output, commit)
    return commit


# --- Copies, recovery, garbage -----------------------------------------------------------------------


def write_copies(output: str, commit: Commit) -> None:
    """``summary.json`` and the BigQuery manifests as ``_SUCCESS`` says (each rewritten only when it
    differs): written after the commit, so they may lag it after a kill, never lead it."""
    results = "".join(path_in(output, f.path) + "\n" for f in commit.files_of(KIND_RESULTS))
    errors = "".join(path_in(output, f.path) + "\n" for f in commit.files_of(KIND_ERRORS))
    for relative, text in ((SUMMARY_FILENAME, summary_json(commit.summary)), (RESULTS_MANIFEST, results),
                           (ERRORS_MANIFEST, errors)):
        path = path_in(output, relative)
        if not filesystems.exists(path) or filesystems.read_text(path) != text:
            _write(output, relative, text.encode("utf-8"))


def _listed(output: str, relative_folder: str) -> list[str]:
    folder = path_in(output, relative_folder)
    try:
        return filesystems.list_files(folder)
    except (OSError, ValueError):
        return []


def collect_garbage(output: str, commit: Commit | None) -> list[str]:
    """Delete the derived files (``lvmass/``, ``errors/``, ``tfrecords/``) ``commit`` does not name, the
    files inside committed runs' folders their manifests do not name (a sink's leftover temp files) and
    ``_tmp/``; returns what was deleted. Never touches a committed file."""
    keep = {f.path for f in commit.files} if commit is not None else set()
    doomed = [p for folder in (RESULTS_DIRNAME, ERRORS_DIRNAME, TFRECORDS_DIRNAME)
              for p in _listed(output, folder) if relative_to(output, p) not in keep]
    for run in committed_runs(output):
        named = {f.path for f in run.files}
        doomed += [p for p in _listed(output, f"{RUNS_DIRNAME}/{run.run_id}")
                   if relative_to(output, p) not in named]
    doomed += _listed(output, TEMP_DIRNAME)
    if doomed:
        logger.info("ledger: deleting %d files no commit names under %s", len(doomed), output)
        filesystems.delete_files(doomed)
    for folder in (RESULTS_DIRNAME, ERRORS_DIRNAME, TFRECORDS_DIRNAME, RUNS_DIRNAME, TEMP_DIRNAME):
        filesystems.prune_empty_folders(path_in(output, folder))
    return doomed


def recover(output: str) -> list[str]:
    """Bring a folder a killed run left back to its last committed state, before a new run: delete the
    folders of runs that never committed, and everything :func:`collect_garbage` deletes; rewrite the
    copies of ``_SUCCESS`` if they lag. Returns the deleted paths."""
    committed = {r.run_id for r in committed_runs(output)}
    doomed = []
    for path in _listed(output, RUNS_DIRNAME):
        run_id = relative_to(output, path).split("/")[1]
        if run_id not in committed:
            doomed.append(path)
    if doomed:
        logger.warning("ledger: deleting %d files of runs that never committed under %s", len(doomed),
                       output)
        filesystems.delete_files(doomed)
    commit = read_commit(output)
    if commit is not None:
        write_copies(output, commit)
    return doomed + collect_garbage(output, commit)


def delete_all(output: str) -> None:
    """``--overwrite``: the commit record first (from then on the folder reads as holding nothing), then
    the manifests, then every other file."""
    marker = path_in(output, SUCCESS_FILENAME)
    filesystems.delete_files([marker])
    filesystems.delete_files(_listed(output, LEDGER_DIRNAME))
    filesystems.delete_files(filesystems.list_files(output))


def run_fact_options(*, mode: str, methods: Sequence[str], ed_rule: str, seg_field_of_view: str | None,
                     grid_pixel_mm: float | None, n_slots: int | None,
                     model_versions: Mapping[str, str | None]) -> dict[str, Any]:
    """The settings that shape a measurement, as the ledger compares them between runs."""
    return {"mode": mode, "methods": list(methods), "ed_rule": ed_rule,
            "seg_field_of_view": seg_field_of_view if contracts.METHOD_ML4H_SEG in methods else None,
            "grid_pixel_mm": grid_pixel_mm, "n_slots": n_slots,
            "model_versions": {k: v for k, v in sorted(model_versions.items())}}

