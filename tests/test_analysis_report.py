"""The ``python -m analysis`` report end to end on a simulated pipeline output: files, tables, figures,
Dice from label volumes (named and placed as the pipeline's ``--save_labels`` writes them), and the HTML
rendered in headless Chromium with every figure found."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import agreement as agr
from analysis import labels as lab
from analysis.cohort import MANUAL_MASS, build_cohort, method_label
from analysis.report import main
from analysis.simulate import simulate_study, write_study
from lvmass.core.contracts import ALL_METHODS, LV_CAVITY, MYOCARDIUM
from lvmass.core.tensor import build_label_volume

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ACQUISITION_SHAPE = (41, 36, 9)  # odd rows: the padding's odd remainder goes to the bottom
LABELLED_EIDS = 4
STALE_FILES = ("tables/from_an_earlier_run.csv", "figures/fig9_from_an_earlier_run.png")


def _ring_labels(shape: tuple[int, int, int], shift: int = 0) -> np.ndarray:
    rows, cols, n = shape
    y, x = np.ogrid[:rows, :cols]
    r = np.hypot(y - rows / 2 - shift, x - cols / 2)
    volume = np.zeros(shape, dtype=np.uint8)
    for k in range(n - 1):  # the apical slice has no ventricle
        volume[..., k][r < 9] = LV_CAVITY
        volume[..., k][(r >= 9) & (r < 13)] = MYOCARDIUM
    return volume


def _tensor_layout(volume: np.ndarray, slice_start: int | None = None) -> np.ndarray:
    """A label volume placed as the pipeline places it (``lvmass.core.tensor.build_label_volume``)."""
    return build_label_volume([volume[..., k] for k in range(volume.shape[2])], slice_start=slice_start)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One report run on a simulated cohort with truth and label volumes (the first imaging visit's and,
    for the same eids, a repeat visit's that the analysis of instance 2 must not use)."""
    root = tmp_path_factory.mktemp("analysis_report")
    study = simulate_study(500, seed=17)
    paths = write_study(study, root / "cohort")
    truth_labels = root / "cohort" / "truth_labels"
    truth_labels.mkdir()
    predicted = {method: root / "labels" / f"method={method}" for method in ("ml4h_seg", "inlinevf")}
    for folder in predicted.values():
        folder.mkdir(parents=True)
    eids = study.phenotypes["eid"].iloc[:LABELLED_EIDS]
    for eid in eids:
        # as lvmass.synth names truth labels and the pipeline's --save_labels names predictions
        reference = _ring_labels(ACQUISITION_SHAPE)
        np.savez_compressed(truth_labels / f"{eid}_20209_2_0.npz", labels=reference)
        np.savez_compressed(predicted["ml4h_seg"] / f"{eid}_2.npz", labels=_tensor_layout(reference))
        shifted = _ring_labels(ACQUISITION_SHAPE, shift=2)
        np.savez_compressed(predicted["inlinevf"] / f"{eid}_2.npz", labels=_tensor_layout(shifted))
        repeat = _ring_labels(ACQUISITION_SHAPE, shift=6)
        np.savez_compressed(truth_labels / f"{eid}_20209_3_0.npz", labels=reference)
        np.savez_compressed(predicted["ml4h_seg"] / f"{eid}_3.npz", labels=_tensor_layout(repeat))
    out = root / "report"
    for stale in STALE_FILES:  # an earlier run's outputs in the report folder
        (out / stale).parent.mkdir(parents=True, exist_ok=True)
        (out / stale).write_bytes(b"old")
    argv = [
        f"--results={paths['results']}",
        f"--phenotypes={paths['phenotypes']}",
        f"--out={out}",
        f"--truth={root / 'cohort'}",
        f"--labels={root / 'labels'}",
        "--bootstrap=200",
        "--seed=7",
    ]
    rc = main(argv)
    return {"rc": rc, "out": out, "study": study, "paths": paths, "root": root, "eids": list(eids)}


def test_writes_html_markdown_tables_and_figures(run, capsys):
    assert run["rc"] == 0
    out = run["out"]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    tables = {p.stem for p in (out / "tables").glob("*.csv")}
    assert {
        "table1_baseline",
        "table2_associations",
        "associations",
        "agreement_manual",
        "correlation_comparisons_manual",
        "recalibration_inlinevf",
        "exclusions",
        "agreement_truth",
        "truth_or_recovery",
        "dice",
        "dice_per_study",
    } <= tables
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert figures == [
        "fig2_mass_distributions",
        "fig3_scatter_manual",
        "fig4_bland_altman",
        "fig5_forest",
        "fig6_scatter_truth",
    ]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for name in figures:
        assert f"(figures/{name}.png)" in markdown


def test_every_method_is_side_by_side(run):
    out = run["out"]
    agreement = pd.read_csv(out / "tables" / "agreement_manual.csv")
    assert agreement["method"].tolist() == [method_label(m) for m in ALL_METHODS]
    assert (agreement["status"] == "ok").all()
    assert (agreement["r_ci_lower"] < agreement["r"]).all() and (
        agreement["r"] < agreement["r_ci_upper"]
    ).all()
    comparisons = pd.read_csv(out / "tables" / "correlation_comparisons_manual.csv")
    assert len(comparisons) == len(ALL_METHODS) * (len(ALL_METHODS) - 1) // 2
    table2 = pd.read_csv(out / "tables" / "table2_associations.csv")
    assert set(table2["Method"]) == {method_label(m) for m in ALL_METHODS}
    html = (out / "report.html").read_text(encoding="utf-8")
    for method in ALL_METHODS:
        assert method_label(method) in html


def test_agreement_numbers_match_a_direct_computation(run):
    study = run["study"]
    cohort = build_cohort(study.results, study.phenotypes)
    holdout = cohort.frame[cohort.frame["holdout"]]
    seg = holdout[["manual_lv_mass_g", "ml4h_seg__lv_mass_g"]].dropna()
    r = np.corrcoef(seg.iloc[:, 0], seg.iloc[:, 1])[0, 1]
    mae = np.mean(np.abs(seg.iloc[:, 1] - seg.iloc[:, 0]))
    table = pd.read_csv(run["out"] / "tables" / "agreement_manual.csv").set_index("method")
    assert table.loc["ML4H_seg", "r"] == pytest.approx(r)
    assert table.loc["ML4H_seg", "mae_g"] == pytest.approx(mae)
    assert table.loc["ML4H_seg", "n"] == len(seg)


def test_truth_sections(run):
    recovery = pd.read_csv(run["out"] / "tables" / "truth_or_recovery.csv")
    assert recovery["outcome"].tolist() == ["hypertension", "atrial_fibrillation", "heart_failure"]
    assert recovery["true_odds_ratio"].tolist() == pytest.approx([1.6, 1.2, 1.9])
    assert set(recovery["status"]) <= {"ok", "too_few_events"}
    vs_truth = pd.read_csv(run["out"] / "tables" / "agreement_truth.csv")
    assert vs_truth["method"].tolist()[0] == "Manual"


def test_dice_from_label_volumes(run):
    per_study = pd.read_csv(run["out"] / "tables" / "dice_per_study.csv")
    assert len(per_study) == 2 * LABELLED_EIDS * 2 and (per_study["status"] == "ok").all()
    # matched by (eid, instance) and only the analysed visit: the repeat visit's files are not used
    assert set(per_study["instance"]) == {2} and set(per_study["eid"]) == set(run["eids"])
    dice = pd.read_csv(run["out"] / "tables" / "dice.csv").set_index(["method", "structure"])
    # ml4h_seg's volumes are the references placed in the tensor layout: putting them back must be exact.
    assert dice.loc[("ml4h_seg", "myocardium"), "mean_dice"] == pytest.approx(1.0)
    assert dice.loc[("ml4h_seg", "lv_cavity"), "mean_dice"] == pytest.approx(1.0)
    expected = lab.dice_by_label(_ring_labels(ACQUISITION_SHAPE, shift=2), _ring_labels(ACQUISITION_SHAPE))
    assert dice.loc[("inlinevf", "myocardium"), "mean_dice"] == pytest.approx(expected["myocardium"])
    assert 0.5 < expected["myocardium"] < 1.0


def test_to_acquisition_grid_undoes_the_tensor_placement():
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 3, size=ACQUISITION_SHAPE).astype(np.uint8)
    np.testing.assert_array_equal(lab.to_acquisition_grid(_tensor_layout(volume), ACQUISITION_SHAPE), volume)
    assert lab.to_acquisition_grid(volume, ACQUISITION_SHAPE) is volume  # already on the grid
    # more slices than the tensor holds: the window starts at slice_start
    long = rng.integers(0, 3, size=(40, 30, 15)).astype(np.uint8)
    back = lab.to_acquisition_grid(_tensor_layout(long, slice_start=2), long.shape, slice_start=2)
    np.testing.assert_array_equal(back[..., 2:], long[..., 2:])
    assert not back[..., :2].any()
    with pytest.raises(ValueError, match=r"neither on the .* acquisition grid nor in the tensor layout"):
        lab.to_acquisition_grid(volume, (300, 10, 2))


def test_dice_reads_each_reference_once_and_places_long_stacks_like_the_pipeline(tmp_path, monkeypatch):
    # 15 acquired slices, a different ring on each of slices 2..14: the pipeline keeps the 13-slice
    # window starting at 2 (the labelled slices)
    reference = np.zeros((40, 30, 15), np.uint8)
    for k in range(2, 15):
        reference[..., k] = _ring_labels((40, 30, 2), shift=k - 8)[..., 0]
    (tmp_path / "ref").mkdir()
    np.savez_compressed(tmp_path / "ref" / "1000001_20209_2_0.npz", labels=reference)
    for method in ("a", "b"):
        (tmp_path / "pred" / f"method={method}").mkdir(parents=True)
    # a: as --save_labels writes it today (window not recorded); b: a window from slice 1, recorded
    np.savez_compressed(tmp_path / "pred" / "method=a" / "1000001_2.npz", labels=_tensor_layout(reference))
    np.savez_compressed(
        tmp_path / "pred" / "method=b" / "1000001_2.npz",
        labels=_tensor_layout(reference, slice_start=1),
        slice_start=np.int64(1),
    )
    reads = []
    read = lab.aio.read_label_volume
    monkeypatch.setattr(lab.aio, "read_label_volume", lambda path: reads.append(path) or read(path))
    per_study = lab.dice_per_study(str(tmp_path / "pred"), str(tmp_path / "ref"), instance=2)
    assert len(reads) == 1  # one reference read for both methods
    assert (per_study["status"] == "ok").all()
    dice = per_study.set_index(["method", "structure"])["dice"]
    assert dice["a"].tolist() == pytest.approx([1.0, 1.0])
    lost_apex = reference.copy()
    lost_apex[..., 14] = 0  # b's window (slices 1..13) holds everything but the last slice
    assert dice["b"].to_dict() == pytest.approx(lab.dice_by_label(lost_apex, reference))
    assert lab.dice_per_study(str(tmp_path / "pred"), str(tmp_path / "ref"), instance=3).empty


def test_an_earlier_runs_tables_and_figures_are_removed(run):
    for stale in STALE_FILES:
        assert not (run["out"] / stale).exists()
    assert (run["out"] / "tables" / "table1_baseline.csv").is_file()


def test_a_truth_json_without_the_true_odds_ratios_is_named(run, tmp_path, capsys):
    cohort = tmp_path / "cohort"
    shutil.copytree(run["root"] / "cohort", cohort)
    (cohort / "truth.json").write_text(json.dumps({"odds_ratios_per_sd_true_lvmi": {"hypertension": 1.6}}))
    argv = [f"--results={run['paths']['results']}", f"--phenotypes={run['paths']['phenotypes']}"]
    rc = main([*argv, f"--out={tmp_path / 'r'}", f"--truth={cohort}", "--bootstrap=20"])
    assert rc == 2
    assert f"{cohort / 'truth.json'}: truth.json has no 'cohort'" in capsys.readouterr().err


def test_figures_in_the_html_are_the_pngs(run):
    html = (run["out"] / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # self-contained
    embedded = re.findall(r'<figure id="figure-([\w]+)"><img[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == 5
    for name, data in embedded:
        png = base64.b64decode(data)
        assert png == (run["out"] / "figures" / f"{name}.png").read_bytes()
        with Image.open(io.BytesIO(png)) as image:
            assert image.width > 300 and image.height > 200


def test_bad_input_returns_2_and_names_the_file(run, tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    rc = main([f"--results={run['paths']['results']}", f"--phenotypes={missing}", f"--out={tmp_path / 'r'}"])
    assert rc == 2
    assert f"{missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.html").exists()


def test_agreement_is_reproducible_and_reports_too_few_pairs(run):
    study = run["study"]
    frame = build_cohort(study.results, study.phenotypes).frame
    columns = agr.method_columns(ALL_METHODS, {})
    a = agr.agree(frame, MANUAL_MASS, columns, n_boot=100, seed=3).table()
    b = agr.agree(frame, MANUAL_MASS, columns, n_boot=100, seed=3).table()
    pd.testing.assert_frame_equal(a, b)
    tiny = agr.agree(frame.head(3), MANUAL_MASS, columns, n_boot=10, seed=3)
    assert all(m.status.startswith("too few pairs") for m in tiny.per_method)
    assert all(c.status.startswith("too few participants") for c in tiny.comparisons)


_PROBE = """<script>
window.addEventListener('load', function () {
  var found = Array.prototype.map.call(document.images, function (img) {
    var figure = img.closest('figure');
    return {id: figure ? figure.id : null, w: img.naturalWidth, h: img.naturalHeight, complete: img.complete};
  });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser installs it)")
def test_report_renders_in_headless_chromium_with_every_figure(run, tmp_path):
    html = (run["out"] / "report.html").read_text(encoding="utf-8")
    probed = tmp_path / "probe.html"
    probed.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    result = _chromium(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], tmp_path / "profile1")
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, "the load handler did not run"
    images = json.loads(match.group(1).replace("&quot;", '"'))
    expected = set(re.findall(r'<figure id="(figure-[\w]+)">', html))
    assert {img["id"] for img in images} == expected and len(images) == 5
    for img in images:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    shot = tmp_path / "shot.png"
    result = _chromium(
        ["--window-size=1300,2400", f"--screenshot={shot}", (run["out"] / "report.html").as_uri()],
        tmp_path / "profile2",
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape == (2400, 1300) and pixels.std() > 10  # not a blank page


def test_plots_draw_on_the_given_axes_and_return_its_figure():
    from analysis import figures as figs

    fig, (left, right) = figs.new_figure(2)
    rng = np.random.default_rng(1)
    reference = rng.normal(90.0, 20.0, 60)
    method = reference + rng.normal(2.0, 8.0, 60)
    assert figs.plot_bland_altman(method, reference, title="m", ax=right) is fig
    assert figs.plot_agreement_scatter(method, reference, title="m", ax=left) is fig
    assert len(right.lines) == 3  # bias and the two limits of agreement
    assert right.lines[0].get_ydata()[0] == pytest.approx(np.mean(method - reference))
    alone = figs.plot_mass_distribution({"female": reference, "male": method})
    assert alone is not fig and len(alone.axes) == 1
    assert figs.png_bytes(alone)[:8] == b"\x89PNG\r\n\x1a\n"


def test_table1_counts_and_means(run):
    from analysis import tables

    study = run["study"]
    cohort = build_cohort(study.results, study.phenotypes)
    t1 = tables.table1(cohort.frame, cohort.methods, {m: method_label(m) for m in cohort.methods})
    training, holdout = t1.columns
    n_hold = int(cohort.frame["holdout"].sum())
    assert holdout == f"Holdout set (N = {n_hold:,})"
    assert training == f"Training set (N = {len(cohort.frame) - n_hold:,})"
    held = cohort.frame[cohort.frame["holdout"]]
    females = int((held["sex"] == "female").sum())
    assert t1.loc["Female", holdout] == f"{females:,} ({100 * females / len(held):.1f}%)"
    assert t1.loc["Age (years)", holdout] == f"{held['age'].mean():.1f} ± {held['age'].std(ddof=1):.1f}"
    assert t1.loc["Manual LV mass (g)", training] == "-"  # no manual mass outside the default holdout
