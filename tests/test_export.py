"""``lvmass export``: a results folder written with pyarrow in RESULTS_FILE_SCHEMA (hive-partitioned by
method, as the pipeline writes it) becomes one wide row per participant and visit, read back with
pyarrow and DuckDB, and joined to a UK Biobank table by eid."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import export
from lvmass import cli
from lvmass.core.schema import RESULTS_DIRNAME, RESULTS_FILE_SCHEMA, RESULTS_SCHEMA

UKB_EID = 1000001  # imaged at visits 2 and 3; every method at 2, ML4H_seg only at 3
UKB_EID_2 = 1000002  # visit 2, ML4H_seg and ML4H_reg
OTHER_ID = "SCD0000101"  # a non-UK Biobank study: participant_id only, eid None


def _row(participant_id: str, eid: int | None, instance: int, method: str, mass_g: float,
         **overrides: Any) -> dict[str, Any]:
    row = {
        "participant_id": participant_id, "eid": eid, "instance": instance, "method": method,
        "lv_mass_raw_g": mass_g + 10.0, "lv_mass_g": mass_g, "calibration": "sex_mean_centered",
        "myocardium_volume_ml": (mass_g + 10.0) / 1.05, "lv_cavity_volume_ml": 150.0, "bsa_m2": 1.9,
        "lvmi_g_m2": mass_g / 1.9, "lvh": mass_g / 1.9 > 72.0, "lvh_p90": False, "sex": "male",
        "age": 61.5, "n_slices": 11, "pixel_spacing_row_mm": 1.8, "pixel_spacing_col_mm": 1.8,
        "slice_spacing_mm": 10.0, "tensor_pixel_spacing_mm": 1.8, "in_plane_scale": 1.0, "qc_flags": [],
        "qc_pass": True, "model_version": f"{method}-1", "pipeline_version": "0.1.0",
        "source_uri": f"gs://b/{participant_id}_20209_{instance}_0.zip",
    }
    row.update(overrides)
    return row


RESULT_ROWS = [
    _row(str(UKB_EID), UKB_EID, 2, "ml4h_seg", 150.0, qc_flags=["few_slices", "mass_implausible"],
         qc_pass=False, lvh=True),
    _row(str(UKB_EID), UKB_EID, 2, "ml4h_reg", 140.0, calibration="none"),
    _row(str(UKB_EID), UKB_EID, 2, "inlinevf", 155.0, model_version=None, lvh=None),
    _row(str(UKB_EID), UKB_EID, 2, "inlinevf_recalibrated", 145.0, calibration="linear_recalibration",
         model_version=None),
    _row(str(UKB_EID), UKB_EID, 3, "ml4h_seg", 152.0, age=66.0),
    _row(str(UKB_EID_2), UKB_EID_2, 2, "ml4h_seg", 110.0, sex="female", bsa_m2=1.6),
    _row(str(UKB_EID_2), UKB_EID_2, 2, "ml4h_reg", 112.0, sex="female", bsa_m2=1.6, calibration="none"),
    _row(OTHER_ID, None, 2, "ml4h_seg", 120.0, sex=None, age=None, bsa_m2=None, lvmi_g_m2=None, lvh=None),
]


def write_results(root: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as the pipeline writes them: ``root/lvmass/method=<m>/part.parquet`` in RESULTS_FILE_SCHEMA."""
    for method in sorted({r["method"] for r in rows}):
        folder = root / RESULTS_DIRNAME / f"method={method}"
        folder.mkdir(parents=True, exist_ok=True)
        part = [{k: v for k, v in r.items() if k != "method"} for r in rows if r["method"] == method]
        pq.write_table(pa.Table.from_pylist(part, schema=RESULTS_FILE_SCHEMA), folder / "part.parquet")
    return root


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write_results(tmp_path / "run", RESULT_ROWS)


def _by_key(table: pa.Table) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["participant_id"], r["instance"]): r for r in table.to_pylist()}


class TestParquet:
    def test_one_row_per_participant_and_visit_with_every_method(self, results, tmp_path):
        out = tmp_path / "wide.parquet"
        assert export.main(["--results", str(results), "--out", str(out)]) == 0
        table = pq.read_table(out)
        assert table.num_rows == 4
        rows = _by_key(table)
        assert set(rows) == {(str(UKB_EID), 2), (str(UKB_EID), 3), (str(UKB_EID_2), 2), (OTHER_ID, 2)}
        first = rows[(str(UKB_EID), 2)]
        assert first["eid"] == UKB_EID and first["sex"] == "male" and first["bsa_m2"] == 1.9
        assert first["ml4h_seg_lv_mass_g"] == 150.0 and first["ml4h_seg_lv_mass_raw_g"] == 160.0
        assert first["ml4h_seg_lvmi_g_m2"] == pytest.approx(150.0 / 1.9)
        assert first["ml4h_seg_lvh"] is True and first["ml4h_seg_lvh_p90"] is False
        assert first["ml4h_seg_qc_pass"] is False
        assert first["ml4h_seg_qc_flags"] == ["few_slices", "mass_implausible"]
        assert first["ml4h_reg_lv_mass_g"] == 140.0 and first["ml4h_reg_calibration"] == "none"
        assert first["inlinevf_lvh"] is None and first["inlinevf_recalibrated_lv_mass_g"] == 145.0
        repeat = rows[(str(UKB_EID), 3)]
        assert repeat["age"] == 66.0 and repeat["ml4h_seg_lv_mass_g"] == 152.0
        assert repeat["ml4h_reg_lv_mass_g"] is None and repeat["ml4h_reg_qc_flags"] is None

    def test_types_are_the_results_schemas(self, results, tmp_path):
        out = tmp_path / "wide.parquet"
        assert export.main(["--results", str(results), "--out", str(out)]) == 0
        schema = pq.read_schema(out)
        assert schema.names[:3] == ["participant_id", "eid", "instance"]
        assert schema.field("eid").type == pa.int64() and schema.field("eid").nullable
        assert schema.field("instance").type == RESULTS_SCHEMA.field("instance").type
        assert not schema.field("participant_id").nullable
        assert schema.field("ml4h_seg_qc_flags").type == pa.list_(pa.string())
        assert schema.field("inlinevf_lvh").type == pa.bool_()
        assert schema.field("n_slices").type == pa.int32()
        for column in ("sex", "age", "bsa_m2", "n_slices", "pixel_spacing_row_mm", "pixel_spacing_col_mm",
                       "slice_spacing_mm"):
            assert column in schema.names
        per_method = ("lv_mass_g", "lv_mass_raw_g", "lvmi_g_m2", "lvh", "lvh_p90", "qc_pass", "qc_flags")
        for method in ("ml4h_seg", "ml4h_reg", "inlinevf", "inlinevf_recalibrated"):
            for column in per_method:
                assert f"{method}_{column}" in schema.names

    def test_a_participant_without_eid_is_written_with_a_blank_eid(self, results, tmp_path):
        out = tmp_path / "wide.parquet"
        assert export.main(["--results", str(results), "--out", str(out)]) == 0
        other = _by_key(pq.read_table(out))[(OTHER_ID, 2)]
        assert other["eid"] is None and other["ml4h_seg_lv_mass_g"] == 120.0
        assert other["ml4h_reg_lv_mass_g"] is None

    def test_duckdb_reads_it_and_joins_a_uk_biobank_table_by_eid(self, results, tmp_path):
        out = tmp_path / "wide.parquet"
        assert export.main(["--results", str(results), "--out", str(out)]) == 0
        con = duckdb.connect()
        con.execute("CREATE TABLE ukb AS SELECT * FROM (VALUES (1000001, 1), (1000002, 0)) t(eid, f31)")
        joined = con.execute(
            f"SELECT w.eid, w.instance, u.f31, w.ml4h_seg_lv_mass_g, len(w.ml4h_seg_qc_flags) AS n_flags "
            f"FROM read_parquet('{out}') w JOIN ukb u USING (eid) ORDER BY eid, instance"
        ).fetchall()
        assert joined == [(UKB_EID, 2, 1, 150.0, 2), (UKB_EID, 3, 1, 152.0, 0), (UKB_EID_2, 2, 0, 110.0, 0)]


class TestCsv:
    def test_flags_are_joined_and_blanks_stay_blank(self, results, tmp_path):
        out = tmp_path / "wide.csv"
        assert export.main(["--results", str(results), "--out", str(out)]) == 0
        rows = duckdb.sql(
            f"SELECT participant_id, eid, instance, ml4h_seg_qc_flags, ml4h_seg_qc_pass, ml4h_reg_lv_mass_g "
            f"FROM read_csv('{out}', header = true, all_varchar = true) ORDER BY participant_id, instance"
        ).fetchall()
        assert rows == [
            (str(UKB_EID), str(UKB_EID), "2", "few_slices;mass_implausible", "False", "140.0"),
            (str(UKB_EID), str(UKB_EID), "3", None, "True", None),
            (str(UKB_EID_2), str(UKB_EID_2), "2", None, "True", "112.0"),
            (OTHER_ID, None, "2", None, "True", None),
        ]

    def test_csv_and_parquet_hold_the_same_numbers(self, results, tmp_path):
        assert export.main(["--results", str(results), "--out", str(tmp_path / "w.csv")]) == 0
        assert export.main(["--results", str(results), "--out", str(tmp_path / "w.parquet")]) == 0
        query = ("SELECT participant_id, instance, ml4h_seg_lv_mass_g, ml4h_seg_lvmi_g_m2, bsa_m2 FROM {} "
                 "ORDER BY 1, 2")
        from_csv = duckdb.sql(query.format(f"read_csv('{tmp_path / 'w.csv'}', header = true)")).fetchall()
        from_parquet = duckdb.sql(query.format(f"read_parquet('{tmp_path / 'w.parquet'}')")).fetchall()
        as_text = [[tuple(str(v) for v in r) for r in rows] for rows in (from_csv, from_parquet)]
        assert as_text[0] == as_text[1]


class TestCommand:
    def test_refuses_to_overwrite_without_the_flag(self, results, tmp_path, capsys):
        out = tmp_path / "wide.parquet"
        out.write_bytes(b"keep me")
        assert export.main(["--results", str(results), "--out", str(out)]) == 2
        assert f"{out} exists; pass --overwrite" in capsys.readouterr().err
        assert out.read_bytes() == b"keep me"
        assert export.main(["--results", str(results), "--out", str(out), "--overwrite"]) == 0
        assert pq.read_table(out).num_rows == 4

    def test_missing_success_marker_is_a_warning_not_an_error(self, results, tmp_path, capsys):
        assert export.main(["--results", str(results), "--out", str(tmp_path / "a.parquet")]) == 0
        assert "_SUCCESS not found: the run may be incomplete" in capsys.readouterr().err
        (results / export.SUCCESS_FILENAME).write_text("")
        lvmass_folder = str(results / RESULTS_DIRNAME)  # the lvmass/ folder itself: the marker is one up
        assert export.main(["--results", lvmass_folder, "--out", str(tmp_path / "b.parquet")]) == 0
        assert "_SUCCESS" not in capsys.readouterr().err
        assert pq.read_table(tmp_path / "b.parquet").num_rows == 4

    def test_warn_if_incomplete_names_the_marker(self, results, caplog):
        with caplog.at_level(logging.WARNING, logger="analysis.export"):
            assert export.warn_if_incomplete(str(results)) is False
        assert str(results / "_SUCCESS") in caplog.text

    def test_through_the_lvmass_entry(self, results, tmp_path, capsys):
        out = tmp_path / "wide.csv"
        assert cli.main(["export", "--results", str(results), "--out", str(out), "--log-level", "error"]) == 0
        assert "export:" in capsys.readouterr().out and out.exists()

    @pytest.mark.parametrize(
        ("out_name", "results_name", "message"),
        [
            ("wide.txt", "run", "the output must end in .csv or .parquet"),
            ("wide.csv", "empty", "no results Parquet files"),
        ],
    )
    def test_unusable_inputs_are_named(self, results, tmp_path, capsys, out_name, results_name, message):
        (tmp_path / "empty").mkdir()
        root = tmp_path / results_name
        assert export.main(["--results", str(root), "--out", str(tmp_path / out_name)]) == 2
        err = capsys.readouterr().err
        assert f"lvmass export: error: {tmp_path}" in err and message in err

    def test_one_participant_with_two_eids_is_refused(self, tmp_path, capsys):
        rows = [_row("p1", 1, 2, "ml4h_seg", 100.0), _row("p1", 2, 2, "ml4h_reg", 100.0)]
        root = write_results(tmp_path / "run", rows)
        assert export.main(["--results", str(root), "--out", str(tmp_path / "w.csv")]) == 2
        assert "participant_id 'p1' instance 2 has rows with different eids" in capsys.readouterr().err
