"""End to end: CPU-seconds and wall time of ``python -m beam_pipeline`` against the number of participants.

Two figures, one command each; each result file records its command, the machine, its load, the date and
the decoder measured (the last commit that touched ``lvmass/core/decode/``, and whether the working tree
differs from it).

``scaling`` -> ``benchmarks/results/pipeline_scaling.json``::

    python benchmarks/bench_pipeline.py scaling --sizes 3 12 48 --repeats 3

    ``lvmass synth --fidelity full`` makes ``max(--sizes)`` participants once (``--cohort DIR`` keeps and
    reuses them; 48 full-fidelity zips are about 2.8 GB), and each run reads the first N through a folder of
    links. Every run is the whole job as a user starts it, in a fresh process: ``python -m beam_pipeline``
    with all methods and the bundled models on the ``FnApiRunner``, single-threaded TensorFlow (as the
    Dataflow worker image sets it), default batch size (from the model cards). CPU-seconds are the job's
    process and all its children (``getrusage(RUSAGE_CHILDREN)`` of a wrapper process that only waits for
    it); wall time is the parent's clock. Runs are interleaved (3, 12, 48, 3, 12, 48, ...) so a change of
    machine load hits every size alike. The slope and intercept are least squares over every run, and
    again over the per-size medians; the intercept is the fixed start-up of a run (imports, model loading,
    tracing, pipeline construction), the slope the cost per participant. The log of each run is checked for
    how many times each model was loaded (once per worker process: RunInference keeps it across bundles).

    The same job as before this change, for the ratio (``pipeline_scaling_before.json``: the ML4H_seg
    SavedModel without ``serving_crop``, so the whole field of view, and TensorFlow's default Eigen
    convolutions on this CPU; the decoder is today's in both)::

        mkdir -p /tmp/before && git archive 3d033f6 beam_pipeline/models/ml4h_seg | tar -x -C /tmp/before
        python benchmarks/bench_pipeline.py scaling --sizes 3 12 --repeats 1 --onednn 0 \
            --job_arg=--model_seg=/tmp/before/beam_pipeline/models/ml4h_seg --job_arg=--batch_size=8 \
            --out benchmarks/results/pipeline_scaling_before.json

``memory`` -> ``benchmarks/results/inference_pipeline_memory.json``::

    python benchmarks/bench_pipeline.py memory --participants 12 --batch_sizes 1 8 default

    The same job at each ``--batch_size`` (``default``: the model cards' choice), on the
    ``FnApiRunner`` in multi-processing mode with one worker, so that the SDK worker is its own process:
    the peak RSS of that process (``RUSAGE_CHILDREN`` of the job's process: the largest of its children) and
    of the whole job are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the same machine description as the stage timings
from bench_stages import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
# Runs its command and prints, as its last line, the CPU time and peak RSS of everything it waited for.
WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'rc': rc, 'cpu_s': u.ru_utime + u.ru_stime, 'user_s': u.ru_utime,"
    " 'system_s': u.ru_stime, 'peak_rss_mb': u.ru_maxrss / 1024}))\n"
)
# Inside a job with SDK worker processes: its children's peak RSS (the largest SDK process), from the job
# itself, printed after it finishes.
JOB_WITH_CHILD_RSS = (
    "import json, resource, sys\n"
    "from beam_pipeline.pipeline import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "c = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "s = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('LVMASS_RSS ' + json.dumps({'sdk_process_peak_rss_mb': c.ru_maxrss / 1024,"
    " 'job_process_peak_rss_mb': s.ru_maxrss / 1024}), flush=True)\n"
    "sys.exit(code or 0)\n"
)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def decoder_measured() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    decode = "lvmass/core/decode/"
    return {"last_commit": git("log", "-1", "--format=%h %ad %s", "--date=iso", "--", decode),
            "working_tree_differs": bool(git("status", "--porcelain", "--", decode))}


def job_env(onednn: str | None = None) -> dict[str, str]:
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    return env


def make_cohort(cohort: Path, participants: int, seed: int, fidelity: str) -> list[Path]:
    zips = sorted((cohort / "zips").glob("*_20209_*.zip"))
    if len(zips) < participants:
        from lvmass.synth.cohort import generate_cohort

        generate_cohort(cohort, participants=participants, seed=seed, fidelity=fidelity, overwrite=True)
        zips = sorted((cohort / "zips").glob("*_20209_*.zip"))
    return zips[:participants]


def link_subset(zips: list[Path], folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for path in zips:
        (folder / path.name).symlink_to(path.resolve())
    return str(folder / "*_20209_*.zip")


def run_job(argv: list[str], log: Path, *, child_rss: bool = False,
            onednn: str | None = None) -> dict[str, Any]:
    """One ``python -m beam_pipeline`` job in a fresh process: CPU (process + children), wall, peak RSS."""
    job = [sys.executable, "-c", JOB_WITH_CHILD_RSS] if child_rss else [sys.executable, "-m", "beam_pipeline"]
    wall = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, "-c", WRAPPER, *job, *argv], env=job_env(onednn),
                              stdout=subprocess.PIPE, stderr=handle, text=True, check=False)
    wall_s = time.perf_counter() - wall
    lines = done.stdout.strip().splitlines()
    usage = json.loads(lines[-1])
    if usage["rc"] != 0:
        raise RuntimeError(f"job failed ({usage['rc']}): {shlex.join(argv)}\n{log.read_text()[-3000:]}")
    text = log.read_text()
    result = {"cpu_s": round(usage["cpu_s"], 3), "wall_s": round(wall_s, 3),
              "job_peak_rss_mb": round(usage["peak_rss_mb"], 1),
              "model_loads": {kind: len(re.findall(f"loaded {kind} model", text))
                              for kind in ("ml4h_seg", "ml4h_reg")}}
    batch = re.search(r"inference batch size (\d+)", text)
    result["batch_size"] = int(batch.group(1)) if batch else None
    for line in lines:
        if line.startswith("LVMASS_RSS "):
            result.update({k: round(v, 1) for k, v in json.loads(line[len("LVMASS_RSS "):]).items()})
    return result


def job_argv(pattern: str, phenotypes: Path, output: Path, extra: list[str]) -> list[str]:
    return [f"--input={pattern}", f"--phenotypes={phenotypes}", f"--output={output}", "--log_level=INFO",
            *extra]


def fit(points: list[tuple[int, float]]) -> dict[str, float]:
    sizes = np.array([n for n, _ in points], dtype=float)
    values = np.array([v for _, v in points], dtype=float)
    slope, intercept = np.polyfit(sizes, values, 1)
    residual = values - (slope * sizes + intercept)
    return {"slope_s_per_participant": round(float(slope), 4), "intercept_s": round(float(intercept), 3),
            "rms_residual_s": round(float(np.sqrt(np.mean(residual**2))), 3), "points": len(points)}


def scaling(args: argparse.Namespace, argv: list[str]) -> int:
    started = machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cohort = Path(args.cohort) if args.cohort else work / "cohort"
        zips = make_cohort(cohort, max(args.sizes), args.seed, args.fidelity)
        patterns = {n: link_subset(zips[:n], work / f"n{n}") for n in args.sizes}
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            for n in args.sizes:
                output = work / f"out_{n}_{repeat}"
                result = run_job(job_argv(patterns[n], cohort / "phenotypes.csv", output,
                                          ["--runner=FnApiRunner", *args.job_arg]),
                                 work / f"log_{n}_{repeat}.txt", onednn=args.onednn)
                summary = json.loads((output / "summary.json").read_text())
                result.update({"participants": n, "repeat": repeat,
                               "written": summary.get("participants_written"),
                               "failed": summary.get("participants_failed"),
                               "reconciled": summary.get("reconciled")})
                runs.append(result)
                print(json.dumps(result), flush=True)
                shutil.rmtree(output, ignore_errors=True)
    medians = {n: {"cpu_s": statistics.median(r["cpu_s"] for r in runs if r["participants"] == n),
                   "wall_s": statistics.median(r["wall_s"] for r in runs if r["participants"] == n)}
               for n in args.sizes}
    body = {
        "runner": "FnApiRunner", "methods": "ml4h_seg,ml4h_reg,inlinevf (all)", "models": "bundled",
        "fidelity": args.fidelity, "seed": args.seed, "sizes": args.sizes, "repeats": args.repeats,
        "tf_threads": 1, "decoder": decoder_measured(), "job_args": args.job_arg,
        "tf_enable_onednn_opts": args.onednn or "1 (set by beam_pipeline.inference)",
        "cpu_fit_all_runs": fit([(r["participants"], r["cpu_s"]) for r in runs]),
        "cpu_fit_medians": fit([(n, m["cpu_s"]) for n, m in medians.items()]),
        "wall_fit_all_runs": fit([(r["participants"], r["wall_s"]) for r in runs]),
        "wall_fit_medians": fit([(n, m["wall_s"]) for n, m in medians.items()]),
        "medians": medians,
        "cpu_s_per_participant_between_sizes": {
            f"{a}->{b}": round((medians[b]["cpu_s"] - medians[a]["cpu_s"]) / (b - a), 4)
            for a, b in zip(args.sizes, args.sizes[1:], strict=False)},
        "runs": runs,
    }
    record("scaling", argv, body, started, Path(args.out or RESULTS / "pipeline_scaling.json"))
    print(json.dumps({k: body[k] for k in ("cpu_fit_medians", "wall_fit_medians")}))
    return 0


def memory(args: argparse.Namespace, argv: list[str]) -> int:
    started = machine()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cohort = Path(args.cohort) if args.cohort else work / "cohort"
        zips = make_cohort(cohort, args.participants, args.seed, args.fidelity)
        pattern = link_subset(zips, work / "inputs")
        for batch in args.batch_sizes:
            output = work / f"out_{batch}"
            extra = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                     "--direct_num_workers=1"]
            extra += [] if batch == "default" else [f"--batch_size={batch}"]
            result = run_job(job_argv(pattern, cohort / "phenotypes.csv", output, extra),
                             work / f"log_{batch}.txt", child_rss=True)
            result.update({"batch_size_flag": batch, "participants": len(zips)})
            runs.append(result)
            print(json.dumps(result), flush=True)
            shutil.rmtree(output, ignore_errors=True)
    from lvmass.core.model_card import PROCESS_MEMORY_BUDGET_MB

    peak = max(r.get("sdk_process_peak_rss_mb", 0.0) for r in runs)
    body = {"runner": "FnApiRunner, multi_processing, 1 SDK worker process", "fidelity": args.fidelity,
            "seed": args.seed, "tf_threads": 1, "decoder": decoder_measured(),
            "budget_mb": PROCESS_MEMORY_BUDGET_MB, "max_sdk_process_peak_rss_mb": peak,
            "within_budget": peak <= PROCESS_MEMORY_BUDGET_MB, "runs": runs}
    record("memory", argv, body, started, Path(args.out or RESULTS / "inference_pipeline_memory.json"))
    return 0


def record(command: str, argv: list[str], body: dict[str, Any], started: dict[str, Any], out: Path) -> None:
    result = {"command": "python benchmarks/bench_pipeline.py " + " ".join(argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": {**started, "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}, **body}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_pipeline.py",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("scaling", "CPU and wall seconds against participants"),
                           ("memory", "peak RSS of the SDK worker process by batch size")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--fidelity", choices=("full", "lite"), default="full", help="synthetic zips")
        p.add_argument("--seed", type=int, default=2026, help="cohort seed (never used in training)")
        p.add_argument("--cohort", default=None, help="keep / reuse the generated cohort here")
        p.add_argument("--out", default=None, help="result JSON (default: under benchmarks/results/)")
    scaling_parser = sub.choices["scaling"]
    scaling_parser.add_argument("--sizes", type=int, nargs="+", default=[3, 12, 48],
                                help="participants per run")
    scaling_parser.add_argument("--repeats", type=int, default=3, help="runs per size (interleaved)")
    scaling_parser.add_argument("--job_arg", action="append", default=[],
                                help="extra option for every job (repeatable): --job_arg=--model_seg=DIR")
    scaling_parser.add_argument("--onednn", choices=("0", "1"), default=None,
                                help="TF_ENABLE_ONEDNN_OPTS for the jobs (default: the pipeline's, 1)")
    memory_parser = sub.choices["memory"]
    memory_parser.add_argument("--participants", type=int, default=12)
    memory_parser.add_argument("--batch_sizes", nargs="+", default=["1", "8", "default"],
                               help="--batch_size values ('default': the model cards' choice)")
    args = parser.parse_args(argv)
    return {"scaling": scaling, "memory": memory}[args.command](args, argv)


if __name__ == "__main__":
    sys.exit(main())
