"""lvmass.core.schema: the records agree with their pyarrow schemas (the model card: test_model_card.py)."""

import dataclasses

import pyarrow as pa
import pytest

from lvmass.core import contracts, schema


def _python_type_of(field_type: str) -> str:
    return field_type.replace(" ", "")


class TestSchemas:
    @pytest.mark.parametrize(
        ("record", "arrow_schema"),
        [(schema.ResultRecord, schema.RESULTS_SCHEMA), (schema.ErrorRecord, schema.ERRORS_SCHEMA)],
    )
    def test_record_fields_match_schema_in_order(self, record, arrow_schema):
        assert [f.name for f in dataclasses.fields(record)] == arrow_schema.names

    @pytest.mark.parametrize(
        ("record", "arrow_schema"),
        [(schema.ResultRecord, schema.RESULTS_SCHEMA), (schema.ErrorRecord, schema.ERRORS_SCHEMA)],
    )
    def test_optional_fields_are_nullable(self, record, arrow_schema):
        for field in dataclasses.fields(record):
            optional = "None" in _python_type_of(str(field.type))
            assert arrow_schema.field(field.name).nullable == optional, field.name

    def test_a_record_converts_to_a_table_with_the_schema(self):
        row = schema.ResultRecord(
            participant_id="1000001", eid=1000001, instance=2, method=contracts.METHOD_ML4H_SEG,
            lv_mass_raw_g=101.5, lv_mass_g=90.0,
            calibration="sex_mean_centered", myocardium_volume_ml=96.7, lv_cavity_volume_ml=120.0, bsa_m2=1.9,
            lvmi_g_m2=47.4, lvh=False, lvh_p90=False, sex="male", age=64.0, n_slices=10,
            pixel_spacing_row_mm=1.8, pixel_spacing_col_mm=1.8, slice_spacing_mm=10.0,
            tensor_pixel_spacing_mm=1.86, in_plane_scale=1.8 / 1.86, qc_flags=["image_cropped"],
            qc_pass=True, model_version="1", pipeline_version="0.1.0", source_uri="x.zip",
        ).to_row()
        table = pa.Table.from_pylist([row], schema=schema.RESULTS_SCHEMA)
        assert table.column("qc_flags").to_pylist() == [["image_cropped"]]

    def test_file_schema_is_results_schema_without_partition_columns(self):
        assert "method" not in schema.RESULTS_FILE_SCHEMA.names
        assert len(schema.RESULTS_FILE_SCHEMA) == len(schema.RESULTS_SCHEMA) - 1
