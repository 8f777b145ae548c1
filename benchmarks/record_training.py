"""Record a default-model training run stage by stage: its commands, steps, wall time, synthetic validation
and the real studies' scores of its snapshots.

A run of ``trainer.synthslice`` keeps its history in ``checkpoint.npz`` (every invocation's command, steps,
seconds and machine; the loss and synthetic validation every few steps). Snapshots of the checkpoint (copies
taken at steps of the run, ``RUN/snapshots/step_N.npz``) are scored here on the real studies
(``benchmarks/evaluate_real.py``'s checkpoint predictors: ML4H_seg on every slice's whole field of view with
its post-processing, ML4H_reg with its window), so the record shows when the model became good, not only
that it did.

    python benchmarks/record_training.py --run_dir runs/default --name default
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_real as er

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def score_snapshot(path: Path) -> dict[str, Any]:
    """The real studies' scores of one snapshot (ML4H_seg and, when the run trained it, ML4H_reg)."""
    from trainer.synthslice import REG, read_checkpoint

    checkpoint = read_checkpoint(path)
    predict, grid = er.checkpoint_predictor(str(path))
    studies = [er.evaluate_study(real, predict, grid, None) for real in er.rs.find_studies()]
    seg = er.summarise(studies)
    out: dict[str, Any] = {
        "step": checkpoint.state.step,
        "train_seconds": round(checkpoint.state.train_seconds, 1),
        "seg": {
            k: seg[k]
            for k in (
                "myocardium_dice_mean",
                "cavity_dice_mean",
                "mass_error_percent",
                "mass_within_15_percent",
                "rings_everywhere",
            )
        },
    }
    if REG in checkpoint.config.models:
        predict_mass, grid = er.reg_checkpoint_predictor(str(path))
        rows = [er.evaluate_regression(real, predict_mass, grid) for real in er.rs.find_studies()]
        out["reg"] = er.summarise_regression(rows)
    return out


def markdown(result: Mapping[str, Any]) -> str:
    lines = [
        f"# Training run `{result['name']}` (trainer.synthslice)",
        "",
        "Written by `benchmarks/record_training.py` (its docstring says what each number is).",
        "",
        f"- run: `{result['run_dir']}`; steps {result['steps']}; training wall time "
        f"{result['train_seconds'] / 3600:.2f} h; slices drawn {result['samples_drawn']}",
        f"- recorded: {result['date']} on {result['machine']}",
        "",
        "Invocations (each a resumed piece of the run):",
        "",
    ]
    for inv in result["invocations"]:
        lines.append(
            f"- steps {inv['start_step']}-{inv['end_step']} in {inv['seconds'] / 3600:.2f} h, started "
            f"{inv['started']}: `{inv['command']}`"
        )
    lines += [
        "",
        "## Synthetic validation (held-out slices, every 1000 steps)",
        "",
        "| step | h | loss | cavity Dice | myocardium Dice | area MAE (mm2) | ML4H_reg area MAE (mm2) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["history"]:
        if "val_myocardium_dice" in row:
            lines.append(
                f"| {row['step']} | {row['train_seconds'] / 3600:.2f} | {row['loss']:.3f} | "
                f"{row['val_cavity_dice']:.3f} | {row['val_myocardium_dice']:.3f} | "
                f"{row['val_area_mae_mm2']:.0f} | {row.get('reg_val_area_mae_mm2', float('nan')):.0f} |"
            )
    lines += [
        "",
        "## The five real studies (never trained on), snapshot by snapshot",
        "",
        "ML4H_seg on every slice's whole field of view with its post-processing; ML4H_reg with its window. "
        "Mass on the slices with both contours against the experts'.",
        "",
        "| step | h | myocardium Dice | cavity Dice | mass errors (%) | within 15% | ML4H_reg MAE (g) |",
        "|---|---|---|---|---|---|---|",
    ]
    for snap in result["snapshots"]:
        seg, reg = snap["seg"], snap.get("reg", {})
        errors = ", ".join(f"{e:+.0f}" for e in seg["mass_error_percent"])
        lines.append(
            f"| {snap['step']} | {snap['train_seconds'] / 3600:.2f} | {seg['myocardium_dice_mean']:.3f} | "
            f"{seg['cavity_dice_mean']:.3f} | {errors} | {seg['mass_within_15_percent']} / 5 | "
            f"{reg.get('mae_g', float('nan')):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/record_training.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run_dir", required=True, help="the trainer.synthslice run folder")
    parser.add_argument("--name", required=True, help="the record's name: synthslice_training_NAME.*")
    parser.add_argument(
        "--snapshots", default=None, help="folder of step_N.npz copies (default RUN/snapshots)"
    )
    args = parser.parse_args(argv)
    from trainer.synthslice import CHECKPOINT, read_checkpoint

    run_dir = Path(args.run_dir)
    checkpoint = read_checkpoint(run_dir / CHECKPOINT)
    folder = Path(args.snapshots) if args.snapshots else run_dir / "snapshots"
    paths = sorted(folder.glob("step_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    result = {
        "name": args.name,
        "run_dir": str(run_dir),
        "steps": checkpoint.state.step,
        "train_seconds": checkpoint.state.train_seconds,
        "samples_drawn": checkpoint.state.samples_drawn,
        "config": json.loads(checkpoint.config.to_json()),
        "invocations": checkpoint.state.invocations,
        "history": checkpoint.state.history,
        "snapshots": [score_snapshot(p) for p in paths],
        "command": " ".join(
            ["python benchmarks/record_training.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, {platform.platform()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"synthslice_training_{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
