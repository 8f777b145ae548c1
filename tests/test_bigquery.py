"""BigQuery over the pipeline's Parquet, checked offline.

No BigQuery is reachable here. What is checked instead:

* the checked-in DDL, JSON schemas and view equal the generator's output (``lvmass.storage.bigquery``);
* the DDL's column list, read back from the SQL text, matches ``lvmass.core.schema`` name by name;
* files written by the pipeline's own writer (``ledger.parquet_bytes``, what the finalise writes) carry
  the compliant LIST layout, and their Parquet types, converted by BigQuery's documented Parquet rules
  (implemented here independently of the generator), give exactly the JSON schema;
* the example queries and the view run on DuckDB over those files, with BigQuery's list semantics (an
  empty array drops the row under ``CROSS JOIN UNNEST``; a list is never NULL).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lvmass.core import contracts
from lvmass.core.measure import results_file_row
from lvmass.core.schema import (
    ERRORS_DIRNAME,
    ERRORS_MANIFEST,
    ERRORS_SCHEMA,
    RESULTS_DIRNAME,
    RESULTS_FILE_SCHEMA,
    RESULTS_MANIFEST,
    RESULTS_PARTITION_COLUMNS,
    RESULTS_SCHEMA,
    ErrorRecord,
    ResultRecord,
    writable_error_row,
)
from lvmass.storage import bigquery, ledger, queries

# BigQuery's Parquet conversions (docs: "Loading Parquet data", "Parquet conversions"): physical type and
# logical annotation -> BigQuery type. Written out here, apart from the generator, so the two are compared.
PARQUET_TO_BIGQUERY = {
    ("BOOLEAN", "None"): "BOOLEAN",
    ("INT32", "None"): "INTEGER",
    ("INT64", "None"): "INTEGER",
    ("INT32", "Int(bitWidth=32, isSigned=true)"): "INTEGER",
    ("INT64", "Int(bitWidth=64, isSigned=true)"): "INTEGER",
    ("DOUBLE", "None"): "FLOAT",
    ("FLOAT", "None"): "FLOAT",
    ("BYTE_ARRAY", "String"): "STRING",
    ("BYTE_ARRAY", "None"): "BYTES",
}
# The GoogleSQL spelling the DDL must use for each pyarrow type of the schema.
ARROW_TO_DDL = {"int32": "INT64", "int64": "INT64", "double": "FLOAT64", "bool": "BOOL", "string": "STRING",
                "list<item: string>": "ARRAY<STRING>", "list<element: string>": "ARRAY<STRING>"}

PARTICIPANTS = (
    # participant_id, eid, instance, sex: a UK Biobank participant at two visits and one from elsewhere
    ("1000001", 1000001, 2, "male"),
    ("1000001", 1000001, 3, "male"),
    ("1000002", 1000002, 2, "female"),
    ("siteA_017", None, 0, None),
)
FAILING_FLAGS = [contracts.QC_MASS_IMPLAUSIBLE, contracts.QC_NO_PHENOTYPE]


def _default(data_type: pa.DataType):
    if pa.types.is_list(data_type):
        return []
    if pa.types.is_boolean(data_type):
        return True
    if pa.types.is_integer(data_type):
        return 1
    if pa.types.is_floating(data_type):
        return 1.5
    return "x"


def _record(cls, schema: pa.Schema, **values):
    """A record with ``values`` and a plain value of the schema's type for every other required field:
    the test keeps working when fields are added to the records."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = values.pop(f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = _default(schema.field(f.name).type)
    assert not values, f"not fields of {cls.__name__}: {sorted(values)}"
    return cls(**kwargs)


def _results() -> list[ResultRecord]:
    records = []
    for i, (pid, eid, instance, sex) in enumerate(PARTICIPANTS):
        for j, method in enumerate(contracts.ALL_METHODS):
            failing = pid == "1000002" and method == contracts.METHOD_ML4H_SEG
            informational = pid == "siteA_017"
            records.append(_record(
                ResultRecord, RESULTS_SCHEMA, participant_id=pid, eid=eid, instance=instance, method=method,
                sex=sex, lv_mass_g=80.0 + 10 * i + j, lv_mass_raw_g=140.0 + i, lvmi_g_m2=40.0 + i,
                lvh=i == 0, lvh_p90=None, age=None if sex is None else 60.0 + i,
                bsa_m2=None if sex is None else 1.8 + i / 10,
                qc_flags=(list(FAILING_FLAGS) if failing
                          else [contracts.QC_NO_PHENOTYPE] if informational else []),
                qc_pass=not failing, source_uri=f"gs://ukb/20209/{pid}_20209_{instance}_0.zip"))
    return records


def _errors() -> list[ErrorRecord]:
    return [_record(ErrorRecord, ERRORS_SCHEMA, source_uri="gs://ukb/20209/1000009_20209_2_0.zip",
                    eid=1000009, instance=2, stage="decode", error_type="DecodeError",
                    message="no SAX series"),
            _record(ErrorRecord, ERRORS_SCHEMA, source_uri="gs://ukb/20209/broken.zip", eid=None,
                    instance=None, stage="read", error_type="BadZipFile", message="File is not a zip file")]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[ResultRecord]]:
    """A pipeline output folder's derived files, written by the pipeline's own Parquet writer
    (``ledger.parquet_bytes``, what ``ledger.finalise`` writes), one file per method."""
    output = tmp_path_factory.mktemp("bq") / "run"
    records = _results()
    for method in contracts.ALL_METHODS:
        rows = [results_file_row(r) for r in records if r.method == method]
        path = output / RESULTS_DIRNAME / f"method={method}" / "results-0.parquet"
        path.parent.mkdir(parents=True)
        path.write_bytes(ledger.parquet_bytes(rows, RESULTS_FILE_SCHEMA))
    (output / ERRORS_DIRNAME).mkdir()
    (output / ERRORS_DIRNAME / "errors-0.parquet").write_bytes(ledger.parquet_bytes(
        [writable_error_row(e.to_row()) for e in _errors()], ERRORS_SCHEMA))
    return output, records


def _result_files(output: Path) -> list[Path]:
    files = sorted((output / RESULTS_DIRNAME).glob("method=*/*.parquet"))
    assert len(files) == len(contracts.ALL_METHODS)
    return files


# --- generated artifacts ----------------------------------------------------------------------------


def test_checked_in_artifacts_equal_the_generator():
    assert bigquery.stale_files() == [], "run: python -m lvmass.storage.bigquery --write"
    assert bigquery.main(["--check"]) == 0


def test_check_reports_a_stale_file(tmp_path):
    assert bigquery.main(["--write", "--dir", str(tmp_path)]) == 0
    (tmp_path / bigquery.DDL_FILE).write_text("-- edited by hand\n")
    assert bigquery.stale_files(tmp_path) == [bigquery.DDL_FILE]
    assert bigquery.main(["--check", "--dir", str(tmp_path)]) == 1


def _ddl_blocks(sql: str) -> dict[str, str]:
    blocks = re.findall(r"CREATE OR REPLACE (?:EXTERNAL TABLE|VIEW) `\$\{project\}\.\$\{dataset\}\.(\w+)`"
                        r"(.*?);", sql, flags=re.S)
    return dict(blocks)


def _columns(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in text.strip().splitlines()]


def test_ddl_columns_are_the_schema():
    """The DDL, read back as text, names every file column with its type, in the files' order."""
    blocks = _ddl_blocks((bigquery.GENERATED_DIR / bigquery.DDL_FILE).read_text())
    assert set(blocks) == {bigquery.RESULTS_TABLE, bigquery.ERRORS_TABLE, bigquery.PARTICIPANT_VIEW}

    results = blocks[bigquery.RESULTS_TABLE]
    columns = re.match(r"\s*\((.*?)\)\s*WITH PARTITION COLUMNS", results, flags=re.S).group(1)
    assert _columns(columns.replace(",", "")) == [(f.name, ARROW_TO_DDL[str(f.type)])
                                                  for f in RESULTS_FILE_SCHEMA]
    keys = re.search(r"WITH PARTITION COLUMNS \((.*?)\)", results, flags=re.S).group(1)
    assert _columns(keys) == [(name, "STRING") for name in RESULTS_PARTITION_COLUMNS]
    assert f"uris = ['${{output}}/{RESULTS_MANIFEST}']" in results
    assert "file_set_spec_type = 'NEW_LINE_DELIMITED_MANIFEST'" in results
    assert "hive_partition_uri_prefix = '${output}/lvmass'" in results
    assert "enable_list_inference = true" in results and "format = 'PARQUET'" in results

    errors = blocks[bigquery.ERRORS_TABLE]
    columns = re.match(r"\s*\((.*?)\)\s*OPTIONS", errors, flags=re.S).group(1)
    assert _columns(columns.replace(",", "")) == [(f.name, ARROW_TO_DDL[str(f.type)]) for f in ERRORS_SCHEMA]
    assert f"uris = ['${{output}}/{ERRORS_MANIFEST}']" in errors

    view = blocks[bigquery.PARTICIPANT_VIEW]
    assert "FROM `${project}.${dataset}.lvmass`" in view
    for method in contracts.ALL_METHODS:
        assert f"AS {method}_lv_mass_g" in view


def test_json_schema_is_the_file_schema_plus_partition_keys():
    schema = json.loads((bigquery.GENERATED_DIR / bigquery.RESULTS_SCHEMA_FILE).read_text())
    assert [f["name"] for f in schema] == RESULTS_FILE_SCHEMA.names + list(RESULTS_PARTITION_COLUMNS)
    assert {f["name"]: f["mode"] for f in schema}["qc_flags"] == "REPEATED"
    errors = json.loads((bigquery.GENERATED_DIR / bigquery.ERRORS_SCHEMA_FILE).read_text())
    assert [f["name"] for f in errors] == ERRORS_SCHEMA.names


@pytest.mark.parametrize(("data_type", "needle"), [
    (pa.uint64(), "uint64"),
    (pa.timestamp("ns"), "timestamp"),
    (pa.list_(pa.list_(pa.string())), "list<item: string>"),
    (pa.float16(), "halffloat"),
])
def test_types_without_a_bigquery_equivalent_are_refused(data_type, needle):
    with pytest.raises(ValueError, match=rf"field 'bad'.*Received: {re.escape(needle)}"):
        bigquery.bigquery_type(pa.field("bad", data_type))
    with pytest.raises(ValueError, match="field 'bad'"):
        bigquery.schema_json(pa.schema([pa.field("bad", data_type)]))


def test_render_fills_the_template_and_names_what_is_wrong():
    sql = (bigquery.GENERATED_DIR / bigquery.DDL_FILE).read_text()
    rendered = bigquery.render(sql, {"project": "p-1", "dataset": "lvmass", "output": "gs://b/runs/r1"})
    assert "${" not in rendered
    assert "`p-1.lvmass.lvmass`" in rendered
    assert f"uris = ['gs://b/runs/r1/{RESULTS_MANIFEST}']" in rendered
    with pytest.raises(ValueError, match="template variable 'output' is needed"):
        bigquery.render(sql, {"project": "p", "dataset": "d"})
    with pytest.raises(ValueError, match=r"without a trailing '/'. Received: 'gs://b/r/'"):
        bigquery.render(sql, {"project": "p", "dataset": "d", "output": "gs://b/r/"})
    with pytest.raises(ValueError, match=r"unknown template variables \['bucket'\]"):
        bigquery.render(sql, {"bucket": "b"})


def test_view_refuses_unknown_methods():
    with pytest.raises(ValueError, match=r"unknown methods \['ml4h_sag'\]"):
        bigquery.participant_view_sql("lvmass", ("ml4h_sag",))
    with pytest.raises(ValueError, match="at least one method"):
        bigquery.participant_view_sql("lvmass", ())


# --- the files as the pipeline writes them ------------------------------------------------------------


def test_lists_are_written_in_the_compliant_nested_layout(written):
    """``qc_flags`` is ``group (List) { repeated group list { element } }``: what BigQuery's list inference
    reads as ARRAY<STRING> (the legacy ``list.item`` layout would come out as a nested record)."""
    output, _ = written
    for path in _result_files(output):
        schema = pq.ParquetFile(path).schema
        paths = [schema.column(i).path for i in range(len(schema))]
        assert "qc_flags.list.element" in paths
        assert not any(p.endswith(".item") for p in paths)
        assert re.search(r"group field_id=-?\d+ qc_flags \(List\)", str(schema))


def _bigquery_schema_of(path: Path) -> list[dict[str, str]]:
    """What BigQuery derives from a Parquet file with list inference on: one field per top-level column."""
    schema = pq.ParquetFile(path).schema
    fields = []
    for i in range(len(schema)):
        column = schema.column(i)
        parts = column.path.split(".")
        key = (column.physical_type, str(column.logical_type))
        assert key in PARQUET_TO_BIGQUERY, f"{column.path}: {key} has no BigQuery conversion"
        if len(parts) == 3 and parts[1:] == ["list", "element"]:
            assert column.max_repetition_level == 1
            fields.append({"name": parts[0], "type": PARQUET_TO_BIGQUERY[key], "mode": "REPEATED"})
        else:
            assert len(parts) == 1, f"{column.path}: nested column BigQuery would read as a RECORD"
            mode = "REQUIRED" if column.max_definition_level == 0 else "NULLABLE"
            fields.append({"name": parts[0], "type": PARQUET_TO_BIGQUERY[key], "mode": mode})
    return fields


def test_parquet_types_convert_to_the_json_schema(written):
    output, _ = written
    expected = json.loads((bigquery.GENERATED_DIR / bigquery.RESULTS_SCHEMA_FILE).read_text())
    partition = expected[-len(RESULTS_PARTITION_COLUMNS):]
    assert partition == [{"name": "method", "type": "STRING", "mode": "NULLABLE"}]
    for path in _result_files(output):
        assert path.parent.name.startswith("method=")  # the hive key BigQuery appends
        assert _bigquery_schema_of(path) == expected[:-len(RESULTS_PARTITION_COLUMNS)]
    (errors_file,) = sorted((output / ERRORS_DIRNAME).glob("*.parquet"))
    assert _bigquery_schema_of(errors_file) == json.loads(
        (bigquery.GENERATED_DIR / bigquery.ERRORS_SCHEMA_FILE).read_text())


def test_example_queries_run_on_duckdb_with_bigquery_list_semantics(written):
    output, records = written
    con = queries.connect(str(output))
    assert con.execute("SELECT count(*) FROM lvmass WHERE qc_flags IS NULL").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM lvmass").fetchone()[0] == len(records)
    # BigQuery: CROSS JOIN UNNEST of an empty array yields no row; elements come out one per row.
    unnested = con.execute(
        "SELECT participant_id, instance, method, flag FROM lvmass CROSS JOIN UNNEST(qc_flags) AS flag"
    ).fetchall()
    assert sorted(unnested) == sorted((r.participant_id, r.instance, r.method, flag)
                                      for r in records for flag in r.qc_flags)

    statements = queries.example_queries()
    assert statements
    for sql in statements:
        con.execute(sql).fetchall()  # every example runs on the files as written
    by_flag = [sql for sql in statements if "UNNEST(qc_flags)" in sql]
    assert by_flag, "the examples should include the qc_flags UNNEST query"
    expected = collections.Counter(
        (r.method, flag) for r in records if not r.qc_pass for flag in r.qc_flags
        if flag not in contracts.QC_INFORMATIONAL_FLAGS)
    got = {(method, flag): n for method, flag, n in con.execute(by_flag[0]).fetchall()}
    assert got == dict(expected) == {(contracts.METHOD_ML4H_SEG, contracts.QC_MASS_IMPLAUSIBLE): 1}


def test_participant_view_on_duckdb(written):
    output, records = written
    con = queries.connect(str(output))
    cursor = con.execute(bigquery.participant_view_sql("lvmass"))
    names = [d[0] for d in cursor.description]
    rows = {(row["participant_id"], row["instance"]): row
            for row in (dict(zip(names, values, strict=True)) for values in cursor.fetchall())}
    assert sorted(rows) == sorted((pid, instance) for pid, _, instance, _ in PARTICIPANTS)
    assert {row["methods_n"] for row in rows.values()} == {len(contracts.ALL_METHODS)}
    for r in records:
        row = rows[(r.participant_id, r.instance)]
        assert row[f"{r.method}_lv_mass_g"] == pytest.approx(r.lv_mass_g)
        assert row[f"{r.method}_qc_pass"] is r.qc_pass
        assert row[f"{r.method}_lvh_p90"] is None
        assert (row["eid"], row["sex"], row["age"]) == (r.eid, r.sex, r.age)
