"""Evaluate ML4H_seg / ML4H_reg (the paper's recipe, or given) against a fresh synthetic cohort's truth.

What issue 4 asks to be measured and recorded, end to end through the real pipeline:

1. ``lvmass synth`` writes a cohort with a seed never used in training (and, optionally, a second cohort
   rendered with a wider appearance range than training saw);
2. the Beam pipeline runs every method on it (``--save_labels`` keeps the label volumes);
3. each method's calibrated mass is compared with the true LV mass (Pearson r with Fisher CI, MAE with
   bootstrap CI, Dunn & Clark ML4H_seg vs InlineVF), and the ML4H_seg / InlineVF label volumes with the
   true labels (Dice, myocardium and LV cavity).

``python benchmarks/evaluate_models.py --participants 300 --out /tmp/eval`` writes
``benchmarks/results/model_evaluation.json`` and ``.md`` (use ``--record`` to overwrite them).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import io as aio
from analysis.labels import dice_per_study
from analysis.stats import compare_dependent_correlations, mean_absolute_error, pearson
from lvmass.core import contracts

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# This benchmark measures the paper's recipe (3-D, InlineVF outlines, centring) on the cohort generator
# it was trained on; the default models are measured by evaluate_synthetic.py and evaluate_real.py.
PAPER_SEG, PAPER_REG = "bundled:ml4h_seg_paper", "bundled:ml4h_reg_paper"
METHODS = (contracts.METHOD_ML4H_SEG, contracts.METHOD_ML4H_REG, contracts.METHOD_INLINEVF,
           contracts.METHOD_INLINEVF_RECALIBRATED)


def run_cohort(
    name: str, out: Path, *, participants: int, seed: int, appearance_scale: float, workers: int,
    model_seg: str | None, model_reg: str | None,
) -> dict[str, Any]:
    """Generate one cohort, run the pipeline on it, and score every method against the truth."""
    from beam_pipeline.pipeline import run as run_pipeline
    from lvmass.synth import generate_cohort

    root = out / name
    started = time.monotonic()
    cohort = generate_cohort(root / "cohort", participants=participants, seed=seed, fidelity="lite",
                             workers=workers, appearance_scale=appearance_scale, progress=True,
                             overwrite=True)
    generated_s = time.monotonic() - started
    argv = [
        f"--input={cohort.zips_dir}/*_20209_*.zip", f"--phenotypes={cohort.phenotypes_csv}",
        f"--output={root / 'results'}", "--save_labels", "--overwrite", "--runner=DirectRunner",
        "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}",
        f"--methods={contracts.METHOD_ML4H_SEG},{contracts.METHOD_ML4H_REG},{contracts.METHOD_INLINEVF}",
    ]
    argv += [f"--model_seg={model_seg}"] if model_seg else []
    argv += [f"--model_reg={model_reg}"] if model_reg else []
    started = time.monotonic()
    summary = run_pipeline(argv)
    pipeline_s = time.monotonic() - started

    truth = pd.read_csv(cohort.truth_csv)
    results = aio.read_results(str(root / "results"))
    scores = score_masses(results, truth)
    dice = dice_per_study(str(root / "results" / "labels"), str(cohort.labels_dir))
    ok = dice[dice["status"] == "ok"]
    dice_summary = {
        f"{method}/{structure}": {"mean": float(g["dice"].mean()), "sd": float(g["dice"].std(ddof=1)),
                                  "n": int(g["dice"].size)}
        for (method, structure), g in ok.groupby(["method", "structure"])
    }
    ceiling = inlinevf_learner_ceiling(root / "ceiling", truth, participants=participants, seed=seed,
                                       appearance_scale=appearance_scale, workers=workers)
    return {
        "cohort": {"participants": participants, "seed": seed, "appearance_scale": appearance_scale,
                   "generated_s": round(generated_s, 1)},
        "inlinevf_learner_ceiling": ceiling,
        "pipeline": {"seconds": round(pipeline_s, 1),
                     "participants_written": summary.get("participants_written"),
                     "participants_failed": summary.get("participants_failed"),
                     "reconciled": summary.get("reconciled")},
        "mass_vs_truth": scores,
        "dice_vs_truth": dice_summary,
    }


def inlinevf_learner_ceiling(
    out: Path, truth: pd.DataFrame, *, participants: int, seed: int, appearance_scale: float, workers: int,
) -> dict[str, Any]:
    """What a perfect learner of the InlineVF labels could reach against the truth.

    The same participants (same seed) are drawn again with InlineVF's mean behaviour only: the
    per-participant offset spread, the contour jitter and the gross failures set to zero, which a model
    cannot predict from the image. Its InlineVF mass is what an ideal ML4H_seg would measure. Centred per
    sex on the TRUE mean (the best centering there is), it gives the r and MAE ceiling; and since its
    myocardium holds ``expected / label`` times the true voxels, ``2 min(a, b) / (a + b)`` bounds the
    myocardium Dice of any segmentation with that volume.
    """
    from lvmass.synth import generate_cohort
    from lvmass.synth.config import SynthConfig

    config = SynthConfig(inlinevf_offset_sd_mm=0.0, inlinevf_jitter_mm=0.0, inlinevf_failure_rate=0.0)
    cohort = generate_cohort(out, participants=participants, seed=seed, fidelity="lite", workers=workers,
                             appearance_scale=appearance_scale, config=config, overwrite=True)
    mean_vf = pd.read_csv(cohort.truth_csv).set_index("eid")
    same = truth.set_index("eid")["true_lv_mass_g"].reindex(mean_vf.index)
    if not np.allclose(same.to_numpy(), mean_vf["true_lv_mass_g"].to_numpy()):
        raise RuntimeError(f"{out}: redrawing with mean InlineVF behaviour changed the participants")
    ideal = mean_vf["expected_inlinevf_raw_mass_g"]
    true = mean_vf["true_lv_mass_g"]
    by_sex = mean_vf["sex"]
    centred = ideal - ideal.groupby(by_sex).transform("mean") + true.groupby(by_sex).transform("mean")
    r = pearson(centred, true)
    mae = mean_absolute_error(centred, true, seed=0)
    label = mean_vf["label_lv_mass_g"]
    dice_bound = 2 * np.minimum(ideal, label) / (ideal + label)
    return {"n": r.n, "r": round(r.estimate, 4), "r_ci": [round(v, 4) for v in r.conf_int()],
            "mae_g": round(mae.estimate, 2), "mae_ci_g": [round(v, 2) for v in mae.conf_int()],
            "raw_to_true_ratio": round(float((ideal / true).mean()), 3),
            "myocardium_dice_upper_bound": round(float(dice_bound.mean()), 3)}


def score_masses(results: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Per method: r and MAE of the calibrated (and raw) mass against the true mass, on all
    participants and on those without a gross InlineVF failure; Dunn & Clark seg vs InlineVF."""
    truth = truth[["eid", "true_lv_mass_g", "inlinevf_failure"]].copy()
    truth["gross_failure"] = truth["inlinevf_failure"].notna() & (truth["inlinevf_failure"] != "")
    wide = results.pivot_table(index="eid", columns="method", values=["lv_mass_g", "lv_mass_raw_g"])
    left = truth.set_index("eid")
    left.columns = pd.MultiIndex.from_tuples([(c, "") for c in left.columns])
    merged = left.join(wide, how="inner")
    merged.columns = [c[0] if c[1] == "" else c for c in merged.columns]
    out: dict[str, Any] = {}
    for subset, frame in (("all", merged), ("without_inlinevf_failures", merged[~merged["gross_failure"]])):
        per_method = {}
        for method in METHODS:
            if ("lv_mass_g", method) not in frame.columns:
                continue
            for kind in ("lv_mass_g", "lv_mass_raw_g"):
                pair = frame[["true_lv_mass_g", (kind, method)]].dropna()
                if len(pair) < 4:
                    continue
                r = pearson(pair[(kind, method)], pair["true_lv_mass_g"])
                mae = mean_absolute_error(pair[(kind, method)], pair["true_lv_mass_g"], seed=0)
                per_method[f"{method}/{'calibrated' if kind == 'lv_mass_g' else 'raw'}"] = {
                    "n": r.n, "r": round(r.estimate, 4), "r_ci": [round(v, 4) for v in r.conf_int()],
                    "mae_g": round(mae.estimate, 2), "mae_ci_g": [round(v, 2) for v in mae.conf_int()],
                    "mean_g": round(float(pair[(kind, method)].mean()), 1),
                    "true_mean_g": round(float(pair["true_lv_mass_g"].mean()), 1),
                }
        comparison = None
        cols = [("lv_mass_g", contracts.METHOD_ML4H_SEG), ("lv_mass_g", contracts.METHOD_INLINEVF)]
        if all(c in frame.columns for c in cols):
            trio = frame[["true_lv_mass_g", *cols]].dropna()
            if len(trio) >= 4:
                test = compare_dependent_correlations(trio["true_lv_mass_g"], trio[cols[0]], trio[cols[1]])
                comparison = {"n": len(trio), "r_seg": round(test.r12, 4),
                              "r_inlinevf_centred": round(test.r13, 4),
                              "dunn_clark_z": round(float(test.statistic_z), 3),
                              "p_value": float(test.p_value)}
        out[subset] = {"methods": per_method, "ml4h_seg_vs_inlinevf_centred": comparison}
    return out


def _fmt(value: float | None, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def targets_table(report: dict[str, Any]) -> list[str]:
    """Issue 4's targets against the results (all participants, calibrated masses), beside the ceiling of
    a perfect InlineVF-label learner where one applies."""
    fresh = report["cohorts"].get("fresh")
    if not fresh:
        return []
    methods = fresh["mass_vs_truth"]["all"]["methods"]
    seg = methods.get(f"{contracts.METHOD_ML4H_SEG}/calibrated")
    reg = methods.get(f"{contracts.METHOD_ML4H_REG}/calibrated")
    ceiling = fresh.get("inlinevf_learner_ceiling") or {}
    dice = fresh["dice_vs_truth"].get(f"{contracts.METHOD_ML4H_SEG}/myocardium")
    versus = fresh["mass_vs_truth"]["all"]["ml4h_seg_vs_inlinevf_centred"]
    rows = []
    if seg:
        rows.append(("ML4H_seg r >= 0.95", f"{seg['r']:.3f}", _fmt(ceiling.get("r"), "{:.3f}"),
                     seg["r"] >= 0.95))
        rows.append(("ML4H_seg MAE <= 8 g", f"{seg['mae_g']:.1f} g", _fmt(ceiling.get("mae_g"), "{:.1f} g"),
                     seg["mae_g"] <= 8))
    if dice:
        rows.append(("ML4H_seg myocardium Dice vs true labels >= 0.85", f"{dice['mean']:.3f}",
                     _fmt(ceiling.get("myocardium_dice_upper_bound"), "{:.3f} (as heavy as InlineVF)"),
                     dice["mean"] >= 0.85))
    if reg:
        rows.append(("ML4H_reg r >= 0.85", f"{reg['r']:.3f}", "", reg["r"] >= 0.85))
    if versus:
        rows.append(("ML4H_seg beats sex-centred InlineVF (vs truth)",
                     f"r {versus['r_seg']:.3f} vs {versus['r_inlinevf_centred']:.3f}, "
                     f"Dunn & Clark P {versus['p_value']:.2g}", "",
                     versus["r_seg"] > versus["r_inlinevf_centred"] and versus["p_value"] < 0.05))
    shifted = report["cohorts"].get("appearance_shifted")
    if shifted:
        shifted_methods = shifted["mass_vs_truth"]["all"]["methods"]
        shifted_seg = shifted_methods.get(f"{contracts.METHOD_ML4H_SEG}/calibrated")
        if shifted_seg:
            rows.append((f"appearance scale {shifted['cohort']['appearance_scale']}: ML4H_seg r >= 0.9",
                         f"{shifted_seg['r']:.3f}",
                         _fmt((shifted.get("inlinevf_learner_ceiling") or {}).get("r"), "{:.3f}"),
                         shifted_seg["r"] >= 0.9))
    lines = ["## Targets", "",
             "| target | result | ceiling of a perfect InlineVF-label learner | met |", "|---|---|---|---|"]
    for target, result, bound, met in rows:
        lines.append(f"| {target} | {result} | {bound} | {'yes' if met else 'no'} |")
    return [*lines, ""]


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Model evaluation against synthetic ground truth ({report['date']})", "",
             f"Models: seg `{report['models']['seg']}`, reg `{report['models']['reg']}`. "
             f"Command: `{report['command']}`", "", *targets_table(report)]
    for name, block in report["cohorts"].items():
        c = block["cohort"]
        lines += [f"## {name}: {c['participants']} participants, seed {c['seed']}, "
                  f"appearance scale {c['appearance_scale']}", "",
                  f"Pipeline: {block['pipeline']}", "",
                  "| subset | method | n | r (95% CI) | MAE g (95% CI) | mean g (true) |",
                  "|---|---|---|---|---|---|"]
        for subset, scores in block["mass_vs_truth"].items():
            for method, s in scores["methods"].items():
                lines.append(
                    f"| {subset} | {method} | {s['n']} "
                    f"| {s['r']:.3f} ({s['r_ci'][0]:.3f}-{s['r_ci'][1]:.3f}) "
                    f"| {s['mae_g']:.1f} ({s['mae_ci_g'][0]:.1f}-{s['mae_ci_g'][1]:.1f}) "
                    f"| {s['mean_g']:.1f} ({s['true_mean_g']:.1f}) |")
            cmp_ = scores["ml4h_seg_vs_inlinevf_centred"]
            if cmp_:
                lines.append(f"\n{subset}: ML4H_seg r {cmp_['r_seg']:.3f} vs centred InlineVF r "
                             f"{cmp_['r_inlinevf_centred']:.3f}: Dunn & Clark z {cmp_['dunn_clark_z']:.2f}, "
                             f"P {cmp_['p_value']:.2g} (n {cmp_['n']})\n")
        ceiling = block.get("inlinevf_learner_ceiling")
        if ceiling:
            c = ceiling
            lines += ["", "Ceiling for any model trained on InlineVF labels (the same participants redrawn "
                      "with InlineVF's mean behaviour: no per-participant offset spread, jitter or failures; "
                      "centred per sex on the true mean): "
                      f"r {c['r']:.3f} ({c['r_ci'][0]:.3f}-{c['r_ci'][1]:.3f}), "
                      f"MAE {c['mae_g']:.1f} g ({c['mae_ci_g'][0]:.1f}-{c['mae_ci_g'][1]:.1f}); "
                      f"its raw mass is {c['raw_to_true_ratio']:.2f}x the truth, so a segmentation of that "
                      "volume has a myocardium Dice vs the true labels of at most "
                      f"{c['myocardium_dice_upper_bound']:.3f} (n {c['n']})."]
        lines += ["", "| labels | Dice mean | sd | n |", "|---|---|---|---|"]
        for key, d in block["dice_vs_truth"].items():
            lines.append(f"| {key} | {d['mean']:.3f} | {d['sd']:.3f} | {d['n']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="scratch folder for the cohorts and pipeline outputs")
    parser.add_argument("--render", metavar="JSON",
                        help="only re-render the markdown of a recorded model_evaluation.json")
    parser.add_argument("--participants", type=int, default=300)
    parser.add_argument("--seed", type=int, default=424242, help="never used in training")
    parser.add_argument("--shifted_participants", type=int, default=100)
    parser.add_argument("--shifted_appearance_scale", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model_seg", default=PAPER_SEG,
                        help="default: the bundled model of the paper's recipe (bundled:ml4h_seg_paper)")
    parser.add_argument("--model_reg", default=PAPER_REG,
                        help="default: the bundled model of the paper's recipe (bundled:ml4h_reg_paper)")
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/model_evaluation.*")
    args = parser.parse_args(argv)
    if args.render:
        markdown = to_markdown(json.loads(Path(args.render).read_text()))
        print(markdown)
        if args.record:
            (RESULTS_DIR / "model_evaluation.md").write_text(markdown + "\n")
        return 0
    if not args.out:
        parser.error("--out is required unless --render is given")
    out = Path(args.out)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/evaluate_models.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "models": {"seg": args.model_seg, "reg": args.model_reg},
        "cohorts": {},
    }
    report["cohorts"]["fresh"] = run_cohort(
        "fresh", out, participants=args.participants, seed=args.seed, appearance_scale=1.0,
        workers=args.workers, model_seg=args.model_seg, model_reg=args.model_reg)
    if args.shifted_participants > 0:
        report["cohorts"]["appearance_shifted"] = run_cohort(
            "appearance_shifted", out, participants=args.shifted_participants, seed=args.seed + 1,
            appearance_scale=args.shifted_appearance_scale, workers=args.workers,
            model_seg=args.model_seg, model_reg=args.model_reg)
    text = json.dumps(report, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    print(text)
    markdown = to_markdown(report)
    print(markdown)
    if args.record:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "model_evaluation.json").write_text(text + "\n")
        (RESULTS_DIR / "model_evaluation.md").write_text(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
