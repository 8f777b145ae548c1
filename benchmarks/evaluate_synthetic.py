"""Score ML4H_seg and ML4H_reg exports on synthetic stacks they never saw, against the true mass.

The stacks (``lvmass.synth.slice_stack``: one heart, one chest, one acquisition per participant, slices from
above the base to beyond the apex) are drawn with the training generator's full ranges of anatomy and
appearance but from seeds of their own purpose (``trainer.slice_stream.PURPOSE_EVALUATION``), so no
training sample is among them. Each goes through the pipeline's tensor function (the card's grid, every
slice) and model handler (crop policy and post-processing included), and is measured and QC-flagged as the
pipeline measures it (``lvmass.core.measure``).

Measures:

* ML4H_seg raw mass and ML4H_reg mass against the true mass: Pearson r, MAE, mean difference;
* QC: how many pass, and how many pass with a mass more than 15% off (a QC pass must mean a trustworthy
  mass);
* resolution: the same participants rendered at 1.3, 1.8 and 2.2 mm, and the spread of each one's raw mass
  (largest / smallest - 1).

Targets (issue 24): r >= 0.95 and MAE <= 8 g for ML4H_seg; one participant at 1.3 / 1.8 / 2.2 mm within 5%.

    python benchmarks/evaluate_synthetic.py --model_seg DIR --model_reg DIR --name NAME --record
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lvmass.core import contracts
from lvmass.synth import slice_image as si

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULT_NAME = "synthetic_evaluation"
DEFAULT_NAME = "default_models"  # the entry of the bundled models (tests compare fresh stacks with it)
PIXEL_SIZES_MM = (1.3, 1.8, 2.2)
SEED = 2026


def _handler(model_dir: str, kind: str) -> tuple[Any, Any]:
    from beam_pipeline.inference import SavedModelHandler

    handler = SavedModelHandler(model_dir, kind=kind)
    return handler, handler.load_model()


def measure_stack(
    stack: Any,
    seg: tuple[Any, Any] | None,
    reg: tuple[Any, Any] | None,
    grid_mm: float | None,
    n_slots: int | None,
) -> dict[str, Any]:
    """One stack through the pipeline's tensor, handlers and measurement."""
    from lvmass.core.measure import measure_labels, measure_regression, participant_from_study
    from lvmass.core.qc import qc_pass

    participant = participant_from_study(
        stack.study, with_inlinevf=False, grid_pixel_mm=grid_mm, n_slots=n_slots
    )
    row: dict[str, Any] = {
        "seed": list(stack.seed),
        "true_lv_mass_g": stack.true_lv_mass_g,
        "n_slices": stack.study.n_slices,
        "acquired_pixel_mm": stack.acquired_pixel_mm,
    }
    if seg is not None:
        handler, loaded = seg
        [result] = handler.run_inference([participant], loaded)
        measured = measure_labels(
            participant, result.inference, method=contracts.METHOD_ML4H_SEG, model_version=loaded.card.version
        )
        row.update(
            seg_mass_g=measured.lv_mass_raw_g,
            seg_qc_flags=list(measured.qc_flags),
            seg_qc_pass=bool(qc_pass(measured.qc_flags)),
        )
    if reg is not None:
        handler, loaded = reg
        [result] = handler.run_inference([participant], loaded)
        measured = measure_regression(participant, float(result.inference), model_version=loaded.card.version)
        row.update(reg_mass_g=measured.lv_mass_raw_g, reg_qc_pass=bool(qc_pass(measured.qc_flags)))
    return row


def agreement(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """r, MAE and mean difference of ``key`` against the true mass; QC passes, and passes > 15% off."""
    from lvmass.core.metrics import mass_agreement

    predicted = [r[f"{key}_mass_g"] for r in rows]
    truth = [r["true_lv_mass_g"] for r in rows]
    stats = mass_agreement(predicted, truth)
    off = [abs(p - t) / t > 0.15 for p, t in zip(predicted, truth, strict=True)]
    passed = [r[f"{key}_qc_pass"] for r in rows]
    return {
        **stats,
        "qc_pass": int(sum(passed)),
        "more_than_15_percent_off": int(sum(off)),
        "qc_pass_and_more_than_15_percent_off": int(sum(p and o for p, o in zip(passed, off, strict=True))),
    }


def _progress(what: str, done: int, total: int, every: int = 10) -> None:
    """A line on stderr every ``every`` items: the evaluation of 100 stacks takes minutes."""
    if done % every == 0 or done == total:
        print(f"evaluate_synthetic: {what} {done} / {total}", file=sys.stderr, flush=True)


def evaluate(
    model_seg: str | None,
    model_reg: str | None,
    participants: int,
    resolution_participants: int,
    seed: int = SEED,
) -> dict[str, Any]:
    from lvmass.storage.models import read_model_card
    from lvmass.synth.slice_stack import draw_stack
    from trainer.slice_stream import PURPOSE_EVALUATION

    cards = [read_model_card(m) for m in (model_seg, model_reg) if m]
    grid = cards[0].pixel_spacing_mm
    slots = cards[0].tensor_slices
    seg = _handler(model_seg, contracts.MODEL_KIND_SEG) if model_seg else None
    reg = _handler(model_reg, contracts.MODEL_KIND_REG) if model_reg else None
    rows = []
    for i in range(participants):
        rows.append(measure_stack(draw_stack((seed, PURPOSE_EVALUATION, i)), seg, reg, grid, slots))
        _progress("participants", i + 1, participants)
    out: dict[str, Any] = {"participants": rows}
    for key, model in (("seg", model_seg), ("reg", model_reg)):
        if model:
            out[f"{key}_agreement"] = agreement(rows, key)
    spreads = []
    for i in range(resolution_participants):
        masses = []
        for pixel in PIXEL_SIZES_MM:
            stack = draw_stack((seed, PURPOSE_EVALUATION, i), pixel_mm=pixel)
            masses.append(measure_stack(stack, seg, None, grid, slots)["seg_mass_g"] if seg else float("nan"))
        _progress("resolution participants", i + 1, resolution_participants)
        spreads.append({"seed_index": i, "masses_g": masses, "spread": max(masses) / min(masses) - 1.0})
    out["resolution"] = {
        "pixel_sizes_mm": list(PIXEL_SIZES_MM),
        "participants": spreads,
        "max_spread": max((s["spread"] for s in spreads), default=float("nan")),
        "within_5_percent": int(sum(s["spread"] <= 0.05 for s in spreads)),
    }
    return out


def markdown(results: Mapping[str, Any]) -> str:
    """All recorded entries, the bundled models' (``DEFAULT_NAME``) first."""
    lines = [
        "# Models on synthetic stacks never used in training",
        "",
        "Written by `benchmarks/evaluate_synthetic.py` (its docstring says what each number is). Entry "
        f"`{DEFAULT_NAME}` is the bundled models'.",
        "",
    ]
    models = results["models"]
    for name in sorted(models, key=lambda n: (n != DEFAULT_NAME, n)):
        lines += entry_markdown(name, models[name])
    return "\n".join(lines)


def entry_markdown(name: str, result: Mapping[str, Any]) -> list[str]:
    cap = result.get("experts_max_wall_fraction")
    truth = (
        f"the experts' endocardium taking at most {cap:g} of the local wall"
        if cap is not None
        else "the experts' endocardium at its fixed reach, before the wall cap "
        "(`EXPERTS_MAX_WALL_FRACTION`; thin walls' truth one fine pixel wide)"
    )
    lines = [
        f"## {name}",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}; date: {result['date']}",
        f"- models: seg `{result['model_seg']}`, reg `{result['model_reg']}`",
        f"- true mass: {truth}",
        "",
        "| method | n | r | MAE (g) | mean difference (g) | QC pass | > 15% off | QC pass and > 15% off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, name in (("seg", "ML4H_seg (raw)"), ("reg", "ML4H_reg")):
        a = result.get(f"{key}_agreement")
        if a:
            lines.append(
                f"| {name} | {a['n']} | {a['pearson_r']:.3f} | {a['mae_g']:.1f} | "
                f"{a['mean_difference_g']:+.1f} | {a['qc_pass']} | {a['more_than_15_percent_off']} | "
                f"{a['qc_pass_and_more_than_15_percent_off']} |"
            )
    r = result["resolution"]
    lines += [
        "",
        f"Resolution ({', '.join(str(p) for p in r['pixel_sizes_mm'])} mm, ML4H_seg raw mass): "
        f"{r['within_5_percent']} / {len(r['participants'])} participants within 5%, largest spread "
        f"{100 * r['max_spread']:.1f}%.",
        "",
    ]
    lines += [
        "| participant | " + " | ".join(f"{p} mm (g)" for p in r["pixel_sizes_mm"]) + " | spread |",
        "|---|" + "---|" * (len(r["pixel_sizes_mm"]) + 1),
    ]
    lines += [
        f"| {s['seed_index']} | "
        + " | ".join(f"{m:.1f}" for m in s["masses_g"])
        + f" | {100 * s['spread']:.1f}% |"
        for s in r["participants"]
    ]
    return [*lines, ""]


def record(name: str, entry: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    """Add (or replace) ``name``'s entry in the JSON and rewrite the markdown."""
    from named_results import record_entry

    record_entry(results_dir, RESULT_NAME, name, entry, markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/evaluate_synthetic.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model_seg", default="bundled:ml4h_seg", help="ML4H_seg export ('' for none)")
    parser.add_argument("--model_reg", default="bundled:ml4h_reg", help="ML4H_reg export ('' for none)")
    parser.add_argument("--participants", type=int, default=100, help="synthetic participants")
    parser.add_argument(
        "--resolution_participants", type=int, default=10, help="participants rendered at 1.3, 1.8 and 2.2 mm"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="the evaluation cohort's seed")
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"the entry's name in the results ({DEFAULT_NAME}: the bundled models)",
    )
    parser.add_argument(
        "--record", action="store_true", help=f"add the entry to benchmarks/results/{RESULT_NAME}.*"
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    result = evaluate(
        args.model_seg or None,
        args.model_reg or None,
        args.participants,
        args.resolution_participants,
        args.seed,
    )
    result.update(
        {
            "model_seg": args.model_seg,
            "model_reg": args.model_reg,
            "command": " ".join(
                ["python benchmarks/evaluate_synthetic.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": f"{platform.machine()}, {platform.platform()}, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.perf_counter() - began, 1),
            "experts_endocardium": si.AppearanceRanges().experts_endocardium,
            "experts_max_wall_fraction": si.EXPERTS_MAX_WALL_FRACTION,
        }
    )
    if args.record:
        record(args.name, result)
    print(
        json.dumps(
            {k: result[k] for k in result if k.endswith("agreement")}
            | {"resolution_max_spread": result["resolution"]["max_spread"]},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
