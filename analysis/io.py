"""Read the analysis inputs: the pipeline's results Parquet, phenotypes, holdout eids, synthetic truth and
label volumes.

Paths are local or ``gs://bucket/prefix``, reached the way the pipeline reaches them: through
``lvmass.storage.filesystems`` (Beam's ``FileSystems``, which honours ``STORAGE_EMULATOR_HOST``). Every
reader checks its input and raises :class:`InputError` naming the file and the reason; nothing is dropped
silently.

Results layout (``lvmass.core.schema``): ``ROOT/lvmass/method=<method>/*.parquet``, each file holding
``RESULTS_FILE_SCHEMA``; of a pipeline's output folder only the files its ledger commit (``_SUCCESS``,
``lvmass.storage.ledger``) names are read, so a run in progress or one that was stopped is never half
read. They are read as one ``pyarrow.dataset`` with hive partitioning, so the partition
directory gives the ``method`` column back, as DuckDB's ``read_parquet(..., hive_partitioning=true)`` and
BigQuery's hive-partitioned external tables do. Each file (fragment) is checked and read on its own, only
the schema's columns, so that a bad file is named in the error.

The other contracts are imported, not copied: phenotypes are read by the pipeline's own reader
(``lvmass.core.phenotypes``), label file names are parsed by ``lvmass.core.identity``, and the
synthetic truth's file names, columns and keys are ``lvmass.core.truth``'s.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from lvmass.core.contracts import ALL_METHODS
from lvmass.core.identity import parse_input_name
from lvmass.core.phenotypes import INSTANCE_COLUMN, PhenotypeTable, read_phenotype_table
from lvmass.core.schema import (
    ERRORS_DIRNAME,
    PHENOTYPE_COLUMNS,
    RESULTS_DIRNAME,
    RESULTS_FILE_SCHEMA,
    RESULTS_SCHEMA,
    SUCCESS_FILENAME,
)
from lvmass.core.truth import (
    TRUTH_CSV,
    TRUTH_EID,
    TRUTH_JSON,
    TRUTH_LABELS_DIRNAME,
    TRUTH_REQUIRED_COLUMNS,
)
from lvmass.storage import filesystems, ledger

METHOD_PARTITIONING = ds.partitioning(pa.schema([("method", pa.string())]), flavor="hive")


class InputError(ValueError):
    """An input file cannot be used: the message names the file and the reason.

    ``message`` replaces the default ``"{source}: {reason}"`` when the reason comes from a reader that
    names the file itself (the phenotype reader's messages are passed on unchanged)."""

    def __init__(self, source: str, reason: str, *, message: str | None = None):
        self.source = source
        self.reason = reason
        super().__init__(message if message is not None else f"{source}: {reason}")


# --- Local and gs:// file access --------------------------------------------------------------------
def _require_file(path: str) -> None:
    if not filesystems.exists(path):
        raise InputError(path, "no such file" if filesystems.is_local(path) else "no such object")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a local file or a gs:// object."""
    text = str(path)
    _require_file(text)
    try:
        return filesystems.read_bytes(text)
    except OSError as exc:
        raise InputError(text, f"cannot be read ({exc})") from exc


def list_files(root: str | os.PathLike[str], suffix: str) -> list[str]:
    """Every file under ``root`` (recursively) whose name ends with ``suffix``, sorted."""
    text = str(root).rstrip("/")
    if filesystems.is_local(text) and not Path(text).is_dir():
        raise InputError(text, "no such directory")
    return [path for path in filesystems.list_files(text) if path.endswith(suffix)]


# --- Results Parquet --------------------------------------------------------------------------------
def output_root(results: str) -> str:
    """The pipeline's output folder of a ``--results`` path (which may be its ``lvmass/`` folder)."""
    root = str(results).rstrip("/")
    if root.endswith(f"/{RESULTS_DIRNAME}"):
        return root[: -len(RESULTS_DIRNAME) - 1]
    return root


def _readable(path: str, base: str) -> bool:
    """A file a reader of a folder without a ledger takes: not below a name that starts with ``_`` or
    ``.`` (a sink's ``beam-temp-*`` folder of an older run neither), as Hive and pyarrow's datasets skip."""
    parts = path[len(base):].replace("\\", "/").strip("/").split("/")
    return not any(p.startswith(("_", ".", "beam-temp-")) for p in parts)


def committed_files(root: str | os.PathLike[str], kind: str) -> list[str] | None:
    """The files of ``kind`` (``lvmass`` results or ``errors``) an output folder's ledger commit names
    (``lvmass.storage.ledger``); None for a folder the ledger does not manage (hand-made, or older than
    the ledger). A managed folder without a commit (its first run was stopped before it finished) is an
    :class:`InputError`: nothing in it is committed."""
    output = output_root(str(root))
    try:
        files = ledger.committed_files(output, kind)
        if files is None and ledger.is_ledger_folder(output):
            raise InputError(output, f"no committed run ({SUCCESS_FILENAME} is missing: the first run into "
                             "this folder did not finish); finish it with `lvmass run ... --skip_existing`")
    except ledger.LedgerError as exc:
        raise InputError(output, str(exc), message=str(exc)) from exc
    return files


def _results_files(root: str) -> tuple[str, list[str]]:
    """The results folder and its Parquet files: those the folder's ledger commit names; for a folder
    without a ledger, one listing: the output folder's ``lvmass/`` when it holds files, else ``root``
    itself (the ``lvmass`` folder given directly)."""
    root = root.rstrip("/")
    committed = committed_files(root, RESULTS_DIRNAME)
    if committed is not None:
        return f"{output_root(root)}/{RESULTS_DIRNAME}", committed
    if not (root.endswith(f"/{RESULTS_DIRNAME}") or root == RESULTS_DIRNAME):
        candidate = f"{root}/{RESULTS_DIRNAME}"
        found = filesystems.list_files(candidate)
        if found:
            return candidate, [p for p in found if p.endswith(".parquet") and _readable(p, candidate)]
    return root, [p for p in list_files(root, ".parquet") if _readable(p, root)]


def errors_files(root: str | os.PathLike[str]) -> list[str]:
    """The dead-letter Parquet files of an output folder: those its ledger commit names, else every
    ``errors/*.parquet`` (a folder without a ledger); empty when there are none."""
    committed = committed_files(root, ERRORS_DIRNAME)
    if committed is not None:
        return committed
    folder = f"{output_root(str(root))}/{ERRORS_DIRNAME}"
    if not filesystems.has_files(folder):
        return []
    return [p for p in list_files(folder, ".parquet") if _readable(p, folder)]


def _read_fragment(fragment: ds.ParquetFileFragment) -> pa.Table:
    """The ``RESULTS_FILE_SCHEMA`` columns a file holds (the caller checks for missing ones), read
    column chunk by column chunk, never the whole file."""
    try:
        present = [c for c in RESULTS_FILE_SCHEMA.names if c in fragment.physical_schema.names]
        return fragment.to_table(columns=present)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(fragment.path, f"not a readable Parquet file ({exc})") from exc


def _checked_results(table: pa.Table, source: str, method: str) -> pa.Table:
    """``table`` with RESULTS_FILE_SCHEMA's columns and types, and the partition's ``method``."""
    missing = [f.name for f in RESULTS_FILE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InputError(source, f"missing column(s) {missing} of RESULTS_FILE_SCHEMA")
    try:
        table = table.select(RESULTS_FILE_SCHEMA.names).cast(RESULTS_FILE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise InputError(source, f"columns do not match RESULTS_FILE_SCHEMA: {exc}") from exc
    return table.append_column("method", pa.array([method] * table.num_rows, pa.string()))


def read_results(root: str | os.PathLike[str]) -> pd.DataFrame:
    """All result rows under ``ROOT/lvmass/method=*/*.parquet`` as one DataFrame with RESULTS_SCHEMA's
    columns (``method`` restored from the hive partition directory).

    Rows are keyed by ``participant_id`` (always set); ``eid`` is None for inputs from outside UK Biobank,
    so it is int64 when every row has one and pandas' nullable ``Int64`` when some do not (never float,
    which would round-trip eids through doubles). Raises :class:`InputError` when there is no Parquet file,
    a file is unreadable or lacks columns, a partition names an unknown method, or a (participant_id,
    instance, method) row appears twice.
    """
    base, files = _results_files(str(root))
    dataset = ds.dataset(
        files,
        schema=RESULTS_FILE_SCHEMA,
        format="parquet",
        filesystem=filesystems.arrow_filesystem(base),
        partitioning=METHOD_PARTITIONING,
        partition_base_dir=base,
    )
    partitioned = [
        (fragment, ds.get_partition_keys(fragment.partition_expression).get("method"))
        for fragment in dataset.get_fragments()
    ]
    partitioned = [(fragment, method) for fragment, method in partitioned if method is not None]
    if not partitioned:
        raise InputError(base, "no results Parquet files found under method=<method>/ partitions")
    tables = []
    for fragment, method in partitioned:
        if method not in ALL_METHODS:
            raise InputError(
                fragment.path, f"unknown method partition {method!r}; expected one of {list(ALL_METHODS)}"
            )
        table = _read_fragment(fragment)
        if table.num_rows:
            tables.append(_checked_results(table, fragment.path, str(method)))
    if not tables:
        raise InputError(base, "the results Parquet files hold no rows")
    table = pa.concat_tables(tables)
    results = table.to_pandas()
    eid = table.column("eid")
    if eid.null_count:
        results["eid"] = eid.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    key = ["participant_id", "instance", "method"]
    dup = results.duplicated(key, keep=False)
    if dup.any():
        first = results.loc[dup, key].iloc[0].to_dict()
        raise InputError(
            base, f"{int(dup.sum())} duplicated (participant_id, instance, method) rows, e.g. {first}"
        )
    return results[RESULTS_SCHEMA.names]


# --- Phenotypes -------------------------------------------------------------------------------------
def read_phenotypes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The phenotype table (CSV or Parquet), read by the pipeline's reader
    (``lvmass.core.phenotypes.read_phenotype_table``): the analysis accepts every file the pipeline
    accepts and rejects the others with the pipeline's message (as an :class:`InputError`).

    One row per table row, columns ``PHENOTYPE_COLUMNS`` (with ``instance`` after ``eid`` when the table
    has one row per visit): sex 'female' / 'male' / None; diseases 1.0 / 0.0 / NaN (unknown); numbers
    float with NaN for blanks, absent columns and implausible values (``manual_lv_mass_g`` is blank for
    most participants). ``analysis.cohort.build_cohort`` joins it to the results.
    """
    source = str(path)
    _require_file(source)
    try:
        with filesystems.open_read(source) as stream:
            table = read_phenotype_table(filesystems.ensure_seekable(stream), source=source)
    except OSError as exc:
        raise InputError(source, f"cannot be read ({exc})") from exc
    except ValueError as exc:
        raise InputError(source, str(exc), message=str(exc)) from exc
    return phenotype_frame(table)


def phenotype_frame(table: PhenotypeTable) -> pd.DataFrame:
    """A :class:`~lvmass.core.phenotypes.PhenotypeTable`'s rows as the analysis' typed DataFrame
    (see :func:`read_phenotypes`), in the file's row order."""
    rows = list(table.rows.values())

    def floats(values: Iterable[object]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

    out = pd.DataFrame({"eid": np.array([p.eid for p in rows], dtype=np.int64)})
    if table.per_instance:
        out[INSTANCE_COLUMN] = np.array([p.instance for p in rows], dtype=np.int64)
    for column in PHENOTYPE_COLUMNS[1:]:
        values = [getattr(p, column) for p in rows]
        out[column] = pd.Series(values, dtype=object) if column == "sex" else floats(values)
    return out


# --- eids, blanks -----------------------------------------------------------------------------------
def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().isin(["", "nan", "NA", "NaN", "None"])


def _parse_eids(series: pd.Series, source: str, column: str = "eid") -> pd.Series:
    text = series.astype(str).str.strip()
    parsed = pd.to_numeric(text, errors="coerce")
    bad = parsed.isna() | (parsed != np.floor(parsed))
    if bad.any():
        raise InputError(source, f"{column} must be integers; bad value {series[bad].iloc[0]!r}")
    return parsed.astype(np.int64)


def _read_csv(path: str) -> pd.DataFrame:
    """A CSV file, all values as strings."""
    data = read_bytes(path)
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be parsed ({exc})") from exc


# --- Holdout eids -----------------------------------------------------------------------------------
def read_holdout(path: str | os.PathLike[str]) -> frozenset[int]:
    """The evaluation set's eids: a CSV with an ``eid`` column, or a plain list, one eid per line."""
    source = str(path)
    text = read_bytes(source).decode("utf-8-sig")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(source, "no eids")
    header = [h.strip().lower() for h in lines[0].split(",")]
    if "eid" in header:
        frame = pd.read_csv(io.StringIO(text), dtype=str)
        frame.columns = [c.strip().lower() for c in frame.columns]
        values = frame["eid"].dropna()
    else:
        values = pd.Series([line.split(",")[0] for line in lines])
    if values.empty:
        raise InputError(source, "no eids")
    return frozenset(int(e) for e in _parse_eids(values.reset_index(drop=True), source))


# --- Synthetic truth --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truth:
    """What the synthetic generator knows: per-participant truth, its model parameters, label volumes."""

    table: pd.DataFrame  # eid, true_lv_mass_g, true_lvmi_g_m2, ...
    parameters: dict[str, Any] = field(default_factory=dict)  # truth.json, {} when absent
    labels_dir: str | None = None  # truth_labels/ with {eid}_20209_2_0.npz, when present
    source: str = ""
    parameters_source: str | None = None  # the truth.json read, None when absent


def read_truth(path: str | os.PathLike[str]) -> Truth:
    """Read ``truth.csv`` (required), ``truth.json`` and ``truth_labels/`` from a folder, or a truth.csv
    path with its siblings."""
    text = str(path).rstrip("/")
    csv_path = text if text.lower().endswith(".csv") else f"{text}/{TRUTH_CSV}"
    folder = csv_path.rsplit("/", 1)[0] if "/" in csv_path else "."
    table = _read_csv(csv_path)
    missing = [c for c in TRUTH_REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(csv_path, f"missing column(s) {missing}")
    eids = _parse_eids(table[TRUTH_EID], csv_path)
    out = table.copy()
    out[TRUTH_EID] = eids
    for column in out.columns:
        if column in (TRUTH_EID, "sex"):
            continue
        converted = pd.to_numeric(out[column].where(~_blank(out[column])), errors="coerce")
        if column in TRUTH_REQUIRED_COLUMNS and (converted.isna() & ~_blank(out[column])).any():
            raise InputError(csv_path, f"column {column!r} must be numeric")
        if converted.notna().any() or _blank(out[column]).all():
            out[column] = converted.astype(np.float64)
    json_path: str | None = f"{folder}/{TRUTH_JSON}"
    parameters: dict[str, Any] = {}
    try:
        parameters = json.loads(read_bytes(str(json_path)).decode("utf-8"))
    except InputError:
        parameters, json_path = {}, None
    except json.JSONDecodeError as exc:
        raise InputError(str(json_path), f"not valid JSON ({exc})") from exc
    labels_dir = f"{folder}/{TRUTH_LABELS_DIRNAME}"
    return Truth(
        table=out,
        parameters=parameters,
        labels_dir=labels_dir if filesystems.has_files(labels_dir) else None,
        source=csv_path,
        parameters_source=json_path,
    )


# --- Label volumes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelFile:
    """A label volume and where it lives: ``slice_start`` (first acquired slice of a tensor-layout
    volume), and for a volume on the pipeline's resampled grid the acquisition's pixel spacing and the
    grid's pixel size (``--save_labels`` records both), None when the file records none."""

    volume: np.ndarray
    slice_start: int | None = None
    acquired_pixel_spacing_mm: tuple[float, float] | None = None
    grid_pixel_mm: float | None = None


def read_label_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, int | None]:
    """A uint8 label volume (LABEL_MAP codes) from an ``.npz`` holding ``labels`` (or an ``.npy``), and
    the ``slice_start`` the ``.npz`` records (the first acquired slice of a tensor-layout volume), None
    when it records none."""
    record = read_label_record(path)
    return record.volume, record.slice_start


def read_label_record(path: str | os.PathLike[str]) -> LabelFile:
    """:func:`read_label_file` with the grid the volume was saved on (:class:`LabelFile`)."""
    source = str(path)
    data = read_bytes(source)
    slice_start: int | None = None
    acquired: tuple[float, float] | None = None
    grid: float | None = None
    try:
        if source.lower().endswith(".npy"):
            volume = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                if "labels" not in archive.files:
                    raise InputError(source, f"no 'labels' array (found {archive.files})")
                volume = archive["labels"]
                if "slice_start" in archive.files:
                    slice_start = int(archive["slice_start"])
                if "acquired_pixel_spacing_mm" in archive.files and "spacing_mm" in archive.files:
                    row_mm, col_mm = (float(v) for v in archive["acquired_pixel_spacing_mm"])
                    acquired, grid = (row_mm, col_mm), float(archive["spacing_mm"][0])
    except (ValueError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(source, f"not a readable numpy file ({exc})") from exc
    if volume.ndim != 3:
        raise InputError(source, f"labels must be 3-D (rows, cols, slices). Received shape {volume.shape}")
    return LabelFile(volume=volume, slice_start=slice_start, acquired_pixel_spacing_mm=acquired,
                     grid_pixel_mm=grid)


def read_label_volume(path: str | os.PathLike[str]) -> np.ndarray:
    """A uint8 label volume (LABEL_MAP codes) from an ``.npz`` holding ``labels`` (or an ``.npy``)."""
    return read_label_file(path)[0]


def label_files(
    folder: str, eids: Iterable[int] | None = None, *, instance: int | None = None
) -> dict[tuple[int, int | None], str]:
    """``{(eid, instance): path}`` for the ``.npz`` label volumes in a folder, optionally only those
    eids and only that imaging ``instance`` (a name without an instance then does not match). Names
    are parsed by ``lvmass.core.identity.parse_input_name`` (``{eid}_20209_{instance}_0.npz`` as the
    generator's truth labels, ``{eid}_{instance}.npz`` as the pipeline's ``--save_labels``, ``{eid}.npz``
    with instance None); other names are skipped."""
    wanted = None if eids is None else set(eids)
    out: dict[tuple[int, int | None], str] = {}
    for path in list_files(folder, ".npz"):
        name = parse_input_name(path)
        if name is None or (wanted is not None and name.eid not in wanted):
            continue
        if instance is not None and name.instance != instance:
            continue
        out[(name.eid, name.instance)] = path
    return out
