"""The QC gallery's parts: the review order (``analysis.qc_order``), the slice mosaic
(``analysis.qc_pictures``) and the pages for a cohort too large for one page (``analysis.qc_gallery``).
The gallery of a real pipeline run, pictures and browser included, is tested in test_nifti_pipeline.py."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.qc_gallery import PARTICIPANTS_HTML, main, write_gallery
from analysis.qc_order import DISAGREEMENT_FRACTION, disagreement_threshold, review_order
from analysis.qc_pictures import ENDOCARDIUM_RGB, EPICARDIUM_RGB, TILE_PX, border, slice_mosaic
from analysis.report import main as analyze
from analysis.simulate import simulate_study, write_study
from lvmass.core.contracts import LV_CAVITY, MYOCARDIUM


def _rows(pid: str, masses: dict[str, float | None], *, sex: str = "male", failing: str | None = None,
          raw: dict[str, float] | None = None) -> list[dict]:
    return [{"participant_id": pid, "eid": int(pid), "instance": 2, "method": method, "sex": sex,
             "lv_mass_g": mass, "lv_mass_raw_g": (raw or {}).get(method, mass), "lvmi_g_m2": None,
             "lvh": None, "qc_pass": failing is None or method != "ml4h_seg",
             "qc_flags": [failing] if failing and method == "ml4h_seg" else []}
            for method, mass in masses.items()]


def _cohort(extra: list[dict]) -> pd.DataFrame:
    """Twelve unremarkable men (masses 118-129 g, methods within 4 g) and the participants of ``extra``."""
    rows = []
    for k in range(12):
        mass = 118.0 + k
        rows += _rows(str(1000100 + k), {"ml4h_seg": mass, "ml4h_reg": mass + 2, "inlinevf": mass - 2})
    return pd.DataFrame(rows + extra)


class TestReviewOrder:
    def test_qc_failures_then_disagreements_then_outliers_then_the_rest(self):
        results = _cohort(
            _rows("2000001", {"ml4h_seg": 300.0, "ml4h_reg": 120.0, "inlinevf": 125.0})  # 2.4x apart
            + _rows("2000002", {"ml4h_seg": 125.0, "ml4h_reg": 124.0, "inlinevf": 126.0},
                    failing="image_cropped")
            + _rows("2000003", {"ml4h_seg": 160.0, "ml4h_reg": 161.0, "inlinevf": 159.0})  # far above 118-129
            + _rows("2000004", {"ml4h_seg": 150.0, "ml4h_reg": 110.0, "inlinevf": 130.0}))  # 31% apart
        order = review_order(results)
        assert list(order["participant_id"][:4]) == ["2000002", "2000001", "2000004", "2000003"]
        assert list(order["tier"][:4]) == ["qc_failed", "methods_disagree", "methods_disagree",
                                           "mass_outlier"]
        assert set(order["tier"][4:]) == {"no_concern"} and list(order["rank"]) == list(range(1, 17))
        reasons = dict(zip(order["participant_id"], order["reason"], strict=True))
        assert reasons["2000002"] == "QC failed: image_cropped (ML4H_seg)"  # its methods agree: not said
        assert reasons["2000001"] == "ML4H_seg 300 g vs ML4H_reg 120 g: 180 g apart (99% of their mean)"
        assert reasons["2000003"].startswith("ML4H_seg mass 160 g lies")
        assert "robust SD above" in reasons["2000003"]
        assert reasons["1000100"] == "no concern (methods within 4 g)"

    def test_a_disagreement_the_whole_cohort_shares_is_not_a_tier(self):
        """ML4H_reg 25% below ML4H_seg everywhere (one calibrated, one not): only the participant whose
        methods differ far more than that stands out."""
        rows = []
        for k in range(20):
            rows += _rows(str(1000200 + k), {"ml4h_seg": 120.0 + k, "ml4h_reg": (120.0 + k) * 0.78})
        rows += _rows("2000009", {"ml4h_seg": 200.0, "ml4h_reg": 80.0})
        order = review_order(pd.DataFrame(rows))
        assert order.attrs["disagreement_threshold"] == pytest.approx(0.22 / 0.89)  # the cohort's own
        assert list(order.loc[order["tier"] == "methods_disagree", "participant_id"]) == ["2000009"]
        assert disagreement_threshold(pd.Series([0.5, 0.6])) == DISAGREEMENT_FRACTION  # too few to judge

    def test_a_models_raw_mass_stands_in_for_a_missing_calibration_but_inlinevfs_never(self):
        results = pd.DataFrame(
            _rows("3000001", {"ml4h_seg": None, "ml4h_reg": 80.0, "inlinevf": None},
                  raw={"ml4h_seg": 200.0, "inlinevf": 400.0})
            + _rows("3000002", {"ml4h_seg": None, "ml4h_reg": 120.0, "inlinevf": None},
                    raw={"ml4h_seg": 121.0, "inlinevf": 260.0}))
        order = review_order(results).set_index("participant_id")
        assert order.loc["3000001", "tier"] == "methods_disagree"
        assert order.loc["3000001", "disagreement_g"] == pytest.approx(120.0)
        assert order.loc["3000002", "tier"] == "no_concern"

    def test_no_results_no_rows(self):
        assert review_order(pd.DataFrame(columns=["participant_id", "instance", "method"])).empty


def _ring_volume(rows: int = 60, cols: int = 50, planes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.indices((rows, cols))
    r = np.hypot(y - rows / 2, x - cols / 2)
    image = np.repeat((200.0 - r)[:, :, None], planes, axis=2).astype(np.float32)
    labels = np.zeros((rows, cols, planes), dtype=np.uint8)
    labels[r < 6] = LV_CAVITY
    labels[(r >= 6) & (r < 10)] = MYOCARDIUM
    image[:, :, 2] = 0  # a plane no slice was acquired on
    labels[:, :, 2] = 0
    return image, labels


class TestSliceMosaic:
    def test_one_tile_per_plane_with_both_borders_and_a_gap(self):
        image, labels = _ring_volume()
        picture = Image.open(io.BytesIO(slice_mosaic(image, labels, (1.5, 1.5)))).convert("RGB")
        assert picture.size == (4 * TILE_PX + 3 * 2, TILE_PX)
        pixels = np.asarray(picture)
        first = pixels[:, :TILE_PX]
        assert (first == ENDOCARDIUM_RGB).all(axis=2).any() and (first == EPICARDIUM_RGB).all(axis=2).any()
        gap = pixels[20:-20, 2 * (TILE_PX + 2) + 20: 3 * TILE_PX - 20]
        assert gap.mean() < 60  # the dark "gap" tile
        assert image[0, 0, 0] == pytest.approx(200.0 - np.hypot(30, 25), rel=1e-5)  # the input is not changed

    def test_border_is_the_inside_edge_and_bad_labels_are_refused(self):
        mask = np.zeros((5, 5), dtype=bool)
        mask[1:4, 1:4] = True
        assert border(mask).sum() == 8 and not border(mask)[2, 2]
        image, labels = _ring_volume()
        labels[0, 0, 0] = 7
        with pytest.raises(ValueError, match="labels hold codes outside 0, 1, 2"):
            slice_mosaic(image, labels, (1.5, 1.5))
        with pytest.raises(ValueError, match="not on one grid"):
            slice_mosaic(image, labels[:, :, :2], (1.5, 1.5))


def test_a_cohort_larger_than_its_pictures_is_paged_and_listed_whole(tmp_path, capsys):
    study = simulate_study(300, seed=3)
    paths = write_study(study, tmp_path)
    results = paths["results"]
    gallery = write_gallery(str(results), pictures=120, per_page=50)
    visits = len(study.results[["participant_id", "instance"]].drop_duplicates())  # some have a repeat visit
    assert (gallery.participants, gallery.pictured, len(gallery.pages)) == (visits, 120, 3)
    pages = [Path(p).read_text(encoding="utf-8") for p in gallery.pages]
    assert [p.count('<section class="card') for p in pages] == [50, 50, 20]
    assert 'href="page-0002.html" rel="next"' in pages[0] and 'href="index.html" rel="prev"' in pages[1]
    assert "no saved ED image (run the pipeline with --save_labels" in pages[0]
    listing = (results / "qc" / PARTICIPANTS_HTML).read_text(encoding="utf-8")
    data = json.loads(re.search(r"const ROWS=(\[.*?\]);", listing).group(1))
    assert len(data) == visits and [r["rank"] for r in data] == list(range(1, visits + 1))
    assert sum(bool(r["href"]) for r in data) == 120
    assert main(["--results", str(tmp_path / "nothing")]) == 2
    assert "lvmass qc: error:" in capsys.readouterr().err
    # the analysis report links to the gallery, relative to its own folder
    assert analyze(["--results", str(results), "--phenotypes", str(paths["phenotypes"]), "--out",
                    str(tmp_path / "report"), "--bootstrap", "20"]) == 0
    report = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert '<a href="../results/qc/index.html">QC gallery:' in report
