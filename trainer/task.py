"""Train ML4H_seg / ML4H_reg on tensorized TFRecords and export them (a Vertex-AI-style entry point).

``python -m trainer.task --model seg --train_data 'gs://b/tfrecords/*.tfrecord' --job_dir gs://b/jobs/1``
(also ``lvmass train``). Vertex AI's environment wins over flags: ``AIP_MODEL_DIR`` (export),
``AIP_CHECKPOINT_DIR`` (BackupAndRestore + best checkpoint), ``AIP_TENSORBOARD_LOG_DIR``; the cluster comes
from ``TF_CONFIG`` or Vertex's ``CLUSTER_SPEC`` (MultiWorkerMirroredStrategy across workers; otherwise
MirroredStrategy across local GPUs; otherwise the default strategy). Only the chief exports.

Training follows the paper: Adam, initial learning rate 1e-3 with exponential decay, batch size 4;
ML4H_seg minimises per-voxel cross-entropy against InlineVF labels, ML4H_reg the log-cosh loss against
manual LV mass. Evaluation (validation and test splits) and the model card use full, unaugmented tensors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core import contracts
from lvmass.core.model_card import LABEL_SOURCE_INLINEVF, LABEL_SOURCE_MANUAL_MASS

KINDS = {"seg": contracts.MODEL_KIND_SEG, "reg": contracts.MODEL_KIND_REG}
# Vertex AI worker pools -> TF_CONFIG task types (Vertex AI docs, "Distributed training").
_WORKERPOOL_TYPES = {
    "workerpool0": "chief",
    "workerpool1": "worker",
    "workerpool2": "ps",
    "workerpool3": "evaluator",
}


# --- pure helpers: flags, environment, cluster ------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers. Received: {text!r}") from None


def _float_pair(text: str) -> list[float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected min,max in mm. Received: {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < min <= max. Received: {text!r}")
    return [low, high]


def grid_pixel_mm(files: Sequence[str]) -> float:
    """The tensor grid's in-plane pixel size the TFRecords were written on (``--mode tensorize`` puts
    every slice on one grid), read from the first example: the card tells the pipeline to use it."""
    from lvmass.storage.tfrecord import parse_example, record_dataset

    for serialized in record_dataset(list(files)).take(1):
        return float(parse_example(serialized)[contracts.FEATURE_SPACING].numpy()[0])
    raise ValueError(f"no training example in {list(files)[:3]}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="lvmass train",
                       description=__doc__.splitlines()[0] + " Also `python -m trainer.task`.")
    p.add_argument("--model", choices=sorted(KINDS), required=True, help="seg (ML4H_seg) or reg (ML4H_reg)")
    p.add_argument("--train_data", required=True, help="TFRecord glob(s), comma-separated, local or gs://")
    p.add_argument("--job_dir", default=None, help="output root (model/, checkpoints/, logs/)")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default 20; EarlyStopping may end sooner)")
    p.add_argument("--steps_per_epoch", type=int, default=None, help="default: training examples / batch")
    p.add_argument("--batch_size", type=int, default=4, help="paper: 4")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="paper: Adam 1e-3")
    p.add_argument("--lr_decay_steps", type=int, default=1000, help="steps per learning-rate decay")
    p.add_argument("--lr_decay_rate", type=float, default=0.9, help="exponential decay per lr_decay_steps")
    p.add_argument("--patience", type=int, default=5, help="EarlyStopping on the validation loss")
    p.add_argument("--holdout", default=None, help="file of eids never trained on (= test split)")
    p.add_argument("--validation_fraction", type=float, default=0.1,
                   help="share of eids (by hash) held out for validation")
    p.add_argument("--test_fraction", type=float, default=0.1,
                   help="share of eids (by hash) held out for the test split")
    p.add_argument("--preset", choices=("paper", "cpu", "compact"), default="paper", help="size preset")
    p.add_argument("--stem_filters", type=int, default=None, help="override the preset's stem filters")
    p.add_argument("--blocks", type=_int_list, default=None, help="filters per block, e.g. 32,32,32")
    p.add_argument("--convs_per_block", type=int, default=None, help="override the preset's convs per block")
    p.add_argument("--kernel_size", type=_int_list, default=None, help="e.g. 3,3,3")
    p.add_argument("--normalization", choices=("none", "batch", "layer"), default=None,
                   help="override the preset's normalisation layers")
    p.add_argument("--crop_px", type=int, default=None, help="ML4H_seg: train on in-plane crops of this size")
    p.add_argument("--no_augment", action="store_true", help="switch off domain randomisation")
    p.add_argument("--shuffle_buffer", type=int, default=64, help="tf.data shuffle buffer (examples)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, shuffling, augmentation, weights")
    p.add_argument("--max_eval_examples", type=int, default=None, help="cap validation/test examples")
    p.add_argument("--version", default=None, help="model version for the card (default: lvmass version)")
    p.add_argument("--data_source", default="", help="where the TFRecords came from, for the model card")
    p.add_argument("--synthetic", action="store_true", help="mark the model card: trained on synthetic data")
    p.add_argument("--verbose", type=int, default=2, help="Keras verbosity: 0 silent, 1 bar, 2 line/epoch")
    p.add_argument("--training_pixel_spacing_mm", type=_float_pair, default=None,
                   help="min,max acquired pixel size (mm) of the training data, for the model card "
                   "(results outside are flagged pixel_spacing_outside_training)")
    return p


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: Vertex's AIP_* variables override the ``--job_dir`` defaults."""

    model_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    log_dir: str


def resolve_paths(job_dir: str | None, environ: Mapping[str, str]) -> RunPaths:
    """``AIP_MODEL_DIR`` / ``AIP_CHECKPOINT_DIR`` / ``AIP_TENSORBOARD_LOG_DIR`` beat ``job_dir``."""
    model_dir = environ.get("AIP_MODEL_DIR") or (job_dir and os.path.join(job_dir, "model"))
    if not model_dir:
        raise ValueError("no output directory: pass --job_dir or set AIP_MODEL_DIR. Received neither")
    root = job_dir or os.path.dirname(model_dir.rstrip("/"))
    return RunPaths(
        model_dir=model_dir,
        checkpoint_dir=environ.get("AIP_CHECKPOINT_DIR") or os.path.join(root, "checkpoints"),
        tensorboard_dir=environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(root, "logs"),
        log_dir=root,
    )


def cluster_config(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The TF_CONFIG dict of this process: ``TF_CONFIG``, else translated from Vertex ``CLUSTER_SPEC``."""
    raw = environ.get("TF_CONFIG")
    source = "TF_CONFIG"
    if not raw:
        raw, source = environ.get("CLUSTER_SPEC"), "CLUSTER_SPEC"
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not JSON ({err}). Received: {raw[:200]!r}") from None
    if not isinstance(spec, dict) or "cluster" not in spec:
        raise ValueError(f"{source} must be a JSON object with a 'cluster'. Received: {raw[:200]!r}")
    if source == "CLUSTER_SPEC":
        cluster = {_WORKERPOOL_TYPES.get(k, k): v for k, v in spec["cluster"].items() if v}
        task = dict(spec.get("task", {}))
        task["type"] = _WORKERPOOL_TYPES.get(task.get("type", "workerpool0"), task.get("type"))
        spec = {"cluster": cluster, "task": {"type": task["type"], "index": int(task.get("index", 0))}}
    return spec


def strategy_kind(tf_config: Mapping[str, Any] | None, n_gpus: int) -> str:
    """``multi_worker`` when the cluster has several chief/worker tasks, ``mirrored`` for several local
    GPUs, else ``default``."""
    if tf_config:
        cluster = tf_config.get("cluster", {})
        n_workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        if n_workers > 1:
            return "multi_worker"
    return "mirrored" if n_gpus > 1 else "default"


def is_chief(tf_config: Mapping[str, Any] | None) -> bool:
    """The chief writes the export: task ``chief``, or worker 0 of a cluster without a chief."""
    if not tf_config:
        return True
    task = tf_config.get("task", {})
    task_type, index = task.get("type"), int(task.get("index", 0))
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {})


def make_strategy(kind: str):
    import tensorflow as tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def model_config(args: argparse.Namespace):
    """The architecture config from ``--preset`` and the size flags."""
    from trainer import models

    common = {
        "stem_filters": args.stem_filters,
        "convs_per_block": args.convs_per_block,
        "kernel_size": args.kernel_size,
        "normalization": args.normalization,
    }
    if KINDS[args.model] == contracts.MODEL_KIND_SEG:
        return models.seg_config(args.preset, dense_blocks=args.blocks, **common)
    return models.reg_config(args.preset, conv_blocks=args.blocks, **common)


# --- training ---------------------------------------------------------------------------------------


def _mass_target_stats(files: Sequence[str], spec) -> tuple[float, float, float]:
    """Mean and sd of manual mass (g) and mean relative voxel volume over the training split."""
    import numpy as np
    import tensorflow as tf

    from lvmass.storage.tfrecord import feature_spec, record_dataset
    from trainer import data
    from trainer.models import REFERENCE_SPACING_MM

    keys = (contracts.FEATURE_EID, contracts.FEATURE_MANUAL_MASS, contracts.FEATURE_HAS_MANUAL_MASS,
            contracts.FEATURE_SPACING)
    scalars = {k: v for k, v in feature_spec().items() if k in keys}
    ds = record_dataset(list(files)).map(lambda s: tf.io.parse_single_example(s, scalars))
    ds = ds.filter(lambda ex: data.in_split(ex[contracts.FEATURE_EID], "train", spec))
    ds = ds.filter(lambda ex: tf.equal(ex[contracts.FEATURE_HAS_MANUAL_MASS], 1))
    masses, volumes = [], []
    for ex in ds.as_numpy_iterator():
        masses.append(float(ex[contracts.FEATURE_MANUAL_MASS]))
        volumes.append(float(np.prod(ex[contracts.FEATURE_SPACING] / np.asarray(REFERENCE_SPACING_MM))))
    if not masses:
        raise ValueError(f"{','.join(files)}: no training example has a manual LV mass (ML4H_reg needs them)")
    sd = float(np.std(masses)) if len(masses) > 1 else 20.0
    return float(np.mean(masses)), max(sd, 1.0), float(np.mean(volumes))


def _callbacks(paths: RunPaths, *, monitor: str, patience: int, chief: bool, task_index: int):
    import keras

    checkpoint_dir = paths.checkpoint_dir
    if not chief:
        checkpoint_dir = os.path.join(paths.checkpoint_dir, f"worker{task_index}")
    return [
        keras.callbacks.BackupAndRestore(os.path.join(checkpoint_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, "best.weights.h5"), monitor=monitor, save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(os.path.join(paths.log_dir, "training_log.csv")),
        keras.callbacks.TensorBoard(paths.tensorboard_dir, update_freq="epoch"),
    ]


@dataclass(frozen=True)
class Cluster:
    """Where this process trains: its paths, the cluster's TF_CONFIG, whether it is the chief (which
    exports), its task index and the distribution strategy."""

    paths: RunPaths
    tf_config: dict[str, Any] | None
    chief: bool
    task_index: int
    strategy: Any


def _cluster(args: argparse.Namespace, environ: Mapping[str, str]) -> Cluster:
    import tensorflow as tf

    paths = resolve_paths(args.job_dir, environ)
    tf_config = cluster_config(environ)
    if tf_config is not None and "TF_CONFIG" not in os.environ:
        os.environ["TF_CONFIG"] = json.dumps(tf_config)  # MultiWorkerMirroredStrategy reads it
    strategy = make_strategy(strategy_kind(tf_config, len(tf.config.list_physical_devices("GPU"))))
    task_index = int((tf_config or {}).get("task", {}).get("index", 0))
    return Cluster(paths, tf_config, is_chief(tf_config), task_index, strategy)


@dataclass(frozen=True)
class TrainingData:
    """The run's TFRecords, split by eid hash (or a holdout file), with each split's example count; the
    training and validation datasets; the steps per epoch and the global batch."""

    files: list[str]
    spec: Any
    counts: dict[str, int]
    train: Any
    validation: Any
    steps_per_epoch: int
    global_batch: int
    augment_config: Any
    crop_px: int | None


def _training_data(args: argparse.Namespace, kind: str, replicas: int) -> TrainingData:
    from trainer import data

    files = data.list_files(args.train_data)
    holdout = tuple(int(e) for e in data.read_holdout_eids(args.holdout)) if args.holdout else None
    spec = data.SplitSpec(args.validation_fraction, args.test_fraction, holdout)
    counts = {s: data.count_examples(files, kind=kind, split=s, spec=spec) for s in data.SPLITS}
    if counts["train"] == 0:
        raise ValueError(f"{args.train_data}: no usable {kind} training examples after the split: {counts}")
    crop = args.crop_px if kind == contracts.MODEL_KIND_SEG else None
    augment_config = None if args.no_augment else data.AugmentConfig()
    global_batch = args.batch_size * replicas
    steps = args.steps_per_epoch or max(1, math.ceil(counts["train"] / global_batch))
    train_ds = data.make_dataset(
        files, kind=kind, split="train", spec=spec, batch_size=global_batch, training=True, seed=args.seed,
        augment_config=augment_config, crop_px=crop, shuffle_buffer=args.shuffle_buffer,
    )
    val_ds = None
    if counts["validation"]:
        val_ds = data.make_dataset(files, kind=kind, split="validation", spec=spec, batch_size=global_batch,
                                   training=False)
        if args.max_eval_examples:
            val_ds = val_ds.take(math.ceil(args.max_eval_examples / global_batch))
    return TrainingData(files, spec, counts, train_ds, val_ds, steps, global_batch, augment_config, crop)


def _objective(kind: str) -> tuple[Any, list[Any]]:
    """The paper's loss and the reported metric: cross-entropy and myocardium Dice for ML4H_seg, log-cosh
    and MAE (g) for ML4H_reg."""
    import keras

    if kind == contracts.MODEL_KIND_SEG:
        from trainer.metrics import MyocardiumDice

        return keras.losses.SparseCategoricalCrossentropy(), [MyocardiumDice()]
    return keras.losses.LogCosh(), [keras.metrics.MeanAbsoluteError(name="mae_g")]


def train(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """Fit, evaluate and (on the chief) export. Returns a summary (paths, counts, metrics)."""
    import keras
    import tensorflow as tf

    from trainer import export, models
    from trainer.fit import FitRequest, Schedule, fit_model

    kind = KINDS[args.model]
    is_seg = kind == contracts.MODEL_KIND_SEG
    cluster = _cluster(args, environ)
    keras.utils.set_random_seed(args.seed)
    data = _training_data(args, kind, cluster.strategy.num_replicas_in_sync)
    config = model_config(args)
    if not is_seg:
        mean_g, sd_g, volume_rel = _mass_target_stats(data.files, data.spec)
        config = models.RegConfig(**{**config.__dict__, "mass_offset_g": mean_g / volume_rel,
                                     "mass_scale_g": sd_g / volume_rel})
    monitor = "val_loss" if data.validation is not None else "loss"
    tf.io.gfile.makedirs(cluster.paths.log_dir)
    fitted = fit_model(
        lambda: (models.build_ml4h_seg(config, fully_convolutional=True) if is_seg
                 else models.build_ml4h_reg(config)),
        FitRequest(data=data.train, epochs=args.epochs, steps_per_epoch=data.steps_per_epoch,
                   validation_data=data.validation, verbose=args.verbose,
                   schedule=Schedule(args.learning_rate, args.lr_decay_steps, args.lr_decay_rate),
                   objective=lambda: _objective(kind), scope=cluster.strategy.scope,
                   callbacks=_callbacks(cluster.paths, monitor=monitor, patience=args.patience,
                                        chief=cluster.chief, task_index=cluster.task_index)))
    # A fixed-shape copy for export: the contract's (256, 256, 13, 1) input.
    final = models.build_ml4h_seg(config) if is_seg else models.build_ml4h_reg(config)
    final.set_weights(fitted.model.get_weights())
    split_metrics = _evaluate_splits(final, kind, data, args.max_eval_examples)
    card = _model_card(args, kind, config, data, fitted, split_metrics, cluster.strategy.num_replicas_in_sync)
    if cluster.chief:
        export.export_model(final, kind=kind, export_dir=cluster.paths.model_dir, card=card)
    return {"model_dir": cluster.paths.model_dir, "chief": cluster.chief, "counts": data.counts,
            "metrics": card.metrics}


def _evaluate_splits(final: Any, kind: str, data: TrainingData, limit: int | None) -> dict[str, dict]:
    """Full, unaugmented tensors of the validation and test splits through the fixed-shape model."""
    from trainer import evaluate

    predict = evaluate.keras_predictor(final, kind)
    return {split: evaluate.evaluate_records(predict, data.files, kind=kind, split=split, spec=data.spec,
                                             limit=limit)
            for split in ("validation", "test") if data.counts[split]}


def _model_card(args: argparse.Namespace, kind: str, config: Any, data: TrainingData, fitted: Any,
                split_metrics: dict[str, dict], replicas: int) -> Any:
    """The exported model's card: data, hyperparameters, history and split metrics, calibration."""
    from lvmass import __version__
    from lvmass.core.model_card import ModelCard
    from trainer import models

    is_seg = kind == contracts.MODEL_KIND_SEG
    holdout = bool(args.holdout)
    calibration = split_metrics.get("validation", {}).get("calibration", {}) if is_seg else {}
    return ModelCard(
        kind=kind,
        version=args.version or __version__,
        training_data={
            "source": args.data_source or args.train_data,
            "files": len(data.files),
            "examples": data.counts,
            "split": {"method": "holdout_file" if holdout else "eid_farmhash",
                      "validation_fraction": args.validation_fraction, "test_fraction": args.test_fraction,
                      "holdout_file": args.holdout},
            "labels": "InlineVF contours" if is_seg else "manual LV mass (g)",
            "seed": args.seed,
        },
        hyperparameters={
            "architecture": models.config_to_dict(config),
            "preset": args.preset,
            "epochs_requested": args.epochs,
            "epochs_run": fitted.epochs_run,
            "steps_per_epoch": data.steps_per_epoch,
            "batch_size": args.batch_size,
            "global_batch_size": data.global_batch,
            "optimizer": "adam",
            "learning_rate": args.learning_rate,
            "lr_decay_steps": args.lr_decay_steps,
            "lr_decay_rate": args.lr_decay_rate,
            "loss": "sparse_categorical_crossentropy" if is_seg else "log_cosh",
            "augmentation": None if data.augment_config is None else data.augment_config.__dict__,
            "crop_px": data.crop_px,
            "replicas": replicas,
            "train_seconds": round(fitted.train_seconds, 1),
        },
        metrics={"history": {k: [float(v) for v in vals] for k, vals in fitted.history.items()},
                 **{s: {k: v for k, v in m.items() if k != "calibration"} for s, m in split_metrics.items()}},
        calibration=calibration,
        pixel_spacing_mm=grid_pixel_mm(data.files),
        training_pixel_spacing_mm=args.training_pixel_spacing_mm,
        label_source=LABEL_SOURCE_INLINEVF if is_seg else LABEL_SOURCE_MANUAL_MASS,
        trained_on_synthetic_data=bool(args.synthetic),
        notes=("Trained on SYNTHETIC data (lvmass.synth), not UK Biobank; retrain on real tensors before use."
               if args.synthetic else ""),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.log_level)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            print(f"trainer: --{name} must be >= 1. Received: {getattr(args, name)}", file=sys.stderr)
            return 2
    try:
        summary = train(args, os.environ)
    except (ValueError, FileNotFoundError) as err:
        print(f"trainer: {err}", file=sys.stderr)
        return 1
    printable = {k: v for k, v in summary.items() if k != "metrics"}
    printable["metrics"] = {k: v for k, v in summary["metrics"].items() if k != "history"}
    print(json.dumps(printable, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
