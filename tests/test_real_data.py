"""Real DICOMs from other vendors: the Sunnybrook GE study and pydicom-data's MR files.

Our synthetic data are not evidence that anything works on real images, so every decode / tensor / mass
change is also checked here: the real study decodes under its own (non-UK Biobank) name, goes through
the whole pipeline with every method, and pydicom-data's real MR files either decode or fail with an
error naming the file and the reason.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pydicom
import pytest
from pydicom.data import get_testdata_file

from beam_pipeline.pipeline import run
from lvmass.core import contracts
from lvmass.core.decode import decode_dicom_members, decode_participant_zip
from lvmass.core.identity import participant_identity
from lvmass.core.study import DecodeError

REAL_ZIP = Path(__file__).parent / "data" / "real_cmr" / "SCD0000501.zip"
REAL_ID = "SCD0000501"


@pytest.fixture(scope="module")
def real_study():
    with open(REAL_ZIP, "rb") as fh:
        return decode_participant_zip(fh, str(REAL_ZIP))


class TestSunnybrookStudy:
    """GE Signa HDx 1.5 T, 11 slices x 20 phases in one series, 256 x 256 at 1.3672 mm, 8 mm slices."""

    def test_geometry_comes_from_the_headers(self, real_study):
        assert real_study.n_slices == 11
        assert real_study.pixel_spacing_mm == pytest.approx((1.3672, 1.3672))
        assert real_study.slice_spacing_mm == pytest.approx(8.0, abs=0.01)  # slice centres 8 mm apart
        assert np.all(np.diff(real_study.slice_positions_mm) > 0)
        # the first trigger time of each slice (10 ms after the R wave) is its end-diastolic frame
        assert real_study.end_diastolic_trigger_times_ms == (10.0,) * 11
        assert all(image.shape == (256, 256) for image in real_study.images)

    def test_known_by_its_file_name(self, real_study):
        identity = participant_identity(real_study)
        assert (identity.participant_id, identity.eid, identity.instance) == (REAL_ID, None, 0)

    def test_base_slice_is_the_widest(self, real_study):
        """Independent of the geometry code: the expert's cavity contours shrink from base to apex, and
        so does the bright blood pool; the first decoded slice must be nearer the base than the last.
        The slice positions say which end is which: the base end lies right/posterior/superior in LPS."""
        positions = [np.array(p) for p in _ipp_by_slice()]
        first, last = positions[0], positions[-1]
        base_to_apex = last - first
        # apex is left (+x), anterior (-y), inferior (-z) of the base in LPS
        assert base_to_apex @ np.array([1.0, -1.0, -1.0]) > 0

    def test_runs_through_the_pipeline_with_every_method(self, tmp_path):
        """Done-when of the real-scanner issue: a row for every method under the study's own name, the
        geometry columns filled, no dead letter."""
        inputs = tmp_path / "in"
        inputs.mkdir()
        shutil.copy(REAL_ZIP, inputs / REAL_ZIP.name)
        out = tmp_path / "out"
        summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--runner=FnApiRunner"])
        assert summary["reconciled"] and summary["participants_written"] == 1
        assert summary["participants_failed"] == 0
        rows = pads.dataset(str(out / "lvmass"), format="parquet", partitioning="hive").to_table()
        frame = rows.to_pandas().set_index("method")
        assert set(frame.index) == set(contracts.ALL_METHODS)
        assert (frame["participant_id"] == REAL_ID).all() and frame["eid"].isna().all()
        assert frame["pixel_spacing_row_mm"].tolist() == pytest.approx([1.3672] * 4)
        assert frame["slice_spacing_mm"].tolist() == pytest.approx([8.0] * 4, abs=0.01)
        from lvmass.storage.models import bundled_model_dir, read_model_card

        card = read_model_card(bundled_model_dir(contracts.MODEL_KIND_SEG))
        grid_mm, trained = card.pixel_spacing_mm, card.training_pixel_spacing_mm
        assert frame["tensor_pixel_spacing_mm"].tolist() == pytest.approx([grid_mm] * 4)
        assert frame["in_plane_scale"].tolist() == pytest.approx([1.3672 / grid_mm] * 4)
        for method in (contracts.METHOD_ML4H_SEG, contracts.METHOD_ML4H_REG):
            assert frame.loc[method, "lv_mass_raw_g"] > 0
            # the default models were trained on 1.1-2.4 mm acquisitions: this 1.37 mm study is inside
            outside = not trained[0] <= 1.3672 <= trained[1]
            assert (contracts.QC_PIXEL_SPACING_OUTSIDE_TRAINING in frame.loc[method, "qc_flags"]) == outside
        assert contracts.QC_INLINEVF_CONTOUR_MISSING in frame.loc[contracts.METHOD_INLINEVF, "qc_flags"]
        errors = pads.dataset(str(out / "errors"), format="parquet").to_table()
        assert errors.num_rows == 0
        assert json.loads((out / "summary.json").read_text())["reconciled"]


def _ipp_by_slice() -> list[list[float]]:
    """ImagePositionPatient of each slice's first frame, read with pydicom alone, in decoded order
    (sorted by SliceLocation, which this GE study writes increasing towards the apex)."""
    import zipfile

    seen: dict[float, list[float]] = {}
    with zipfile.ZipFile(REAL_ZIP) as archive:
        for name in archive.namelist():
            ds = pydicom.dcmread(io.BytesIO(archive.read(name)), stop_before_pixels=True)
            seen.setdefault(float(ds.SliceLocation), [float(v) for v in ds.ImagePositionPatient])
    return [seen[k] for k in sorted(seen)]


# --- pydicom-data's real MR files ---------------------------------------------------------------------

SINGLE_FILES = {
    # name: the reason the decoder must give (one image is no short-axis stack, or it cannot be read)
    "MR_small.dcm": "no short-axis stack",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "no short-axis stack",
    "MR_small_RLE.dcm": "no short-axis stack",
    "emri_small.dcm": "",  # enhanced MR, 10 frames in one file, no per-frame geometry in the top level
    "MR2_J2KI.dcm": "no short-axis stack",
}


def _member(name: str) -> dict[str, object]:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data lacks {name}"
    data = Path(path).read_bytes()
    return {name: (lambda: io.BytesIO(data))}


class TestPydicomDataFiles:
    @pytest.mark.parametrize("name", sorted(SINGLE_FILES))
    def test_a_lone_real_file_fails_with_a_clear_error(self, name):
        with pytest.raises(DecodeError) as caught:
            decode_dicom_members(_member(name), f"mem://{name}")
        message = str(caught.value)
        assert message.startswith(f"mem://{name}: ")
        assert SINGLE_FILES[name] in message

    def test_a_stack_of_real_vendor_headers_decodes(self):
        """MR_small.dcm's real header and pixels, written at five positions 8 mm apart along its normal
        (axial, so anatomy cannot tell base from apex; the numbering is used), decode as a stack."""
        source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        normal = np.cross(np.array(source.ImageOrientationPatient[:3], dtype=float),
                          np.array(source.ImageOrientationPatient[3:], dtype=float))
        members = {}
        for k in range(5):
            ds = copy.deepcopy(source)
            ds.ImagePositionPatient = [float(v) + 8.0 * k * n
                                       for v, n in zip(source.ImagePositionPatient, normal, strict=True)]
            ds.InstanceNumber = k + 1
            ds.TriggerTime = 0.0
            buffer = io.BytesIO()
            ds.save_as(buffer)
            data = buffer.getvalue()
            members[f"slice{k}.dcm"] = (lambda data=data: io.BytesIO(data))
        study = decode_dicom_members(members, "mem://mr_small_stack")
        assert study.n_slices == 5
        assert study.slice_spacing_mm == pytest.approx(8.0)
        expected = source.pixel_array.astype(np.float32) * float(source.get("RescaleSlope", 1.0)) + float(
            source.get("RescaleIntercept", 0.0))
        # the same pixels on every slice, in the standard view (a mirror or quarter turn at most)
        views = [expected, expected[::-1], expected[:, ::-1], expected[::-1, ::-1], expected.T,
                 expected.T[::-1], expected.T[:, ::-1], expected.T[::-1, ::-1]]
        assert any(v.shape == study.images[0].shape and np.array_equal(v, study.images[0]) for v in views)
