"""Read the analysis inputs: the pipeline's results Parquet, phenotypes, holdout eids, synthetic truth.

Paths are local or ``gs://bucket/prefix`` (read through google-cloud-storage, which honours
``STORAGE_EMULATOR_HOST``). Every reader checks its input and raises :class:`InputError` naming the file
and the reason; nothing is dropped silently.

Results layout (``beam_pipeline.schema``): ``ROOT/lvmass/method=<method>/*.parquet``, each file holding
``RESULTS_FILE_SCHEMA``; the partition directory gives the ``method`` column back, as DuckDB's
``read_parquet(..., hive_partitioning=true)`` and BigQuery's hive-partitioned external tables do.
Files are read one by one with pyarrow (only the schema's columns) so that a bad file is named in the error.

The synthetic truth's file names and columns are ``lvmass.synth.layout``'s (imported, not copied).
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
import pyarrow.parquet as pq

from beam_pipeline.contracts import ALL_METHODS, SEX_CODE, SEXES
from beam_pipeline.schema import (
    DISEASE_COLUMNS,
    PHENOTYPE_COLUMNS,
    RESULTS_DIRNAME,
    RESULTS_FILE_SCHEMA,
    RESULTS_SCHEMA,
)
from lvmass.synth.layout import LABELS_DIRNAME as TRUTH_LABELS_DIRNAME
from lvmass.synth.layout import TRUTH_CSV, TRUTH_EID, TRUTH_JSON, TRUTH_LV_MASS_G, TRUTH_LVMI_G_M2

GCS_SCHEME = "gs://"
TRUTH_REQUIRED_COLUMNS: tuple[str, ...] = (TRUTH_EID, TRUTH_LV_MASS_G, TRUTH_LVMI_G_M2)
_NUMERIC_PHENOTYPES: tuple[str, ...] = ("age", "height_cm", "weight_kg", "manual_lv_mass_g")
_TRUE_VALUES = {"1", "true", "t", "yes", "y", "1.0"}
_FALSE_VALUES = {"0", "false", "f", "no", "n", "0.0"}


class InputError(ValueError):
    """An input file cannot be used: the message names the file and the reason."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


# --- Local and gs:// file access --------------------------------------------------------------------
def is_gcs(path: str | os.PathLike[str]) -> bool:
    return str(path).startswith(GCS_SCHEME)


def _split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise InputError(uri, "a gs:// path needs a bucket name")
    return bucket, key


def _gcs_client() -> Any:
    from google.cloud import storage  # imported lazily: only gs:// inputs need it

    return storage.Client()


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a local file or a gs:// object."""
    text = str(path)
    if is_gcs(text):
        bucket, key = _split_gcs(text)
        blob = _gcs_client().bucket(bucket).blob(key)
        if not blob.exists():
            raise InputError(text, "no such object")
        return blob.download_as_bytes()
    local = Path(text)
    if not local.is_file():
        raise InputError(text, "no such file")
    return local.read_bytes()


def list_files(root: str | os.PathLike[str], suffix: str) -> list[str]:
    """Every file under ``root`` (recursively) whose name ends with ``suffix``, sorted."""
    text = str(root).rstrip("/")
    if is_gcs(text):
        bucket, prefix = _split_gcs(text)
        prefix = f"{prefix}/" if prefix else ""
        blobs = _gcs_client().list_blobs(bucket, prefix=prefix)
        return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs if b.name.endswith(suffix))
    local = Path(text)
    if not local.is_dir():
        raise InputError(text, "no such directory")
    return sorted(str(p) for p in local.rglob(f"*{suffix}") if p.is_file())


def _exists_dir(path: str) -> bool:
    """Whether a local folder exists, or any gs:// object lies under the prefix (asks for one object,
    never lists the prefix)."""
    if is_gcs(path):
        bucket, prefix = _split_gcs(path.rstrip("/"))
        blobs = _gcs_client().list_blobs(bucket, prefix=f"{prefix}/" if prefix else "", max_results=1)
        return next(iter(blobs), None) is not None
    return Path(path).is_dir()


# --- Results Parquet --------------------------------------------------------------------------------
def _results_root(root: str) -> str:
    """Accept the pipeline's output folder (holding ``lvmass/``) or the ``lvmass`` folder itself."""
    root = root.rstrip("/")
    candidate = f"{root}/{RESULTS_DIRNAME}"
    if root.endswith(f"/{RESULTS_DIRNAME}") or root == RESULTS_DIRNAME:
        return root
    return candidate if _exists_dir(candidate) else root


def _method_from_path(path: str) -> str | None:
    for part in path.split("/"):
        if part.startswith("method="):
            return part[len("method=") :]
    return None


def _read_parquet_columns(path: str, columns: Iterable[str]) -> pa.Table:
    """Only ``columns`` (those present; the caller checks for missing ones) of a local or gs:// Parquet
    file: a local file is read column chunk by column chunk, never whole."""
    wanted = list(columns)
    try:
        source: Any = path if not is_gcs(path) else io.BytesIO(read_bytes(path))
        if not is_gcs(path) and not Path(path).is_file():
            raise InputError(path, "no such file")
        with pq.ParquetFile(source) as parquet:
            present = [c for c in wanted if c in parquet.schema_arrow.names]
            return parquet.read(columns=present)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({exc})") from exc


def _table_to_results(table: pa.Table, source: str, method: str) -> pd.DataFrame:
    missing = [f.name for f in RESULTS_FILE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InputError(source, f"missing column(s) {missing} of RESULTS_FILE_SCHEMA")
    table = table.select(RESULTS_FILE_SCHEMA.names)
    try:
        table = table.cast(RESULTS_FILE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise InputError(source, f"columns do not match RESULTS_FILE_SCHEMA: {exc}") from exc
    frame = table.to_pandas()
    if "method" in frame.columns:  # a file written with the partition column inside it
        frame = frame.drop(columns="method")
    frame.insert(2, "method", method)
    return frame


def read_results(root: str | os.PathLike[str]) -> pd.DataFrame:
    """All result rows under ``ROOT/lvmass/method=*/*.parquet`` as one DataFrame with RESULTS_SCHEMA's
    columns (``method`` restored from the partition directory).

    Raises :class:`InputError` when there is no Parquet file, a file is unreadable or lacks columns,
    a partition names an unknown method, or a (eid, instance, method) row appears twice.
    """
    base = _results_root(str(root))
    files = [f for f in list_files(base, ".parquet") if _method_from_path(f[len(base) :]) is not None]
    if not files:
        raise InputError(base, "no results Parquet files found under method=<method>/ partitions")
    frames = []
    for path in files:
        method = _method_from_path(path[len(base) :])
        if method not in ALL_METHODS:
            raise InputError(
                path, f"unknown method partition {method!r}; expected one of {list(ALL_METHODS)}"
            )
        table = _read_parquet_columns(path, RESULTS_FILE_SCHEMA.names)
        if table.num_rows:
            frames.append(_table_to_results(table, path, str(method)))
    if not frames:
        raise InputError(base, "the results Parquet files hold no rows")
    results = pd.concat(frames, ignore_index=True)
    key = ["eid", "instance", "method"]
    dup = results.duplicated(key, keep=False)
    if dup.any():
        first = results.loc[dup, key].iloc[0].to_dict()
        raise InputError(base, f"{int(dup.sum())} duplicated (eid, instance, method) rows, e.g. {first}")
    return results[RESULTS_SCHEMA.names]


# --- Phenotypes -------------------------------------------------------------------------------------
def _read_table_file(path: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """A CSV (all values as strings) or Parquet table; only ``columns`` (those present) when given."""
    wanted = None if columns is None else set(columns)
    if path.lower().endswith(".parquet"):
        if wanted is None:
            try:
                return pq.read_table(io.BytesIO(read_bytes(path))).to_pandas()
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(path, f"cannot be parsed ({exc})") from exc
        return _read_parquet_columns(path, sorted(wanted)).to_pandas()
    data = read_bytes(path)
    try:
        return pd.read_csv(
            io.BytesIO(data),
            dtype=str,
            keep_default_na=False,
            usecols=None if wanted is None else (lambda c: c in wanted),
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be parsed ({exc})") from exc


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().isin(["", "nan", "NA", "NaN", "None"])


def _parse_eids(series: pd.Series, source: str, column: str = "eid") -> pd.Series:
    text = series.astype(str).str.strip()
    parsed = pd.to_numeric(text, errors="coerce")
    bad = parsed.isna() | (parsed != np.floor(parsed))
    if bad.any():
        raise InputError(source, f"{column} must be integers; bad value {series[bad].iloc[0]!r}")
    return parsed.astype(np.int64)


def _parse_numeric(series: pd.Series, source: str, column: str, eids: pd.Series) -> pd.Series:
    blank = _blank(series)
    parsed = pd.to_numeric(series.where(~blank), errors="coerce")
    bad = parsed.isna() & ~blank
    if bad.any():
        raise InputError(
            source,
            f"column {column!r} has a non-numeric value {series[bad].iloc[0]!r} (eid {eids[bad].iloc[0]})",
        )
    return parsed.astype(np.float64)


def _parse_sex(series: pd.Series, source: str, eids: pd.Series) -> pd.Series:
    """'female'/'male' (any case) or UK Biobank field 31 coding 0 = female, 1 = male; blank = unknown."""
    codes = {str(v): k for k, v in SEX_CODE.items()}
    text = series.astype(str).str.strip().str.lower()
    text = text.replace({f"{k}.0": v for k, v in codes.items()}).replace(codes)
    blank = _blank(series)
    bad = ~text.isin(SEXES) & ~blank
    if bad.any():
        raise InputError(
            source,
            f"column 'sex' must be female/male or 0/1; bad value {series[bad].iloc[0]!r} "
            f"(eid {eids[bad].iloc[0]})",
        )
    return text.where(~blank, None).astype(object)


def _parse_bool(series: pd.Series, source: str, column: str, eids: pd.Series) -> pd.Series:
    text = series.astype(str).str.strip().str.lower()
    blank = _blank(series)
    bad = ~text.isin(_TRUE_VALUES | _FALSE_VALUES) & ~blank
    if bad.any():
        raise InputError(
            source,
            f"column {column!r} must be 0/1 or true/false; bad value {series[bad].iloc[0]!r} "
            f"(eid {eids[bad].iloc[0]})",
        )
    out = pd.Series(np.where(text.isin(_TRUE_VALUES), 1.0, 0.0), index=series.index)
    return out.where(~blank, np.nan)


def read_phenotypes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The phenotype table (CSV or Parquet) with ``PHENOTYPE_COLUMNS``, typed and checked.

    sex becomes 'female' / 'male' / None; diseases become 1.0 / 0.0 / NaN (unknown);
    numbers are float with NaN for blanks (``manual_lv_mass_g`` is blank for most participants).
    """
    source = str(path)
    raw = _read_table_file(source, PHENOTYPE_COLUMNS)
    missing = [c for c in PHENOTYPE_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(source, f"missing column(s) {missing}; expected {list(PHENOTYPE_COLUMNS)}")
    if raw.empty:
        raise InputError(source, "no rows")
    raw = raw.astype(object)
    eids = _parse_eids(raw["eid"], source)
    if eids.duplicated().any():
        raise InputError(source, f"eid {int(eids[eids.duplicated()].iloc[0])} appears more than once")
    out = pd.DataFrame({"eid": eids})
    out["sex"] = _parse_sex(raw["sex"], source, eids)
    for column in _NUMERIC_PHENOTYPES:
        out[column] = _parse_numeric(raw[column], source, column, eids)
    for column in DISEASE_COLUMNS:
        out[column] = _parse_bool(raw[column], source, column, eids)
    return out[list(PHENOTYPE_COLUMNS)].reset_index(drop=True)


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
    table = _read_table_file(csv_path)
    missing = [c for c in TRUTH_REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(csv_path, f"missing column(s) {missing}")
    eids = _parse_eids(table["eid"], csv_path)
    out = table.copy()
    out["eid"] = eids
    for column in out.columns:
        if column in ("eid", "sex"):
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
        labels_dir=labels_dir if _exists_dir(labels_dir) else None,
        source=csv_path,
        parameters_source=json_path,
    )


# --- Label volumes ----------------------------------------------------------------------------------
def read_label_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, int | None]:
    """A uint8 label volume (LABEL_MAP codes) from an ``.npz`` holding ``labels`` (or an ``.npy``), and
    the ``slice_start`` the ``.npz`` records (the first acquired slice of a tensor-layout volume), None
    when it records none."""
    source = str(path)
    data = read_bytes(source)
    slice_start: int | None = None
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
    except (ValueError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(source, f"not a readable numpy file ({exc})") from exc
    if volume.ndim != 3:
        raise InputError(source, f"labels must be 3-D (rows, cols, slices). Received shape {volume.shape}")
    return volume, slice_start


def read_label_volume(path: str | os.PathLike[str]) -> np.ndarray:
    """A uint8 label volume (LABEL_MAP codes) from an ``.npz`` holding ``labels`` (or an ``.npy``)."""
    return read_label_file(path)[0]


def study_from_filename(path: str) -> tuple[int, int | None] | None:
    """(eid, instance) of a label file name: ``{eid}_{field}_{instance}_{array}.*`` (a UK Biobank zip's,
    as the generator's truth_labels/ use), ``{eid}_{instance}.*`` (the pipeline's ``--save_labels``) or
    ``{eid}.*`` (instance None); None when the name is none of these."""
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    parts = stem.split("_")
    if not all(p.isdigit() for p in parts):
        return None
    if len(parts) == 4:
        return int(parts[0]), int(parts[2])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    if len(parts) == 1:
        return int(parts[0]), None
    return None


def label_files(
    folder: str, eids: Iterable[int] | None = None, *, instance: int | None = None
) -> dict[tuple[int, int | None], str]:
    """``{(eid, instance): path}`` for the ``.npz`` label volumes in a folder, optionally only those
    eids and only that imaging ``instance`` (a name without an instance then does not match)."""
    wanted = None if eids is None else set(eids)
    out: dict[tuple[int, int | None], str] = {}
    for path in list_files(folder, ".npz"):
        key = study_from_filename(path)
        if key is None or (wanted is not None and key[0] not in wanted):
            continue
        if instance is not None and key[1] != instance:
            continue
        out[key] = path
    return out
