"""analysis.io and analysis.cohort: real Parquet (RESULTS_FILE_SCHEMA, hive layout) and CSV files written
and read back, locally and through a GCS emulator; every bad input is named in its error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import io as aio
from analysis.cohort import build_cohort, mcol
from analysis.simulate import simulate_study, write_results, write_study
from beam_pipeline.contracts import ALL_METHODS
from beam_pipeline.schema import PHENOTYPE_COLUMNS, RESULTS_FILE_SCHEMA, RESULTS_SCHEMA


@pytest.fixture(scope="module")
def study():
    return simulate_study(120, seed=21, qc_fail_share=0.05, repeat_visit_share=0.1)


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
    return write_study(study, tmp_path_factory.mktemp("study"))


class TestReadResults:
    def test_round_trip_restores_the_method_partition(self, study, written):
        frame = aio.read_results(written["results"])
        assert list(frame.columns) == RESULTS_SCHEMA.names
        assert set(frame["method"]) == set(ALL_METHODS)
        key = ["eid", "instance", "method"]
        got = frame.sort_values(key).reset_index(drop=True)
        expected = study.results.sort_values(key).reset_index(drop=True)
        pd.testing.assert_series_equal(got["lv_mass_g"], expected["lv_mass_g"])
        assert got["qc_flags"].map(list).tolist() == expected["qc_flags"].map(list).tolist()

    def test_agrees_with_duckdb_hive_partitioning(self, written):
        frame = aio.read_results(written["results"])
        glob = f"{written['results']}/lvmass/*/*.parquet"
        counts = duckdb.sql(
            f"SELECT method, count(*) AS n, sum(lv_mass_g) AS s "
            f"FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY method"
        ).df()
        ours = frame.groupby("method")["lv_mass_g"].agg(["size", "sum"])
        for row in counts.itertuples():
            assert ours.loc[row.method, "size"] == row.n
            assert ours.loc[row.method, "sum"] == pytest.approx(row.s)

    def test_accepts_the_lvmass_folder_itself(self, written):
        assert len(aio.read_results(Path(written["results"]) / "lvmass")) == len(
            aio.read_results(written["results"])
        )

    def test_no_parquet_files(self, tmp_path):
        with pytest.raises(aio.InputError, match="no results Parquet files") as info:
            aio.read_results(tmp_path)
        assert str(tmp_path) in str(info.value)

    def test_unknown_method_partition_is_named(self, study, tmp_path):
        write_results(study.results[study.results["method"] == "ml4h_seg"], tmp_path)
        (tmp_path / "lvmass" / "method=ml4h_seg").rename(tmp_path / "lvmass" / "method=mystery")
        with pytest.raises(aio.InputError, match="unknown method partition 'mystery'") as info:
            aio.read_results(tmp_path)
        assert "method=mystery" in str(info.value)

    def test_corrupt_file_is_named(self, study, tmp_path):
        write_results(study.results[study.results["method"] == "ml4h_reg"], tmp_path, files_per_method=1)
        bad = tmp_path / "lvmass" / "method=ml4h_reg" / "part-00001.parquet"
        bad.write_bytes(b"not parquet at all")
        with pytest.raises(aio.InputError, match="not a readable Parquet file") as info:
            aio.read_results(tmp_path)
        assert info.value.source == str(bad)

    def test_missing_column_is_named(self, study, tmp_path):
        folder = tmp_path / "lvmass" / "method=inlinevf"
        folder.mkdir(parents=True)
        part = study.results[study.results["method"] == "inlinevf"].drop(columns=["method", "lvmi_g_m2"])
        schema = pa.schema([f for f in RESULTS_FILE_SCHEMA if f.name != "lvmi_g_m2"])
        pq.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False), folder / "p.parquet")
        with pytest.raises(aio.InputError, match=r"missing column\(s\) \['lvmi_g_m2'\]"):
            aio.read_results(tmp_path)

    def test_reads_only_the_schema_columns(self, study, tmp_path):
        # an extra column whose bytes are corrupt: reading whole files fails, reading the schema's
        # columns never touches it
        folder = tmp_path / "lvmass" / "method=ml4h_seg"
        folder.mkdir(parents=True)
        part = study.results[study.results["method"] == "ml4h_seg"].drop(columns="method")
        path = _with_corrupt_extra_column(
            pa.Table.from_pandas(part, schema=RESULTS_FILE_SCHEMA, preserve_index=False), folder / "p.parquet"
        )
        with pytest.raises(OSError):
            pq.read_table(path)
        frame = aio.read_results(tmp_path)
        assert list(frame.columns) == RESULTS_SCHEMA.names and len(frame) == len(part)

    def test_duplicated_rows_are_an_error(self, study, tmp_path):
        part = study.results[study.results["method"] == "ml4h_seg"]
        write_results(pd.concat([part, part.iloc[:1]]), tmp_path, files_per_method=2)
        with pytest.raises(aio.InputError, match="duplicated"):
            aio.read_results(tmp_path)


def _with_corrupt_extra_column(table: pa.Table, path: Path) -> Path:
    """Write ``table`` plus a column ``debug_blob`` whose pages are then overwritten with garbage."""
    table = table.append_column("debug_blob", pa.array([b"payload" * 20] * table.num_rows, pa.binary()))
    pq.write_table(table, path, compression="none", use_dictionary=False)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(table.schema.get_field_index("debug_blob"))
    data = bytearray(path.read_bytes())
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    data[start : start + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    return path


class TestReadPhenotypes:
    def _write(self, tmp_path: Path, frame: pd.DataFrame) -> Path:
        path = tmp_path / "phenotypes.csv"
        frame.to_csv(path, index=False)
        return path

    def test_round_trip_types(self, study, written):
        frame = aio.read_phenotypes(written["phenotypes"])
        assert list(frame.columns) == list(PHENOTYPE_COLUMNS)
        assert frame["eid"].dtype == np.int64
        assert set(frame["sex"]) <= {"female", "male"}
        np.testing.assert_allclose(
            frame["manual_lv_mass_g"], study.phenotypes["manual_lv_mass_g"], equal_nan=True
        )
        assert frame["manual_lv_mass_g"].isna().sum() == study.phenotypes["manual_lv_mass_g"].isna().sum() > 0
        assert set(frame["hypertension"].unique()) <= {0.0, 1.0}

    def test_uk_biobank_sex_coding_and_blank_values(self, study, tmp_path):
        raw = study.phenotypes.head(4).copy()
        raw["sex"] = [0, 1, 0, ""]
        raw["hypertension"] = ["1", "0", "", "true"]
        frame = aio.read_phenotypes(self._write(tmp_path, raw))
        assert frame["sex"].tolist() == ["female", "male", "female", None]
        assert frame["hypertension"].tolist()[:2] == [1.0, 0.0]
        assert np.isnan(frame["hypertension"].iloc[2]) and frame["hypertension"].iloc[3] == 1.0

    @pytest.mark.parametrize(
        ("column", "value", "match"),
        [
            ("sex", "unknown-ish", "column 'sex' must be female/male or 0/1; bad value 'unknown-ish'"),
            ("age", "sixty", "column 'age' has a non-numeric value 'sixty'"),
            ("heart_failure", "maybe", "column 'heart_failure' must be 0/1"),
            ("eid", "12x", "eid must be integers"),
        ],
    )
    def test_bad_values_name_the_file_column_and_eid(self, study, tmp_path, column, value, match):
        raw = study.phenotypes.head(5).astype(object).copy()
        raw.loc[raw.index[2], column] = value
        path = self._write(tmp_path, raw)
        with pytest.raises(aio.InputError, match=match) as info:
            aio.read_phenotypes(path)
        assert info.value.source == str(path)
        if column != "eid":
            assert str(study.phenotypes["eid"].iloc[2]) in str(info.value)

    def test_parquet_reads_only_the_phenotype_columns(self, study, tmp_path):
        table = pa.Table.from_pandas(study.phenotypes, preserve_index=False)
        path = _with_corrupt_extra_column(table, tmp_path / "phenotypes.parquet")
        frame = aio.read_phenotypes(path)
        assert list(frame.columns) == list(PHENOTYPE_COLUMNS) and len(frame) == len(study.phenotypes)

    def test_missing_column_and_duplicate_eid(self, study, tmp_path):
        with pytest.raises(aio.InputError, match="missing column"):
            aio.read_phenotypes(self._write(tmp_path, study.phenotypes.drop(columns="weight_kg")))
        doubled = pd.concat([study.phenotypes.head(3), study.phenotypes.head(1)])
        with pytest.raises(aio.InputError, match="appears more than once"):
            aio.read_phenotypes(self._write(tmp_path, doubled))


class TestReadHoldoutAndTruth:
    def test_holdout_with_header_or_plain_list(self, tmp_path):
        (tmp_path / "a.csv").write_text("eid,split\n11,test\n12,test\n")
        (tmp_path / "b.txt").write_text("11\n12\n\n")
        assert aio.read_holdout(tmp_path / "a.csv") == aio.read_holdout(tmp_path / "b.txt") == {11, 12}
        (tmp_path / "c.txt").write_text("11\nabc\n")
        with pytest.raises(aio.InputError, match="bad value 'abc'"):
            aio.read_holdout(tmp_path / "c.txt")

    def test_truth_from_folder_or_csv(self, study, written):
        for path in (Path(written["truth"]).parent, written["truth"]):
            truth = aio.read_truth(path)
            assert len(truth.table) == len(study.truth)
            assert truth.parameters == json.loads(Path(written["truth_json"]).read_text())
            assert truth.labels_dir is None

    def test_truth_without_required_column(self, tmp_path):
        pd.DataFrame({"eid": [1], "true_lv_mass_g": [100.0]}).to_csv(tmp_path / "truth.csv", index=False)
        with pytest.raises(aio.InputError, match="true_lvmi_g_m2"):
            aio.read_truth(tmp_path)


class TestLabelFiles:
    def test_studies_are_keyed_by_eid_and_instance(self, tmp_path):
        names = ["1000001_20209_2_0.npz", "1000001_20209_3_0.npz", "1000002_2.npz", "1000002_3.npz", "7.npz"]
        for name in [*names, "notes_about_it.npz", "1000003_2.txt"]:
            (tmp_path / name).write_bytes(b"")
        found = aio.label_files(str(tmp_path))
        assert sorted(found, key=str) == sorted(
            [(1000001, 2), (1000001, 3), (1000002, 2), (1000002, 3), (7, None)], key=str
        )
        assert found[(1000002, 3)] == str(tmp_path / "1000002_3.npz")
        assert set(aio.label_files(str(tmp_path), instance=2)) == {(1000001, 2), (1000002, 2)}
        assert set(aio.label_files(str(tmp_path), [1000002], instance=3)) == {(1000002, 3)}


class TestCohort:
    def test_instance_qc_and_phenotype_exclusions_are_counted(self, study, written):
        results = aio.read_results(written["results"])
        phenotypes = aio.read_phenotypes(written["phenotypes"]).iloc[5:]  # 5 imaged people lack phenotypes
        cohort = build_cohort(results, phenotypes)
        assert cohort.methods == ALL_METHODS
        ex = cohort.exclusions.set_index("method")
        n_repeat = int((study.results["instance"] == 3).sum() / len(ALL_METHODS))
        assert (ex["other_instance"] == n_repeat).all()
        assert (ex["no_phenotype"] == 5).all()
        at2 = results[(results["instance"] == 2) & results["eid"].isin(phenotypes["eid"])]
        n_fail = int((~at2.loc[at2["method"] == "ml4h_seg", "qc_pass"]).sum())
        assert n_fail > 0 and ex.loc["ml4h_seg", "qc_fail_excluded"] == n_fail
        assert ex.loc["ml4h_seg", "analysed"] == len(phenotypes) - n_fail
        failing = at2.loc[(at2["method"] == "ml4h_seg") & ~at2["qc_pass"], "eid"]
        row = cohort.frame.set_index("eid").loc[failing.iloc[0]]
        assert np.isnan(row[mcol("ml4h_seg", "lv_mass_g")])
        assert row["holdout"] == (not np.isnan(row["manual_lv_mass_g"]))

    def test_truth_with_an_instance_column_joins_the_analysed_visit(self, study):
        truth = pd.concat(
            [study.truth.assign(instance=2), study.truth.assign(instance=3, true_lv_mass_g=-1.0)]
        )
        cohort = build_cohort(study.results, study.phenotypes, truth=truth)
        assert len(cohort.frame) == len(study.phenotypes)
        assert (cohort.frame["true_lv_mass_g"] > 0).all()
        with pytest.raises(ValueError, match="more than one row for eid"):
            build_cohort(study.results, study.phenotypes, truth=pd.concat([study.truth, study.truth.head(1)]))

    def test_holdout_file_overrides_the_default(self, study):
        eids = set(study.phenotypes["eid"].iloc[:10])
        cohort = build_cohort(study.results, study.phenotypes, holdout_eids=eids)
        assert set(cohort.frame.loc[cohort.frame["holdout"], "eid"]) == eids
        assert cohort.holdout_source == "file"


@pytest.fixture()
def gcs_emulator(monkeypatch):
    from gcp_storage_emulator.server import create_server

    server = create_server("localhost", 0, in_memory=True)
    server.start()
    host, port = server._api._httpd.server_address
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{host}:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "lvmass-test")
    try:
        yield
    finally:
        server.stop()


def test_reads_results_and_phenotypes_from_gs(gcs_emulator, written):
    from google.cloud import storage

    client = storage.Client()
    bucket = client.create_bucket("lvmass-results")
    root = Path(written["results"])
    for path in sorted(root.rglob("*.parquet")):
        bucket.blob(f"run1/{path.relative_to(root).as_posix()}").upload_from_filename(os.fspath(path))
    bucket.blob("pheno/phenotypes.csv").upload_from_filename(os.fspath(written["phenotypes"]))
    remote = aio.read_results("gs://lvmass-results/run1")
    local = aio.read_results(root)
    key = ["eid", "instance", "method"]
    pd.testing.assert_frame_equal(
        remote.sort_values(key).reset_index(drop=True), local.sort_values(key).reset_index(drop=True)
    )
    assert len(aio.read_phenotypes("gs://lvmass-results/pheno/phenotypes.csv")) == len(
        aio.read_phenotypes(written["phenotypes"])
    )
    with pytest.raises(aio.InputError, match="no such object"):
        aio.read_phenotypes("gs://lvmass-results/pheno/missing.csv")


def test_gs_results_are_listed_once(gcs_emulator, written, monkeypatch):
    from google.cloud import storage

    bucket = storage.Client().create_bucket("lvmass-listing")
    root = Path(written["results"])
    files = sorted(root.rglob("*.parquet"))
    for path in files:
        bucket.blob(f"run1/{path.relative_to(root).as_posix()}").upload_from_filename(os.fspath(path))
    listed: list[str] = []
    make_client = aio._gcs_client

    class CountingClient:
        """The real client; every object a listing yields is counted."""

        def __init__(self) -> None:
            self._client = make_client()

        def list_blobs(self, *args, **kwargs):
            for blob in self._client.list_blobs(*args, **kwargs):
                listed.append(blob.name)
                yield blob

        def __getattr__(self, name):
            return getattr(self._client, name)

    monkeypatch.setattr(aio, "_gcs_client", CountingClient)
    frame = aio.read_results("gs://lvmass-listing/run1")
    assert len(frame) == len(aio.read_results(root))
    # one listing of the prefix, plus at most one object to see that run1/lvmass/ exists
    assert len(listed) <= len(files) + 1
