"""Dataflow recipes for lvmass, sized from measured CPU-seconds and priced with stated list prices.

Input: ``benchmarks/results/stage_cpu_seconds.json`` (``benchmarks/bench_stages.py``): median CPU-seconds
per participant of decode, tensor, InlineVF, ML4H_seg (the bundled compact model and the paper-size one)
and ML4H_reg, and the peak memory of one process. Everything else is an assumption, named in
:data:`ASSUMPTIONS` and :data:`PRICES_USD` and printed with the result:

* **CPU recipe**: Dataflow runs one SDK process per vCPU, each with single-threaded TensorFlow (the worker
  image sets ``TF_NUM_INTRAOP_THREADS=1``), so a worker finishes ``vCPUs / cpu_s_per_participant``
  participants a second. The machine is the smallest n2 shape whose memory per vCPU holds one process.
* **GPU recipe**: one L4 per g2 worker, ``--large_model`` (one model copy on the GPU, shared by the
  worker's processes); the CPUs still decode, so a worker's rate is the smaller of its CPUs' decode rate
  and the GPU's inference rate (an assumed GPU time per participant: no GPU was available to measure it).
* The GPU pays when ML4H_seg costs more CPU-seconds per participant than the break-even printed here.

    python benchmarks/dataflow_cost.py [--stages PATH] [--participants 38500 100000] [--out_json P]
        [--out_md P] [--scaling PATH] [--inference PATH] [--pipeline_memory PATH]

**Measured end to end** (a second table, when ``benchmarks/results/pipeline_scaling.json`` exists): the
same recipes sized from the whole job's measured CPU-seconds per participant, the slope of
``benchmarks/bench_pipeline.py scaling`` (every stage, Beam's own work and ML4H_seg's heart-centred crop
included, so no overhead fraction is added), with its intercept as the start-up each SDK process pays once
(added to every worker's wall time), the SDK process's measured peak memory
(``inference_pipeline_memory.json``) and, for the GPU recipe, the CPU side as that slope less ML4H_seg's
measured CPU time (``inference_speed.json``: ``onednn_window``, what the pipeline runs, or ``onednn_crop``
in a file recorded before ``serving_window``).

Writes ``benchmarks/results/dataflow_cost.json`` and ``dataflow_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_STAGES = RESULTS / "stage_cpu_seconds.json"
DEFAULT_SCALING = RESULTS / "pipeline_scaling.json"
DEFAULT_INFERENCE = RESULTS / "inference_speed.json"
DEFAULT_PIPELINE_MEMORY = RESULTS / "inference_pipeline_memory.json"

# List prices in USD, Dataflow batch workers in us-central1, as published on the Dataflow and Compute Engine
# pricing pages when this was written (2026-11). ASSUMPTIONS: not fetched by this script, no discounts
# (committed use, FlexRS); other regions cost up to ~20% more. Check the pricing pages before a budget.
PRICES_USD: dict[str, Any] = {
    "date": "2026-11",
    "region": "us-central1",
    "batch_vcpu_hour": 0.056,
    "batch_memory_gb_hour": 0.003557,
    "pd_standard_gb_hour": 0.000054,
    "shuffle_gb": 0.011,
    "gpu_hour": {"nvidia-l4": 0.60},
}
ASSUMPTIONS: dict[str, Any] = {
    "runner_overhead_fraction": 0.25,  # Beam harness, (de)serialisation, GCS reads, not in the stage timings
    "utilisation": 0.85,  # autoscaling ramp-up and the tail of the last work items
    "worker_startup_hours": 0.1,  # per worker: VM boot and container pull, billed
    "pd_gb_per_worker": 25,  # batch default with Dataflow Shuffle
    "shuffle_kb_per_participant": 5,  # file metadata (Reshuffle) and measurements (calibration GroupByKey)
    "memory_headroom": 1.5,  # per-process memory needed = peak RSS x this
    "gpu_seg_s_per_participant": 0.25,  # NOT MEASURED: L4 time for the paper-size ML4H_seg, batch of 8
    "cpu_workers": 25,
    "gpu_workers": 20,
}
# n2 shapes (vCPUs, memory GB) tried in order for the CPU recipe; g2-standard-8 (1 L4) for the GPU one.
CPU_MACHINES: tuple[tuple[str, int, float], ...] = (
    ("n2-highcpu-16", 16, 16.0), ("n2-standard-16", 16, 64.0), ("n2-highmem-16", 16, 128.0))
GPU_MACHINE: tuple[str, int, float, str] = ("g2-standard-8", 8, 32.0, "nvidia-l4")
CPU_STAGES = ("decode", "tensor", "inlinevf", "ml4h_reg")


@dataclass(frozen=True)
class Recipe:
    name: str
    machine_type: str
    vcpus: int
    memory_gb: float
    gpu: str | None
    sdk_processes_per_worker: int
    memory_gb_per_process: float
    tf_threads_per_process: int
    large_model: bool
    max_num_workers: int
    cpu_s_per_participant: float  # on the worker's CPUs, overhead included
    participants_per_worker_s: float
    worker_usd_per_hour: float
    usd_per_participant: float
    flags: str


def _median(stages: Mapping[str, Any], name: str) -> float:
    try:
        return float(stages["cpu_s_per_participant"][name]["median"])
    except KeyError:
        raise ValueError(f"the stage file has no CPU time for {name!r}; rerun benchmarks/bench_stages.py"
                         f"{' --paper_seg' if 'paper' in name else ''}. Has: "
                         f"{sorted(stages.get('cpu_s_per_participant', {}))}") from None


def worker_usd_per_hour(vcpus: int, memory_gb: float, gpu: str | None) -> float:
    price = vcpus * PRICES_USD["batch_vcpu_hour"] + memory_gb * PRICES_USD["batch_memory_gb_hour"]
    price += ASSUMPTIONS["pd_gb_per_worker"] * PRICES_USD["pd_standard_gb_hour"]
    if gpu is not None:
        price += PRICES_USD["gpu_hour"][gpu]
    return price


def cpu_recipe(name: str, cpu_s: float, peak_rss_mb: float, *, overhead: float | None = None) -> Recipe:
    """All stages on the CPUs: one single-threaded SDK process per vCPU. ``overhead``: the fraction added
    for what the stage timings leave out (default the assumption; 0 for a whole job's measured time)."""
    need_gb = peak_rss_mb / 1024 * ASSUMPTIONS["memory_headroom"]
    fitting = [shape for shape in CPU_MACHINES if shape[2] / shape[1] >= need_gb]
    if not fitting:
        raise ValueError(f"no n2 shape gives {need_gb:.1f} GB per process (peak RSS {peak_rss_mb} MB)")
    machine, vcpus, memory_gb = fitting[0]
    cpu_s = cpu_s * (1 + (ASSUMPTIONS["runner_overhead_fraction"] if overhead is None else overhead))
    rate = vcpus / cpu_s
    usd_h = worker_usd_per_hour(vcpus, memory_gb, None)
    return Recipe(name=name, machine_type=machine, vcpus=vcpus, memory_gb=memory_gb, gpu=None,
                  sdk_processes_per_worker=vcpus, memory_gb_per_process=round(memory_gb / vcpus, 2),
                  tf_threads_per_process=1, large_model=False, max_num_workers=ASSUMPTIONS["cpu_workers"],
                  cpu_s_per_participant=round(cpu_s, 3), participants_per_worker_s=round(rate, 4),
                  worker_usd_per_hour=round(usd_h, 4), usd_per_participant=usd_h / 3600 / rate,
                  flags=f"--machine_type={machine} --max_num_workers={ASSUMPTIONS['cpu_workers']} "
                        "--experiments=use_runner_v2")


def gpu_recipe(name: str, cpu_side_s: float, peak_rss_mb: float, *, overhead: float | None = None) -> Recipe:
    """Decode on the CPUs, ML4H_seg on one L4 shared by the worker's processes (--large_model)."""
    machine, vcpus, memory_gb, gpu = GPU_MACHINE
    need_gb = peak_rss_mb / 1024 * ASSUMPTIONS["memory_headroom"]
    if memory_gb / vcpus < need_gb:
        raise ValueError(f"{machine} gives {memory_gb / vcpus:.1f} GB per process; {need_gb:.1f} GB needed")
    overhead = ASSUMPTIONS["runner_overhead_fraction"] if overhead is None else overhead
    cpu_side_s = cpu_side_s * (1 + overhead)
    rate = min(vcpus / cpu_side_s, 1 / ASSUMPTIONS["gpu_seg_s_per_participant"])
    usd_h = worker_usd_per_hour(vcpus, memory_gb, gpu)
    option = f"worker_accelerator=type:{gpu};count:1;install-nvidia-driver"
    return Recipe(name=name, machine_type=machine, vcpus=vcpus, memory_gb=memory_gb, gpu=gpu,
                  sdk_processes_per_worker=vcpus, memory_gb_per_process=round(memory_gb / vcpus, 2),
                  tf_threads_per_process=1, large_model=True, max_num_workers=ASSUMPTIONS["gpu_workers"],
                  cpu_s_per_participant=round(cpu_side_s, 3), participants_per_worker_s=round(rate, 4),
                  worker_usd_per_hour=round(usd_h, 4), usd_per_participant=usd_h / 3600 / rate,
                  flags=f"--machine_type={machine} --max_num_workers={ASSUMPTIONS['gpu_workers']} "
                        f"--experiments=use_runner_v2 --dataflow_service_options='{option}' --large_model")


def run_estimate(recipe: Recipe, participants: int, *, process_startup_s: float = 0.0) -> dict[str, float]:
    """Wall time and cost of one run of ``participants`` on ``recipe.max_num_workers`` workers
    (``process_startup_s``: CPU-seconds each SDK process spends once before its first participant)."""
    if participants < 1:
        raise ValueError(f"participants must be >= 1. Received: {participants}")
    workers = recipe.max_num_workers
    rate = workers * recipe.participants_per_worker_s * ASSUMPTIONS["utilisation"]
    compute_h = participants / rate / 3600
    wall_h = compute_h + ASSUMPTIONS["worker_startup_hours"] + process_startup_s / 3600
    worker_cost = workers * wall_h * recipe.worker_usd_per_hour
    shuffle_cost = participants * ASSUMPTIONS["shuffle_kb_per_participant"] / 1e6 * PRICES_USD["shuffle_gb"]
    return {"participants": participants, "workers": workers, "wall_hours": round(wall_h, 2),
            "usd": round(worker_cost + shuffle_cost, 2),
            "usd_per_1000_participants": round((worker_cost + shuffle_cost) / participants * 1000, 3)}


def estimate(stages: Mapping[str, Any], participants: Sequence[int]) -> dict[str, Any]:
    base = sum(_median(stages, s) for s in CPU_STAGES)
    seg = {"bundled": _median(stages, "ml4h_seg"), "paper": _median(stages, "ml4h_seg_paper")}
    rss = float(stages["peak_rss_mb"])
    # the paper-size model on the CPU holds its whole-field activations; on the GPU it does not
    rss_paper = float(stages.get("peak_rss_mb_with_paper_seg", rss))
    recipes = [
        cpu_recipe("cpu_bundled_seg", base + seg["bundled"], rss),
        cpu_recipe("cpu_paper_seg", base + seg["paper"], rss_paper),
        gpu_recipe("gpu_l4_paper_seg", base, rss),
    ]
    cpu_cheapest = min((r for r in recipes if r.gpu is None), key=lambda r: r.usd_per_participant)
    gpu = recipes[-1]
    # CPU cost per participant = usd_per_cpu_s * (base + seg) * (1 + overhead): solve it for seg at the
    # GPU recipe's cost per participant
    overhead = 1 + ASSUMPTIONS["runner_overhead_fraction"]
    usd_per_cpu_s = cpu_recipe("probe", 1.0, rss).usd_per_participant / overhead
    break_even = gpu.usd_per_participant / usd_per_cpu_s / overhead - base
    return {
        "inputs": {
            "stages_file_date": stages.get("date"),
            "stages_command": stages.get("command"),
            "machine_measured_on": stages.get("machine"),
            "cpu_s_per_participant": {**{s: _median(stages, s) for s in CPU_STAGES},
                                      "ml4h_seg_bundled": seg["bundled"], "ml4h_seg_paper": seg["paper"]},
            "peak_rss_mb": rss, "peak_rss_mb_with_paper_seg": rss_paper,
        },
        "prices_usd": PRICES_USD,
        "assumptions": ASSUMPTIONS,
        "recipes": [{**asdict(r), "usd_per_participant": round(r.usd_per_participant, 6),
                     "runs": [run_estimate(r, n) for n in participants]} for r in recipes],
        "gpu_pays_when_ml4h_seg_cpu_s_exceeds": round(break_even, 2),
        "cheapest_cpu_recipe": cpu_cheapest.name,
    }


def measured_end_to_end(scaling: Mapping[str, Any], inference: Mapping[str, Any] | None,
                        memory: Mapping[str, Any] | None, stages: Mapping[str, Any],
                        participants: Sequence[int]) -> dict[str, Any]:
    """CPU and GPU recipes for the bundled models from the whole job's measured slope (module docstring)."""
    fit = scaling["cpu_fit_medians"]
    slope, startup_s = float(fit["slope_s_per_participant"]), max(0.0, float(fit["intercept_s"]))
    rss = float(memory["max_sdk_process_peak_rss_mb"]) if memory else float(stages["peak_rss_mb"])
    recipes = [cpu_recipe("cpu_bundled_seg_measured", slope, rss, overhead=0.0)]
    seg = None
    if inference is not None:
        mode = "onednn_window" if "onednn_window" in inference["modes"] else "onednn_crop"
        seg = float(inference["modes"][mode]["cpu_s_per_participant"]["median"])
        recipes.append(gpu_recipe("gpu_l4_bundled_seg_measured", max(slope - seg, 0.0), rss, overhead=0.0))
    return {
        "inputs": {"scaling_command": scaling.get("command"), "scaling_date": scaling.get("date"),
                   "machine_measured_on": scaling.get("machine"), "decoder": scaling.get("decoder"),
                   "slope_cpu_s_per_participant": slope, "process_startup_cpu_s": startup_s,
                   "sdk_process_peak_rss_mb": rss, "ml4h_seg_cpu_s_per_participant": seg,
                   "inference_command": inference.get("command") if inference else None,
                   "memory_command": memory.get("command") if memory else None},
        "recipes": [{**asdict(r), "usd_per_participant": round(r.usd_per_participant, 6),
                     "runs": [run_estimate(r, n, process_startup_s=startup_s) for n in participants]}
                    for r in recipes],
    }


def _recipe_table(recipes: list[dict[str, Any]], cpu_column: str) -> list[str]:
    """Markdown rows of a recipe table: machine, processes, cost and wall time at 38,500 and 100,000."""
    lines = [
        f"| recipe | machine | SDK processes x GB each | {cpu_column} "
        "| participants/s per worker | $ per 1000 | 38,500: workers, hours, $ | 100,000: workers, hours, $ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in recipes:
        runs = {run["participants"]: run for run in r["runs"]}
        cells = [f"{runs[n]['workers']}, {runs[n]['wall_hours']} h, ${runs[n]['usd']:.0f}"
                 if n in runs else "-" for n in (38500, 100000)]
        machine = r["machine_type"] + (f" + 1 {r['gpu']}" if r["gpu"] else "")
        lines.append(f"| {r['name']} | {machine} | {r['sdk_processes_per_worker']} x "
                     f"{r['memory_gb_per_process']} | {r['cpu_s_per_participant']} "
                     f"| {r['participants_per_worker_s']} | {r['usd_per_participant'] * 1000:.3f} "
                     f"| {cells[0]} | {cells[1]} |")
    return lines


def markdown(result: Mapping[str, Any]) -> str:
    inputs = result["inputs"]
    lines = [
        "# Dataflow recipes: measured CPU time, assumed prices",
        "",
        "Generated by `python benchmarks/dataflow_cost.py` from `benchmarks/results/stage_cpu_seconds.json` "
        f"(`{inputs['stages_command']}`, {inputs['stages_file_date']}, machine "
        f"{json.dumps(inputs['machine_measured_on'])}). Prices: {result['prices_usd']['region']} list "
        f"prices of {result['prices_usd']['date']}, **assumptions**, not fetched; no discounts.",
        "",
        "Median CPU-seconds per participant (one thread): "
        + ", ".join(f"{k} {v:.2f}" for k, v in inputs["cpu_s_per_participant"].items())
        + f"; peak memory of one process {inputs['peak_rss_mb']:.0f} MB.",
        "",
        *_recipe_table(result["recipes"], "CPU-s per participant (+overhead)"),
    ]
    lines += [
        "",
        f"A GPU worker pays once ML4H_seg takes more than "
        f"**{result['gpu_pays_when_ml4h_seg_cpu_s_exceeds']} CPU-seconds per participant** on a CPU (same "
        "overhead on both sides; the GPU's own time per participant is assumed, "
        f"{result['assumptions']['gpu_seg_s_per_participant']} s, not measured).",
        "",
        "Flags of each recipe:",
        "",
        *[f"- {r['name']}: `{r['flags']}`" for r in result["recipes"]],
        "",
        "Assumptions: " + ", ".join(f"{k} = {v}" for k, v in result["assumptions"].items()) + ".",
        "",
    ]
    measured = result.get("measured_end_to_end")
    if measured:
        m = measured["inputs"]
        decoder = m["decoder"]["last_commit"] if m["decoder"] else "?"
        lines += [
            "## Measured end to end",
            "",
            f"From `{m['scaling_command']}` ({m['scaling_date']}; decoder: {decoder}): the whole job costs "
            f"**{m['slope_cpu_s_per_participant']:.3f} CPU-s per participant** (slope; no overhead fraction "
            f"added) and **{m['process_startup_cpu_s']:.1f} CPU-s once per SDK process** "
            f"(intercept); SDK process peak memory {m['sdk_process_peak_rss_mb']:.0f} MB"
            + (f" (`{m['memory_command']}`)" if m["memory_command"] else "")
            + (f"; ML4H_seg {m['ml4h_seg_cpu_s_per_participant']:.3f} CPU-s per participant "
               f"(`{m['inference_command']}`), on the GPU in the GPU recipe"
               if m["ml4h_seg_cpu_s_per_participant"] is not None else "") + ".",
            "",
            *_recipe_table(measured["recipes"], "CPU-s per participant"),
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/dataflow_cost.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=Path, default=DEFAULT_STAGES, help="bench_stages.py result JSON")
    parser.add_argument("--participants", type=int, nargs="+", default=[38500, 100000],
                        help="cohort sizes to price (default 38500 100000)")
    parser.add_argument("--out_json", type=Path, default=RESULTS / "dataflow_cost.json")
    parser.add_argument("--out_md", type=Path, default=RESULTS / "dataflow_cost.md")
    parser.add_argument("--scaling", type=Path, default=DEFAULT_SCALING,
                        help="bench_pipeline.py scaling result JSON (used when it exists)")
    parser.add_argument("--inference", type=Path, default=DEFAULT_INFERENCE,
                        help="bench_inference.py speed result JSON (used when it exists)")
    parser.add_argument("--pipeline_memory", type=Path, default=DEFAULT_PIPELINE_MEMORY,
                        help="bench_pipeline.py memory result JSON (used when it exists)")
    args = parser.parse_args(argv)
    stages = json.loads(args.stages.read_text())
    result = estimate(stages, args.participants)
    if args.scaling.exists():
        def optional(path: Path) -> dict[str, Any] | None:
            return json.loads(path.read_text()) if path.exists() else None

        result["measured_end_to_end"] = measured_end_to_end(
            json.loads(args.scaling.read_text()), optional(args.inference), optional(args.pipeline_memory),
            stages, args.participants)
    args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    args.out_md.write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
