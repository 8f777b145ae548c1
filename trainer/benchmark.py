"""Time ML4H models here: a train step (batch 1 and 4, full or cropped), inference per participant.

``python -m trainer.benchmark --model seg --preset cpu [--crop_px 128] [--model_dir EXPORT] [--repeats 3]``

With ``--model_dir`` the inference time is that of the exported SavedModel's serving signature (what the
pipeline runs); otherwise that of a freshly built model of the preset. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core import contracts


def _time(fn, repeats: int) -> float:
    fn()  # trace / warm up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def build_parser() -> ArgumentParser:
    """The ``python -m trainer.benchmark`` options."""
    p = ArgumentParser(prog="python -m trainer.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("seg", "reg"), default="seg", help="which model (default seg)")
    p.add_argument("--preset", choices=("paper", "cpu", "compact"), default="cpu", help="size preset")
    p.add_argument("--crop_px", type=int, default=None, help="seg training crop (as trainer.task)")
    p.add_argument("--model_dir", default=None, help="time this export's serving signature for inference")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement")
    p.add_argument("--batch_sizes", default="1,4", help="comma-separated batch sizes to time")
    p.add_argument("--record", default=None, help="also write the result, with the command and machine, here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.log_level)

    import keras
    import tensorflow as tf

    from trainer import models

    kind = contracts.MODEL_KIND_SEG if args.model == "seg" else contracts.MODEL_KIND_REG
    rng = np.random.default_rng(0)
    result = {"model": kind, "preset": args.preset, "cpu_count": os.cpu_count(),
              "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"), "train_step_s": {}}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        size = args.crop_px or contracts.TENSOR_ROWS
        image = rng.standard_normal((batch, size, size, contracts.TENSOR_SLICES, 1)).astype("float32")
        spacing = np.tile(np.float32([1.8, 1.8, 10.0]), (batch, 1))
        if kind == contracts.MODEL_KIND_SEG:
            model = models.build_ml4h_seg(models.seg_config(args.preset), fully_convolutional=True)
            inputs, target = {"image": image}, rng.integers(0, 3, image.shape[:-1]).astype("int32")
            model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy())
        else:
            model = models.build_ml4h_reg(models.reg_config(args.preset))
            inputs, target = {"image": image, "spacing_mm": spacing}, np.full((batch,), 90.0, "float32")
            model.compile(keras.optimizers.Adam(1e-3), keras.losses.LogCosh())
        result["train_step_s"][f"batch{batch}_{size}px"] = round(
            _time(lambda m=model, i=inputs, t=target: m.train_on_batch(i, t), args.repeats), 3)
    full = rng.standard_normal((1, *contracts.TENSOR_SHAPE)).astype("float32")
    spacing = np.float32([[1.8, 1.8, 10.0]])
    if args.model_dir:
        serve = tf.saved_model.load(args.model_dir).signatures[contracts.SERVING_SIGNATURE]
        infer = lambda: serve(image=tf.constant(full), spacing_mm=tf.constant(spacing))  # noqa: E731
        result["inference_source"] = args.model_dir
    else:
        net = (models.build_ml4h_seg(models.seg_config(args.preset)) if kind == contracts.MODEL_KIND_SEG
               else models.build_ml4h_reg(models.reg_config(args.preset)))
        inputs = {"image": full}
        if kind == contracts.MODEL_KIND_REG:
            inputs["spacing_mm"] = spacing
        fn = tf.function(lambda x: net(x, training=False))
        infer = lambda: fn(inputs)  # noqa: E731
        result["inference_source"] = "built preset"
    result["inference_s_per_participant"] = round(_time(infer, args.repeats), 3)
    if args.record:
        import platform
        import time

        argv_text = " ".join(sys.argv[1:] if argv is None else argv)
        result = {"command": f"python -m trainer.benchmark {argv_text}",
                  "date": time.strftime("%Y-%m-%d %H:%M"),
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "gpu": [d.name for d in tf.config.list_physical_devices("GPU")] or None},
                  "target_s_per_participant": 2.0, **result}
        with open(args.record, "w") as handle:
            handle.write(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
