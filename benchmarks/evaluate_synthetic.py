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

    python benchmarks/evaluate_synthetic.py --model_seg DIR --model_reg DIR --participants 100 --record
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

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULT_NAME = "synthetic_evaluation"
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
    rows = [
        measure_stack(draw_stack((seed, PURPOSE_EVALUATION, i)), seg, reg, grid, slots)
        for i in range(participants)
    ]
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
        spreads.append({"seed_index": i, "masses_g": masses, "spread": max(masses) / min(masses) - 1.0})
    out["resolution"] = {
        "pixel_sizes_mm": list(PIXEL_SIZES_MM),
        "participants": spreads,
        "max_spread": max((s["spread"] for s in spreads), default=float("nan")),
        "within_5_percent": int(sum(s["spread"] <= 0.05 for s in spreads)),
    }
    return out


def markdown(result: Mapping[str, Any]) -> str:
    lines = [
        "# Default models on synthetic stacks never used in training",
        "",
        "Written by `benchmarks/evaluate_synthetic.py` (its docstring says what each number is).",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}; date: {result['date']}",
        f"- models: seg `{result['model_seg']}`, reg `{result['model_reg']}`",
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
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--record", action="store_true", help=f"write benchmarks/results/{RESULT_NAME}.*")
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
        }
    )
    if args.record:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{RESULT_NAME}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        (RESULTS_DIR / f"{RESULT_NAME}.md").write_text(markdown(result))
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
