"""CPU-seconds per participant of each pipeline stage, on full-fidelity synthetic participants.

The Dataflow recipe (``benchmarks/dataflow_cost.py``) is sized from these numbers: what a worker's cores
spend per participant on decode (zip, DICOM headers, the end-diastolic frames and InlineVF overlays),
the tensor (and InlineVF labels), ML4H_seg and ML4H_reg inference (the bundled SavedModels, through the
pipeline's own ``SavedModelHandler``) and InlineVF measurement. CPU time is this process's, all threads
included (TensorFlow uses every core), so it is the cost-relevant figure on a shared machine; wall time
is recorded beside it. TensorFlow runs with ``--tf_threads`` threads (default 1: ``TF_NUM_INTRAOP_THREADS``
and ``TF_NUM_INTEROP_THREADS``), as the Dataflow worker image sets it: Dataflow runs one SDK process per
vCPU, so one thread per process uses every core without oversubscribing it (spinning thread pools would
otherwise bill CPU for waiting). With ``--paper_seg`` the paper-size ML4H_seg (``--preset paper``, randomly
initialised: its speed does not depend on its weights) is timed too: that is the model a real UK Biobank
run serves, and the one that decides whether GPUs pay. It is timed after the bundled stages, which record
the peak memory of a pipeline process (``peak_rss_mb``); ``peak_rss_mb_with_paper_seg`` adds it.

``--paper_seg`` also times ML4H_seg as ml4h released it (``trainer.ml4h_arch``: the paper's sizes in ml4h's
own wiring, what ``lvmass import-ml4h`` exports; random weights), side by side on the same participants
through the pipeline's ``SavedModelHandler``, on the pixels as acquired (its card has no grid):

* ``ml4h_seg_released_whole``: the whole field of view (``--seg_field_of_view whole``, as the paper ran it);
* ``ml4h_seg_released_crop<N>``: the handler's first heart-centred crop of ``N`` px (``--paper_crop_px``,
  placed by the participant's InlineVF outlines as in the pipeline) through ``serving_window``, with its
  argmax and LV check: the cost of a participant whose LV the first crop holds. With random weights the
  handler would find no LV and fall back to the whole field of view, so only this first pass is timed.

For each crop, ``ml4h_seg_released.labels_vs_whole`` counts the kept window's voxels, and those of the heart
(the InlineVF cavity and myocardium, dilated by 5 px), whose label differs from the whole field of view's,
and the largest probability difference there.

    python benchmarks/bench_stages.py [--participants 4] [--tf_threads 1] [--paper_seg]
                                      [--paper_crop_px 128,192] [--out PATH]

Writes ``benchmarks/results/stage_cpu_seconds.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stage_cpu_seconds.json"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, CPU seconds of this process, wall seconds)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu0, time.perf_counter() - wall0


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4), "n": len(values)}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo): inference speed depends on it above all."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _he_init(model: Any, seed: int) -> None:
    """He-normal kernels and small biases: activations keep their scale through the 20 convolutions, so the
    softmax is decisive (as a trained model's is) and label comparisons are not dominated by ties."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv3D):
            kernel, bias = layer.get_weights()
            fan_in = int(np.prod(kernel.shape[:-1]))
            layer.set_weights([rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32),
                               rng.normal(0.0, 0.1, bias.shape).astype(np.float32)])


def _first_crop_pass(handler: Any, model: Any, participant: Any, crop_px: int) -> tuple[Any, Any, Any]:
    """The handler's first heart-centred crop for ``participant`` (``SavedModelHandler._segment_cropped``'s
    first iteration: the crop the InlineVF outlines place, ``serving_window``, argmax, the LV check) as a
    callable to time, and the window it takes."""
    import numpy as np

    from lvmass.core import contracts
    from lvmass.core.crop import CROP_MARGIN_PX, CropPolicy, crop_window, lv_box, lv_hint_box, window_around

    grid = contracts.LABEL_VOLUME_SHAPE[:2]
    align = int(model.card.crop_inference.align_px)
    hint = lv_hint_box(participant)
    window = (window_around(hint, crop_px=crop_px, margin_px=CROP_MARGIN_PX, grid=grid, align=align)
              if hint is not None else None) or crop_window((grid[0] / 2, grid[1] / 2), (crop_px, crop_px),
                                                            grid, align)
    image = np.asarray(participant.image, np.float32)[None]
    spacing = np.asarray(participant.spacing_mm, np.float32)[None]
    min_voxels = CropPolicy().min_voxels(spacing[0])

    def first_pass():
        kept, labels = handler._kept_labels(image, spacing, window, model)
        lv_box(labels, min_voxels=min_voxels)
        full = np.zeros(contracts.LABEL_VOLUME_SHAPE, np.uint8)
        full[kept.index] = labels
        return kept, labels

    return first_pass, window, (image, spacing)


def _probabilities(serve: Any, image: Any, spacing: Any) -> Any:
    import tensorflow as tf

    from lvmass.core import contracts

    outputs = serve(**{contracts.SIGNATURE_INPUT_IMAGE: tf.constant(image),
                       contracts.SIGNATURE_INPUT_SPACING: tf.constant(spacing)})
    return outputs[contracts.SIGNATURE_OUTPUT_PROBABILITIES].numpy()[0]


def _compare(labels: Any, kept: Any, window: Any, crop_model: Any, inputs: tuple[Any, Any], whole_labels: Any,
             whole_p: Any, heart: Any) -> dict[str, Any]:
    """The kept window's labels and probabilities against the whole field of view's, overall and on the
    heart."""
    import numpy as np

    image, spacing = inputs
    rows, cols = window.index
    crop_p = _probabilities(crop_model.serve_window, np.ascontiguousarray(image[:, rows, cols]), spacing)
    differs = labels != whole_labels[kept.index]
    on_heart = heart[kept.index]
    gap = np.abs(crop_p - whole_p[kept.index]).max(axis=-1)
    return {"kept_window_px": [kept.rows, kept.cols], "window_voxels": int(differs.size),
            "window_voxels_differing": int(differs.sum()), "heart_voxels": int(on_heart.sum()),
            "heart_voxels_outside_window": int(heart.sum() - on_heart.sum()),
            "heart_voxels_differing": int((differs & on_heart).sum()),
            "heart_max_abs_probability_difference": float(gap[on_heart].max()) if on_heart.any() else None,
            "window_max_abs_probability_difference": float(gap.max())}


def measure_released_seg(participants: list[Any], rows: list[dict[str, float]], *, crop_sizes: list[int],
                         workdir: str) -> dict[str, Any]:
    """Time ml4h's released ML4H_seg graph (module docstring) on ``participants`` (tensors on the acquired
    grid, with InlineVF labels) into ``rows``; return its size and the crops' labels against the whole field
    of view."""
    import numpy as np
    from scipy import ndimage

    from beam_pipeline.inference import SavedModelHandler
    from lvmass.core import contracts
    from lvmass.core.crop import CROP_MARGIN_PX, CropPolicy
    from lvmass.core.model_card import ModelCard
    from trainer import export, ml4h_arch

    net = ml4h_arch.build_ml4h_unet()
    _he_init(net, seed=0)
    model_dir = os.path.join(workdir, "ml4h_seg_released")
    card = ModelCard(kind=contracts.MODEL_KIND_SEG, version="bench-ml4h-released-random",
                     pixel_spacing_mm=None, notes="random weights, for timing (benchmarks/bench_stages.py)")
    export.export_model(net, kind=contracts.MODEL_KIND_SEG, export_dir=model_dir, card=card)
    kind = contracts.MODEL_KIND_SEG
    whole = SavedModelHandler(model_dir, kind=kind, max_batch_size=1, crop_policy=None)
    whole_model, load_cpu, _ = _timed(whole.load_model)
    crops = {n: SavedModelHandler(model_dir, kind=kind, max_batch_size=1, crop_policy=CropPolicy(crop_px=n))
             for n in crop_sizes}
    loaded = {n: handler.load_model() for n, handler in crops.items()}
    comparisons: list[dict[str, Any]] = []
    for row, participant in zip(rows, participants, strict=True):
        key = "ml4h_seg_released_whole"
        (prediction,), row[f"{key}_cpu_s"], row[f"{key}_wall_s"] = _timed(
            lambda p=participant: whole.run_inference([p], whole_model))
        heart = ndimage.binary_dilation(np.asarray(participant.inlinevf_labels) != contracts.BACKGROUND,
                                        structure=np.ones((3, 3, 1), bool), iterations=5)
        whole_labels = prediction.inference
        whole_p = _probabilities(whole_model.serve, np.asarray(participant.image, np.float32)[None],
                                 np.asarray(participant.spacing_mm, np.float32)[None])
        compared: dict[str, Any] = {}
        for n, handler in crops.items():
            first_pass, window, inputs = _first_crop_pass(handler, loaded[n], participant, n)
            key = f"ml4h_seg_released_crop{n}"
            (kept, labels), row[f"{key}_cpu_s"], row[f"{key}_wall_s"] = _timed(first_pass)
            compared[str(n)] = _compare(labels, kept, window, loaded[n], inputs, whole_labels, whole_p, heart)
        comparisons.append(compared)
        print(json.dumps({k: round(v, 3) for k, v in row.items() if k.startswith("ml4h_seg_released")}),
              flush=True)
    return {"parameters": int(net.count_params()),
            "align_px": int(whole_model.card.crop_inference.align_px),
            "receptive_field_px": int(whole_model.card.crop_inference.receptive_field_px),
            "window_margin_px": CROP_MARGIN_PX, "crop_px": crop_sizes, "model_load_cpu_s": round(load_cpu, 3),
            "weights": "random (He-normal), seed 0: speed does not depend on them",
            "grid": "pixels as acquired (the imported card has no pixel_spacing_mm)",
            "gpu": "not measured: no GPU was available in this session",
            "labels_vs_whole": comparisons}


def measure(zips: list[Path], *, paper_seg: bool, paper_crop_px: list[int] | None = None,
            workdir: str | None = None) -> dict[str, Any]:
    """Per-stage CPU and wall seconds for each zip (the first participant also warms up every stage and
    is left out of the statistics: model loading and graph tracing happen once per worker)."""
    import numpy as np

    from beam_pipeline.inference import SavedModelHandler
    from lvmass.core import contracts
    from lvmass.core.decode import DecodeRequest, decode_zip
    from lvmass.core.measure import measure_inlinevf, participant_from_study
    from lvmass.storage.models import bundled_model_dir, read_model_card

    handlers = {}
    load_s = {}
    for kind in (contracts.MODEL_KIND_SEG, contracts.MODEL_KIND_REG):
        model_dir = bundled_model_dir(kind)
        if model_dir is None:
            raise FileNotFoundError(f"no bundled {kind} model in this installation")
        handler = SavedModelHandler(model_dir, kind=kind, max_batch_size=1)
        model, cpu, _ = _timed(handler.load_model)
        handlers[kind] = (handler, model)
        load_s[kind] = round(cpu, 3)
    grid_mm = getattr(read_model_card(bundled_model_dir(contracts.MODEL_KIND_SEG)), "pixel_spacing_mm", None)

    rows: list[dict[str, float]] = []
    images = []
    acquired = []  # the same participants on the acquired grid, for ml4h's released graph (--paper_seg)
    for path in zips:
        row: dict[str, float] = {"zip_mb": path.stat().st_size / 1e6}

        def decode(path=path):
            with path.open("rb") as handle:
                return decode_zip(handle, DecodeRequest(path.name, with_inlinevf=True))

        decoded, row["decode_cpu_s"], row["decode_wall_s"] = _timed(decode)
        study = decoded.study
        row["bytes_read_mb"] = decoded.stats.bytes_read / 1e6
        participant, row["tensor_cpu_s"], row["tensor_wall_s"] = _timed(
            lambda study=study: participant_from_study(study, with_inlinevf=True, grid_pixel_mm=grid_mm))
        _, row["inlinevf_cpu_s"], row["inlinevf_wall_s"] = _timed(
            lambda participant=participant: measure_inlinevf(participant))
        for kind, label in ((contracts.MODEL_KIND_SEG, "ml4h_seg"), (contracts.MODEL_KIND_REG, "ml4h_reg")):
            handler, model = handlers[kind]
            _, row[f"{label}_cpu_s"], row[f"{label}_wall_s"] = _timed(
                lambda handler=handler, model=model, participant=participant:
                list(handler.run_inference([participant], model)))
        images.append(participant.image)
        if paper_seg:
            acquired.append(participant_from_study(study, with_inlinevf=True, grid_pixel_mm=None))
        rows.append(row)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    # what one SDK process of the pipeline needs: both bundled models, TensorFlow, one participant in flight
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if paper_seg:  # after the bundled stages, so that their peak memory is not the paper model's
        import tensorflow as tf

        from trainer import models

        net = models.build_ml4h_seg(models.seg_config("paper"))
        paper = tf.function(lambda x: net(x, training=False))
        paper_params = int(net.count_params())
        for row, image in zip(rows, images, strict=True):
            tensor = tf.constant(np.asarray(image, dtype=np.float32)[None])
            _, row["ml4h_seg_paper_cpu_s"], row["ml4h_seg_paper_wall_s"] = _timed(
                lambda tensor=tensor: tf.nest.map_structure(lambda t: t.numpy(), paper({"image": tensor})))
            print(json.dumps({"ml4h_seg_paper_cpu_s": round(row["ml4h_seg_paper_cpu_s"], 3)}), flush=True)
        del net, paper
        released = measure_released_seg(acquired, rows, crop_sizes=list(paper_crop_px or [128]),
                                        workdir=workdir or tempfile.mkdtemp(prefix="lvmass_bench_"))

    measured = rows[1:] if len(rows) > 1 else rows
    stages = sorted({k[:-6] for k in measured[0] if k.endswith("_cpu_s")})
    result: dict[str, Any] = {
        "participants_timed": len(measured),
        "warmup_participants": len(rows) - len(measured),
        "model_load_cpu_s": load_s,
        "tensor_grid_pixel_mm": grid_mm,
        "zip_mb": _summary([r["zip_mb"] for r in measured]),
        "bytes_read_mb": _summary([r["bytes_read_mb"] for r in measured]),
        "cpu_s_per_participant": {s: _summary([r[f"{s}_cpu_s"] for r in measured]) for s in stages},
        "wall_s_per_participant": {s: _summary([r[f"{s}_wall_s"] for r in measured]) for s in stages},
        "per_participant": rows,
    }
    result["peak_rss_mb"] = peak_rss_mb
    if paper_seg:
        result["ml4h_seg_paper_parameters"] = paper_params
        result["ml4h_seg_paper_wiring"] = "trainer.models build_ml4h_seg, preset paper (lvmass's own wiring)"
        result["ml4h_seg_released"] = released
        # the same process with the paper-size ML4H_seg too, on the whole field of view: its CPU recipe's need
        result["peak_rss_mb_with_paper_seg"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_stages.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=4, help="participants to time (first is warm-up)")
    parser.add_argument("--seed", type=int, default=11, help="synthetic cohort seed")
    parser.add_argument("--tf_threads", type=int, default=1,
                        help="TensorFlow intra-op and inter-op threads (default 1, as on the workers)")
    parser.add_argument("--paper_seg", action="store_true", help="also time the paper-size ML4H_seg")
    parser.add_argument("--paper_crop_px", default="128,192",
                        help="with --paper_seg: first-crop sizes (px, multiples of 8) to time ml4h's "
                             "released graph on, beside its whole field of view (default 128,192)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"result JSON (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.participants < 2:
        parser.error(f"--participants must be >= 2 (the first is a warm-up). Received: {args.participants}")
    if args.tf_threads < 1:
        parser.error(f"--tf_threads must be >= 1. Received: {args.tf_threads}")
    # read by TensorFlow when it starts (tensorflow/core/common_runtime/process_util.cc): set before import
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(args.tf_threads)
    os.environ["OMP_NUM_THREADS"] = str(args.tf_threads)

    from lvmass.synth.cohort import generate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_cohort(Path(tmp) / "cohort", participants=args.participants, seed=args.seed,
                                fidelity="full")
        zips = sorted(paths.zips_dir.glob("*.zip"))
        crop_sizes = [int(v) for v in args.paper_crop_px.split(",") if v.strip()]
        result = measure(zips, paper_seg=args.paper_seg, paper_crop_px=crop_sizes, workdir=tmp)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    record = {
        "command": f"python benchmarks/bench_stages.py {argv_text}".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "cpu_model": cpu_model(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "fidelity": "full",
        "tf_threads": args.tf_threads,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    cpu = record["cpu_s_per_participant"]
    print(" ".join(f"{stage}={v['median']:.3f}" for stage, v in cpu.items()),
          "CPU-s per participant (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
