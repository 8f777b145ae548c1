"""The manifest parser, against the real defect (unquoted comma in the date)."""

from __future__ import annotations

import pytest

from lvmass.core.manifest import ManifestError, is_manifest_name, parse_manifest, series_descriptions
from tests.dicom_factory import manifest_text

HEADER9 = "filename,patientid,studyid,studydescription,date,seriesid,series discription,aet,host"
HEADER10 = "filename,patientid,studyid,studydescription,date,seriesid,series discription,modality,aet,host"


class TestIsManifestName:
    @pytest.mark.parametrize("name", ["manifest.cvs", "manifest.csv", "Manifest.CSV", "dir/manifest.cvs"])
    def test_manifest_names(self, name):
        assert is_manifest_name(name)

    @pytest.mark.parametrize("name", ["1.2.3.dcm", "my_manifest.csv", "notes.txt"])
    def test_other_names(self, name):
        assert not is_manifest_name(name)


class TestParseManifest:
    def test_repairs_unquoted_comma_in_date(self):
        text = (
            HEADER9
            + "\n"
            + "a.dcm,1000123,1.2,CardiacMRI,Aug 30, 2015 10:12:33,1.3,CINE_segmented_SAX_b1,AET,host\n"
        )
        (row,) = parse_manifest(text, source="z.zip")
        assert row.date == "Aug 30, 2015 10:12:33"
        assert row.series_description == "CINE_segmented_SAX_b1"
        assert (row.filename, row.patient_id, row.series_id, row.aet, row.host) == (
            "a.dcm",
            "1000123",
            "1.3",
            "AET",
            "host",
        )
        assert row.modality is None

    def test_ten_columns_with_modality(self):
        text = (
            HEADER10
            + "\n"
            + "b.dcm,1,1.2,CardiacMRI,Sep 1, 2016 08:00:00,1.3,CINE_segmented_SAX_InlineVF,MR,AET,h\n"
        )
        (row,) = parse_manifest(text, source="z.zip")
        assert row.modality == "MR"
        assert row.series_description == "CINE_segmented_SAX_InlineVF"
        assert row.date == "Sep 1, 2016 08:00:00"

    def test_quoted_date_needs_no_repair(self):
        text = (
            HEADER9
            + "\n"
            + 'c.dcm,1,1.2,CardiacMRI,"Aug 30, 2015 10:12:33",1.3,CINE_segmented_SAX_b2,AET,h\n'
        )
        (row,) = parse_manifest(text, source="z.zip")
        assert (row.date, row.series_description) == ("Aug 30, 2015 10:12:33", "CINE_segmented_SAX_b2")

    def test_header_with_modality_rows_without(self):
        text = (
            HEADER10 + "\n" + "d.dcm,1,1.2,CardiacMRI,Aug 30, 2015 10:12:33,1.3,CINE_segmented_SAX_b3,AET,h\n"
        )
        (row,) = parse_manifest(text, source="z.zip")
        assert (row.series_description, row.aet, row.modality) == ("CINE_segmented_SAX_b3", "AET", None)

    def test_factory_manifest_round_trip_crlf(self):
        entries = [(f"{k}.dcm", f"CINE_segmented_SAX_b{k}") for k in range(1, 4)]
        rows = parse_manifest(manifest_text(entries), source="z.zip")
        assert [(r.filename, r.series_description) for r in rows] == entries

    def test_empty(self):
        with pytest.raises(ManifestError, match=r"z.zip: manifest is empty"):
            parse_manifest("  \n", source="z.zip")

    def test_unknown_header_column(self):
        with pytest.raises(ManifestError, match=r"z.zip: manifest header has unknown column 'colour'"):
            parse_manifest("filename,colour\na,b\n", source="z.zip")

    def test_header_without_description(self):
        with pytest.raises(ManifestError, match=r"lacks column\(s\) \['series_description'\]"):
            parse_manifest("filename,date\na,b\n", source="z.zip")

    def test_unrepairable_line(self):
        text = HEADER9 + "\n" + "e.dcm,1,1.2,CardiacMRI,yesterday,1.3,x,y,AET,h,extra\n"
        with pytest.raises(ManifestError, match=r"z.zip: manifest line 2 has 11 fields, expected 9"):
            parse_manifest(text, source="z.zip")

    def test_empty_filename(self):
        text = HEADER9 + "\n" + ",1,1.2,CardiacMRI,Aug 30, 2015 10:12:33,1.3,CINE_segmented_SAX_b1,AET,h\n"
        with pytest.raises(ManifestError, match="manifest line 2 has an empty filename"):
            parse_manifest(text, source="z.zip")


class TestUnusableManifests:
    """A manifest the decoder must ignore raises ManifestError (the decoder then reads every header)."""

    def test_a_long_line(self):
        text = "filename,series discription\n" + "a.dcm," + "x" * 9000 + "\n"
        with pytest.raises(ManifestError, match=r"z: manifest line 2 has 9006 characters, more than 8192"):
            parse_manifest(text, source="z")

    def test_csv_errors(self, monkeypatch):
        from lvmass.core import manifest

        monkeypatch.setattr(manifest, "MAX_LINE_CHARS", 10**7)  # let the CSV reader meet the long field
        text = "filename,series discription\n" + "a.dcm," + "x" * 200_000 + "\n"
        with pytest.raises(ManifestError, match=r"z: manifest line 2 cannot be parsed as CSV \(field larger"):
            parse_manifest(text, source="z")


class TestSeriesDescriptions:
    def test_same_rows_and_errors_as_parse_manifest(self):
        entries = [(f"{k}.dcm", f"CINE_segmented_SAX_b{k}") for k in range(1, 4)]
        text = manifest_text(entries)
        assert series_descriptions(text, source="z") == {
            r.filename: r.series_description for r in parse_manifest(text, source="z")}
        bad = HEADER9 + "\n" + "e.dcm,1,1.2,CardiacMRI,yesterday,1.3,x,y,AET,h,extra\n"
        with pytest.raises(ManifestError, match=r"z: manifest line 2 has 11 fields, expected 9"):
            series_descriptions(bad, source="z")

    def test_modality_column_either_way(self):
        row = "a.dcm,1000123,1.2,CardiacMRI,Aug 30, 2015 10:12:33,1.3,CINE_segmented_SAX_b1,MR,AET,host\n"
        assert series_descriptions(HEADER9 + "\n" + row, source="z") == {"a.dcm": "CINE_segmented_SAX_b1"}
        row9 = "a.dcm,1000123,1.2,CardiacMRI,Aug 30, 2015 10:12:33,1.3,CINE_segmented_SAX_b2,AET,host\n"
        assert series_descriptions(HEADER10 + "\n" + row9, source="z") == {"a.dcm": "CINE_segmented_SAX_b2"}
