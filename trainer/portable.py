"""Train ML4H_seg on any Keras backend (JAX, PyTorch), straight from participant zips, without TensorFlow.

Why: GPU images often carry JAX or PyTorch but not TensorFlow, and the TensorFlow trainer
(``trainer.task``, ``tf.data`` over TFRecords) is for Vertex AI. This path builds the very tensors and
InlineVF labels that ``--mode tensorize`` writes (the pipeline's pure ``decode`` / ``tensor`` / ``overlay``
functions), draws randomised crops with :func:`trainer.augmentation.augment_crop` on all CPU cores, fits the
same :func:`trainer.models.build_ml4h_seg` and writes backend-neutral weights. ``export`` (TensorFlow
installed) rebuilds the model from its recorded configuration, loads the weights and writes the pipeline's
SavedModel, ``model.keras`` and model card. As in the paper, training reads InlineVF labels and (for the
card's calibration) manual masses, never the generator's truth.

    KERAS_BACKEND=jax python -m trainer.portable fit --zips 'train/zips/*.zip' \\
        --validation_zips 'val/zips/*.zip' --out run --preset compact --max_train_seconds 300
    python -m trainer.portable export --run_dir run --export_dir beam_pipeline/models/ml4h_seg --synthetic

Zips that cannot be used (decode errors, no InlineVF contours) are listed with the reason in ``fit.json``
(``skipped``) and logged; the others still train.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import mmap
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core import contracts
from trainer.weights import load_weights, save_weights

LOG = logging.getLogger("trainer.portable")
WEIGHTS_FILENAME = "weights.npz"  # model.get_weights() in layer order: any backend, no optimizer state
FIT_FILENAME = "fit.json"
LOG_FILENAME = "training_log.csv"
ROWS, COLS, SLICES = contracts.TENSOR_SHAPE[:3]


@dataclass(frozen=True)
class Example:
    """One participant's contract tensor (first three axes) and InlineVF labels, plus what the card needs."""

    source: str
    eid: int
    spacing_mm: tuple[float, float, float]  # the tensor grid's voxel (grid pixel, grid pixel, slice)
    image: np.ndarray  # (rows, cols, slices) float32, z-scored, zero padding
    labels: np.ndarray  # (rows, cols, slices) uint8, contracts.LABEL_MAP
    acquired_pixel_spacing_mm: tuple[float, float] = (0.0, 0.0)


def load_example(path: str, *, grid_pixel_mm: float | None = None) -> Example:
    """Decode one zip the way the pipeline does and build its tensor and InlineVF label volume on the
    grid ``grid_pixel_mm`` (None: the pixels as acquired), exactly as the pipeline will at inference.

    Raises ValueError naming the file when it has no InlineVF contours (nothing to learn from)."""
    from lvmass.core.decode import decode_participant_zip
    from lvmass.core.overlay import inlinevf_labels
    from lvmass.core.tensor import build_image_tensor, build_label_volume

    with open(path, "rb") as handle:
        study = decode_participant_zip(handle, path)
    if not study.has_inlinevf:
        raise ValueError(f"{path}: no InlineVF contours to train ML4H_seg on")
    tensor = build_image_tensor(study, grid_pixel_mm=grid_pixel_mm)
    labels = build_label_volume(inlinevf_labels(study), slice_start=tensor.slice_start,
                                acquired_pixel_spacing_mm=study.pixel_spacing_mm, grid_pixel_mm=grid_pixel_mm)
    if not labels.any():
        raise ValueError(f"{path}: InlineVF contours give no labelled voxel in the tensor")
    if study.eid is None:
        raise ValueError(f"{path}: no eid in the file name or the DICOM PatientID")
    spacing = tuple(float(s) for s in (tensor.spacing_mm[0], tensor.spacing_mm[1], study.slice_spacing_mm))
    return Example(path, int(study.eid), spacing, tensor.image[..., 0], labels,  # type: ignore[arg-type]
                   acquired_pixel_spacing_mm=tuple(float(v) for v in study.pixel_spacing_mm))  # type: ignore[arg-type]


# --- shared-memory arrays filled by forked workers ----------------------------------------------------


def _shared(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in anonymous shared memory: forked workers write into it, the parent sees it."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


_STATE: dict[str, Any] = {}


def _map_unordered(function, tasks, workers: int, chunksize: int):
    """``function`` over ``tasks`` on ``workers`` forked processes (they inherit ``_STATE``), or in this
    process when ``workers <= 1``."""
    if workers <= 1:
        yield from map(function, tasks)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap_unordered(function, tasks, chunksize)


def _load_into(index_path: tuple[int, str]) -> tuple[int, dict[str, Any] | None, str | None]:
    index, path = index_path
    try:
        example = load_example(path, grid_pixel_mm=_STATE.get("grid_pixel_mm"))
    except Exception as exc:  # every failure is reported with its file and reason
        return index, None, f"{type(exc).__name__}: {exc}"
    _STATE["images"][index] = example.image.astype(np.float16)
    _STATE["labels"][index] = example.labels
    return index, {"source": path, "eid": example.eid, "spacing_mm": list(example.spacing_mm),
                   "acquired_pixel_spacing_mm": list(example.acquired_pixel_spacing_mm)}, None


def _augment_into(task: tuple[int, int, int]) -> None:
    from trainer.augmentation import augment_crop

    slot, base, seed = task
    rng = np.random.default_rng(seed)
    image, labels = augment_crop(
        _STATE["images"][base].astype(np.float32), _STATE["labels"][base], rng, _STATE["augment"],
        crop_px=_STATE["crop_px"],
    )
    _STATE["crops"][slot] = image.astype(np.float16)
    _STATE["crop_labels"][slot] = labels


def load_examples(
    paths: Sequence[str], workers: int, grid_pixel_mm: float | None = None
) -> tuple[np.ndarray, np.ndarray, list[dict], list[dict]]:
    """Tensors (float16) and labels of every usable zip on the grid ``grid_pixel_mm``, with their
    metadata, and the skipped ones."""
    images = _shared((len(paths), ROWS, COLS, SLICES), np.float16)
    labels = _shared((len(paths), ROWS, COLS, SLICES), np.uint8)
    _STATE.update(images=images, labels=labels, grid_pixel_mm=grid_pixel_mm)
    meta: list[dict | None] = [None] * len(paths)
    skipped = []
    for done, (index, info, error) in enumerate(_map_unordered(_load_into, enumerate(paths), workers, 4), 1):
        if error:
            LOG.warning("skipped %s: %s", paths[index], error)
            skipped.append({"source": paths[index], "reason": error})
        meta[index] = info
        if done % 200 == 0 or done == len(paths):
            LOG.info("decoded %d/%d zips (%d skipped)", done, len(paths), len(skipped))
    keep = [i for i, info in enumerate(meta) if info is not None]
    return images[keep], labels[keep], [meta[i] for i in keep], skipped


def augmented_crops(
    images: np.ndarray, labels: np.ndarray, *, per_example: int, crop_px: int, augment, seed: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_example`` randomised crops of every example (seeded per crop), drawn on ``workers`` cores."""
    n = len(images) * per_example
    crops = _shared((n, crop_px, crop_px, SLICES), np.float16)
    crop_labels = _shared((n, crop_px, crop_px, SLICES), np.uint8)
    _STATE.update(images=images, labels=labels, crops=crops, crop_labels=crop_labels, augment=augment,
                  crop_px=crop_px)
    seeds = np.random.SeedSequence(seed).generate_state(n)
    tasks = [(slot, slot % len(images), int(seeds[slot])) for slot in range(n)]
    started = time.perf_counter()
    for done, _ in enumerate(_map_unordered(_augment_into, tasks, workers, 16), 1):
        if done % 2000 == 0 or done == n:
            LOG.info("augmented %d/%d crops (%.0f s)", done, n, time.perf_counter() - started)
    return crops, crop_labels


def read_sex_and_manual_mass(paths: Sequence[str]) -> dict[int, tuple[str | None, float]]:
    """eid -> (sex, manual mass or NaN) from the ``phenotypes.csv`` beside each zips folder, if present."""
    from lvmass.core.phenotypes import read_phenotypes

    out: dict[int, tuple[str | None, float]] = {}
    for folder in sorted({os.path.dirname(os.path.dirname(os.path.abspath(p))) for p in paths}):
        csv_path = os.path.join(folder, "phenotypes.csv")
        if os.path.exists(csv_path):
            with open(csv_path, "rb") as handle:
                for eid, row in read_phenotypes(handle, source=csv_path).items():
                    manual = row.manual_lv_mass_g
                    out[eid] = (row.sex, float("nan") if manual is None else float(manual))
    return out


# --- fit --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m trainer.portable", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, help="fit (train) or export (SavedModel)")
    fit = sub.add_parser("fit", help="train ML4H_seg from participant zips on the current Keras backend")
    fit.add_argument("--zips", required=True, help="glob of training participant zips")
    fit.add_argument("--validation_zips", help="glob of validation zips (other participants)")
    fit.add_argument("--out", required=True, help="run folder: weights, fit.json, training_log.csv")
    fit.add_argument("--preset", default="compact", help="size preset of trainer.models (default compact)")
    fit.add_argument("--pixel_spacing_mm", type=float, default=contracts.DEFAULT_TENSOR_PIXEL_SPACING_MM,
                     help="the tensor grid's pixel size (mm) every slice is resampled to, recorded in the "
                     f"card for the pipeline (default {contracts.DEFAULT_TENSOR_PIXEL_SPACING_MM})")
    fit.add_argument("--crop_px", type=int, default=128, help="in-plane training crop (pixels)")
    fit.add_argument("--crops_per_participant", type=int, default=8,
                     help="augmented crops drawn per participant and epoch pool")
    fit.add_argument("--no_augment", action="store_true", help="plain crops, no domain randomisation")
    fit.add_argument("--batch_size", type=int, default=16, help="crops per step")
    fit.add_argument("--epochs", type=int, default=100, help="epochs (weights saved after each)")
    fit.add_argument("--steps_per_epoch", type=int, default=200, help="steps per epoch")
    fit.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate")
    fit.add_argument("--lr_decay_steps", type=int, default=1000, help="steps per learning-rate decay")
    fit.add_argument("--lr_decay_rate", type=float, default=0.75, help="exponential decay per lr_decay_steps")
    fit.add_argument("--max_train_seconds", type=float, default=float("inf"),
                     help="stop fitting after this much wall time (the weights reached so far are kept)")
    fit.add_argument("--train_until", type=float, default=float("inf"),
                     help="stop fitting at this Unix time (for leases of fixed length)")
    fit.add_argument("--seed", type=int, default=1, help="seed of crops, augmentation and weights")
    fit.add_argument("--initial_weights", default=None,
                     help="start from a previous run's weights.npz (same preset) and fine-tune")
    fit.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="processes decoding zips and drawing crops (default: all cores)")
    fit.add_argument("--data_source", default="", help="for the model card (e.g. the synth command)")
    export = sub.add_parser("export", help="(TensorFlow) write the SavedModel, model.keras and card")
    export.add_argument("--run_dir", required=True, help="a fit's run folder (--out)")
    export.add_argument("--export_dir", required=True, help="where the SavedModel, model.keras and card go")
    export.add_argument("--synthetic", action="store_true", help="the run trained on lvmass.synth data")
    export.add_argument("--version", default="", help="model version for the card (default: lvmass's)")
    export.add_argument("--earlier_run_dir", action="append", default=[],
                        help="a run this one fine-tuned from (its --initial_weights), oldest first")
    return parser


def _spacing_range(meta: Sequence[dict | None]) -> list[float] | None:
    """[min, max] acquired pixel size (mm) over the examples used: the card's training range."""
    values = [v for info in meta if info for v in info.get("acquired_pixel_spacing_mm", [])]
    return [float(min(values)), float(max(values))] if values else None


def _glob(pattern: str) -> list[str]:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"{pattern}: no participant zip matches this pattern")
    return paths


@dataclass(frozen=True)
class FitData:
    """What a fit trains and validates on: the augmented crops and their labels, the training examples'
    metadata, the zips left out (with why), the validation cohort, and the seconds it took."""

    crops: np.ndarray
    crop_labels: np.ndarray
    meta: list[dict]
    skipped: list[dict]
    validation: tuple | None
    validation_paths: list[str]
    augment: Any
    seconds: float


def _fit_data(args: argparse.Namespace) -> FitData:
    """Decode and augment, all before Keras starts its threads (workers are forked)."""
    from trainer.augmentation import AugmentConfig

    started = time.perf_counter()
    train_paths = _glob(args.zips)
    val_paths = _glob(args.validation_zips) if args.validation_zips else []
    images, labels, meta, skipped = load_examples(train_paths, args.workers, args.pixel_spacing_mm)
    if not meta:
        raise ValueError(f"{args.zips}: no usable training zip ({len(skipped)} skipped)")
    if len(meta) * args.crops_per_participant < args.batch_size:
        raise ValueError(f"{args.zips}: {len(meta)} usable zips x {args.crops_per_participant} crops is less "
                         f"than one batch of {args.batch_size}")
    val = load_examples(val_paths, args.workers, args.pixel_spacing_mm) if val_paths else None
    train_eids = {m["eid"] for m in meta}
    if val is not None and train_eids & {m["eid"] for m in val[2]}:
        raise ValueError("training and validation zips share participants")
    augment = None if args.no_augment else AugmentConfig()
    crops, crop_labels = augmented_crops(
        images, labels, per_example=args.crops_per_participant, crop_px=args.crop_px, augment=augment,
        seed=args.seed, workers=args.workers,
    )
    return FitData(crops, crop_labels, meta, skipped, val, val_paths, augment, time.perf_counter() - started)


def fit(args: argparse.Namespace) -> dict[str, Any]:
    """Decode, augment, fit (``trainer.fit``), validate, save the weights and ``fit.json``."""
    os.makedirs(args.out, exist_ok=True)
    data = _fit_data(args)

    import keras

    from trainer import models
    from trainer.fit import FitRequest, Schedule, fit_model

    keras.utils.set_random_seed(args.seed)
    config = models.seg_config(args.preset)
    weights_path = os.path.join(args.out, WEIGHTS_FILENAME)
    fitted = fit_model(
        lambda: models.build_ml4h_seg(config, fully_convolutional=True),
        FitRequest(
            data=crop_batches(data.crops, data.crop_labels, args.batch_size, args.steps_per_epoch,
                              seed=args.seed),
            epochs=args.epochs, verbose=2, initial_weights=args.initial_weights,
            schedule=Schedule(args.learning_rate, args.lr_decay_steps, args.lr_decay_rate),
            objective=lambda: (keras.losses.SparseCategoricalCrossentropy(), []),
            callbacks=[keras.callbacks.CSVLogger(os.path.join(args.out, LOG_FILENAME)),
                       save_and_stop(weights_path,
                                     stop_at=min(args.train_until, time.time() + args.max_train_seconds))]))
    save_weights(fitted.model, weights_path)
    validation: dict[str, Any] = {}
    if data.validation is not None:
        validation = validate(fitted.model, data.validation, read_sex_and_manual_mass(data.validation_paths))
        validation.pop("rows", None)
    summary = _fit_summary(args, config, data, fitted, validation)
    with open(os.path.join(args.out, FIT_FILENAME), "w") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True, default=_jsonable)
    LOG.info("fit done: %s", json.dumps(summary["validation"], default=_jsonable))
    return summary


def _fit_summary(args: argparse.Namespace, config: Any, data: FitData, fitted: Any,
                 validation: dict[str, Any]) -> dict[str, Any]:
    """``fit.json``: what ``export`` needs to rebuild the model and write its card."""
    import keras

    from trainer import models

    val = data.validation
    return {
        "kind": contracts.MODEL_KIND_SEG,
        "backend": keras.backend.backend(),
        "preset": args.preset,
        "architecture": models.config_to_dict(config),
        "training_data": {
            "source": args.data_source or args.zips,
            "train_participants": len(data.meta),
            "validation_participants": 0 if val is None else len(val[2]),
            "skipped": data.skipped + ([] if val is None else val[3]),
            "labels": "InlineVF contours",
            "pixel_spacing_mm": args.pixel_spacing_mm,
            "acquired_pixel_spacing_mm_range": _spacing_range(data.meta),
            "split": "separate validation cohort" if val is not None else "none",
            "seed": args.seed,
        },
        "hyperparameters": {
            "initial_weights": args.initial_weights,
            "optimizer": "adam", "learning_rate": args.learning_rate, "lr_decay_steps": args.lr_decay_steps,
            "lr_decay_rate": args.lr_decay_rate, "batch_size": args.batch_size, "crop_px": args.crop_px,
            "crops_per_participant": args.crops_per_participant, "epochs_requested": args.epochs,
            "epochs_run": fitted.epochs_run, "steps_per_epoch": args.steps_per_epoch,
            "max_train_seconds": args.max_train_seconds if math.isfinite(args.max_train_seconds) else None,
            "train_until_unix": args.train_until if math.isfinite(args.train_until) else None,
            "loss": "sparse_categorical_crossentropy",
            "augmentation": None if data.augment is None else data.augment.__dict__,
            "data_seconds": round(data.seconds, 1), "train_seconds": round(fitted.train_seconds, 1),
            "steps_run": int(keras.ops.convert_to_numpy(fitted.model.optimizer.iterations)),
        },
        "history": {k: [float(v) for v in vals] for k, vals in fitted.history.items()},
        "validation": validation,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def validate(model, val, phenotypes: dict[int, tuple[str | None, float]]) -> dict[str, Any]:
    """Full-tensor predictions on the validation cohort: Dice vs its InlineVF labels, mass agreement with
    its manual masses, per-sex means for the card's calibration (``trainer.evaluate.summarise``)."""
    from lvmass.core.mass import measure_label_volume
    from lvmass.core.metrics import label_dice
    from trainer import evaluate

    images, labels, meta, _ = val
    rows = []
    for start in range(0, len(meta), 4):
        batch = np.asarray(images[start : start + 4], dtype=np.float32)[..., None]
        began = time.perf_counter()
        probabilities = np.asarray(model.predict({contracts.SIGNATURE_INPUT_IMAGE: batch}, verbose=0))
        seconds = (time.perf_counter() - began) / len(batch)
        for i, predicted in enumerate(np.argmax(probabilities, axis=-1)):
            info = meta[start + i]
            sex, manual = phenotypes.get(info["eid"], (None, float("nan")))
            reference = labels[start + i]
            rows.append({
                "eid": info["eid"], "sex": sex, "manual_lv_mass_g": manual, "seconds": seconds,
                "label_mass_g": measure_label_volume(reference, info["spacing_mm"]).lv_mass_raw_g,
                "predicted_mass_g": measure_label_volume(predicted, info["spacing_mm"]).lv_mass_raw_g,
                "myocardium_dice": label_dice(predicted, reference),
            })
    return evaluate.summarise(rows, contracts.MODEL_KIND_SEG)


def crop_batches(crops: np.ndarray, labels: np.ndarray, batch_size: int, steps_per_epoch: int, *, seed: int):
    """A Keras ``PyDataset`` of ``steps_per_epoch`` float32 batches per epoch, walking through a seeded
    shuffle of the shared float16 crops and reshuffling once it has used them all."""
    import keras

    n = len(crops)

    class CropBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(n)
            self.start = 0

        def __len__(self) -> int:
            return steps_per_epoch

        def __getitem__(self, index: int):
            positions = self.start + index * batch_size + np.arange(batch_size)
            chosen = np.sort(self.order[positions % n])
            image = crops[chosen].astype(np.float32)[..., None]
            return {contracts.SIGNATURE_INPUT_IMAGE: image}, labels[chosen].astype(np.int32)

        def on_epoch_end(self) -> None:
            self.start += steps_per_epoch * batch_size
            if self.start >= n:
                self.order, self.start = self.rng.permutation(n), 0

    return CropBatches()


def save_and_stop(weights_path: str, *, stop_at: float):
    """A callback: save the weights after every epoch (a lease may end mid-run); stop at ``stop_at``
    (Unix time, checked after every batch)."""
    import keras

    class SaveAndStop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.time() > stop_at:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            save_weights(self.model, weights_path)

    return SaveAndStop()


# --- export (TensorFlow) ------------------------------------------------------------------------------


def export(args: argparse.Namespace) -> str:
    """Rebuild the fixed-shape model from ``fit.json``, load the weights, write the pipeline's export."""
    from lvmass import __version__
    from lvmass.core.model_card import ModelCard
    from trainer import export as exporter
    from trainer import models

    with open(os.path.join(args.run_dir, FIT_FILENAME)) as handle:
        summary = json.load(handle)
    if summary.get("kind") != contracts.MODEL_KIND_SEG:
        raise ValueError(f"{args.run_dir}: {FIT_FILENAME} is not an ML4H_seg run: {summary.get('kind')!r}")
    config = models.SegConfig(**summary["architecture"])
    model = models.build_ml4h_seg(config)
    load_weights(model, os.path.join(args.run_dir, WEIGHTS_FILENAME))
    validation = dict(summary.get("validation") or {})
    calibration = validation.pop("calibration", {})
    earlier = []
    for run_dir in args.earlier_run_dir:
        with open(os.path.join(run_dir, FIT_FILENAME)) as handle:
            stage = json.load(handle)
        if stage.get("architecture") != summary["architecture"]:
            raise ValueError(f"{run_dir}: earlier run has another architecture than {args.run_dir}")
        earlier.append({key: stage.get(key) for key in ("training_data", "hyperparameters", "history",
                                                        "validation", "backend")})
    if summary["hyperparameters"].get("initial_weights") and not earlier:
        raise ValueError(f"{args.run_dir} fine-tuned from {summary['hyperparameters']['initial_weights']}: "
                         "name that run with --earlier_run_dir so the card records all the training")
    card = ModelCard(
        kind=contracts.MODEL_KIND_SEG,
        version=args.version or __version__,
        training_data={**summary["training_data"],
                       **({"earlier_stages": [e["training_data"] for e in earlier]} if earlier else {})},
        hyperparameters={"architecture": summary["architecture"], "preset": summary["preset"],
                         "trainer": f"trainer.portable on Keras/{summary['backend']}",
                         **summary["hyperparameters"],
                         **({"earlier_stages": [e["hyperparameters"] for e in earlier]} if earlier else {})},
        metrics={"history": summary["history"], "validation": validation,
                 **({"earlier_stages": [{"history": e["history"], "validation": e["validation"]}
                                        for e in earlier]} if earlier else {})},
        calibration=calibration,
        pixel_spacing_mm=summary["training_data"].get("pixel_spacing_mm"),
        training_pixel_spacing_mm=summary["training_data"].get("acquired_pixel_spacing_mm_range"),
        trained_on_synthetic_data=bool(args.synthetic),
        notes=("Trained on SYNTHETIC data (lvmass.synth), not UK Biobank; retrain on real tensors before use."
               if args.synthetic else ""),
    )
    exporter.export_model(model, kind=contracts.MODEL_KIND_SEG, export_dir=args.export_dir, card=card)
    log = os.path.join(args.run_dir, LOG_FILENAME)
    if os.path.exists(log):
        with open(log) as src, open(os.path.join(args.export_dir, LOG_FILENAME), "w") as dst:
            dst.write(src.read())
    return args.export_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.command == "fit":
            fit(args)
        else:
            print(export(args))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
