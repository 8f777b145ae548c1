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

from beam_pipeline.contracts import LABEL_MAP, LV_CAVITY, MYOCARDIAL_DENSITY_G_PER_ML, MYOCARDIUM
from beam_pipeline.schema import PHENOTYPE_COLUMNS
from lvmass.synth import SynthConfig, generate_cohort, render_participant

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
            normal = _normal(first)
            pos = [float(np.dot(np.array(bk[k][0].ImagePositionPatient, float), normal)) for k in sorted(bk)]
            assert np.allclose(np.diff(pos), 10.0, atol=1e-3)  # base to apex along the normal
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


class TestTruth:
    def test_mass_volume_labels_and_indexing(self, cohort):
        paths, truth, _ = cohort
        ratios = []
        phen = {int(r["eid"]): r for r in csv.DictReader(paths.phenotypes_csv.open())}
        for eid, row in truth.items():
            volume, mass = float(row["true_myocardium_volume_ml"]), float(row["true_lv_mass_g"])
            assert mass == pytest.approx(volume * MYOCARDIAL_DENSITY_G_PER_ML, rel=1e-5)
            areas = [float(a) for a in row["myocardium_area_mm2"].split()]
            assert sum(areas) * 10.0 / 1000.0 == pytest.approx(volume, rel=1e-4)
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

    @pytest.mark.parametrize("eid", [3100001, 3100002, 3100003, 3100004])
    def test_inlinevf_failures(self, eid):
        p = render_participant(eid, 4, SynthConfig(inlinevf_failure_rate=1.0))
        kind = p.truth["inlinevf_failure"]
        assert kind in ("below_apex", "outflow_tract", "mistrace")
        _, dicoms = _read_zip(p.zip_bytes)
        ed = _inlinevf_ed(dicoms)
        slices = [int(s) - 1 for s in p.truth["inlinevf_failure_slices"].split()]
        myo = (p.labels == MYOCARDIUM).sum(axis=(0, 1))
        if kind == "below_apex":
            # a ring contoured past the apex, where at most a sliver of the apical cap lies in the slab
            assert myo[slices[0]] <= 0.03 * myo.max() and 0x60003000 in ed[slices[0]]
        assert p.truth["expected_inlinevf_raw_mass_g"] > p.truth["true_lv_mass_g"]

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

    def test_full_fidelity_writes_fifty_contracting_phases(self):
        p = render_participant(3300001, 3, SynthConfig(fidelity="full"))
        assert len(p.zip_bytes) > 10_000_000  # tens of MB like a real zip
        _, dicoms = _read_zip(p.zip_bytes)
        bk = _bk_series(dicoms)
        assert all([int(d.InstanceNumber) for d in s] == list(range(1, 51)) for s in bk.values())
        lv_slices = np.flatnonzero((p.labels == LV_CAVITY).sum(axis=(0, 1)) > 0)
        mid = int(lv_slices[len(lv_slices) // 2])  # mid-ventricle: no atrium moving in at end-systole
        cavity = p.labels[..., mid] == LV_CAVITY
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
        bad = subprocess.run(
            [sys.executable, "-m", "lvmass.synth", "--participants", "0", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 2 and "participants must be >= 1" in bad.stderr
