"""ML4H_seg inference: CPU-seconds, fraction of peak, labels and memory, before and after the crop and oneDNN.

Three figures, one command each; every result file records its command, the machine, its load and the date.

``speed`` -> ``benchmarks/results/inference_speed.json``::

    python benchmarks/bench_inference.py speed --participants 8 --repeats 3

    Decodes ``--participants`` full-fidelity synthetic participants (``lvmass synth``, seed ``--seed``) and
    the real study (``tests/data/real_cmr/SCD0000501.zip``) with the pipeline's own functions, then times
    the bundled ML4H_seg through the pipeline's ``SavedModelHandler``, one participant per call, single-
    threaded TensorFlow (as the Dataflow workers run it), in three configurations, each in its own process
    (``TF_ENABLE_ONEDNN_OPTS`` is read when TensorFlow is imported):

    ``before``         Eigen convolutions (TensorFlow's default on this CPU), whole field of view;
    ``onednn``         oneDNN convolutions, whole field of view;
    ``onednn_crop``    oneDNN and the heart-centred crop (``serving_crop``), first crop at the grid centre;
    ``onednn_window``  oneDNN, ``serving_window`` (the decoder only on the crop's kept window,
                       ``trainer/windowed.py``) and the first crop placed by the InlineVF outlines where
                       the zip has them: what the pipeline runs now.

    Each participant is timed ``--repeats`` times after a warm-up; the figure is the median over
    participants of each participant's median CPU-seconds (``time.process_time``). GFLOP per participant
    are the convolutions' multiply-adds x 2 over the pixels each call covered (the model's layers, counted
    from ``model.keras``); the fraction of peak divides GFLOP per CPU-second by a single-threaded float32
    matmul's (2048 x 2048, median of 5), measured in the same process; a ``serving_window`` call counts only
    what it computes (each layer's output less its inset, ``trainer.windowed.window_demands``). Labels:
    every configuration's label
    volumes are compared with ``before``'s, voxel by voxel, with the LV mass of each (``mass.py``); voxels
    that differ are classed by ``before``'s margin between its two most likely classes.

``memory`` -> ``benchmarks/results/inference_memory.json`` (and, with ``--write_cards``, the bundled cards'
``inference_memory``, from which the pipeline's default ``--batch_size`` comes)::

    python benchmarks/bench_inference.py memory --write_cards

    For each bundled model and batch size (``--batch_sizes``, default 1 4 8) a fresh process imports
    TensorFlow, loads the model through the handler and runs one batch of contract tensors; its peak RSS
    (``ru_maxrss``) is recorded. ``peak_mb`` is batch 1's, ``per_example_mb`` the least-squares slope over
    the batch sizes, floored at the bytes one participant in a batch really holds (its tensor and the
    batch's stacked copy). The tensors are noise: ML4H_seg finds no heart in its crops and falls back to
    the whole field of view, the most memory a participant can take; the whole field of view alone
    (``crop_policy=None``) is measured too.

``startup`` -> ``benchmarks/results/inference_startup.json``::

    python benchmarks/bench_inference.py startup --repeats 3

    In fresh processes: CPU and wall seconds to import Beam and the pipeline, to import TensorFlow, to load
    each bundled model and to run its first and second call on the real study (the difference is the first
    call's tracing and kernel set-up), medians of ``--repeats``. This is the fixed cost a worker process pays
    once (RunInference loads a model once per process and keeps it across bundles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the same machine description as the stage timings
from bench_stages import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
REAL_STUDY = REPO / "tests" / "data" / "real_cmr" / "SCD0000501.zip"
MODES = {"before": {"onednn": "0", "crop": False, "window": False},
         "onednn": {"onednn": "1", "crop": False, "window": False},
         "onednn_crop": {"onednn": "1", "crop": True, "window": False},
         "onednn_window": {"onednn": "1", "crop": True, "window": True}}
NEAR_TIE = 0.01  # margin between the two most likely classes below which a voxel's label is a coin toss


@dataclass(frozen=True)
class HintedInput:
    """A tensor with its InlineVF labels, as the pipeline's participants carry them (the first crop's
    hint)."""

    image: np.ndarray
    spacing_mm: np.ndarray
    inlinevf_labels: np.ndarray


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "mean": round(statistics.fmean(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4), "n": len(values)}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def record(argv: list[str], body: dict[str, Any], started: dict[str, Any], out: Path) -> None:
    result = {"command": "python benchmarks/bench_inference.py " + " ".join(argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": {**started, "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}, **body}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def single_thread_env(onednn: str | None = None) -> dict[str, str]:
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    return env


def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run this script's hidden ``_child`` command in a fresh process; its last stdout line is JSON."""
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- tensors -------------------------------------------------------------------------------------------


def write_tensors(cohort: Path, participants: int, seed: int, out: Path) -> list[dict[str, Any]]:
    """Decode the cohort's zips and the real study into ``out/<name>.npz`` (image, spacing_mm)."""
    from lvmass.core import contracts
    from lvmass.core.decode import decode_participant_zip
    from lvmass.core.measure import participant_from_study
    from lvmass.storage.models import bundled_model_dir, read_model_card
    from lvmass.synth.cohort import generate_cohort

    zips_dir = cohort / "zips"
    if not zips_dir.is_dir() or len(list(zips_dir.glob("*.zip"))) < participants:
        generate_cohort(cohort, participants=participants, seed=seed, fidelity="full", overwrite=True)
    zips = [*sorted(zips_dir.glob("*.zip"))[:participants], REAL_STUDY]
    card = read_model_card(bundled_model_dir(contracts.MODEL_KIND_SEG))
    rows = []
    for path in zips:
        with path.open("rb") as handle:
            study = decode_participant_zip(handle, path.name, with_inlinevf=True)
        tensor = participant_from_study(study, with_inlinevf=True, grid_pixel_mm=card.pixel_spacing_mm,
                                        n_slots=card.tensor_slices)
        outlines = {} if tensor.inlinevf_labels is None else {"inlinevf_labels": tensor.inlinevf_labels}
        np.savez(out / f"{path.stem}.npz", image=tensor.image, spacing_mm=tensor.spacing_mm, **outlines)
        rows.append({"name": path.stem, "real": path == REAL_STUDY, "n_slices_used": tensor.n_slices_used})
    return rows


# --- speed ---------------------------------------------------------------------------------------------


def _conv_gflop(model: Any, rows: int, cols: int, slices: int, inset: dict[str, int] | None = None) -> float:
    """GFLOP (2 x multiply-adds) of ``model``'s convolutions on a ``rows`` x ``cols`` x ``slices`` input, each
    layer's output less ``inset[layer]`` pixels per in-plane side at its own resolution (``serving_window``);
    a layer not in ``inset`` (when given) is not computed."""
    import keras

    from trainer.windowed import _producers

    stride: dict[str, float] = {}
    total = 0.0
    for layer in model.layers:
        producers = _producers(layer)
        s = stride[producers[0]] if producers else 1.0
        if isinstance(layer, keras.layers.MaxPooling3D | keras.layers.AveragePooling3D):
            s *= layer.pool_size[0]
        elif isinstance(layer, keras.layers.UpSampling3D):
            s /= layer.size[0]
        stride[layer.name] = s
        if not isinstance(layer, keras.layers.Conv3D) or (inset is not None and layer.name not in inset):
            continue
        cut = inset.get(layer.name, 0) if inset is not None else 0
        pixels = (rows / s - 2 * cut) * (cols / s - 2 * cut) * slices
        taps = int(np.prod(layer.kernel_size)) * layer.input.shape[-1] * layer.kernel.shape[-1]
        total += 2 * pixels * taps
    return total / 1e9


def _load_keras(model_keras: Path) -> Any:
    import keras

    # the custom objects model.keras may name are registered when these are imported
    import trainer.metrics
    import trainer.models
    import trainer.slice_models  # noqa: F401
    from trainer.export import size_agnostic_twin

    return size_agnostic_twin(keras.models.load_model(model_keras, compile=False))


def conv_gflop(model_keras: Path, slices: int = 13) -> float:
    """GFLOP (2 x multiply-adds) of the model's convolutions on one full 256 x 256 x ``slices`` tensor."""
    from lvmass.core import contracts

    return _conv_gflop(_load_keras(model_keras), contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slices)


def conv_gflop_window(model_keras: Path, rows: int, cols: int, margin_px: int, slices: int = 13) -> float:
    """GFLOP of the convolutions ``serving_window`` computes on a ``rows`` x ``cols`` crop: each layer's
    output less its inset (``trainer.windowed.window_demands``), at that layer's resolution."""
    from trainer.windowed import window_demands

    model = _load_keras(model_keras)
    _, computed = window_demands(model, margin_px)
    return _conv_gflop(model, rows, cols, slices, computed)


def matmul_peak_gflop_per_cpu_s(n: int = 2048, repeats: int = 5) -> float:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.random((n, n), dtype=np.float32))
    b = tf.constant(rng.random((n, n), dtype=np.float32))
    tf.matmul(a, b).numpy()
    rates = []
    for _ in range(repeats):
        cpu = time.process_time()
        tf.matmul(a, b).numpy()
        rates.append(2 * n**3 / (time.process_time() - cpu) / 1e9)
    return statistics.median(rates)


def child_speed(mode: str, tensors: Path, labels_out: Path, repeats: int) -> dict[str, Any]:
    """Time one configuration (``MODES``) on every tensor; write each label volume to ``labels_out``."""
    import dataclasses

    from beam_pipeline.inference import SavedModelHandler
    from lvmass.core import contracts
    from lvmass.core.model_input import ModelInput
    from lvmass.storage.models import bundled_model_dir, resolve_model_dir

    model_dir = bundled_model_dir(contracts.MODEL_KIND_SEG)
    crop = MODES[mode]["crop"]
    handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG,
                                **({} if crop else {"crop_policy": None}))
    model = handler.load_model()
    window = MODES[mode]["window"]
    if window and model.serve_window is None:
        raise RuntimeError(f"{model_dir}: no serving_window; add it: python -m trainer.export "
                           "add_crop_signature")
    calls: list[tuple[int, int, bool]] = []

    def counted(fn, windowed=False):
        def call(**inputs):
            shape = inputs[contracts.SIGNATURE_INPUT_IMAGE].shape
            calls.append((int(shape[1]), int(shape[2]), windowed))
            return fn(**inputs)
        return call

    model = dataclasses.replace(model, serve=counted(model.serve),
                                serve_crop=counted(model.serve_crop) if model.serve_crop else None,
                                serve_window=counted(model.serve_window, True) if window else None)
    prob_handler = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG, argmax=False)
    files = sorted(tensors.glob("*.npz"))
    warm = np.load(files[0])
    list(handler.run_inference([ModelInput(warm["image"], warm["spacing_mm"])], model))
    keras_file = Path(resolve_model_dir(model_dir)) / "model.keras"
    full_gflop: dict[int, float] = {}
    window_gflop: dict[tuple[int, int, int], float] = {}
    rows = []
    for path in files:
        data = np.load(path)
        example: Any = ModelInput(data["image"], data["spacing_mm"])
        if window and "inlinevf_labels" in data:  # the pipeline's participants carry their outlines
            example = HintedInput(data["image"], data["spacing_mm"], data["inlinevf_labels"])
        cpu_s, wall_s = [], []
        for _ in range(repeats):
            calls.clear()
            cpu, wall = time.process_time(), time.perf_counter()
            [result] = handler.run_inference([example], model)
            cpu_s.append(time.process_time() - cpu)
            wall_s.append(time.perf_counter() - wall)
        used = list(calls)
        pixels = sum(r * c for r, c, _ in used)
        slices = int(data["image"].shape[2])
        if slices not in full_gflop:
            full_gflop[slices] = conv_gflop(keras_file, slices)
        gflop = 0.0
        for r, c, windowed in used:
            if windowed:
                if (r, c, slices) not in window_gflop:
                    window_gflop[(r, c, slices)] = conv_gflop_window(
                        keras_file, r, c, model.card.crop_inference.window_margin_px, slices)
                gflop += window_gflop[(r, c, slices)]
            else:
                gflop += full_gflop[slices] * r * c / (contracts.TENSOR_ROWS * contracts.TENSOR_COLS)
        extra = {}
        if mode == "before":  # the margin of the two most likely classes, for the label comparison
            [probs] = prob_handler.run_inference([example], model)
            top2 = np.sort(probs.inference, axis=-1)[..., -2:]
            extra["gap"] = (top2[..., 1] - top2[..., 0]).astype(np.float16)
        np.savez_compressed(labels_out / path.name, labels=result.inference, spacing_mm=data["spacing_mm"],
                            **extra)
        rows.append({"name": path.stem, "cpu_s": statistics.median(cpu_s),
                     "wall_s": statistics.median(wall_s),
                     "cpu_s_repeats": [round(v, 4) for v in cpu_s], "calls": [list(c) for c in used],
                     "pixels_fraction_of_full": pixels / (contracts.TENSOR_ROWS * contracts.TENSOR_COLS),
                     "gflop": round(gflop, 3)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "cpu_s_repeats"}), file=sys.stderr,
              flush=True)
    return {"mode": mode, "rows": rows, "matmul_peak_gflop_per_cpu_s": matmul_peak_gflop_per_cpu_s(),
            "conv_gflop_full": full_gflop,
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def compare_labels(reference: Path, other: Path, meta: list[dict[str, Any]]) -> dict[str, Any]:
    """Voxel and mass differences of ``other``'s label volumes from ``reference``'s."""
    from lvmass.core import contracts
    from lvmass.core.mass import measure_label_volume

    myo = contracts.LABEL_MAP["myocardium"]
    rows = []
    for item in meta:
        ref = np.load(reference / f"{item['name']}.npz")
        new = np.load(other / f"{item['name']}.npz")
        differ = ref["labels"] != new["labels"]
        gap = ref["gap"].astype(np.float32)
        mass_ref = measure_label_volume(ref["labels"], ref["spacing_mm"]).lv_mass_raw_g
        mass_new = measure_label_volume(new["labels"], new["spacing_mm"]).lv_mass_raw_g
        rows.append({
            "name": item["name"], "real": item["real"], "voxels_differing": int(differ.sum()),
            "differing_near_ties": int((differ & (gap < NEAR_TIE)).sum()),
            "myocardium_voxels": [int((ref["labels"] == myo).sum()), int((new["labels"] == myo).sum())],
            "lv_mass_raw_g": [round(float(mass_ref), 3), round(float(mass_new), 3)],
            "delta_g": round(float(mass_new - mass_ref), 3),
        })
    synthetic = [r for r in rows if not r["real"]]
    return {"participants": rows,
            "synthetic_identical": sum(r["voxels_differing"] == 0 for r in synthetic),
            "synthetic_n": len(synthetic),
            "synthetic_max_abs_delta_g": max(abs(r["delta_g"]) for r in synthetic),
            "synthetic_differing_not_near_ties": sum(r["voxels_differing"] - r["differing_near_ties"]
                                                     for r in synthetic),
            "real": next((r for r in rows if r["real"]), None)}


def speed(args: argparse.Namespace, argv: list[str]) -> int:
    started = machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cohort = Path(args.cohort) if args.cohort else work / "cohort"
        (work / "tensors").mkdir()
        meta = write_tensors(cohort, args.participants, args.seed, work / "tensors")
        results = {}
        for mode, spec in MODES.items():
            (work / mode).mkdir()
            results[mode] = run_child(["_child", "speed", mode, str(work / "tensors"), str(work / mode),
                                       str(args.repeats)], single_thread_env(spec["onednn"]))
            print(f"{mode}: done", flush=True)
        accuracy = {mode: compare_labels(work / "before", work / mode, meta)
                    for mode in MODES if mode != "before"}
    gflop_full = results["before"]["conv_gflop_full"]
    modes = {}
    for mode, res in results.items():
        synthetic = [r for r, m in zip(res["rows"], meta, strict=True) if not m["real"]]
        gflop = [r["gflop"] for r in synthetic]
        rate = [g / r["cpu_s"] for g, r in zip(gflop, synthetic, strict=True)]
        paths: dict[str, int] = {}
        for r in res["rows"]:
            full = [c[:2] == [256, 256] for c in r["calls"]]
            key = ("full field of view" if full == [True] else
                   f"{len(r['calls'])} crop call(s)" if not any(full) else "crops, then full field of view")
            paths[key] = paths.get(key, 0) + 1
        modes[mode] = {
            "tf_enable_onednn_opts": res["tf_enable_onednn_opts"], "crop": MODES[mode]["crop"],
            "window": MODES[mode]["window"],
            "cpu_s_per_participant": summary([r["cpu_s"] for r in synthetic]),
            "wall_s_per_participant": summary([r["wall_s"] for r in synthetic]),
            "gflop_per_participant": summary(gflop),
            "gflop_per_cpu_s": summary(rate),
            "matmul_peak_gflop_per_cpu_s": round(res["matmul_peak_gflop_per_cpu_s"], 2),
            "fraction_of_peak": round(statistics.median(rate) / res["matmul_peak_gflop_per_cpu_s"], 3),
            "real_study_cpu_s": round(next(r["cpu_s"] for r, m in zip(res["rows"], meta, strict=True)
                                          if m["real"]), 4),
            "calls_per_participant": paths,
            "peak_rss_mb": res["peak_rss_mb"],
            "per_participant": res["rows"],
        }
    before = modes["before"]["cpu_s_per_participant"]["median"]
    body = {
        "fidelity": "full", "participants": args.participants, "seed": args.seed, "repeats": args.repeats,
        "real_study": str(REAL_STUDY.relative_to(REPO)), "tf_threads": 1,
        "conv_gflop_full_field_of_view": {str(k): round(v, 2) for k, v in gflop_full.items()},
        "cost_fraction_of_before": {m: round(v["cpu_s_per_participant"]["median"] / before, 3)
                                    for m, v in modes.items()},
        "labels_vs_before": accuracy, "modes": modes,
    }
    record(argv, body, started, Path(args.out or RESULTS / "inference_speed.json"))
    print(json.dumps({m: v["cpu_s_per_participant"]["median"] for m, v in modes.items()}),
          "CPU-s per participant")
    return 0


# --- memory --------------------------------------------------------------------------------------------


def child_memory(kind: str, batch: int, crop: bool) -> dict[str, Any]:
    from beam_pipeline.inference import SavedModelHandler
    from lvmass.core import contracts
    from lvmass.core.model_input import ModelInput
    from lvmass.storage.models import bundled_model_dir

    handler = SavedModelHandler(bundled_model_dir(kind), kind=kind, max_batch_size=max(batch, 1),
                                **({} if crop else {"crop_policy": None}))
    model = handler.load_model()
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    # a per-slice model takes every slice: the longest stack the pipeline hands it is the worst case
    slices = model.card.tensor_slices or contracts.MAX_PER_SLICE_SLICES
    shape = (contracts.TENSOR_ROWS, contracts.TENSOR_COLS, slices, contracts.TENSOR_CHANNELS)
    examples = []
    for _ in range(batch):  # noise: no heart, so the crop path falls back to the whole field of view,
        # the most memory any participant can take (both crop passes, then serving_default)
        image = rng.standard_normal(shape).astype(np.float32)
        examples.append(ModelInput(image, np.float32([1.86, 1.86, 10.0])))
    list(handler.run_inference(examples, model))
    return {"kind": kind, "batch": batch, "crop": crop, "slices": slices,
            "rss_after_load_mb": round(after_load, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def memory(args: argparse.Namespace, argv: list[str]) -> int:
    from lvmass.core import contracts
    from lvmass.core.model_card import PROCESS_MEMORY_BUDGET_MB
    from lvmass.storage.models import bundled_model_dir, resolve_model_dir

    started = machine()
    tensor_mb = float(np.prod(contracts.TENSOR_SHAPE)) * 4 / 2**20
    floor_mb = round(2 * tensor_mb, 2)  # the example's tensor and its row of the stacked batch
    configs = [(contracts.MODEL_KIND_SEG, True), (contracts.MODEL_KIND_SEG, False),
               (contracts.MODEL_KIND_REG, True)]
    measured = {}
    for kind, crop in configs:
        points = []
        for batch in args.batch_sizes:
            points.append(run_child(["_child", "memory", kind, str(batch), "1" if crop else "0"],
                                    single_thread_env()))
            print(json.dumps(points[-1]), flush=True)
        sizes = np.array([p["batch"] for p in points], dtype=float)
        peaks = np.array([p["peak_rss_mb"] for p in points])
        slope = float(np.polyfit(sizes, peaks, 1)[0]) if len(points) > 1 else 0.0
        label = (kind if kind == contracts.MODEL_KIND_REG
                 else f"{kind}_{'crop' if crop else 'full_field_of_view'}")
        measured[label] = {"points": points, "slope_mb_per_example": round(slope, 2),
                           "peak_mb": points[0]["peak_rss_mb"] if points[0]["batch"] == 1 else None,
                           "per_example_mb": round(max(slope, floor_mb), 2)}
    estimates = {contracts.MODEL_KIND_SEG: measured[f"{contracts.MODEL_KIND_SEG}_crop"],
                 contracts.MODEL_KIND_REG: measured[contracts.MODEL_KIND_REG]}
    command = "python benchmarks/bench_inference.py " + " ".join(argv)
    cards_written = []
    if args.write_cards:
        if 1 not in args.batch_sizes:
            raise SystemExit("--write_cards needs batch size 1 among --batch_sizes")
        for kind, estimate in estimates.items():
            path = Path(resolve_model_dir(bundled_model_dir(kind))) / contracts.MODEL_CARD_FILENAME
            card = json.loads(path.read_text())
            card["inference_memory"] = {
                "peak_mb": estimate["peak_mb"], "per_example_mb": estimate["per_example_mb"],
                "what": "peak RSS of one process that loaded this model through the pipeline's handler and "
                        "ran one participant (peak_mb), and the RSS each further participant of a batch adds "
                        "(per_example_mb; at least the participant's tensor twice)",
                "command": command, "date": time.strftime("%Y-%m-%d", time.gmtime()),
                "machine": {"cpu_model": started["cpu_model"], "python": started["python"]}}
            path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
            cards_written.append(str(path.relative_to(REPO)))
    from lvmass.core.model_card import ModelCard, batch_size_for_memory

    cards = [ModelCard(kind=k, version="estimate", inference_memory={"peak_mb": e["peak_mb"],
                                                                    "per_example_mb": e["per_example_mb"]})
             for k, e in estimates.items()]
    body = {"batch_sizes": args.batch_sizes, "tf_threads": 1, "tensor_mb": round(tensor_mb, 2),
            "per_example_floor_mb": floor_mb, "process_budget_mb": PROCESS_MEMORY_BUDGET_MB,
            "default_batch_size_from_cards": batch_size_for_memory(cards), "measured": measured,
            "cards_written": cards_written}
    record(argv, body, started, Path(args.out or RESULTS / "inference_memory.json"))
    return 0


# --- start-up ------------------------------------------------------------------------------------------


def child_startup() -> dict[str, Any]:
    def timed(fn):
        cpu, wall = time.process_time(), time.perf_counter()
        value = fn()
        return value, round(time.process_time() - cpu, 3), round(time.perf_counter() - wall, 3)

    steps = {}
    _, *steps["import_beam_and_pipeline"] = timed(lambda: __import__("beam_pipeline.pipeline"))
    _, *steps["import_tensorflow"] = timed(lambda: __import__("tensorflow"))
    from beam_pipeline.inference import SavedModelHandler
    from lvmass.core import contracts
    from lvmass.core.decode import decode_participant_zip
    from lvmass.core.measure import participant_from_study
    from lvmass.storage.models import bundled_model_dir, read_model_card

    with REAL_STUDY.open("rb") as handle:  # a real participant, so ML4H_seg takes its usual path
        study = decode_participant_zip(handle, REAL_STUDY.name, with_inlinevf=False)
    grid_mm = read_model_card(bundled_model_dir(contracts.MODEL_KIND_SEG)).pixel_spacing_mm
    example = participant_from_study(study, with_inlinevf=False, grid_pixel_mm=grid_mm)
    for kind in (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG):
        handler = SavedModelHandler(bundled_model_dir(kind), kind=kind)
        model, *steps[f"load_{kind}"] = timed(handler.load_model)
        for call in ("first_call", "second_call"):
            _, *steps[f"{call}_{kind}"] = timed(
                lambda h=handler, m=model: list(h.run_inference([example], m)))
    return {k: {"cpu_s": v[0], "wall_s": v[1]} for k, v in steps.items()}


def startup(args: argparse.Namespace, argv: list[str]) -> int:
    started = machine()
    runs = [run_child(["_child", "startup"], single_thread_env()) for _ in range(args.repeats)]
    steps = {step: {"cpu_s": summary([r[step]["cpu_s"] for r in runs]),
                    "wall_s": summary([r[step]["wall_s"] for r in runs])} for step in runs[0]}
    cpu = {step: value["cpu_s"]["median"] for step, value in steps.items()}
    # fixed: everything but the steady-state calls; a first call costs a second call plus its tracing
    fixed = {"import_beam_and_pipeline": cpu["import_beam_and_pipeline"],
             "import_tensorflow": cpu["import_tensorflow"],
             **{f"load_{k}": cpu[f"load_{k}"] for k in ("ml4h_seg", "ml4h_reg")},
             **{f"first_call_overhead_{k}": round(cpu[f"first_call_{k}"] - cpu[f"second_call_{k}"], 3)
                for k in ("ml4h_seg", "ml4h_reg")}}
    total = sum(fixed.values())
    body = {"repeats": args.repeats, "tf_threads": 1, "participant": REAL_STUDY.name, "steps": steps,
            "fixed_cpu_s": fixed, "fixed_cpu_s_total": round(total, 3),
            "tensorflow_share_of_fixed": round((total - fixed["import_beam_and_pipeline"]) / total, 3),
            "runs": runs}
    record(argv, body, started, Path(args.out or RESULTS / "inference_startup.json"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        what = argv[1]
        if what == "speed":
            result = child_speed(argv[2], Path(argv[3]), Path(argv[4]), int(argv[5]))
        elif what == "memory":
            result = child_memory(argv[2], int(argv[3]), argv[4] == "1")
        else:
            result = child_startup()
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_inference.py",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed", help="CPU-s per participant, fraction of peak, labels vs before")
    p.add_argument("--participants", type=int, default=8, help="full-fidelity synthetic participants")
    p.add_argument("--seed", type=int, default=4242, help="cohort seed (never used in training)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per participant")
    p.add_argument("--cohort", default=None, help="keep / reuse the generated cohort here")
    p.add_argument("--out", default=None, help="result JSON (default: results/inference_speed.json)")
    p = sub.add_parser("memory", help="peak RSS per process by batch size; model-card estimates")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--write_cards", action="store_true", help="write inference_memory into the bundled cards")
    p.add_argument("--out", default=None, help="result JSON (default: results/inference_memory.json)")
    p = sub.add_parser("startup", help="fixed start-up of a worker process")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="result JSON (default: results/inference_startup.json)")
    args = parser.parse_args(argv)
    return {"speed": speed, "memory": memory, "startup": startup}[args.command](args, argv)


if __name__ == "__main__":
    sys.exit(main())
