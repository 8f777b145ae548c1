"""The synthetic cohort, read back the way the pipeline will read real data: zipfile + pydicom only.

The cohort is generated once per module (lite fidelity); the assertions never call generator code to
interpret the files (population/anatomy unit checks live at the end and say so).
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from lvmass.core.contracts import LABEL_MAP, LV_CAVITY, MYOCARDIAL_DENSITY_G_PER_ML, MYOCARDIUM
from lvmass.core.schema import PHENOTYPE_COLUMNS
from lvmass.core.truth import (
    COHORT_KEY,
    DISEASE_MODEL_KEY,
    TRUE_OR_PER_SAMPLE_SD_KEY,
    TRUTH_CSV,
    TRUTH_EID,
    TRUTH_JSON,
    TRUTH_LABELS_DIRNAME,
    TRUTH_REQUIRED_COLUMNS,
)
from lvmass.synth import SynthConfig, generate_cohort, generate_population, render_participant
from lvmass.synth.participant import participant_scene, slice_points_rel
from lvmass.synth.render import skin_depth_mm

N_PARTICIPANTS = 8
SEED = 11
SAX = re.compile(r"^CINE_segmented_SAX_b(\d+)$")
INLINEVF = "CINE_segmented_SAX_InlineVF"
MANIFEST_DATE = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{4} \d{2}:\d{2}:\d{2}$")


def _read_zip(data: bytes) -> tuple[dict[str, bytes], list[pydicom.Dataset]]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    members = {name: zf.read(name) for name in zf.namelist()}
    dicoms = [pydicom.dcmread(io.BytesIO(b)) for n, b in members.items() if n.endswith(".dcm")]
    return members, dicoms


def _truth_rows(path: Path) -> dict[int, dict[str, str]]:
    with path.open() as fh:
        return {int(r["eid"]): r for r in csv.DictReader(fh)}


def _bk_series(dicoms: list[pydicom.Dataset]) -> dict[int, list[pydicom.Dataset]]:
    """bK series by slice number; a slice acquired twice keeps the later series (higher SeriesNumber)."""
    by_uid: dict[str, list[pydicom.Dataset]] = {}
    for ds in dicoms:
        if SAX.match(ds.SeriesDescription):
            by_uid.setdefault(ds.SeriesInstanceUID, []).append(ds)
    out: dict[int, list[pydicom.Dataset]] = {}
    for series in sorted(by_uid.values(), key=lambda s: int(s[0].SeriesNumber)):
        out[int(SAX.match(series[0].SeriesDescription).group(1))] = sorted(
            series, key=lambda d: int(d.InstanceNumber)
        )
    return out


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.array(ds.ImageOrientationPatient, float)
    return np.cross(iop[:3], iop[3:])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    paths = generate_cohort(out, participants=N_PARTICIPANTS, seed=SEED, fidelity="lite")
    truth = _truth_rows(paths.truth_csv)
    zips = {eid: _read_zip((paths.zips_dir / f"{eid}_20209_2_0.zip").read_bytes()) for eid in truth}
    return paths, truth, zips


class TestFiles:
    def test_layout_and_names(self, cohort):
        paths, truth, _ = cohort
        names = sorted(p.name for p in paths.zips_dir.iterdir())
        assert len(names) == N_PARTICIPANTS == len(truth)
        assert all(re.fullmatch(r"\d{7}_20209_2_0\.zip", n) for n in names)
        assert sorted(p.name for p in paths.labels_dir.iterdir()) == [
            n.replace(".zip", ".npz") for n in names
        ]
        with paths.phenotypes_csv.open() as fh:
            reader = csv.reader(fh)
            assert tuple(next(reader)) == PHENOTYPE_COLUMNS
            rows = list(reader)
        assert sorted(int(r[0]) for r in rows) == sorted(truth)
        assert {r[1] for r in rows} <= {"female", "male"}
        assert all(r[c] in {"0", "1"} for r in rows for c in (5, 6, 7))

    def test_truth_json(self, cohort):
        paths, _, _ = cohort
        info = json.loads(paths.truth_json.read_text())
        assert info["seed"] == SEED
        assert info["config"]["fidelity"] == "lite"
        for disease in ("hypertension", "atrial_fibrillation", "heart_failure"):
            model = info["disease_model"]["diseases"][disease]
            assert model["odds_ratios"]["or_per_sd_lvmi"] == pytest.approx(
                np.exp(model["log_odds"]["lvmi_per_ref_sd"])
            )
        assert info["cohort"]["inlinevf"]["expected_bias_factor"] > 1.3


class TestManifest:
    def test_real_defects_and_repair(self, cohort):
        _, _, zips = cohort
        for members, dicoms in zips.values():
            manifests = [n for n in members if n.startswith("manifest")]
            assert manifests == ["manifest.cvs"]
            lines = members["manifest.cvs"].decode("ascii").splitlines()
            header = lines[0].split(",")
            assert header[:7] == [
                "filename",
                "patientid",
                "studyid",
                "studydescription",
                "date",
                "seriesid",
                "series discription",
            ]
            assert len(header) in (9, 10)
            by_name = {
                n: pydicom.dcmread(io.BytesIO(members[n]), stop_before_pixels=True)
                for n in members
                if n.endswith(".dcm")
            }
            assert len(lines) - 1 == len(by_name) == len(dicoms)
            for line in lines[1:]:
                naive = line.split(",")
                assert len(naive) == len(header) + 1  # the unquoted comma in the date
                fields = [*naive[:4], naive[4] + "," + naive[5], *naive[6:]]
                assert MANIFEST_DATE.match(fields[4]), fields[4]
                ds = by_name[fields[0]]
                assert fields[6] == ds.SeriesDescription
                assert fields[5] == ds.SeriesInstanceUID
                assert fields[0] == f"{ds.SOPInstanceUID}.dcm"


class TestSeries:
    def test_series_phases_and_trigger_times(self, cohort):
        _, truth, zips = cohort
        for eid, (_, dicoms) in zips.items():
            n = int(truth[eid]["n_slices"])
            assert 6 <= n <= 13
            bk = _bk_series(dicoms)
            assert sorted(bk) == list(range(1, n + 1))
            phases = None
            for series in bk.values():
                numbers = [int(d.InstanceNumber) for d in series]
                assert numbers[0] == 1  # ED first
                phases = [x - 1 for x in numbers] if phases is None else phases
                assert [x - 1 for x in numbers] == phases
                rr = float(series[0].NominalInterval)
                times = [float(d.TriggerTime) for d in series]
                assert times == sorted(times) and times[0] == 0.0
                assert times == pytest.approx([p * rr / 50 for p in phases], abs=1e-3)
                assert all(int(d.CardiacNumberOfImages) == 50 for d in series)
            vf = [d for d in dicoms if d.SeriesDescription == INLINEVF and float(d.SliceThickness) == 8.0]
            assert len({d.SeriesInstanceUID for d in vf}) == 1
            assert len(vf) == n * len(phases)
            for d in vf:
                k, p = divmod(int(d.InstanceNumber) - 1, 50)
                assert p in phases
                ref = bk[k + 1][phases.index(p)]
                assert np.allclose(
                    np.array(d.ImagePositionPatient, float), np.array(ref.ImagePositionPatient, float)
                )
                assert d.pixel_array.tobytes() == ref.pixel_array.tobytes()


class TestGeometry:
    def test_tilted_plane_and_slice_spacing(self, cohort):
        _, truth, zips = cohort
        for eid, (_, dicoms) in zips.items():
            bk = _bk_series(dicoms)
            first = bk[1][0]
            iop = np.array(first.ImageOrientationPatient, float)
            assert np.allclose([np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])], 1.0, atol=1e-6)
            assert abs(np.dot(iop[:3], iop[3:])) < 1e-6
            assert np.max(np.abs(iop[:3])) < 0.99 and np.max(np.abs(iop[3:])) < 0.99  # oblique, not identity
            normal = _normal(first)  # u x v: seen from the apex, it points from the apex to the base
            pos = [float(np.dot(np.array(bk[k][0].ImagePositionPatient, float), normal)) for k in sorted(bk)]
            assert np.allclose(np.diff(pos), -10.0, atol=1e-3)  # b1 (base) to bN (apex): 10 mm steps
            for series in bk.values():
                for d in series:
                    assert np.allclose(np.array(d.ImageOrientationPatient, float), iop)
                    assert float(d.SliceThickness) == 8.0
                    assert [float(x) for x in d.PixelSpacing] == [float(x) for x in first.PixelSpacing]
                    assert (d.Rows, d.Columns) == (first.Rows, first.Columns)
            spacing = [float(x) for x in first.PixelSpacing]
            assert 1.4 <= spacing[0] <= 2.6
            assert spacing[0] == pytest.approx(float(truth[eid]["pixel_spacing_row_mm"]))
            assert 180 <= first.Rows <= 256 and 180 <= first.Columns <= 256

    def test_usual_short_axis_display(self, cohort):
        """As UK Biobank short-axis cine is displayed: seen from the apex, the anterior wall at the top
        and the RV on the viewer's left of the LV (from the IOP, and found in the pixels)."""
        paths, _truth, zips = cohort
        for eid, (_, dicoms) in zips.items():
            bk = _bk_series(dicoms)
            iop = np.array(bk[1][0].ImageOrientationPatient, float)
            row_dir, col_dir = iop[:3], iop[3:]  # LPS: +x patient left, +y posterior, +z head
            assert row_dir[0] > 0.5  # left to right across the image = the patient's right to left
            assert col_dir[1] > 0.5  # top to bottom = anterior to posterior
            # the normal points from the apex (left, anterior, inferior) to the base
            assert float(np.dot(_normal(bk[1][0]), [-1.0, 1.0, 1.0])) > 0.5
            # in the mid-ventricular ED image, the bright blood beside the LV (the RV) is on the left
            labels = np.load(paths.labels_dir / f"{eid}_20209_2_0.npz")["labels"]
            mid = int(np.argmax((labels == MYOCARDIUM).sum(axis=(0, 1))))
            lv = labels[..., mid] > 0
            ed = bk[mid + 1][0].pixel_array.astype(float)
            blood = ed[labels[..., mid] == LV_CAVITY].mean()
            ring = ndimage.binary_dilation(lv, iterations=12) & ~ndimage.binary_dilation(lv, iterations=2)
            bright = ring & (ed > 0.8 * blood)
            cols = np.nonzero(lv)[1].mean()
            assert bright.sum() > 30 and np.nonzero(bright)[1].mean() < cols - 5, (eid, bright.sum())

    def test_pixel_format_and_contrast(self, cohort):
        paths, _truth, zips = cohort
        for eid, (_, dicoms) in zips.items():
            bk = _bk_series(dicoms)
            labels = np.load(paths.labels_dir / f"{eid}_20209_2_0.npz")["labels"]
            assert labels.dtype == np.uint8 and labels.shape == (bk[1][0].Rows, bk[1][0].Columns, len(bk))
            assert set(np.unique(labels)) <= set(LABEL_MAP.values())
            for series in bk.values():
                d = series[0]
                assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
                assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 12, 11, 0)
                assert d.PhotometricInterpretation == "MONOCHROME2" and d.Manufacturer == "SIEMENS"
                px = d.pixel_array
                assert px.dtype == np.uint16 and px.max() <= 4095
            mid = int(np.argmax((labels == MYOCARDIUM).sum(axis=(0, 1))))
            ed = bk[mid + 1][0].pixel_array.astype(float)
            blood = ed[labels[..., mid] == LV_CAVITY].mean()
            muscle = ed[ndimage.binary_erosion(labels[..., mid] == MYOCARDIUM)].mean()
            assert blood > 1.8 * muscle  # bSSFP: bright blood, dark myocardium


def _components(outline: np.ndarray) -> list[np.ndarray]:
    lab, n = ndimage.label(outline, structure=np.ones((3, 3)))
    return [lab == i for i in range(1, n + 1)]


def _inlinevf_ed(dicoms: list[pydicom.Dataset]) -> dict[int, pydicom.Dataset]:
    return {
        (int(d.InstanceNumber) - 1) // 50: d
        for d in dicoms
        if d.SeriesDescription == INLINEVF
        and float(d.SliceThickness) == 8.0
        and (int(d.InstanceNumber) - 1) % 50 == 0
    }


class TestOverlays:
    def test_two_closed_curves_around_true_myocardium(self, cohort):
        paths, truth, zips = cohort
        checked = 0
        for eid, (_, dicoms) in zips.items():
            if truth[eid]["inlinevf_failure"]:
                continue
            labels = np.load(paths.labels_dir / f"{eid}_20209_2_0.npz")["labels"]
            myo_area = (labels == MYOCARDIUM).sum(axis=(0, 1))
            ed = _inlinevf_ed(dicoms)
            for k, d in ed.items():
                if myo_area[k] == 0:
                    assert 0x60003000 not in d  # no LV, no contour
                    continue
                if 0x60003000 not in d:
                    continue
                assert (d[0x60000010].value, d[0x60000011].value) == (d.Rows, d.Columns)
                assert d[0x60000100].value == 1 and d[0x60000102].value == 0
                outline = d.overlay_array(0x6000).astype(bool)
                true_myo = labels[..., k] == MYOCARDIUM
                comps = _components(outline)
                if true_myo.sum() < 0.5 * myo_area.max() or len(comps) < 2:
                    continue  # apical cap: one curve
                assert len(comps) == 2
                fills = [ndimage.binary_fill_holes(c) for c in comps]
                assert all(f.sum() > 2 * c.sum() for f, c in zip(fills, comps, strict=True))  # closed
                outer, inner = sorted(fills, key=lambda f: f.sum(), reverse=True)
                inner_strict = inner & ~comps[[f.sum() for f in fills].index(inner.sum())]
                assert (true_myo & outer).sum() >= 0.97 * true_myo.sum()
                assert (true_myo & inner_strict).sum() <= 0.03 * true_myo.sum()
                assert (labels[..., k] == LV_CAVITY).sum() > 0 and inner.sum() > 0
                checked += 1
        assert checked >= N_PARTICIPANTS * 3

    def test_raw_inlinevf_mass_runs_high_as_recorded(self, cohort):
        _paths, truth, zips = cohort
        ratios = []
        for eid, (_, dicoms) in zips.items():
            row = truth[eid]
            spacing = float(row["pixel_spacing_row_mm"]) * float(row["pixel_spacing_col_mm"])
            voxels = 0
            for d in _inlinevf_ed(dicoms).values():
                if 0x60003000 not in d:
                    continue
                outline = d.overlay_array(0x6000).astype(bool)
                comps = sorted(_components(outline), key=lambda c: ndimage.binary_fill_holes(c).sum())
                filled = ndimage.binary_fill_holes(outline)
                if len(comps) >= 2:  # minus the strict interior of the inner curve
                    filled &= ~(ndimage.binary_fill_holes(comps[0]) & ~comps[0])
                voxels += int(filled.sum())
            raw = voxels * spacing * 10.0 / 1000.0 * MYOCARDIAL_DENSITY_G_PER_ML
            assert raw == pytest.approx(float(row["expected_inlinevf_raw_mass_g"]), rel=0.02)
            if not row["inlinevf_failure"]:
                ratios.append(raw / float(row["true_lv_mass_g"]))
        # the paper: raw InlineVF 155 g against 90 g manual (x1.72)
        assert 1.45 < float(np.mean(ratios)) < 2.05


class TestAnatomy:
    """The chest around the heart, from the geometry the cohort's images were drawn from (generator code:
    ``participant_scene`` rebuilds it from (seed, eid), the labels are the written truth_labels)."""

    def test_heart_sits_inside_the_thorax(self, cohort):
        paths, truth, _ = cohort
        fov = []
        for eid in truth:
            scene = participant_scene(eid, SEED)
            acq, body = scene.truth.acquisition, scene.body
            labels = np.load(paths.labels_dir / f"{eid}_20209_2_0.npz")["labels"]
            assert labels.shape == (acq.rows, acq.cols, acq.n_slices)
            inside = []
            for k in range(acq.n_slices):
                depth = skin_depth_mm(slice_points_rel(acq, k), body)
                lv = labels[..., k] > 0
                # every LV pixel inside the body, deeper than the subcutaneous fat and chest-wall muscle
                assert not lv.any() or depth[lv].min() > body.fat_mm + body.muscle_mm + 10.0, (eid, k)
                inside.append(float((depth > 0).mean()))
            fov.append(np.mean(inside))
            # the anterior skin 90-110 mm in front of the mid-LV (further only where the LV needed room)
            mid = 0.5 * scene.truth.anatomy.epi_apex_z_mm * acq.n
            ahead = np.arange(0.0, 200.0, 0.5, dtype=np.float32)
            skin_mm = ahead[np.argmax(body.trunk.depth_mm(np.full_like(ahead, mid[0]), mid[1] - ahead) <= 0)]
            assert 90.0 <= skin_mm <= 130.0, (eid, skin_mm)
            # spine and descending aorta behind the heart; the diaphragm below the LV
            assert body.spine_xy[1] > mid[1] + 60.0 and body.aorta_xy[1] > mid[1] + 30.0
        assert min(fov) > 0.5 and np.mean(fov) > 0.6, fov  # the body fills most of the field of view

    def test_lungs_beside_the_lv(self, cohort):
        """Lateral to the LV (the viewer's right) lies the dark left lung."""
        paths, _truth, zips = cohort
        for eid, (_, dicoms) in zips.items():
            bk = _bk_series(dicoms)
            labels = np.load(paths.labels_dir / f"{eid}_20209_2_0.npz")["labels"]
            mid = int(np.argmax((labels == MYOCARDIUM).sum(axis=(0, 1))))
            lv = labels[..., mid] > 0
            ed = bk[mid + 1][0].pixel_array.astype(float)
            blood = ed[labels[..., mid] == LV_CAVITY].mean()
            rows, cols = np.nonzero(lv)
            spacing = float(bk[1][0].PixelSpacing[1])
            centre_row, right_col = int(rows.mean()), int(cols.max() + 20.0 / spacing)
            band = ed[centre_row - 3 : centre_row + 4, right_col : right_col + int(20.0 / spacing)]
            assert band.mean() < 0.3 * blood, (eid, band.mean() / blood)


class TestTruth:
    def test_mass_volume_labels_and_indexing(self, cohort):
        paths, truth, _ = cohort
        ratios = []
        phen = {int(r["eid"]): r for r in csv.DictReader(paths.phenotypes_csv.open())}
        for eid, row in truth.items():
            volume, mass = float(row["true_myocardium_volume_ml"]), float(row["true_lv_mass_g"])
            # recomputed from the per-slice areas: the paper's rule (area x 10 mm x 1.05 g/mL)
            areas = [float(a) for a in row["myocardium_area_mm2"].split()]
            assert len(areas) == int(row["n_slices"])
            assert sum(areas) * 10.0 / 1000.0 == pytest.approx(volume, rel=1e-4)
            assert sum(areas) * 10.0 / 1000.0 * MYOCARDIAL_DENSITY_G_PER_ML == pytest.approx(mass, rel=1e-4)
            labels = np.load(paths.labels_dir / f"{eid}_20209_2_0.npz")["labels"]
            label_mass = (
                (labels == MYOCARDIUM).sum()
                * float(row["pixel_spacing_row_mm"])
                * float(row["pixel_spacing_col_mm"])
                * 10.0
                / 1000.0
                * MYOCARDIAL_DENSITY_G_PER_ML
            )
            ratios.append(label_mass / mass)
            h, w = float(phen[eid]["height_cm"]), float(phen[eid]["weight_kg"])
            bsa = 0.007184 * w**0.425 * h**0.725
            assert float(row["bsa_m2"]) == pytest.approx(bsa, rel=1e-4)
            assert float(row["true_lvmi_g_m2"]) == pytest.approx(mass / bsa, rel=1e-4)
            assert 30.0 < mass < 250.0
            if phen[eid]["manual_lv_mass_g"]:
                assert abs(float(phen[eid]["manual_lv_mass_g"]) - mass) < 30.0
        # a perfect pixel segmentation recovers the true mass within a few %
        assert all(0.9 < r < 1.1 for r in ratios), ratios
        assert abs(float(np.mean(ratios)) - 1.0) < 0.03


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    a = generate_cohort(tmp_path / "a", participants=3, seed=5, workers=1)
    b = generate_cohort(tmp_path / "b", participants=3, seed=5, workers=2)
    c = generate_cohort(tmp_path / "c", participants=3, seed=6, workers=1)
    names = sorted(p.name for p in a.zips_dir.iterdir())
    assert names == sorted(p.name for p in b.zips_dir.iterdir())
    for name in names:
        assert (a.zips_dir / name).read_bytes() == (b.zips_dir / name).read_bytes()
    assert a.truth_csv.read_text() == b.truth_csv.read_text()
    assert a.phenotypes_csv.read_text() == b.phenotypes_csv.read_text()
    assert names != sorted(p.name for p in c.zips_dir.iterdir())
    first = generate_cohort(tmp_path / "d", participants=2, seed=5, first_eid=2000000)
    assert sorted(p.name for p in first.zips_dir.iterdir()) == [
        "2000000_20209_2_0.zip",
        "2000001_20209_2_0.zip",
    ]


def test_a_non_empty_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "cohort"
    # the config's appearance_scale (and fidelity) are used when the arguments are not given
    first = generate_cohort(out, participants=2, seed=5, config=SynthConfig(appearance_scale=0.0))
    assert json.loads(first.truth_json.read_text())["config"]["appearance_scale"] == 0.0
    before = {p.name: p.read_bytes() for p in first.zips_dir.iterdir()}
    with pytest.raises(ValueError, match=rf"output folder {re.escape(str(out))} is not empty .*overwrite"):
        generate_cohort(out, participants=1, seed=6)
    assert {p.name: p.read_bytes() for p in first.zips_dir.iterdir()} == before  # untouched
    again = generate_cohort(out, participants=1, seed=6, overwrite=True)
    assert len(list(again.zips_dir.iterdir())) == len(list(again.labels_dir.iterdir())) == 1
    assert not set(before) & {p.name for p in again.zips_dir.iterdir()}
    assert json.loads(again.truth_json.read_text())["seed"] == 6
    (out / "notes.txt").write_text("not the generator's")
    with pytest.raises(ValueError, match=r"holds files that are not a cohort's \(notes\.txt\)"):
        generate_cohort(out, participants=1, seed=6, overwrite=True)
    assert (out / "notes.txt").read_text() == "not the generator's"


def test_truth_files_follow_the_truth_contract(cohort):
    """The generator writes the truth files that lvmass.core.truth names and the analysis reads them
    back by the same names: truth.csv's required columns, truth.json's true odds ratios, truth_labels/
    per (eid, instance)."""
    from analysis import io as aio
    from analysis.associations import true_odds_ratios

    paths, truth, _ = cohort
    names = (paths.truth_csv.name, paths.truth_json.name, paths.labels_dir.name)
    assert names == (TRUTH_CSV, TRUTH_JSON, TRUTH_LABELS_DIRNAME)
    read = aio.read_truth(paths.root)
    assert set(TRUTH_REQUIRED_COLUMNS) <= set(read.table.columns)
    assert sorted(read.table[TRUTH_EID]) == sorted(truth)
    assert read.labels_dir == str(paths.labels_dir)
    assert set(aio.label_files(read.labels_dir)) == {(eid, 2) for eid in truth}
    recorded = json.loads(paths.truth_json.read_text())[COHORT_KEY][TRUE_OR_PER_SAMPLE_SD_KEY]
    assert true_odds_ratios(read.parameters) == recorded


def test_population_only_truth_is_the_cohorts(cohort, tmp_path):
    paths, truth, _ = cohort
    population = generate_population(tmp_path / "population", participants=N_PARTICIPANTS, seed=SEED)
    assert sorted(p.name for p in population.root.iterdir()) == ["phenotypes.csv", "truth.csv", "truth.json"]
    assert population.phenotypes_csv.read_text() == paths.phenotypes_csv.read_text()
    rows = _truth_rows(population.truth_csv)
    assert sorted(rows) == sorted(truth)
    for eid, row in rows.items():
        assert row == {k: truth[eid][k] for k in row}
    full, only = (json.loads(p.truth_json.read_text()) for p in (paths, population))
    for key in (TRUE_OR_PER_SAMPLE_SD_KEY, "true_lvmi_g_m2", "observed_prevalence"):
        assert only[COHORT_KEY][key] == full[COHORT_KEY][key]
    assert only[DISEASE_MODEL_KEY] == full[DISEASE_MODEL_KEY]


class TestSpecialCases:
    def test_extras_lax_results_and_repeated_slice(self):
        cfg = SynthConfig(lax_extras_fraction=1.0, vf_results_fraction=1.0, duplicate_slice_fraction=1.0)
        p = render_participant(3000001, 2, cfg)
        _members, dicoms = _read_zip(p.zip_bytes)
        lax = [d for d in dicoms if d.SeriesDescription == INLINEVF and float(d.SliceThickness) == 6.0]
        assert len(lax) >= 2
        assert all(abs(np.dot(_normal(d), _normal(dicoms[0]))) < 0.5 for d in lax)  # long-axis planes
        results = [d for d in dicoms if d.SeriesDescription == "Inline_VF_Results"]
        assert len(results) == 1 and results[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        by_desc: dict[str, set[str]] = {}
        for d in dicoms:
            if SAX.match(d.SeriesDescription):
                by_desc.setdefault(d.SeriesDescription, set()).add(d.SeriesInstanceUID)
        repeated = [k for k, v in by_desc.items() if len(v) == 2]
        assert repeated == [f"CINE_segmented_SAX_b{p.truth['duplicate_slice']}"]
        series = {}
        for d in dicoms:
            if d.SeriesDescription == repeated[0] and int(d.InstanceNumber) == 1:
                series[int(d.SeriesNumber)] = d
        earlier, later = (series[k] for k in sorted(series))
        k = int(p.truth["duplicate_slice"]) - 1
        vf = _inlinevf_ed(dicoms)[k]
        assert (
            later.pixel_array.tobytes() == vf.pixel_array.tobytes()
        )  # the later acquisition is the one used
        assert earlier.pixel_array.tobytes() != vf.pixel_array.tobytes()

    @pytest.mark.parametrize(
        ("eid", "kind"),
        [
            (3100001, "mistrace"),
            (3100002, "outflow_tract"),
            (3100003, "below_apex"),
            (3100004, "outflow_tract"),
        ],
    )
    def test_inlinevf_failures(self, eid, kind):
        """Each failure against a failure-free render of the same participant (same images, offsets and
        jitter): the failing slices' contours enclose clearly more, every other slice is unchanged."""
        p = render_participant(eid, 4, SynthConfig(inlinevf_failure_rate=1.0))
        clean = render_participant(eid, 4, SynthConfig(inlinevf_failure_rate=0.0))
        assert p.truth["inlinevf_failure"] == kind and clean.truth["inlinevf_failure"] == ""
        ed, ed_clean = (_inlinevf_ed(_read_zip(x.zip_bytes)[1]) for x in (p, clean))
        slices = [int(s) - 1 for s in p.truth["inlinevf_failure_slices"].split()]
        assert slices and sorted(ed) == sorted(ed_clean)

        def outline(d: pydicom.Dataset) -> np.ndarray:
            return (
                d.overlay_array(0x6000).astype(bool)
                if 0x60003000 in d
                else np.zeros((d.Rows, d.Columns), bool)
            )

        for k in ed:
            failing, reference = outline(ed[k]), outline(ed_clean[k])
            assert ed[k].pixel_array.tobytes() == ed_clean[k].pixel_array.tobytes()
            if k not in slices:
                np.testing.assert_array_equal(failing, reference)
                continue
            area, area_clean = (int(ndimage.binary_fill_holes(o).sum()) for o in (failing, reference))
            if kind == "below_apex":
                # a ring contoured past the apex, where at most a sliver of the apical cap lies in the slab
                myo = (p.labels == MYOCARDIUM).sum(axis=(0, 1))
                assert myo[k] <= 0.03 * myo.max() and area_clean == 0 and area > 50
            elif kind == "outflow_tract" and area_clean == 0:  # the atrium above the base contoured
                assert area > 50
            elif kind == "outflow_tract":  # the outflow tract's bulge taken into the contours
                assert area > 1.08 * area_clean
            else:  # mistrace: traced around the septum and RV
                assert area > 1.25 * area_clean
        assert p.truth["expected_inlinevf_raw_mass_g"] > clean.truth["expected_inlinevf_raw_mass_g"] + 2.0

    def test_single_series_layout(self):
        p = render_participant(3200001, 1, SynthConfig(layout="single_series"))
        members, dicoms = _read_zip(p.zip_bytes)
        assert not any(n.startswith("manifest") for n in members)
        assert all(re.fullmatch(r"IM_\d{5}\.dcm", n) for n in members)
        assert len({d.SeriesInstanceUID for d in dicoms}) == 1
        assert len(dicoms) == p.truth["n_slices"] * len(SynthConfig().lite_phases)
        assert not any(0x60003000 in d for d in dicoms)
        pos = sorted({float(np.dot(np.array(d.ImagePositionPatient, float), _normal(d))) for d in dicoms})
        assert np.allclose(np.diff(pos), 10.0, atol=1e-3)

    def test_full_fidelity_writes_fifty_contracting_phases(self, tmp_path):
        # through generate_cohort without a fidelity argument: the config's fidelity is the one used
        paths = generate_cohort(
            tmp_path / "full", participants=1, seed=3, first_eid=3300001, config=SynthConfig(fidelity="full")
        )
        assert json.loads(paths.truth_json.read_text())["config"]["fidelity"] == "full"
        zip_bytes = (paths.zips_dir / "3300001_20209_2_0.zip").read_bytes()
        labels = np.load(paths.labels_dir / "3300001_20209_2_0.npz")["labels"]
        assert len(zip_bytes) > 10_000_000  # tens of MB like a real zip
        _, dicoms = _read_zip(zip_bytes)
        bk = _bk_series(dicoms)
        assert all([int(d.InstanceNumber) for d in s] == list(range(1, 51)) for s in bk.values())
        lv_slices = np.flatnonzero((labels == LV_CAVITY).sum(axis=(0, 1)) > 0)
        mid = int(lv_slices[len(lv_slices) // 2])  # mid-ventricle: no atrium moving in at end-systole
        cavity = labels[..., mid] == LV_CAVITY
        region = ndimage.binary_dilation(cavity, iterations=3)
        frames = [d.pixel_array.astype(float) for d in bk[mid + 1]]
        threshold = 0.6 * frames[0][cavity].mean()
        bright = [int((f[region] > threshold).sum()) for f in frames]
        assert min(bright) < 0.75 * bright[0]  # the cavity empties in systole
        assert bright[-1] > 0.85 * bright[0]  # and refills by the end of the cycle


class TestErrors:
    def test_bad_configuration_is_rejected_with_the_value(self, tmp_path):
        with pytest.raises(ValueError, match=r"fidelity must be one of .* Received 'medium'"):
            SynthConfig(fidelity="medium")
        with pytest.raises(ValueError, match=r"layout must be one of"):
            SynthConfig(layout="dicomdir")
        with pytest.raises(ValueError, match=r"lite_phases must .* Received \(5, 10\)"):
            SynthConfig(lite_phases=(5, 10))
        with pytest.raises(ValueError, match=r"participants must be >= 1\. Received 0"):
            generate_cohort(tmp_path, participants=0)
        with pytest.raises(ValueError, match=r"workers must be >= 1"):
            generate_cohort(tmp_path, participants=1, workers=0)

    def test_cli_runs_as_module(self, tmp_path):
        out = tmp_path / "cli"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lvmass.synth",
                "--participants",
                "2",
                "--out",
                str(out),
                "--seed",
                "9",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "wrote 2 participants" in done.stdout
        assert len(list((out / "zips").glob("*_20209_2_0.zip"))) == 2
        command = [
            sys.executable,
            "-m",
            "lvmass.synth",
            "--participants",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
        refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and f"output folder {out} is not empty" in refused.stderr
        replaced = subprocess.run([*command, "--overwrite"], capture_output=True, text=True, timeout=120)
        assert replaced.returncode == 0, replaced.stderr
        assert len(list((out / "zips").glob("*_20209_2_0.zip"))) == 1
        bad = subprocess.run(
            [sys.executable, "-m", "lvmass.synth", "--participants", "0", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 2 and "participants must be >= 1" in bad.stderr
