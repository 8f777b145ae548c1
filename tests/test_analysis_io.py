"""analysis.io and analysis.cohort: real Parquet (RESULTS_FILE_SCHEMA, hive layout) and CSV files written
and read back, locally and through a GCS emulator; every bad input is named in its error. Phenotypes are
read by the pipeline's reader: what the pipeline accepts, the analysis accepts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from analysis import io as aio
from analysis.cohort import build_cohort, mcol
from analysis.report import main as analyze
from analysis.simulate import simulate_study, write_results, write_study
from lvmass.core.contracts import ALL_METHODS
from lvmass.core.phenotypes import read_phenotype_table
from lvmass.core.schema import PHENOTYPE_COLUMNS, RESULTS_FILE_SCHEMA, RESULTS_SCHEMA

REPO = Path(__file__).resolve().parents[1]


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

    def test_agrees_with_a_pyarrow_hive_dataset(self, written):
        hive = ds.dataset(Path(written["results"]) / "lvmass", format="parquet", partitioning="hive")
        expected = hive.to_table(columns=RESULTS_SCHEMA.names).to_pandas()
        key = ["eid", "instance", "method"]
        got = aio.read_results(written["results"]).sort_values(key).reset_index(drop=True)
        expected = expected.sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(got.drop(columns="qc_flags"), expected.drop(columns="qc_flags"))
        assert got["qc_flags"].map(list).tolist() == expected["qc_flags"].map(list).tolist()

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
        # only eid and sex are required, as in the pipeline (lvmass.core.phenotypes): a table without
        # weight_kg is read with the weight unknown, one without sex is refused
        no_weight = aio.read_phenotypes(self._write(tmp_path, study.phenotypes.drop(columns="weight_kg")))
        assert list(no_weight.columns) == list(PHENOTYPE_COLUMNS) and no_weight["weight_kg"].isna().all()
        with pytest.raises(aio.InputError, match=r"lacks column\(s\) \['sex'\]"):
            aio.read_phenotypes(self._write(tmp_path, study.phenotypes.drop(columns="sex")))
        doubled = pd.concat([study.phenotypes.head(3), study.phenotypes.head(1)])
        with pytest.raises(aio.InputError, match="appears more than once"):
            aio.read_phenotypes(self._write(tmp_path, doubled))


    def test_reads_a_per_visit_f_m_table_the_pipeline_accepts(self, study, tmp_path):
        # the user report: sex F/M and one row per visit, read by the pipeline, refused by the analysis
        path = tmp_path / "visits.csv"
        _per_visit_f_m(study.phenotypes).to_csv(path, index=False)
        with path.open("rb") as fp:
            pipeline = read_phenotype_table(fp, source=str(path))
        frame = aio.read_phenotypes(path)
        assert pipeline.per_instance and len(frame) == len(pipeline) == 2 * len(study.phenotypes)
        assert list(frame.columns) == ["eid", "instance", *PHENOTYPE_COLUMNS[1:]]
        expected = study.phenotypes.set_index("eid")
        for row in frame.itertuples():
            phenotype = pipeline.lookup(row.eid, row.instance)
            assert (row.sex, row.age) == (phenotype.sex, phenotype.age)
            assert row.sex == expected.loc[row.eid, "sex"]
        at_2 = frame[frame["instance"] == 2].set_index("eid")
        np.testing.assert_allclose(at_2["age"], expected.loc[at_2.index, "age"])

    @pytest.mark.parametrize(
        ("name", "content"),
        [
            ("sex.csv", b"eid,sex\n1,F\n2,X\n"),
            ("age.csv", b"eid,sex,age\n1,M,old\n"),
            ("flag.csv", b"eid,sex,heart_failure\n1,M,maybe\n"),
            ("eid.csv", b"eid,sex\n1x,F\n"),
            ("twice.csv", b"eid,sex\n1,F\n1,F\n"),
            ("visit_twice.csv", b"eid,instance,sex\n1,2,F\n1,2,F\n"),
            ("visit.csv", b"eid,instance,sex\n1,second,F\n"),
            ("no_sex.csv", b"eid,age\n1,60\n"),
            ("empty.csv", b""),
            ("broken.parquet", b"eid,sex\n1,0\n"),
        ],
    )
    def test_rejects_what_the_pipeline_rejects_with_its_message(self, tmp_path, name, content):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError) as pipeline:
            read_phenotype_table(io.BytesIO(content), source=str(path))
        with pytest.raises(aio.InputError) as analysis:
            aio.read_phenotypes(path)
        assert str(analysis.value) == str(pipeline.value)
        assert analysis.value.source == str(path)

    def test_missing_file_is_named(self, tmp_path):
        with pytest.raises(aio.InputError, match="no such file") as info:
            aio.read_phenotypes(tmp_path / "nowhere.csv")
        assert info.value.source == str(tmp_path / "nowhere.csv")


def _per_visit_f_m(phenotypes: pd.DataFrame) -> pd.DataFrame:
    """``phenotypes`` as one row per visit with sex as F/M: instance 2 as drawn; instance 3 two years
    older, 5 kg heavier and without a manual mass."""
    first = phenotypes.assign(instance=2)
    repeat = phenotypes.assign(
        instance=3, age=phenotypes["age"] + 2.0, weight_kg=phenotypes["weight_kg"] + 5.0, manual_lv_mass_g=""
    )
    table = pd.concat([first, repeat], ignore_index=True)
    table["sex"] = table["sex"].map({"female": "F", "male": "M"})
    return table[["eid", "instance", *PHENOTYPE_COLUMNS[1:]]]


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

    def test_a_per_visit_table_joins_on_eid_and_instance(self, study, tmp_path):
        path = tmp_path / "visits.csv"
        _per_visit_f_m(study.phenotypes).to_csv(path, index=False)
        visits = aio.read_phenotypes(path)
        drawn = study.phenotypes.set_index("eid")
        first = build_cohort(study.results, visits, instance=2).frame.set_index("eid")
        np.testing.assert_allclose(first["age"], drawn.loc[first.index, "age"])
        np.testing.assert_allclose(
            first["manual_lv_mass_g"], drawn.loc[first.index, "manual_lv_mass_g"], equal_nan=True
        )
        repeat = build_cohort(study.results, visits, instance=3).frame.set_index("eid")
        repeat_eids = set(study.results.loc[study.results["instance"] == 3, "eid"])
        assert set(repeat.index) == repeat_eids
        np.testing.assert_allclose(repeat["age"], drawn.loc[repeat.index, "age"] + 2.0)
        np.testing.assert_allclose(repeat["weight_kg"], drawn.loc[repeat.index, "weight_kg"] + 5.0)
        assert repeat["manual_lv_mass_g"].isna().all() and not repeat["holdout"].any()
        assert "instance" not in first.columns and "instance" not in repeat.columns

    def test_without_instance_the_manual_mass_is_the_first_visits(self, study):
        # as the pipeline attaches them (PhenotypeTable.lookup): demographics to every visit, the manual
        # mass only to instance 2, where it was measured
        repeat = build_cohort(study.results, study.phenotypes, instance=3).frame.set_index("eid")
        drawn = study.phenotypes.set_index("eid")
        np.testing.assert_allclose(repeat["age"], drawn.loc[repeat.index, "age"])
        assert repeat["manual_lv_mass_g"].isna().all()
        assert drawn.loc[repeat.index, "manual_lv_mass_g"].notna().any()

    def test_two_rows_for_one_visit_are_an_error(self, study):
        visits = study.phenotypes.assign(instance=2)
        with pytest.raises(ValueError, match="more than one row for eid"):
            build_cohort(study.results, pd.concat([visits, visits.head(1)]))

    def test_holdout_file_overrides_the_default(self, study):
        eids = set(study.phenotypes["eid"].iloc[:10])
        cohort = build_cohort(study.results, study.phenotypes, holdout_eids=eids)
        assert set(cohort.frame.loc[cohort.frame["holdout"], "eid"]) == eids
        assert cohort.holdout_source == "file"


@pytest.fixture()
def gcs_emulator(monkeypatch):
    """An emulator that Beam's GCS filesystem (what the analysis reads gs:// with) reaches anonymously,
    never probing for cloud credentials (as in tests/test_gcs.py)."""
    from apache_beam.internal.gcp import auth
    from gcp_storage_emulator.server import create_server

    server = create_server("localhost", 0, in_memory=True)
    server.start()
    host, port = server._api._httpd.server_address
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{host}:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "lvmass-test")
    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
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
    from apache_beam.io.gcp.gcsfilesystem import GCSFileSystem
    from google.cloud import storage

    bucket = storage.Client().create_bucket("lvmass-listing")
    root = Path(written["results"])
    files = sorted(root.rglob("*.parquet"))
    for path in files:
        bucket.blob(f"run1/{path.relative_to(root).as_posix()}").upload_from_filename(os.fspath(path))
    listed: list[str] = []
    list_objects = GCSFileSystem._list

    def counting_list(self, dir_or_prefix):
        """Beam's own listing; every object it yields is counted."""
        for metadata in list_objects(self, dir_or_prefix):
            listed.append(metadata.path)
            yield metadata

    monkeypatch.setattr(GCSFileSystem, "_list", counting_list)
    frame = aio.read_results("gs://lvmass-listing/run1")
    assert len(frame) == len(aio.read_results(root))
    # one listing of the prefix, plus at most one object to see that run1/lvmass/ exists
    assert len(listed) <= len(files) + 1


def test_analyze_accepts_the_pipelines_per_visit_f_m_table(study, written, tmp_path):
    """``lvmass analyze`` on a per-visit table with sex F/M reports what it reports on the same people's
    one-row-per-eid table: at instance 2 both hold the same values."""
    visits = tmp_path / "visits.csv"
    _per_visit_f_m(study.phenotypes).to_csv(visits, index=False)
    common = [f"--results={written['results']}", "--bootstrap=20", "--seed=3"]
    assert analyze([*common, f"--phenotypes={visits}", f"--out={tmp_path / 'visits'}"]) == 0
    assert analyze([*common, f"--phenotypes={written['phenotypes']}", f"--out={tmp_path / 'eids'}"]) == 0
    for table in ("exclusions", "table1_baseline", "agreement_manual"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "visits" / "tables" / f"{table}.csv"),
            pd.read_csv(tmp_path / "eids" / "tables" / f"{table}.csv"),
        )


def test_the_analysis_never_imports_the_generator():
    """The truth files' names come from lvmass.core.truth, not from lvmass.synth: the analysis (report,
    readers, Dice) loads no part of the generator."""
    code = (
        "import sys, analysis.report, analysis.io, analysis.labels, analysis.associations; "
        "print(sorted(m for m in sys.modules if m.startswith('lvmass.synth')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


class TestResultsWithoutEid:
    """Inputs from outside UK Biobank have a participant_id and no eid: they are read, kept out of the
    eid-keyed analysis, counted and reported, never a crash."""

    OTHER_ID = "SCD0000101"

    @pytest.fixture
    def with_other(self, study, tmp_path):
        results = study.results
        other = results[(results["method"] == "ml4h_seg") & (results["instance"] == 2)].head(1)
        other = other.assign(participant_id=self.OTHER_ID, eid=None, source_uri="gs://b/SCD0000101.zip")
        results = pd.concat([study.results.astype({"eid": object}), other], ignore_index=True)
        return write_results(results, tmp_path / "results")

    def test_read_results_keeps_the_row_with_a_nullable_eid(self, study, with_other):
        frame = aio.read_results(with_other)
        assert len(frame) == len(study.results) + 1 and str(frame["eid"].dtype) == "Int64"
        row = frame[frame["participant_id"] == self.OTHER_ID]
        assert len(row) == 1 and row["eid"].isna().all()
        assert frame.loc[frame["eid"].notna(), "eid"].astype(np.int64).tolist() == frame.loc[
            frame["eid"].notna(), "participant_id"].astype(np.int64).tolist()

    def test_duplicates_are_keyed_by_participant_id(self, study, with_other):
        other = aio.read_results(with_other)
        other = other[other["participant_id"] == self.OTHER_ID].drop(columns="method")
        again = pa.Table.from_pandas(other, schema=RESULTS_FILE_SCHEMA, preserve_index=False)
        pq.write_table(again, with_other / "lvmass" / "method=ml4h_seg" / "again.parquet")  # the same row
        with pytest.raises(aio.InputError, match=r"duplicated \(participant_id, instance, method\) rows"):
            aio.read_results(with_other)

    def test_the_cohort_leaves_it_out_and_counts_it(self, study, with_other, written):
        phenotypes = aio.read_phenotypes(written["phenotypes"])
        cohort = build_cohort(aio.read_results(with_other), phenotypes)
        plain = build_cohort(aio.read_results(written["results"]), phenotypes)
        ex = cohort.exclusions.set_index("method")
        assert ex.loc["ml4h_seg", "no_eid"] == 1 and ex["no_eid"].sum() == 1
        assert (ex["no_phenotype"] == 0).all()
        pd.testing.assert_frame_equal(cohort.frame, plain.frame)
        pd.testing.assert_frame_equal(cohort.exclusions.drop(columns=["rows_read", "no_eid"]),
                                      plain.exclusions.drop(columns=["rows_read", "no_eid"]))
        assert cohort.frame["eid"].dtype == np.int64

    def test_analyze_reports_it_in_the_overview(self, with_other, written, tmp_path):
        out = tmp_path / "report"
        args = [f"--results={with_other}", f"--phenotypes={written['phenotypes']}", f"--out={out}",
                "--bootstrap=20", "--log_level=ERROR"]
        assert analyze(args) == 0
        report = (out / "report.md").read_text()
        assert "1 participant(s) imaged at instance 2 have no UK Biobank eid" in report
        exclusions = pd.read_csv(out / "tables" / "exclusions.csv")
        assert exclusions["no_eid"].tolist() == [1, 0, 0, 0]
