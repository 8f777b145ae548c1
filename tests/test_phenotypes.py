"""Phenotype reading: CSV and Parquet read back, female/male and UK Biobank 0/1 coding, bad values."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from beam_pipeline.phenotypes import Phenotype, parse_sex, phenotypes_from_frame, read_phenotypes
from beam_pipeline.schema import PHENOTYPE_COLUMNS


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "eid": [1000001, 1000002, 1000003],
            "sex": ["female", "male", "female"],
            "age": [61.5, 70.0, None],
            "height_cm": [165.0, 180.0, 170.0],
            "weight_kg": [60.0, 85.5, None],
            "hypertension": [0, 1, 0],
            "atrial_fibrillation": [False, True, False],
            "heart_failure": [0, 0, 1],
            "manual_lv_mass_g": [80.0, None, 95.5],
        }
    )[list(PHENOTYPE_COLUMNS)]


class TestParseSex:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("female", "female"),
            ("Male", "male"),
            ("F", "female"),
            (0, "female"),
            (1, "male"),
            ("1", "male"),
            (0.0, "female"),
            ("1.0", "male"),
            (None, None),
            (float("nan"), None),
            ("", None),
        ],
    )
    def test_codings(self, value, expected):
        assert parse_sex(value, where="p.csv eid 1") == expected

    @pytest.mark.parametrize("value", [2, "unknown", True])
    def test_bad(self, value):
        with pytest.raises(ValueError, match=r"p.csv eid 1: sex .* is not female/male or 0/1"):
            parse_sex(value, where="p.csv eid 1")


class TestPhenotypesFromFrame:
    def test_lvmass_synth_columns(self):
        df = frame()
        before = df.copy()
        out = phenotypes_from_frame(df, source="p.csv")
        assert out[1000001] == Phenotype(
            eid=1000001,
            sex="female",
            age=61.5,
            height_cm=165.0,
            weight_kg=60.0,
            hypertension=False,
            atrial_fibrillation=False,
            heart_failure=False,
            manual_lv_mass_g=80.0,
        )
        assert out[1000002].manual_lv_mass_g is None and out[1000002].hypertension is True
        assert (
            out[1000003].age is None and out[1000003].weight_kg is None and out[1000003].heart_failure is True
        )
        pd.testing.assert_frame_equal(df, before)

    def test_ukbb_coding_and_minimal_columns(self):
        out = phenotypes_from_frame(pd.DataFrame({"eid": [5, 6], "sex": [0, 1]}), source="ukb.csv")
        assert (out[5].sex, out[6].sex) == ("female", "male")
        assert out[5].height_cm is None and out[5].hypertension is None

    def test_missing_required_column(self):
        with pytest.raises(ValueError, match=r"p.csv: phenotype table lacks column\(s\) \['sex'\]"):
            phenotypes_from_frame(pd.DataFrame({"eid": [1]}), source="p.csv")

    def test_duplicate_eid(self):
        with pytest.raises(ValueError, match=r"p.csv: eid 7 appears more than once"):
            phenotypes_from_frame(pd.DataFrame({"eid": [7, 7], "sex": [0, 1]}), source="p.csv")

    def test_bad_eid(self):
        with pytest.raises(ValueError, match=r"p.csv row 2: eid 'x12' is not an integer"):
            phenotypes_from_frame(pd.DataFrame({"eid": ["1", "x12"], "sex": [0, 1]}), source="p.csv")

    def test_missing_eid(self):
        with pytest.raises(ValueError, match=r"p.csv row 1: eid is missing"):
            phenotypes_from_frame(pd.DataFrame({"eid": [None], "sex": [0]}), source="p.csv")

    def test_bad_number(self):
        df = pd.DataFrame({"eid": [3], "sex": ["male"], "height_cm": ["tall"]})
        with pytest.raises(ValueError, match=r"p.csv eid 3: height_cm 'tall' is not a number"):
            phenotypes_from_frame(df, source="p.csv")

    def test_bad_disease_flag(self):
        df = pd.DataFrame({"eid": [3], "sex": ["male"], "hypertension": ["maybe"]})
        with pytest.raises(
            ValueError, match=r"p.csv eid 3: hypertension 'maybe' is not a 0/1 or true/false value"
        ):
            phenotypes_from_frame(df, source="p.csv")


class TestReadPhenotypes:
    def test_csv_round_trip(self, tmp_path):
        path = tmp_path / "phenotypes.csv"
        frame().to_csv(path, index=False)
        with path.open("rb") as fp:
            out = read_phenotypes(fp, source=str(path))
        assert out == phenotypes_from_frame(frame(), source="x")

    def test_parquet_by_content_and_name(self, tmp_path):
        path = tmp_path / "phenotypes.bin"
        frame().to_parquet(path, index=False)
        with path.open("rb") as fp:
            by_content = read_phenotypes(fp, source=str(path))
        assert by_content == phenotypes_from_frame(frame(), source="x")

    def test_empty_file(self):
        with pytest.raises(ValueError, match=r"e.csv: phenotype file is empty"):
            read_phenotypes(io.BytesIO(b""), source="e.csv")

    def test_unreadable_parquet(self):
        with pytest.raises(ValueError, match=r"p.parquet: cannot read phenotypes as Parquet"):
            read_phenotypes(io.BytesIO(b"eid,sex\n1,0\n"), source="p.parquet")
