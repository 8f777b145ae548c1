"""NIfTI end to end (issue 21): one pipeline run (FnApiRunner) over a synthetic participant as a UK Biobank
zip, the same study as a 4-D NIfTI cine and as an ``sa_ED.nii.gz``, and four broken NIfTI files; with
``--save_labels`` and progress lines. Then the QC gallery of that output, rendered in headless Chromium.

Checks: the NIfTI twins give the DICOM's masses, slices and spacings; every broken file is one decode
dead letter naming the reason; the saved NIfTI labels and ED image lie on the decoded slices (their affine
is the study's) and measure the masses in the Parquet; progress reaches "7 of 7"; the gallery lists the
participants worst first and its pictures load in a browser.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from analysis.labels import to_acquisition_grid
from analysis.qc_gallery import PARTICIPANTS_HTML, write_gallery
from beam_pipeline.pipeline import run
from lvmass.core import acquisition, contracts, label_files
from lvmass.core.decode import decode_participant_zip
from lvmass.core.nifti import read_nifti_volume, voxel_volume_ml
from tests.nifti_factory import nifti_twin, plain_nifti
from tests.savedmodel_factory import save_band_regressor, save_band_segmenter

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DICOM_EID, CINE_EID, ED_EID = 1000001, 1000002, 1000003
BROKEN = {  # folder -> (the dead letter's stage, the summary's reason, words of its message)
    "9000001": ("read", "read/DecodeError.read", "truncated gzip"),
    "9000002": ("decode", "decode/DecodeError.header", "a 2-D image"),
    "9000003": ("decode", "decode/DecodeError.geometry", "no affine"),
    "9000004": ("decode", "decode/DecodeError.pixels", "NaN or infinite"),
}


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from lvmass.synth import SynthConfig, render_participant

    root = tmp_path_factory.mktemp("nifti_e2e")
    inputs = root / "in"
    inputs.mkdir()
    # no through-plane jitter (one affine holds the stack exactly), no extra series beside the cine
    config = SynthConfig(misregistration_mm=0.0, lax_extras_fraction=0.0, duplicate_slice_fraction=0.0,
                         vf_results_fraction=0.0, inlinevf_failure_rate=0.0)
    participant = render_participant(DICOM_EID, 11, config)
    zip_path = inputs / f"{DICOM_EID}_20209_2_0.zip"
    zip_path.write_bytes(participant.zip_bytes)
    import zipfile

    with zipfile.ZipFile(io.BytesIO(participant.zip_bytes)) as zf:
        members = [zf.read(n) for n in zf.namelist() if n.endswith(".dcm")]
    for eid, name, kwargs in ((CINE_EID, "sa.nii.gz", {"layout": "cols_i_flipped"}),
                              (ED_EID, "sa_ED.nii.gz", {"layout": "rows_i_apex_first", "frames": 1})):
        (inputs / f"{eid}_2").mkdir()
        (inputs / f"{eid}_2" / name).write_bytes(nifti_twin(members, **kwargs))
    voxels = np.random.default_rng(3).normal(100, 20, (24, 24, 6, 2)).astype(np.float32)
    affine = np.diag([-1.8, -1.8, 10.0, 1.0])
    nan_voxels = voxels.copy()
    nan_voxels[0, 0, 0, 0] = np.nan
    broken = {"9000001": plain_nifti(voxels, affine)[:900],
              "9000002": plain_nifti(voxels[:, :, 0, 0], affine),
              "9000003": plain_nifti(voxels, affine, qform_code=0, sform_code=0),
              "9000004": plain_nifti(nan_voxels, affine)}
    for folder, data in broken.items():
        (inputs / folder).mkdir()
        (inputs / folder / "sa.nii.gz").write_bytes(data)

    models = root / "models"
    seg = save_band_segmenter(models / "seg", low=0.5, high=1.5)
    reg = save_band_regressor(models / "reg", high=1.5)
    out = root / "out"
    lines = _Lines()
    progress_logger = logging.getLogger("beam_pipeline.progress")
    progress_logger.addHandler(lines)
    level = progress_logger.level
    progress_logger.setLevel(logging.INFO)
    try:
        summary = run([f"--input={inputs}/**", f"--output={out}", f"--model_seg={seg}", f"--model_reg={reg}",
                       "--runner=FnApiRunner", "--save_labels", "--progress_every_s=0.2"])
    finally:
        progress_logger.removeHandler(lines)
        progress_logger.setLevel(level)
    return {"summary": summary, "out": out, "zip": zip_path, "progress": lines.lines}


def _rows(out: Path, columns: str = "*") -> list[dict]:
    relation = duckdb.sql(f"SELECT {columns} FROM read_parquet('{out}/lvmass/*/*.parquet', "
                          "hive_partitioning=true) ORDER BY participant_id, method")
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def test_every_input_is_accounted_for(e2e):
    summary = e2e["summary"]
    counts = (summary["inputs_matched"], summary["participants_written"], summary["participants_failed"])
    assert counts == (7, 3, 4)
    assert summary["reconciled"]
    assert summary["counters"]["participants_done"] == 7
    assert summary["counters"]["participants_done_with_error"] == 4


def test_each_broken_nifti_is_one_decode_dead_letter_naming_the_reason(e2e):
    relation = duckdb.sql(f"SELECT source_uri, participant_id, stage, error_type, message "
                          f"FROM read_parquet('{e2e['out']}/errors/*.parquet') ORDER BY source_uri")
    errors = relation.fetchall()
    assert [(pid, stage, kind) for _, pid, stage, kind, _ in errors] == [
        (folder, stage, "DecodeError") for folder, (stage, _, _) in sorted(BROKEN.items())]
    assert e2e["summary"]["failed_by_reason"] == {reason: 1 for _, reason, _ in BROKEN.values()}
    for (uri, _, _, _, message), (folder, (_, _, words)) in zip(errors, sorted(BROKEN.items()), strict=True):
        assert uri.endswith(f"/{folder}/sa.nii.gz") and words in message and uri in message


def test_the_nifti_twins_measure_what_the_dicom_measures(e2e):
    rows = {(r["participant_id"], r["method"]): r for r in _rows(e2e["out"])}
    for eid in (CINE_EID, ED_EID):
        assert rows[(str(eid), "ml4h_seg")]["instance"] == 2  # the visit from the folder's name
        for method in (contracts.METHOD_ML4H_SEG, contracts.METHOD_ML4H_REG):
            dicom, nifti = rows[(str(DICOM_EID), method)], rows[(str(eid), method)]
            # the same pixels; spacings through the file's float32 affine: equal to float32's precision
            assert nifti["lv_mass_raw_g"] == pytest.approx(dicom["lv_mass_raw_g"], rel=1e-6)
            assert nifti["lv_mass_raw_g"] > 0
            for column in ("n_slices", "pixel_spacing_row_mm", "pixel_spacing_col_mm"):
                assert nifti[column] == pytest.approx(dicom[column], rel=1e-6), column
            assert nifti["slice_spacing_mm"] == pytest.approx(dicom["slice_spacing_mm"], abs=1e-4)
        inlinevf = rows[(str(eid), contracts.METHOD_INLINEVF)]
        assert inlinevf["lv_mass_raw_g"] is None and "inlinevf_contour_missing" in inlinevf["qc_flags"]


def _nifti(out: Path, method: str | None, eid: int) -> tuple[np.ndarray, np.ndarray]:
    path = (label_files.ed_image_path(str(out), str(eid), 2) if method is None else
            label_files.label_path(str(out), method, str(eid), 2, suffix=label_files.NIFTI_SUFFIX))
    return read_nifti_volume(Path(path).read_bytes(), path)


def test_saved_nifti_labels_and_image_lie_on_the_decoded_slices(e2e):
    out = e2e["out"]
    study = decode_participant_zip(io.BytesIO(e2e["zip"].read_bytes()), str(e2e["zip"]))
    image, image_affine = _nifti(out, None, DICOM_EID)
    np.testing.assert_allclose(acquisition.lps_to_ras(image_affine), study.affine_lps, atol=1e-4)
    planes = acquisition.slice_planes(study.slice_positions_mm, study.slice_spacing_mm)
    for k, plane in enumerate(planes):
        np.testing.assert_array_equal(image[:, :, plane], study.images[k])
    rows = {(r["participant_id"], r["method"]): r for r in _rows(out)}
    for method in (contracts.METHOD_ML4H_SEG, contracts.METHOD_INLINEVF):
        labels, affine = _nifti(out, method, DICOM_EID)
        assert labels.dtype == np.uint8 and labels.shape == image.shape
        np.testing.assert_allclose(affine, image_affine)
        with np.load(label_files.label_path(str(out), method, str(DICOM_EID), 2)) as saved:
            back = to_acquisition_grid(saved["labels"], (*study.images[0].shape, study.n_slices),
                                       slice_start=int(saved["slice_start"]),
                                       acquired_pixel_spacing_mm=tuple(saved["acquired_pixel_spacing_mm"]),
                                       grid_pixel_mm=float(saved["spacing_mm"][0]))
        if method == contracts.METHOD_ML4H_SEG:  # the model's labels, unplaced as the analysis unplaces them
            np.testing.assert_array_equal(labels[:, :, list(planes)], back)
        else:  # InlineVF's own acquisition-grid labels: the file alone gives back its raw mass
            myocardium_ml = np.count_nonzero(labels == contracts.MYOCARDIUM) * voxel_volume_ml(affine)
            assert myocardium_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML == pytest.approx(
                rows[(str(DICOM_EID), method)]["lv_mass_raw_g"], rel=1e-6)  # the file's affine is float32
    for eid in (CINE_EID, ED_EID):  # the twins' files are the DICOM's, voxel for voxel
        for method in (None, contracts.METHOD_ML4H_SEG):
            twin, twin_affine = _nifti(out, method, eid)
            reference, reference_affine = _nifti(out, method, DICOM_EID)
            np.testing.assert_array_equal(twin, reference)
            np.testing.assert_allclose(twin_affine, reference_affine, atol=1e-3)


def test_progress_lines_end_with_every_participant_done(e2e):
    lines = e2e["progress"]
    assert lines and all(line.startswith("progress: ") for line in lines)
    final = r"progress: 7 of 7 participants done \(100%; 4 failed\) in \d+ s, [\d.]+ per s"
    assert re.fullmatch(final, lines[-1]), lines[-1]


@pytest.fixture(scope="module")
def gallery(e2e):
    return write_gallery(str(e2e["out"]))


def test_the_gallery_lists_every_participant_and_dead_letter(gallery, e2e):
    assert (gallery.participants, gallery.pictured, gallery.dead_letters, len(gallery.pages)) == (3, 3, 4, 1)
    page = Path(gallery.index).read_text(encoding="utf-8")
    assert page.count('<section class="card') == 3 and page.count('<img class="mosaic"') == 3
    assert "outlines: ML4H_seg" in page and "4 dead letters" in page
    for folder in BROKEN:
        assert f"/{folder}/sa.nii.gz" in page
    listing = (Path(gallery.index).parent / PARTICIPANTS_HTML).read_text(encoding="utf-8")
    data = json.loads(re.search(r"const ROWS=(\[.*?\]);", listing).group(1))
    assert sorted(r["id"] for r in data) == [str(DICOM_EID), str(CINE_EID), str(ED_EID)]
    assert all(r["href"].startswith("index.html#p-") for r in data)


_PROBE = """<script>window.addEventListener('load',()=>{const out=[...document.images].map(i=>({
complete:i.complete,w:i.naturalWidth,h:i.naturalHeight}));const pre=document.createElement('pre');
pre.id='probe';pre.textContent=JSON.stringify(out);document.body.appendChild(pre)});</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser installs it)")
def test_the_gallery_renders_in_headless_chromium(gallery, tmp_path):
    html = Path(gallery.index).read_text(encoding="utf-8")
    probed = tmp_path / "probe.html"
    eager = html.replace('loading="lazy" ', "")  # every picture loads, not only those in view
    probed.write_text(eager.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    result = _chromium(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], tmp_path / "p1")
    assert result.returncode == 0, result.stderr[-2000:]
    images = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S).group(1)
                        .replace("&quot;", '"'))
    assert len(images) == 3 and all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images)
    listing = _chromium(["--virtual-time-budget=10000", "--dump-dom",
                         (Path(gallery.index).parent / PARTICIPANTS_HTML).as_uri()], tmp_path / "p2")
    assert listing.returncode == 0 and listing.stdout.count("<tr>") >= 4  # its script drew the rows
    shot = tmp_path / "gallery.png"
    result = _chromium(["--window-size=1300,1600", f"--screenshot={shot}", Path(gallery.index).as_uri()],
                       tmp_path / "p3")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("L"), dtype=float)
    assert pixels.shape == (1600, 1300) and pixels.std() > 10  # not a blank page
