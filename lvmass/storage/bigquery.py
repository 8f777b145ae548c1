"""BigQuery over the pipeline's Parquet: DDL, JSON schemas and the per-participant view, generated from
``lvmass.core.schema`` so that they cannot drift from what the pipeline writes.

The results are queried in place, as external tables over ``OUTPUT/lvmass/method=<m>/*.parquet``
(hive-partitioned by ``method``) and ``OUTPUT/errors/*.parquet``; nothing is loaded. Each table reads
exactly the files the folder's last commit names (``lvmass.storage.ledger``), not whatever a wildcard
matches: its ``uris`` is a manifest the pipeline rewrites after every commit
(``schema.RESULTS_MANIFEST``, ``schema.ERRORS_MANIFEST``: one ``gs://`` URI a line;
``file_set_spec_type = 'NEW_LINE_DELIMITED_MANIFEST'``), so a run in progress, or one that was stopped,
is never half read. Three things make the files read in BigQuery as written:

* ``qc_flags`` is a Parquet LIST in the compliant three-level layout (``qc_flags.list.element``, which
  ``WriteResults`` asks pyarrow for with ``use_compliant_nested_type``); with ``enable_list_inference``
  BigQuery reads it as ``ARRAY<STRING>`` (REPEATED STRING) rather than a nested record.
* Every Parquet type maps onto one BigQuery type (:func:`bigquery_type`); a schema change that brings in a
  type BigQuery cannot hold (unsigned 64-bit, nanosecond timestamps, lists of lists) fails here, in tests.
* The partition key ``method`` comes from the folder names (``WITH PARTITION COLUMNS (method STRING)``).

Generated artifacts in ``sql/bigquery/`` (``python -m lvmass.storage.bigquery --write``; ``--check``
compares, as the tests do):

* ``lvmass.schema.json``: the results table's schema, as ``bq show --schema`` should list it;
* ``lvmass_errors.schema.json``: the dead-letter table's schema;
* ``create_tables.sql``: ``CREATE EXTERNAL TABLE`` for both, and the view;
* ``lvmass_by_participant.sql``: the view's query (Terraform renders it with ``templatefile``).

The SQL files hold ``${project}``, ``${dataset}`` and ``${output}`` (the run's ``--output``, ``gs://...``):
:func:`render` fills them, as do Terraform's ``templatefile`` and ``envsubst``.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from lvmass.core import contracts
from lvmass.core.schema import (
    ERRORS_DIRNAME,
    ERRORS_MANIFEST,
    ERRORS_SCHEMA,
    RESULTS_DIRNAME,
    RESULTS_FILE_SCHEMA,
    RESULTS_MANIFEST,
    RESULTS_PARTITION_COLUMNS,
    RESULTS_SCHEMA,
)

GENERATED_DIR = Path(__file__).resolve().parent / "sql" / "bigquery"
RESULTS_TABLE = "lvmass"
ERRORS_TABLE = "lvmass_errors"
PARTICIPANT_VIEW = "lvmass_by_participant"
RESULTS_SCHEMA_FILE = f"{RESULTS_TABLE}.schema.json"
ERRORS_SCHEMA_FILE = f"{ERRORS_TABLE}.schema.json"
DDL_FILE = "create_tables.sql"
VIEW_FILE = f"{PARTICIPANT_VIEW}.sql"
TEMPLATE_VARIABLES: tuple[str, ...] = ("project", "dataset", "output")

# Per-method columns of the view: one column per method for each of these results columns.
VIEW_METHOD_COLUMNS: tuple[str, ...] = ("lv_mass_g", "lv_mass_raw_g", "lvmi_g_m2", "lvh", "lvh_p90",
                                        "qc_pass")
# Columns that describe the participant, the same on every method's row: taken once (MAX ignores NULLs).
VIEW_PARTICIPANT_COLUMNS: tuple[str, ...] = ("eid", "sex", "age", "bsa_m2")
VIEW_KEY: tuple[str, ...] = ("participant_id", "instance")

# pyarrow type -> (GoogleSQL type for DDL, legacy type name that `bq show --schema` and tables.get print).
_SCALAR_TYPES: tuple[tuple[pa.DataType, str, str], ...] = (
    (pa.int8(), "INT64", "INTEGER"),
    (pa.int16(), "INT64", "INTEGER"),
    (pa.int32(), "INT64", "INTEGER"),
    (pa.int64(), "INT64", "INTEGER"),
    (pa.uint8(), "INT64", "INTEGER"),
    (pa.uint16(), "INT64", "INTEGER"),
    (pa.uint32(), "INT64", "INTEGER"),
    (pa.float32(), "FLOAT64", "FLOAT"),
    (pa.float64(), "FLOAT64", "FLOAT"),
    (pa.bool_(), "BOOL", "BOOLEAN"),
    (pa.string(), "STRING", "STRING"),
    (pa.large_string(), "STRING", "STRING"),
    (pa.binary(), "BYTES", "BYTES"),
    (pa.date32(), "DATE", "DATE"),
)


def _scalar(data_type: pa.DataType, where: str) -> tuple[str, str]:
    for arrow_type, standard, legacy in _SCALAR_TYPES:
        if data_type.equals(arrow_type):
            return standard, legacy
    raise ValueError(f"{where}: pyarrow type {data_type} has no clean BigQuery equivalent (supported: "
                     f"{sorted({str(t) for t, _, _ in _SCALAR_TYPES})} and list<one of them>). "
                     f"Received: {data_type}")


def bigquery_type(field: pa.Field) -> str:
    """The GoogleSQL type of a column: ``INT64``, ``FLOAT64``, ``BOOL``, ``STRING``, ``ARRAY<STRING>``...

    Raises ValueError naming the field for a type BigQuery cannot read from Parquet as written."""
    if pa.types.is_list(field.type):
        standard, _ = _scalar(field.type.value_type, f"field {field.name!r} (list element)")
        return f"ARRAY<{standard}>"
    return _scalar(field.type, f"field {field.name!r}")[0]


def schema_json_field(field: pa.Field) -> dict[str, str]:
    """One column as BigQuery's JSON schema has it (legacy type names; REPEATED for a list, REQUIRED for
    a non-nullable Parquet column, else NULLABLE)."""
    if pa.types.is_list(field.type):
        _, legacy = _scalar(field.type.value_type, f"field {field.name!r} (list element)")
        return {"name": field.name, "type": legacy, "mode": "REPEATED"}
    _, legacy = _scalar(field.type, f"field {field.name!r}")
    return {"name": field.name, "type": legacy, "mode": "NULLABLE" if field.nullable else "REQUIRED"}


def schema_json(file_schema: pa.Schema, partition_fields: Sequence[pa.Field] = ()) -> list[dict[str, str]]:
    """The table schema BigQuery derives: the file's columns in order, then the hive partition keys
    (nullable, as BigQuery adds them)."""
    fields = [schema_json_field(f) for f in file_schema]
    fields += [schema_json_field(pa.field(f.name, f.type, nullable=True)) for f in partition_fields]
    return fields


def results_partition_fields() -> list[pa.Field]:
    """The hive partition keys of the results (``method``), with their types from RESULTS_SCHEMA."""
    return [RESULTS_SCHEMA.field(name) for name in RESULTS_PARTITION_COLUMNS]


def table_ref(table: str) -> str:
    """A fully qualified, quoted table name with the template's project and dataset."""
    return f"`${{project}}.${{dataset}}.{table}`"


def external_table_ddl(
    table: str,
    file_schema: pa.Schema,
    *,
    folder: str,
    partition_fields: Sequence[pa.Field] = (),
    manifest: str | None = None,
) -> str:
    """``CREATE OR REPLACE EXTERNAL TABLE`` over ``${output}/<folder>/`` with an explicit column list.

    Hive-partitioned when ``partition_fields`` is given (``WITH PARTITION COLUMNS``, prefix
    ``${output}/<folder>``); Parquet LIST columns are read as arrays (``enable_list_inference``). With
    ``manifest`` (a path relative to the output) the table reads the files that manifest lists, one URI a
    line, instead of a wildcard's matches."""
    for name, value in (("folder", folder), ("manifest", manifest)):
        if value is not None and (not value or value.strip("/") != value):
            raise ValueError(f"{name} must be a relative name without leading or trailing '/'. "
                             f"Received: {value!r}")
    names = [f.name for f in file_schema]
    clash = sorted(set(names) & {f.name for f in partition_fields})
    if clash:
        raise ValueError(f"partition columns {clash} must not also be file columns of {table}")
    width = max(len(n) for n in names)
    columns = ",\n".join(f"  {f.name.ljust(width)} {bigquery_type(f)}" for f in file_schema)
    lines = [f"CREATE OR REPLACE EXTERNAL TABLE {table_ref(table)} (", columns, ")"]
    options = ["  format = 'PARQUET'"]
    if manifest is not None:
        options += [f"  uris = ['${{output}}/{manifest}']",
                    "  file_set_spec_type = 'NEW_LINE_DELIMITED_MANIFEST'"]
    if partition_fields:
        keys = ",\n".join(f"  {f.name} {bigquery_type(f)}" for f in partition_fields)
        lines += ["WITH PARTITION COLUMNS (", keys, ")"]
        if manifest is None:
            options += [f"  uris = ['${{output}}/{folder}/*']"]
        options += [f"  hive_partition_uri_prefix = '${{output}}/{folder}'",
                    "  require_hive_partition_filter = false"]
    elif manifest is None:
        options += [f"  uris = ['${{output}}/{folder}/*.parquet']"]
    options += ["  enable_list_inference = true"]
    lines += ["OPTIONS (", ",\n".join(options), ");"]
    return "\n".join(lines)


def participant_view_sql(results_table: str, methods: Sequence[str] = contracts.ALL_METHODS) -> str:
    """One row per participant and instance, every method side by side (``<method>_<column>``).

    Plain aggregation (``MAX(CASE ... END)``) in the SQL subset BigQuery and DuckDB share, so the same
    query is tested on DuckDB; ``results_table`` is the table reference to read (quoted as needed)."""
    if not methods:
        raise ValueError(f"methods must name at least one method. Received: {methods!r}")
    unknown = sorted(set(methods) - set(contracts.ALL_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {list(contracts.ALL_METHODS)}")
    names = set(RESULTS_SCHEMA.names)
    missing = sorted((set(VIEW_METHOD_COLUMNS) | set(VIEW_PARTICIPANT_COLUMNS) | set(VIEW_KEY)) - names)
    if missing:
        raise ValueError(f"the view reads columns {missing} that RESULTS_SCHEMA does not have")
    select = [f"  {key}" for key in VIEW_KEY]
    select += [f"  MAX({column}) AS {column}" for column in VIEW_PARTICIPANT_COLUMNS]
    select += ["  COUNT(*) AS methods_n"]
    for method in methods:
        select += [f"  MAX(CASE WHEN method = '{method}' THEN {column} END) AS {method}_{column}"
                   for column in VIEW_METHOD_COLUMNS]
    return "\n".join([
        f"-- {PARTICIPANT_VIEW}: one row per participant and instance, the methods side by side.",
        "-- Generated by `python -m lvmass.storage.bigquery --write` from lvmass.core.schema; do not edit.",
        "SELECT",
        ",\n".join(select),
        f"FROM {results_table}",
        f"GROUP BY {', '.join(VIEW_KEY)}",
    ]) + "\n"


def create_tables_sql() -> str:
    """The whole BigQuery DDL: both external tables and the per-participant view."""
    header = [
        "-- BigQuery DDL over one pipeline output (--output): external tables, queried in place, and a view.",
        "-- The tables read the files the output's last commit names: the manifests under _ledger/bigquery/,",
        "-- rewritten by every run (lvmass.storage.ledger), never a wildcard over files a run is writing.",
        "-- Generated by `python -m lvmass.storage.bigquery --write` from lvmass.core.schema; do not edit.",
        "-- Fill ${project}, ${dataset} and ${output} (gs://BUCKET/RUN, no trailing slash), e.g.",
        "--   project=P dataset=lvmass output=gs://B/runs/2026-11 envsubst < create_tables.sql | bq query "
        "--use_legacy_sql=false",
        "-- Terraform (terraform/bigquery.tf) creates the same tables and view.",
    ]
    view = participant_view_sql(table_ref(RESULTS_TABLE)).splitlines()
    view_body = "\n".join(line for line in view if not line.startswith("--"))
    return "\n\n".join([
        "\n".join(header),
        external_table_ddl(RESULTS_TABLE, RESULTS_FILE_SCHEMA, folder=RESULTS_DIRNAME,
                           partition_fields=results_partition_fields(), manifest=RESULTS_MANIFEST),
        external_table_ddl(ERRORS_TABLE, ERRORS_SCHEMA, folder=ERRORS_DIRNAME, manifest=ERRORS_MANIFEST),
        f"CREATE OR REPLACE VIEW {table_ref(PARTICIPANT_VIEW)} AS\n{view_body.rstrip()};",
    ]) + "\n"


def generated_files() -> dict[str, str]:
    """File name -> content of every generated artifact (``GENERATED_DIR``)."""
    return {
        RESULTS_SCHEMA_FILE: json.dumps(schema_json(RESULTS_FILE_SCHEMA, results_partition_fields()),
                                        indent=2) + "\n",
        ERRORS_SCHEMA_FILE: json.dumps(schema_json(ERRORS_SCHEMA), indent=2) + "\n",
        DDL_FILE: create_tables_sql(),
        VIEW_FILE: participant_view_sql(table_ref(RESULTS_TABLE)),
    }


def render(text: str, variables: Mapping[str, str]) -> str:
    """Fill ``${project}``, ``${dataset}``, ``${output}`` (exactly these; a missing one raises ValueError)."""
    unknown = sorted(set(variables) - set(TEMPLATE_VARIABLES))
    if unknown:
        raise ValueError(f"unknown template variables {unknown}; expected {list(TEMPLATE_VARIABLES)}")
    output = variables.get("output")
    if output is not None and (not output.startswith("gs://") or output.endswith("/")):
        raise ValueError(f"output must be a gs:// folder without a trailing '/'. Received: {output!r}")
    try:
        return string.Template(text).substitute(variables)
    except KeyError as exc:
        raise ValueError(f"template variable {exc.args[0]!r} is needed. "
                         f"Received: {sorted(variables)}") from None


def stale_files(directory: Path = GENERATED_DIR) -> list[str]:
    """Names of generated files that are missing from ``directory`` or differ from the generator."""
    return sorted(name for name, text in generated_files().items()
                  if not (directory / name).is_file() or (directory / name).read_text() != text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvmass.storage.bigquery",
                                     description="Generate the BigQuery DDL, JSON schemas and view SQL.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"(re)write the files in {GENERATED_DIR}")
    action.add_argument("--check", action="store_true", help="exit 1 if a checked-in file is stale")
    action.add_argument("--print", dest="print_name", choices=sorted(generated_files()),
                        help="print one generated file")
    parser.add_argument("--dir", type=Path, default=GENERATED_DIR, help="folder of the generated files")
    args = parser.parse_args(argv)
    if args.print_name:
        sys.stdout.write(generated_files()[args.print_name])
        return 0
    if args.check:
        stale = stale_files(args.dir)
        for name in stale:
            print(f"stale: {args.dir / name} (run python -m lvmass.storage.bigquery --write)",
                  file=sys.stderr)
        return 1 if stale else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, text in generated_files().items():
        (args.dir / name).write_text(text)
        print(args.dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
