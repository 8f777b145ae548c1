"""``lvmass phenotypes``: a small hand-made UK Biobank export in the real column layout (``eid``,
``<field>-<instance>.<array>``), as CSV (values as text, as ``ukbconv`` writes them) and Parquet (typed
columns), becomes the phenotype table the pipeline and ``lvmass analyze`` read. Every mapping, the
prevalence cut at the visit date, every refusal and every reported problem are checked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import io as aio
from analysis import ukbb_phenotypes as ukb
from analysis.cohort import phenotypes_at_visit
from lvmass import cli
from lvmass.core.phenotypes import read_phenotype_table
from lvmass.core.schema import DISEASE_COLUMNS, PHENOTYPE_COLUMNS

REPO = Path(__file__).resolve().parents[1]

COLUMNS = [
    "eid", "31-0.0", "53-2.0", "53-3.0", "21003-2.0", "21003-3.0", "50-2.0", "50-3.0", "21002-2.0",
    "21002-3.0", "41270-0.0", "41270-0.1", "41280-0.0", "41280-0.1", "41271-0.0", "41281-0.0",
    "20002-0.0", "20002-2.0", "20002-2.1", "20002-3.0", "4080-2.0", "22001-0.0",
]
# One participant per line; what each one tests is on its right. Blank = missing, as in a UK Biobank CSV.
EXPORT_ROWS = [
    # eid, sex, visit dates 2/3, ages 2/3, heights 2/3, weights 2/3, ICD-10 codes 0/1, their dates 0/1,
    # ICD-9 code and date, self-reports 0.0/2.0/2.1/3.0, systolic BP (not read), genetic sex (not read)
    ["1000001", "0", "2015-06-01", "2020-01-01", "60", "65", "165", "164", "70", "72",  # female, 2 visits
     "I10", "I480", "2010-01-01", "2016-01-01",  # hypertension before visit 2; AF between visits 2 and 3
     "", "", "", "", "", "", "130", "0"],
    ["1000002", "1", "2016-03-10", "", "55", "", "180", "", "90", "",
     "I509", "", "2016-03-10", "",  # heart failure dated on the visit day: prevalent
     "", "", "1072", "", "1471", "", "140", "1"],  # essential hypertension at baseline, AF at the visit
    ["1000003", "1", "2017-01-01", "", "70", "", "175", "", "85", "",
     "I110", "", "2012-05-05", "",  # I11.0: hypertension and heart failure
     "", "", "", "", "", "", "", ""],
    ["1000004", "0", "2015-01-01", "2019-01-01", "50", "54", "160", "160", "60", "62",
     "", "", "", "", "", "", "", "", "", "1076",  # heart failure self-reported at visit 3 only
     "", ""],
    ["1000005", "0", "2016-01-01", "", "66", "", "158", "", "64", "",
     "I255", "", "", "",  # ischaemic cardiomyopathy without a date: heart failure unknown
     "4019", "2000-01-01",  # ICD-9 401.9: hypertension
     "", "", "", "", "", ""],
    ["1000006", "1", "", "", "", "", "", "", "", "",  # never imaged: no row
     "I10", "", "2001-01-01", "", "", "", "", "", "", "", "", ""],
    ["1000009", "1", "2016-06-06", "", "62", "", "172", "", "80", "",
     "I13.2 Hypertensive heart and renal disease", "I21", "2011-02-02", "2012-01-01",  # dotted, described
     "", "", "", "", "", "", "", ""],
]
# (eid, instance) -> sex, age, height_cm, weight_kg, hypertension, atrial_fibrillation, heart_failure
EXPECTED = {
    (1000001, 2): ("female", 60.0, 165.0, 70.0, True, False, False),
    (1000001, 3): ("female", 65.0, 164.0, 72.0, True, True, False),
    (1000002, 2): ("male", 55.0, 180.0, 90.0, True, True, True),
    (1000003, 2): ("male", 70.0, 175.0, 85.0, True, False, True),
    (1000004, 2): ("female", 50.0, 160.0, 60.0, False, False, False),
    (1000004, 3): ("female", 54.0, 160.0, 62.0, False, False, True),
    (1000005, 2): ("female", 66.0, 158.0, 64.0, True, False, None),
    (1000009, 2): ("male", 62.0, 172.0, 80.0, True, False, True),
}


def export_frame(rows: list[list[str]] | None = None) -> pd.DataFrame:
    return pd.DataFrame(EXPORT_ROWS if rows is None else rows, columns=COLUMNS)


def write_csv(path: Path, frame: pd.DataFrame | None = None) -> Path:
    (export_frame() if frame is None else frame).to_csv(path, index=False)
    return path


def write_parquet(path: Path, frame: pd.DataFrame | None = None) -> Path:
    """The export with the types a Parquet export has: integers, floats, dates, code strings."""
    frame = export_frame() if frame is None else frame
    columns = {}
    for name in frame.columns:
        values = [None if v == "" else v for v in frame[name]]
        if name.startswith(("53-", "41280-", "41281-")):
            columns[name] = pa.array([v and dt.date.fromisoformat(v) for v in values], pa.date32())
        elif name == "eid" or name.startswith(("31-", "21003-", "20002-", "4080-", "22001-")):
            columns[name] = pa.array([v and int(v) for v in values], pa.int64())
        elif name.startswith(("50-", "21002-")):
            columns[name] = pa.array([v and float(v) for v in values], pa.float64())
        else:
            columns[name] = pa.array(values, pa.string())
    pq.write_table(pa.table(columns), path)
    return path


def build(frame: pd.DataFrame | None = None, **kwargs) -> ukb.PhenotypeBuild:
    return ukb.build_phenotypes(export_frame() if frame is None else frame, source="export.csv", **kwargs)


def as_expected(table: pd.DataFrame) -> dict[tuple[int, int], tuple]:
    out = {}
    for row in table.itertuples(index=False):
        diseases = tuple(None if pd.isna(getattr(row, d)) else bool(getattr(row, d)) for d in DISEASE_COLUMNS)
        values = (None if pd.isna(row.sex) else row.sex, row.age, row.height_cm, row.weight_kg, *diseases)
        out[(int(row.eid), int(row.instance))] = values
    return out


@pytest.fixture(params=["csv", "parquet"])
def export_path(request, tmp_path) -> Path:
    writer = write_csv if request.param == "csv" else write_parquet
    return writer(tmp_path / f"ukb.{request.param}")


class TestMappings:
    def test_every_row_and_value(self):
        result = build()
        assert list(result.table.columns) == ["eid", "instance", *PHENOTYPE_COLUMNS[1:]]
        assert as_expected(result.table) == EXPECTED

    def test_csv_and_parquet_exports_give_the_same_table(self, export_path, tmp_path):
        out = tmp_path / "phenotypes.csv"
        assert ukb.main(["--input", str(export_path), "--out", str(out)]) == 0
        table = aio.read_phenotypes(out)
        got = {(int(r.eid), int(r.instance)): r for r in table.itertuples(index=False)}
        assert set(got) == set(EXPECTED)
        for key, (sex, age, height, weight, *diseases) in EXPECTED.items():
            row = got[key]
            assert (row.sex, row.age, row.height_cm, row.weight_kg) == (sex, age, height, weight)
            assert [None if np.isnan(getattr(row, d)) else bool(getattr(row, d)) for d in DISEASE_COLUMNS] \
                == diseases

    def test_participants_without_an_imaging_visit_get_no_row_and_are_counted(self):
        result = build()
        assert 1000006 not in set(result.table["eid"])
        assert result.counts["without_imaging_visit"] == 1
        assert result.counts["instance_2"] == 6 and result.counts["instance_3"] == 2

    def test_read_in_chunks_keeping_only_imaged_participants(self, export_path):
        export = ukb.read_export(str(export_path), chunk_rows=2)
        assert 1000006 not in set(export["eid"].astype(int)) and export.attrs[ukb.NOT_IMAGED_ROWS] == 1
        result = ukb.build_phenotypes(export, source=str(export_path))
        assert as_expected(result.table) == EXPECTED
        assert result.counts["participants"] == 7 and result.counts["without_imaging_visit"] == 1

    def test_columns_the_table_does_not_use_are_not_read(self, tmp_path):
        path = write_csv(tmp_path / "ukb.csv")
        assert "4080-2.0" not in ukb.read_export(str(path)).columns
        parquet = write_parquet(tmp_path / "ukb.parquet")
        assert "22001-0.0" not in ukb.read_export(str(parquet)).columns

    def test_only_the_requested_instances(self):
        assert set(build(instances=[3]).table["instance"]) == {3}

    @pytest.mark.parametrize("code", ["I10", "I11.9", "I12", "I13.1", "I15.0", "401.1", "405"])
    def test_hypertension_codes(self, code):
        assert self._single_code(code)["hypertension"] is True

    @pytest.mark.parametrize("code", ["I48", "I48.0", "I48.9", "427.3", "4273"])
    def test_atrial_fibrillation_codes(self, code):
        assert self._single_code(code)["atrial_fibrillation"] is True

    @pytest.mark.parametrize("code", ["I50.0", "I11.0", "I13.0", "I13.2", "I25.5", "I42.0", "I42.9", "428.0",
                                      "425.4"])
    def test_heart_failure_codes(self, code):
        assert self._single_code(code)["heart_failure"] is True

    @pytest.mark.parametrize("code", ["I16", "I21.0", "I25.1", "I47.1", "I49.9", "I51.7", "I13.1", "429"])
    def test_other_codes_are_no_disease(self, code):
        flags = self._single_code(code)
        assert flags["atrial_fibrillation"] is False and flags["heart_failure"] is False
        if code not in ("I13.1",):  # hypertensive heart and renal disease without heart failure
            assert flags["hypertension"] is False

    @pytest.mark.parametrize(("code", "disease"), [(1065, "hypertension"), (1072, "hypertension"),
                                                   (1471, "atrial_fibrillation"),
                                                   (1483, "atrial_fibrillation"), (1076, "heart_failure")])
    def test_self_report_codes(self, code, disease):
        row = ["2000001", "1", "2016-01-01", "", "60", "", "170", "", "70", "",
               "", "", "", "", "", "", "", str(code), "", "", "", ""]
        flags = build(export_frame([row])).table.iloc[0]
        assert {d: bool(flags[d]) for d in DISEASE_COLUMNS} == {d: d == disease for d in DISEASE_COLUMNS}

    def test_a_self_report_at_a_later_visit_does_not_count_earlier(self):
        table = build().table.set_index(["eid", "instance"])
        assert not table.loc[(1000004, 2), "heart_failure"] and table.loc[(1000004, 3), "heart_failure"]

    @staticmethod
    def _single_code(code: str) -> dict[str, bool]:
        icd9 = code[0].isdigit()
        row = ["2000001", "1", "2016-01-01", "", "60", "", "170", "", "70", "",
               "" if icd9 else code, "", "" if icd9 else "2010-01-01", "",
               code.replace(".", "") if icd9 else "", "2010-01-01" if icd9 else "",
               "", "", "", "", "", ""]
        flags = build(export_frame([row])).table.iloc[0]
        return {d: bool(flags[d]) for d in DISEASE_COLUMNS}


class TestPrevalenceAtTheVisit:
    @pytest.mark.parametrize(("diagnosed", "prevalent"), [("2015-05-31", True), ("2015-06-01", True),
                                                          ("2015-06-02", False), ("2030-01-01", False)])
    def test_cut_at_the_visit_date(self, diagnosed, prevalent):
        row = ["2000001", "0", "2015-06-01", "", "60", "", "165", "", "70", "",
               "I48.0", "", diagnosed, "", "", "", "", "", "", "", "", ""]
        assert bool(build(export_frame([row])).table.loc[0, "atrial_fibrillation"]) is prevalent

    def test_each_visit_has_its_own_cut(self):
        table = build().table.set_index(["eid", "instance"])
        assert not table.loc[(1000001, 2), "atrial_fibrillation"]  # diagnosed 2016, visit 2 in 2015
        assert table.loc[(1000001, 3), "atrial_fibrillation"]  # visit 3 in 2020

    def test_an_undatable_code_leaves_the_disease_unknown_and_is_reported(self):
        result = build()
        row = result.table.set_index(["eid", "instance"]).loc[(1000005, 2)]
        assert pd.isna(row["heart_failure"]) and row["hypertension"]
        reported = result.rejected[result.rejected["eid"] == 1000005].iloc[0]
        assert reported["column"] == "41270-0.0 / 41280-0.0" and reported["value"] == "I255"
        assert "heart_failure" in reported["reason"] and "date is blank" in reported["reason"]
        assert reported["outcome"] == ukb.OUTCOME_UNKNOWN

    def test_an_undatable_code_does_not_hide_a_dated_one(self):
        row = ["2000001", "0", "2015-06-01", "", "60", "", "165", "", "70", "",
               "I48.0", "I48.1", "", "2014-01-01", "", "", "", "", "", "", "", ""]
        result = build(export_frame([row]))
        assert bool(result.table.loc[0, "atrial_fibrillation"]) and result.rejected.empty

    def test_a_blank_visit_date_makes_codes_undatable(self):
        row = ["2000001", "0", "", "", "60", "", "165", "", "70", "",
               "I10", "", "2001-01-01", "", "", "", "", "", "", "", "", ""]
        result = build(export_frame([row]))
        assert pd.isna(result.table.loc[0, "hypertension"]) and not result.table.loc[0, "heart_failure"]
        assert "the visit date (53-2.0) is blank" in result.rejected.iloc[0]["reason"]


class TestReadBack:
    def test_the_pipelines_reader_accepts_both_formats(self, export_path, tmp_path):
        for suffix in ("csv", "parquet"):
            out = tmp_path / f"phenotypes.{suffix}"
            assert ukb.main(["--input", str(export_path), "--out", str(out), "--overwrite"]) == 0
            with out.open("rb") as stream:
                table = read_phenotype_table(stream, source=str(out))
            assert table.per_instance and len(table) == len(EXPECTED)
            visit3 = table.lookup(1000001, 3)
            assert visit3.sex == "female" and visit3.age == 65.0 and visit3.atrial_fibrillation is True
            assert table.lookup(1000005, 2).heart_failure is None
            assert table.lookup(1000006, 2) is None

    def test_the_analysis_reader_and_its_visit_selection(self, tmp_path):
        out = tmp_path / "phenotypes.parquet"
        assert ukb.main(["--input", str(write_csv(tmp_path / "ukb.csv")), "--out", str(out)]) == 0
        frame = aio.read_phenotypes(out)
        assert list(frame.columns) == ["eid", "instance", *PHENOTYPE_COLUMNS[1:]]
        at3 = phenotypes_at_visit(frame, 3).set_index("eid")
        assert sorted(at3.index) == [1000001, 1000004] and at3.loc[1000004, "heart_failure"] == 1.0


class TestManualMass:
    def test_merged_on_instance_2_without_an_instance_column(self, tmp_path):
        manual = pd.DataFrame({"eid": ["1000001", "1000004", "1000006", "1000002", "1000002", "x"],
                               "manual_lv_mass_g": ["120.5", "abc", "99", "140", "141", "1"]})
        result = build(manual_mass=manual, manual_source="manual.csv")
        table = result.table.set_index(["eid", "instance"])
        assert table.loc[(1000001, 2), "manual_lv_mass_g"] == 120.5
        assert np.isnan(table.loc[(1000001, 3), "manual_lv_mass_g"])
        assert table["manual_lv_mass_g"].notna().sum() == 1 and result.counts["manual_mass_merged"] == 1
        rejected = result.rejected[result.rejected["outcome"] == ukb.OUTCOME_NOT_MERGED]
        reasons = dict(zip(rejected["eid"].astype(str), rejected["reason"], strict=True))
        assert reasons["1000004"] == "manual.csv: manual_lv_mass_g is not a number"
        assert reasons["1000006"] == "manual.csv: the export has no imaging visit for this eid and instance"
        assert reasons["1000002"] == "manual.csv: eid and instance appear more than once"
        assert reasons["x"] == "manual.csv: eid is blank or not an integer"

    def test_merged_on_its_instance_column(self, tmp_path):
        path = tmp_path / "manual.csv"
        path.write_text("eid,instance,manual_lv_mass_g\n1000001,3,118.0\n")
        out = tmp_path / "phenotypes.csv"
        export = str(write_csv(tmp_path / "ukb.csv"))
        args = ["--input", export, "--out", str(out), "--manual_mass", str(path)]
        assert ukb.main(args) == 0
        table = aio.read_phenotypes(out).set_index(["eid", "instance"])
        assert table.loc[(1000001, 3), "manual_lv_mass_g"] == 118.0
        assert np.isnan(table.loc[(1000001, 2), "manual_lv_mass_g"])

    def test_a_manual_file_without_its_columns_is_refused(self, tmp_path, capsys):
        path = tmp_path / "manual.csv"
        path.write_text("eid,lv_mass\n1000001,118.0\n")
        args = ["--input", str(write_csv(tmp_path / "ukb.csv")), "--out", str(tmp_path / "p.csv"),
                "--manual_mass", str(path)]
        assert ukb.main(args) == 2
        assert f"{path}: manual LV mass table lacks column(s) ['manual_lv_mass_g']" in capsys.readouterr().err


class TestProblems:
    def test_bad_rows_and_values_are_listed_never_dropped_silently(self, tmp_path):
        rows = [*EXPORT_ROWS,
                ["", "1", "2018-01-01", "", "60", "", "170", "", "75", "", *[""] * 12],
                ["1000008", "1", "2018-01-01", "", "60", "", "170", "", "75", "", *[""] * 12],
                ["1000008", "1", "2018-01-01", "", "61", "", "170", "", "75", "", *[""] * 12],
                ["1000007", "", "2018-01-01", "", "sixty", "", "170", "", "75", "", *[""] * 12],
                ["1000010", "2", "2018-01-01", "", "60", "", "170", "", "75", "",
                 *[""] * 6, "hyp", *[""] * 5]]
        export = write_csv(tmp_path / "ukb.csv", export_frame(rows))
        out = tmp_path / "phenotypes.csv"
        assert ukb.main(["--input", str(export), "--out", str(out)]) == 0
        rejected = pd.read_csv(tmp_path / "phenotypes.rejected.csv", dtype=str, keep_default_na=False)
        assert list(rejected.columns) == list(ukb.REJECTED_COLUMNS)
        listed = set(zip(rejected["eid"], rejected["column"], rejected["reason"], rejected["outcome"],
                         strict=True))
        assert ("", "eid", "eid is blank or not an integer", ukb.OUTCOME_ROW) in listed
        assert ("1000008", "eid", "eid appears more than once in the export", ukb.OUTCOME_ROW) in listed
        assert ("1000007", "31-0.0", "sex (field 31) is blank", ukb.OUTCOME_UNKNOWN) in listed
        assert ("1000007", "21003-2.0", "age (field 21003) is not a number", ukb.OUTCOME_UNKNOWN) in listed
        assert ("1000010", "31-0.0", "sex (field 31) is not 0 (female) or 1 (male)", ukb.OUTCOME_UNKNOWN) \
            in listed
        assert ("1000010", "20002-0.0",
                "self-reported illness (field 20002) is not a UK Biobank coding 6 number",
                ukb.OUTCOME_IGNORED) in listed
        assert (rejected["eid"] == "1000008").sum() == 2
        table = aio.read_phenotypes(out).set_index(["eid", "instance"])
        assert 1000008 not in table.index.get_level_values(0)
        assert table.loc[(1000007, 2), "sex"] is None and np.isnan(table.loc[(1000007, 2), "age"])
        assert table.loc[(1000010, 2), "sex"] is None

    def test_a_clean_export_writes_an_empty_rejected_file(self, tmp_path):
        rows = [r for r in EXPORT_ROWS if r[0] != "1000005"]
        out = tmp_path / "p.parquet"
        export = write_csv(tmp_path / "ukb.csv", export_frame(rows))
        assert ukb.main(["--input", str(export), "--out", str(out)]) == 0
        assert pd.read_csv(tmp_path / "p.rejected.csv").empty


class TestRefusals:
    @pytest.mark.parametrize(
        ("drop", "message"),
        [
            (["eid"], "no 'eid' column (the participant id)"),
            (["31-0.0"], "no sex field: column '31-0.0' (field 31, Sex) is missing"),
            (["53-2.0", "53-3.0", "21003-2.0", "21003-3.0", "50-2.0", "50-3.0", "21002-2.0", "21002-3.0"],
             "no imaging-visit column"),
            (["41280-0.1"],
             "column '41270-0.1' (ICD-10 diagnoses, field 41270) has no date column '41280-0.1'"),
            (["41281-0.0"],
             "column '41271-0.0' (ICD-9 diagnoses, field 41271) has no date column '41281-0.0'"),
            (["53-3.0"], "column '53-3.0' (field 53, date of attending the assessment centre) is missing"),
        ],
    )
    def test_missing_columns_name_the_file_and_the_column(self, tmp_path, capsys, drop, message):
        export = write_csv(tmp_path / "ukb.csv", export_frame().drop(columns=drop))
        assert ukb.main(["--input", str(export), "--out", str(tmp_path / "p.csv")]) == 2
        err = capsys.readouterr().err
        assert f"lvmass phenotypes: error: {export}: " in err and message in err
        assert not (tmp_path / "p.csv").exists()

    def test_unreadable_and_absent_files(self, tmp_path, capsys):
        bad = tmp_path / "ukb.parquet"
        bad.write_bytes(b"PAR1 not really")
        assert ukb.main(["--input", str(bad), "--out", str(tmp_path / "p.csv")]) == 2
        assert f"{bad}: cannot be read as a UK Biobank export" in capsys.readouterr().err
        assert ukb.main(["--input", str(tmp_path / "none.csv"), "--out", str(tmp_path / "p.csv")]) == 2
        assert "none.csv: no such file" in capsys.readouterr().err

    def test_output_suffix_and_overwrite(self, tmp_path, capsys):
        export = str(write_csv(tmp_path / "ukb.csv"))
        assert ukb.main(["--input", export, "--out", str(tmp_path / "p.txt")]) == 2
        assert "the output must end in .csv or .parquet" in capsys.readouterr().err
        out = tmp_path / "p.csv"
        out.write_text("keep")
        assert ukb.main(["--input", export, "--out", str(out)]) == 2
        assert f"{out} exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "keep"
        assert ukb.main(["--input", export, "--out", str(out), "--overwrite"]) == 0

    def test_without_diseases_sources_the_diseases_are_unknown(self, tmp_path):
        frame = export_frame().drop(columns=[c for c in COLUMNS if c.startswith(("4127", "4128", "20002"))])
        table = build(frame).table
        assert len(table) == len(EXPECTED) and table[list(DISEASE_COLUMNS)].isna().all().all()


class TestDocsAndEntry:
    def test_the_docs_page_states_every_mapping_and_code(self):
        page = (REPO / "docs" / "ukbb_phenotypes.md").read_text(encoding="utf-8")
        for mapping in ukb.FIELD_MAPPINGS:
            assert f"`{mapping.column}`" in page
        for definition in ukb.DISEASE_DEFINITIONS.values():
            for code in (*definition.icd10, *definition.icd9, *(str(c) for c in definition.self_report)):
                assert code in page, (definition.column, code)
        assert ukb.PAPER_DISEASE_WORDING in page and ukb.PAPER_PREVALENCE_WORDING in page
        assert "../shared" not in page

    def test_through_the_lvmass_entry(self, tmp_path, capsys):
        out = tmp_path / "p.csv"
        args = ["phenotypes", "--input", str(write_csv(tmp_path / "ukb.csv")), "--out", str(out),
                "--log-level", "warning"]
        assert cli.main(args) == 0
        assert "phenotypes:" in capsys.readouterr().out and len(pd.read_csv(out)) == len(EXPECTED)
