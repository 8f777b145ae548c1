"""``lvmass export``: the pipeline's results as one wide row per participant and imaging visit.

The results are long (one row per participant x instance x method, hive-partitioned by method) because
that is how the pipeline writes and queries them. A UK Biobank researcher joins LV mass to other fields
one row per eid, so this writes every method side by side: the row's key (``participant_id``, ``eid``,
``instance``), the columns every method shares (:data:`SHARED_COLUMNS`: sex, age, BSA, slices and
spacings, the input), then ``<method>_<field>`` for each method present and each of
:data:`METHOD_COLUMNS` (``ml4h_seg_lv_mass_g``, ``ml4h_seg_lvh``, ``ml4h_seg_qc_flags``...).

``eid`` is blank for inputs from outside UK Biobank (known by ``participant_id`` only); their rows are
written too. In Parquet the types are ``RESULTS_SCHEMA``'s (``qc_flags`` a list of strings, ``lvh`` a
nullable boolean); in CSV ``qc_flags`` is joined with ``;``. A participant that a method did not measure
has that method's columns blank.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import io as aio
from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core.contracts import ALL_METHODS
from lvmass.core.schema import RESULTS_SCHEMA, SUCCESS_FILENAME
from lvmass.storage import filesystems, ledger

logger = logging.getLogger(__name__)

KEY_COLUMNS: tuple[str, ...] = ("participant_id", "instance")  # one output row per key
# Measured on the input or joined from its phenotypes: the same for every method of one participant/visit.
SHARED_COLUMNS: tuple[str, ...] = (
    "eid",
    "sex",
    "age",
    "bsa_m2",
    "n_slices",
    "pixel_spacing_row_mm",
    "pixel_spacing_col_mm",
    "slice_spacing_mm",
    "tensor_pixel_spacing_mm",
    "in_plane_scale",
    "source_uri",
)
# Per method, written as ``<method>_<column>``.
METHOD_COLUMNS: tuple[str, ...] = (
    "lv_mass_g",
    "lv_mass_raw_g",
    "calibration",
    "myocardium_volume_ml",
    "lv_cavity_volume_ml",
    "lvmi_g_m2",
    "lvh",
    "lvh_p90",
    "qc_pass",
    "qc_flags",
    "model_version",
    "pipeline_version",
)
QC_FLAGS_CSV_SEPARATOR = ";"


def method_column(method: str, column: str) -> str:
    """The wide table's name for one method's field: ``ml4h_seg_lv_mass_g``."""
    return f"{method}_{column}"


def _methods(results: pd.DataFrame) -> list[str]:
    present = set(results["method"])
    return [m for m in ALL_METHODS if m in present] + sorted(present - set(ALL_METHODS))


def wide_results(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (participant_id, instance) from the long results (``analysis.io.read_results``),
    sorted by eid, participant_id and instance. The input is not modified.

    Shared columns are taken from the first method (in ``ALL_METHODS`` order) that has a value; a key
    whose methods disagree on one of them is logged, and one that maps to two eids is refused
    (ValueError): the results would then mix up participants."""
    methods = _methods(results)
    order = {m: k for k, m in enumerate(methods)}
    ranked = results.assign(_rank=results["method"].map(order)).sort_values([*KEY_COLUMNS, "_rank"])
    grouped = ranked.groupby(list(KEY_COLUMNS), sort=True)
    shared = grouped[list(SHARED_COLUMNS)].first()
    disagree = grouped[list(SHARED_COLUMNS)].nunique(dropna=True) > 1
    if disagree["eid"].any():
        key = disagree.index[disagree["eid"].to_numpy()][0]
        raise ValueError(f"participant_id {key[0]!r} instance {key[1]} has rows with different eids")
    if disagree.to_numpy().any():
        counts = disagree.sum()
        logger.warning("methods disagree on shared columns for some participants (%s); the value of the "
                       "first method in %s order is written",
                       ", ".join(f"{c}: {int(n)}" for c, n in counts.items() if n), list(methods))
    wide = shared
    for method in methods:
        part = results.loc[results["method"] == method, [*KEY_COLUMNS, *METHOD_COLUMNS]]
        part = part.set_index(list(KEY_COLUMNS)).rename(columns=lambda c, m=method: method_column(m, c))
        wide = wide.join(part, how="left")
    wide = wide.reset_index()
    wide["eid"] = wide["eid"].astype("Int64")
    columns = ["participant_id", "eid", "instance", *SHARED_COLUMNS[1:]]
    columns += [method_column(m, c) for m in methods for c in METHOD_COLUMNS]
    wide = wide[columns].sort_values(["eid", "participant_id", "instance"], na_position="last")
    return wide.reset_index(drop=True)


def wide_schema(columns: Sequence[str]) -> pa.Schema:
    """The Parquet schema of a wide table: each column typed as its ``RESULTS_SCHEMA`` field; only the
    key columns are required (a method may not have measured a participant)."""
    fields = []
    for name in columns:
        base = name
        if name not in RESULTS_SCHEMA.names:  # <method>_<column>: the longest matching column name
            base = max((c for c in METHOD_COLUMNS if name.endswith(f"_{c}")), key=len)
        source = RESULTS_SCHEMA.field(base)
        fields.append(pa.field(name, source.type, nullable=name not in KEY_COLUMNS))
    return pa.schema(fields)


def _python_lists(values: pd.Series) -> pd.Series:
    """qc_flags as Python lists (arrays from Parquet), None where the method has no row."""
    return values.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else list(v))


def table_bytes(wide: pd.DataFrame, fmt: str) -> bytes:
    """The wide table as Parquet (RESULTS_SCHEMA types) or CSV (``qc_flags`` joined with ';')."""
    flags = [c for c in wide.columns if c.endswith("_qc_flags")]
    out = wide.copy()
    for column in flags:
        out[column] = _python_lists(out[column])
    if fmt == "parquet":
        sink = io.BytesIO()
        table = pa.Table.from_pandas(out, schema=wide_schema(list(out.columns)), preserve_index=False)
        pq.write_table(table, sink, compression="snappy")
        return sink.getvalue()
    for column in flags:
        out[column] = out[column].map(lambda v: None if v is None else QC_FLAGS_CSV_SEPARATOR.join(v))
    return out.to_csv(index=False).encode("utf-8")


def output_format(path: str) -> str:
    """'csv' or 'parquet' from the output's name; ValueError otherwise."""
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{path}: the output must end in .csv or .parquet")


output_root = aio.output_root


def warn_if_incomplete(results: str) -> bool:
    """Whether the folder's state is complete: committed (``_SUCCESS``), with every committed run
    finalised and every input accounted for. A warning when not, never an error: what is exported is
    always what the commit names (``analysis.io.read_results``), the last committed state."""
    root = output_root(results)
    marker = filesystems.join(root, SUCCESS_FILENAME)
    commit = ledger.read_commit(root)
    if commit is not None:
        pending = ledger.pending_runs(root, commit)
        if pending:
            logger.warning("%s: runs %s are committed but not yet in the derived table (a run was stopped "
                           "while finalising); exporting the last finalised state. `lvmass run ... "
                           "--skip_existing` finalises them", root, pending)
            return False
        if not commit.reconciled:
            logger.warning("%s: the folder does not reconcile (inputs unaccounted for: %s)", root,
                           commit.summary.get("unaccounted_inputs"))
            return False
        return True
    if filesystems.exists(marker):
        return True
    logger.warning("%s not found: the run may be incomplete (still running, failed, or written before the "
                   "pipeline wrote the marker); exporting what is there", marker)
    return False


def build_parser() -> ArgumentParser:
    """The ``lvmass export`` options."""
    parser = ArgumentParser(
        prog="lvmass export",
        description="Write the pipeline's results as one wide row per participant and imaging visit, every "
        "method side by side, keyed by eid, as CSV or Parquet.",
    )
    parser.add_argument("--results", required=True, help="the pipeline's output folder (local or gs://)")
    parser.add_argument("--out", required=True, help="file to write: .csv or .parquet (local or gs://)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 when written, 2 when an input is unusable or --out exists (without --overwrite)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        fmt = output_format(args.out)
        if not args.overwrite and filesystems.exists(args.out):
            raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
        results = aio.read_results(args.results)
        warn_if_incomplete(args.results)
        wide = wide_results(results)
        filesystems.write_bytes(args.out, table_bytes(wide, fmt))
    except (ValueError, FileExistsError) as exc:
        print(f"lvmass export: error: {exc}", file=sys.stderr)
        return 2
    no_eid = int(wide["eid"].isna().sum())
    logger.info("%d result rows -> %d wide rows (%d without a UK Biobank eid), %d columns", len(results),
                len(wide), no_eid, wide.shape[1])
    print(f"export: {args.out} ({len(wide)} rows, {wide.shape[1]} columns)")
    return 0
