"""Speed of ``lvmass synth`` per core: lite participants per second and full seconds per participant.

Targets (issue 2): lite >= 5 participants/s per core; full <= 3 s per participant per core. Runs with
one worker (one core) through ``generate_cohort`` (rendering, DICOM encoding, zip deflate, label and CSV
writing included) and reports wall time and this process's CPU time (the machine may be shared, so CPU
time is the per-core figure). Writes ``benchmarks/results/synth_speed.json``.

    python benchmarks/bench_synth.py [--lite N] [--full N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from lvmass.synth import generate_cohort

TARGET_LITE_PER_S = 5.0
TARGET_FULL_S = 3.0


def _run(fidelity: str, participants: int, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        generate_cohort(
            Path(tmp) / "warm", participants=1, seed=seed + 100, fidelity=fidelity
        )  # imports, caches
        wall0, cpu0 = time.perf_counter(), time.process_time()
        paths = generate_cohort(Path(tmp) / "run", participants=participants, seed=seed, fidelity=fidelity)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        zip_mb = sum(p.stat().st_size for p in paths.zips_dir.iterdir()) / participants / 1e6
    return {
        "participants": participants,
        "wall_s": wall,
        "cpu_s": cpu,
        "mean_zip_mb": zip_mb,
        "cpu_s_per_participant": cpu / participants,
        "wall_s_per_participant": wall / participants,
        "participants_per_cpu_s": participants / cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lite", type=int, default=40)
    parser.add_argument("--full", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_speed.json"))
    args = parser.parse_args(argv)
    lite = _run("lite", args.lite, seed=1)
    full = _run("full", args.full, seed=2)
    result = {
        "script": "benchmarks/bench_synth.py",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "lite": lite
        | {
            "target_participants_per_s_per_core": TARGET_LITE_PER_S,
            "meets_target": lite["participants_per_cpu_s"] >= TARGET_LITE_PER_S,
        },
        "full": full
        | {
            "target_s_per_participant_per_core": TARGET_FULL_S,
            "meets_target": full["cpu_s_per_participant"] <= TARGET_FULL_S,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"lite: {lite['participants_per_cpu_s']:.2f} participants per CPU-second "
        f"(wall {lite['wall_s_per_participant']:.3f} s each, {lite['mean_zip_mb']:.1f} MB zips); target >= 5"
    )
    print(
        f"full: {full['cpu_s_per_participant']:.2f} CPU-s per participant "
        f"(wall {full['wall_s_per_participant']:.2f} s, {full['mean_zip_mb']:.1f} MB zips); target <= 3"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
