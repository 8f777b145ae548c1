"""Phenotype reading: CSV and Parquet read back, female/male and UK Biobank 0/1 coding, bad values."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lvmass.core.phenotypes import (
    Phenotype,
    parse_sex,
    phenotype_table_from_frame,
    phenotypes_from_frame,
    read_phenotype_table,
    read_phenotypes,
)
from lvmass.core.schema import PHENOTYPE_COLUMNS


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

    @pytest.mark.parametrize("name", ["h.csv", "h.parquet"])
    def test_a_header_without_rows_is_refused(self, name, tmp_path):
        """A header alone used to run with every participant no_phenotype and no word said."""
        path = tmp_path / name
        if name.endswith(".csv"):
            path.write_text("eid,sex,age\n")
        else:
            empty = {"eid": pa.array([], pa.int64()), "sex": pa.array([], pa.string())}
            pq.write_table(pa.table(empty), path)
        with pytest.raises(ValueError, match=rf"{name}: the phenotype file holds no rows \(columns \['eid'"):
            read_phenotype_table(io.BytesIO(path.read_bytes()), source=name, lenient=True)


class TestEid:
    def test_an_eid_beyond_int64_is_a_rejected_row_naming_it(self):
        table = read_phenotype_table(io.BytesIO(b"eid,sex\n99999999999999999999,F\n1000001,M\n"),
                                     source="p.csv", lenient=True)
        assert list(table.rows) == [(1000001, None)]
        (rejected,) = table.rejected
        assert rejected.eid is None
        assert rejected.reason == ("p.csv row 1: eid '99999999999999999999' is outside "
                                   "-9223372036854775808..9223372036854775807 (eid must fit a 64-bit "
                                   "integer, as the results' eid column does)")
        with pytest.raises(ValueError, match="is outside -9223372036854775808"):
            read_phenotype_table(io.BytesIO(b"eid,sex\n99999999999999999999,F\n"), source="p.csv")

    def test_eids_are_read_exactly_not_through_a_float(self):
        data = b"eid,sex\n9007199254740993,F\n1000001.0,M\n"
        table = read_phenotype_table(io.BytesIO(data), source="p.csv")
        assert sorted(table.rows) == [(1000001, None), (9007199254740993, None)]  # 2**53 + 1 kept


class TestImplausibleValues:
    def test_recorded_as_unknown_not_raised(self):
        """Height 0 cm, a negative weight or a negative manual mass cannot be true: unknown (None), so
        BSA/LVMI are unknown for that participant and the run goes on."""
        df = pd.DataFrame({"eid": [1, 2, 3], "sex": [0, 1, 1], "age": [60, -1, 70],
                           "height_cm": [0.0, 180.0, 172.0], "weight_kg": [60.0, -80.0, 75.0],
                           "manual_lv_mass_g": [90.0, -5.0, 0.0]})
        out = phenotypes_from_frame(df, source="p.csv")
        assert out[1].height_cm is None and out[1].weight_kg == 60.0
        assert out[2].weight_kg is None and out[2].age is None and out[2].manual_lv_mass_g is None
        assert out[3].manual_lv_mass_g is None and (out[3].height_cm, out[3].weight_kg) == (172.0, 75.0)


class TestPhenotypeTable:
    def test_without_instance_manual_mass_goes_to_instance_2_only(self):
        table = phenotype_table_from_frame(frame(), source="p.csv")
        assert not table.per_instance and len(table) == 3
        assert table.lookup(1000001, 2).manual_lv_mass_g == 80.0
        repeat = table.lookup(1000001, 3)
        assert repeat.manual_lv_mass_g is None and (repeat.sex, repeat.height_cm) == ("female", 165.0)
        assert table.lookup(1000001, 0).manual_lv_mass_g is None  # visit unknown: not the manual one
        assert table.lookup(999, 2) is None

    def test_with_instance_each_visit_has_its_row(self, tmp_path):
        path = tmp_path / "visits.csv"
        path.write_text("eid,instance,sex,age,manual_lv_mass_g\n7,2,male,60,100\n7,3,male,63,\n")
        with path.open("rb") as fp:
            table = read_phenotype_table(fp, source=str(path))
        assert table.per_instance
        assert (table.lookup(7, 2).age, table.lookup(7, 2).manual_lv_mass_g) == (60.0, 100.0)
        assert (table.lookup(7, 3).age, table.lookup(7, 3).manual_lv_mass_g) == (63.0, None)
        assert table.lookup(7, 0) is None

    def test_duplicate_visit_and_bad_instance(self):
        df = pd.DataFrame({"eid": [7, 7], "instance": [2, 2], "sex": [0, 0]})
        with pytest.raises(ValueError, match=r"p.csv: eid 7 instance 2 appears more than once"):
            phenotype_table_from_frame(df, source="p.csv")
        df = pd.DataFrame({"eid": [7], "instance": ["second"], "sex": [0]})
        with pytest.raises(ValueError, match=r"p.csv row 1: instance 'second' is not an integer"):
            phenotype_table_from_frame(df, source="p.csv")


class TestOneReader:
    """What the analysis relies on (``analysis.io.read_phenotypes`` passes these messages on)."""

    @pytest.mark.parametrize(
        ("column", "value", "message"),
        [
            ("sex", "X", "p.csv eid 3: sex 'X' is not female/male or 0/1 "
                         "(column 'sex' must be female/male or 0/1; bad value 'X')"),
            ("age", "old", "p.csv eid 3: age 'old' is not a number "
                           "(column 'age' has a non-numeric value 'old')"),
            ("hypertension", "maybe", "p.csv eid 3: hypertension 'maybe' is not a 0/1 or true/false value "
                                      "(column 'hypertension' must be 0/1 or true/false)"),
        ],
    )
    def test_messages_name_source_eid_column_and_value(self, column, value, message):
        df = pd.DataFrame({"eid": [3], "sex": ["M"], column: [value]})
        with pytest.raises(ValueError) as info:
            phenotypes_from_frame(df, source="p.csv")
        assert str(info.value) == message

    def test_parquet_columns_it_does_not_read_are_never_decoded(self, tmp_path):
        """A Parquet table with a broken column beside the phenotype columns reads as if it were absent."""
        table = pa.Table.from_pandas(frame(), preserve_index=False)
        table = table.append_column("notes", pa.array([b"free text" * 20] * table.num_rows, pa.binary()))
        path = tmp_path / "phenotypes.parquet"
        pq.write_table(table, path, compression="none", use_dictionary=False)
        chunk = pq.ParquetFile(path).metadata.row_group(0).column(table.schema.get_field_index("notes"))
        data = bytearray(path.read_bytes())
        data[chunk.data_page_offset : chunk.data_page_offset + chunk.total_compressed_size] = (
            b"\xff" * chunk.total_compressed_size
        )
        with pytest.raises(OSError):
            pq.read_table(io.BytesIO(bytes(data)))
        out = read_phenotype_table(io.BytesIO(bytes(data)), source=str(path))
        expected = phenotypes_from_frame(frame(), source="x")
        assert dict(out.rows) == {(eid, None): phenotype for eid, phenotype in expected.items()}
