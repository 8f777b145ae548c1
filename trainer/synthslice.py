"""Train the default ML4H_seg and ML4H_reg on synthetic slices, on a CPU, resumably; export them.

The recipe (``docs/training.md``, "The default models"): per-slice 2-D networks (:mod:`trainer.slice_models`)
learn from an endless stream of random short-axis slices (:mod:`trainer.slice_stream`, drawn by
:mod:`lvmass.synth.slice_scene` and :mod:`lvmass.synth.slice_image`), never from a real image. ``seg``
learns the true anatomy (soft Dice plus cross-entropy); ``reg`` learns each crop's true myocardial area (a
counting network; no labels). ``--task both`` trains the two on the very same batches, so the stream,
the expensive part, is drawn once.

**Resumable.** A run folder holds ``checkpoint.npz``: every model's weights and optimizer state, the step,
the run's configuration and its history, written atomically every ``--checkpoint_every`` steps. ``fit`` on
a folder that has one goes on from it with the same batches it would have seen (the stream is a function of
the step), until ``--steps``; ``--max_train_seconds`` or ``--stop_at_step`` end an invocation early, cleanly,
so a run can be cut into pieces that fit a session. ``--init_from`` starts a new run from the weights of
another checkpoint or of an export (``slice_model.keras``).

    python -m trainer.synthslice fit --run_dir runs/default --task both --steps 16000 --workers 1
    python -m trainer.synthslice export --run_dir runs/default --task seg --export_dir my_ml4h_seg
    python -m trainer.synthslice export --run_dir runs/default --task reg --export_dir my_ml4h_reg
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvmass.core.metrics import mask_dice
from lvmass.core.postprocess import LV_WITH_CLOSED_RINGS
from lvmass.synth import slice_image as si
from lvmass.synth import slice_scene as ss
from trainer.slice_stream import ExampleStream, StreamConfig, validation_examples

LOG = logging.getLogger("trainer.synthslice")
CHECKPOINT = "checkpoint.npz"
LOG_FILE = "training_log.csv"
SNAPSHOTS = "snapshots"
SEG, REG = "seg", "reg"
TASKS = (SEG, REG, "both")
RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a run (stored in its checkpoint; a resumed run keeps it)."""

    task: str = SEG
    base_filters: int = 16  # ML4H_seg's U-Net
    levels: int = 4
    reg_base_filters: int = 16  # ML4H_reg's counting network
    reg_levels: int = 4
    reg_input_pool: int = 2
    steps: int = 20000
    learning_rate: float = 1e-3
    final_learning_rate: float = 2e-5
    warmup_steps: int = 300
    dice_weight: float = 1.0
    stream: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}. Received: {self.task!r}")

    @property
    def models(self) -> tuple[str, ...]:
        """The models this run trains: ``("seg",)``, ``("reg",)`` or both."""
        return (SEG, REG) if self.task == "both" else (self.task,)

    def learning_rate_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``final_learning_rate`` at ``steps``."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.final_learning_rate + 0.5 * (self.learning_rate - self.final_learning_rate) * (
            1.0 + math.cos(math.pi * progress)
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FitConfig:
        data = json.loads(text)
        stream = dict(data.pop("stream"))

        def ranges(kind: Any, values: dict[str, Any]) -> Any:
            known = {f.name for f in dataclasses.fields(kind)}
            return kind(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
            )

        scene = ranges(ss.SceneRanges, stream.pop("scene"))
        # runs recorded before the experts' endocardium was an option drew the truth as drawn
        appearance = ranges(si.AppearanceRanges, {"experts_endocardium": 0.0, **stream.pop("appearance")})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            stream=StreamConfig(**stream, scene=scene, appearance=appearance),
        )


def build_model(config: FitConfig, which: str | None = None) -> Any:
    """The untrained network ``which`` (``seg`` or ``reg``; default the run's only model)."""
    from trainer.slice_models import CounterConfig, UNetConfig, build_area_counter, build_slice_unet

    which = which or config.models[0]
    if which == SEG:
        return build_slice_unet(UNetConfig(config.base_filters, config.levels))
    return build_area_counter(
        CounterConfig(config.reg_base_filters, config.reg_levels, config.reg_input_pool)
    )


# --- Checkpoints ------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What a checkpoint holds besides the weights: the step, training seconds so far, history rows."""

    step: int = 0
    train_seconds: float = 0.0
    samples_drawn: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    invocations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Checkpoint:
    """A run's file: its configuration and state, and per model its weights and optimizer variables."""

    config: FitConfig
    state: RunState
    weights: dict[str, list[np.ndarray]]
    optimizer: dict[str, list[np.ndarray]]


def save_checkpoint(
    path: Path, config: FitConfig, models: dict[str, Any], optimizers: dict[str, Any], state: RunState
) -> None:
    """Write the run's weights, optimizer states, configuration and state to ``path`` atomically."""
    arrays: dict[str, np.ndarray] = {
        "config_json": np.array(config.to_json()),
        "state_json": np.array(json.dumps(dataclasses.asdict(state))),
    }
    for name, model in models.items():
        arrays.update({f"{name}.w{i}": np.asarray(v) for i, v in enumerate(model.get_weights())})
        arrays.update(
            {f"{name}.o{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizers[name].variables)}
        )
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint file (a run folder's ``checkpoint.npz``)."""
    with np.load(path) as data:
        config = FitConfig.from_json(str(data["config_json"]))
        state = RunState(**json.loads(str(data["state_json"])))

        def arrays(prefix: str) -> list[np.ndarray]:
            count = sum(1 for k in data.files if k.startswith(prefix))
            return [data[f"{prefix}{i}"] for i in range(count)]

        if f"{config.models[0]}.w0" not in data.files:  # a single-model checkpoint of the first format
            return Checkpoint(config, state, {config.models[0]: arrays("w")}, {config.models[0]: arrays("o")})
        weights = {name: arrays(f"{name}.w") for name in config.models}
        optimizer = {name: arrays(f"{name}.o") for name in config.models}
    return Checkpoint(config, state, weights, optimizer)


def average_checkpoints(
    sources: Sequence[str | Path], out: Path, *, validation_samples: int = 0
) -> Checkpoint:
    """One checkpoint whose weights are the mean of ``sources``' (snapshots along one run: stochastic weight
    averaging, Izmailov et al. 2018, densely over the run as SWAD does, Cha et al. 2021; batch
    normalisation's moving statistics averaged alike), written to ``out``; the configuration, state and
    optimizer are the last source's, so the file stays a checkpoint every command reads. Why: a mean of
    weights along a trajectory lies in a flatter region of the loss, which matters most under a shift of
    domain: from synthetic slices to a real scanner's, the mean beats every one of its snapshots while on
    held-out synthetic slices it only equals them.
    With ``validation_samples``, both the mean and the last source are scored on held-out synthetic slices
    (never real ones) and the mean's scores become the state's last history row (the card reports them)."""
    if len(sources) < 2:
        raise ValueError(f"averaging needs at least two checkpoints. Received {len(sources)}")
    checkpoints = [read_checkpoint(checkpoint_path(s)) for s in sources]
    last = checkpoints[-1]
    for source, checkpoint in zip(sources, checkpoints, strict=True):
        if checkpoint.config.models != last.config.models or any(
            [w.shape for w in checkpoint.weights[name]] != [w.shape for w in last.weights[name]]
            for name in last.config.models
        ):
            raise ValueError(
                f"{source}: its models differ from {sources[-1]}'s; only snapshots of one run average"
            )
    weights = {
        name: [
            np.mean([c.weights[name][i] for c in checkpoints], axis=0).astype(w.dtype)
            for i, w in enumerate(last.weights[name])
        ]
        for name in last.config.models
    }
    steps = [c.state.step for c in checkpoints]
    state = dataclasses.replace(last.state, history=list(last.state.history))
    row: dict[str, Any] = {"step": last.state.step, "averaged_steps": steps}
    if validation_samples:
        examples = validation_examples(last.config.stream, validation_samples)
        for name in last.config.models:
            model = build_model(last.config, name)
            model.set_weights(last.weights[name])
            for key, value in validate(name, model, examples, last.config).items():
                row[f"last_{key}"] = value
            model.set_weights(weights[name])
            row.update(validate(name, model, examples, last.config))
        row["validation_samples"] = validation_samples
    state.history.append(row)
    averaged = Checkpoint(last.config, state, weights, last.optimizer)
    arrays: dict[str, np.ndarray] = {
        "config_json": np.array(last.config.to_json()),
        "state_json": np.array(json.dumps(dataclasses.asdict(state))),
    }
    for name in last.config.models:
        arrays.update({f"{name}.w{i}": w for i, w in enumerate(weights[name])})
        arrays.update({f"{name}.o{i}": o for i, o in enumerate(last.optimizer[name])})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    LOG.info("averaged steps %s into %s: %s", steps, out, row)
    return averaged


def checkpoint_path(source: str | Path) -> Path:
    path = Path(source)
    return path / CHECKPOINT if path.is_dir() else path


def trained_model(source: str | Path, which: str | None = None) -> tuple[Any, FitConfig]:
    """The network ``which`` of a run folder or checkpoint, with its trained weights; the run's config."""
    checkpoint = read_checkpoint(checkpoint_path(source))
    which = which or checkpoint.config.models[0]
    if which not in checkpoint.config.models:
        raise ValueError(f"{source}: the run trained {checkpoint.config.models}, not {which!r}")
    model = build_model(checkpoint.config, which)
    model.set_weights(checkpoint.weights[which])
    return model, checkpoint.config


def load_model_weights(model: Any, source: str, which: str) -> None:
    """Weights from a checkpoint (``.npz``), a run folder or an export folder (``slice_model.keras``)."""
    import keras

    path = Path(source)
    if path.suffix == ".npz" or (path / CHECKPOINT).exists():
        model.set_weights(read_checkpoint(checkpoint_path(path)).weights[which])
    else:
        model.set_weights(keras.models.load_model(path / SLICE_MODEL_FILENAME, compile=False).get_weights())


# --- Training ----------------------------------------------------------------------------------------


def _loss(which: str, config: FitConfig) -> Any:
    import tensorflow as tf

    grid_area = config.stream.grid_mm**2

    def seg_loss(labels: Any, probabilities: Any) -> Any:
        onehot = tf.one_hot(tf.cast(labels, tf.int32), 3)
        ce = -tf.reduce_mean(tf.reduce_sum(onehot * tf.math.log(probabilities + 1e-7), axis=-1))
        inter = tf.reduce_sum(onehot * probabilities, axis=(0, 1, 2))
        total = tf.reduce_sum(onehot + probabilities, axis=(0, 1, 2))
        dice = (2.0 * inter[1:] + 1.0) / (total[1:] + 1.0)
        return ce + config.dice_weight * (1.0 - tf.reduce_mean(dice))

    def reg_loss(areas_mm2: Any, density: Any) -> Any:
        predicted = tf.reduce_sum(density, axis=(1, 2, 3)) * grid_area
        return tf.reduce_mean(
            tf.keras.losses.huber(areas_mm2[:, None] / 1000.0, predicted[:, None] / 1000.0, delta=0.5)
        )

    return seg_loss if which == SEG else reg_loss


def validate(which: str, model: Any, examples: Sequence[Any], config: FitConfig) -> dict[str, float]:
    """Synthetic validation: cavity and myocardium Dice over all examples and the area error (seg), the
    counted area's error (reg, keys prefixed ``reg_``)."""
    images = np.stack([e.image for e in examples])[..., None]
    out = model.predict(images, batch_size=16, verbose=0)
    areas = np.array([e.area_mm2 for e in examples])
    grid_area = config.stream.grid_mm**2
    if which == REG:
        return {"reg_val_area_mae_mm2": float(np.mean(np.abs(out.sum(axis=(1, 2, 3)) * grid_area - areas)))}
    labels = np.stack([e.labels for e in examples])
    predicted = np.argmax(out, axis=-1)
    scores = {}
    for name, k in (("cavity", 1), ("myocardium", 2)):
        scores[f"val_{name}_dice"] = mask_dice(predicted == k, labels == k)  # pooled over all examples
    scores["val_area_mae_mm2"] = float(np.mean(np.abs((predicted == 2).sum(axis=(1, 2)) * grid_area - areas)))
    return scores


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def fit(
    run_dir: Path,
    config: FitConfig | None = None,
    *,
    workers: int = 1,
    max_train_seconds: float | None = None,
    checkpoint_every: int = 200,
    validate_every: int = 1000,
    validation_samples: int = 64,
    init_from: str | None = None,
    threads: int = 1,
    command: str = "",
    stop_at_step: int | None = None,
    snapshot_every: int | None = None,
) -> RunState:
    """Train (or go on training) the run in ``run_dir`` up to ``config.steps`` (this invocation stops at
    ``stop_at_step`` or after ``max_train_seconds`` if sooner); returns its state. With ``snapshot_every``
    (a multiple of ``checkpoint_every``), the checkpoint of every such step is also kept as
    ``snapshots/step_<step>.npz`` (for ``average``)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process (tests): its threads stay as they are
        LOG.info("TensorFlow is already initialised: threads unchanged")
    import keras

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT
    stored: Checkpoint | None = None
    if path.exists():
        stored = read_checkpoint(path)
        config = dataclasses.replace(stored.config, steps=config.steps) if config else stored.config
        state = stored.state
        LOG.info("resuming %s at step %d of %d", run_dir, state.step, config.steps)
    else:
        config = config or FitConfig()
        state = RunState()
        keras.utils.set_random_seed(config.stream.seed)  # the initial weights are the seed's too
    models = {name: build_model(config, name) for name in config.models}
    optimizers = {}
    for name, model in models.items():
        if stored is not None:
            model.set_weights(stored.weights[name])
        elif init_from:
            load_model_weights(model, init_from, name)
            LOG.info("%s starts from the weights of %s", name, init_from)
        optimizers[name] = keras.optimizers.Adam(learning_rate=config.learning_rate_at(state.step))
        optimizers[name].build(model.trainable_variables)
        if stored is not None:
            for variable, value in zip(optimizers[name].variables, stored.optimizer[name], strict=True):
                variable.assign(value)

    def make_step(name: str) -> Any:
        model, optimizer, loss_fn = models[name], optimizers[name], _loss(name, config)

        @tf.function(reduce_retracing=True)
        def train_step(images: Any, target: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_fn(target, model(images, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        return train_step

    steps = {name: make_step(name) for name in models}
    target = {SEG: 1, REG: 2}
    validation = validation_examples(config.stream, validation_samples)
    invocation = {
        "command": command,
        "start_step": state.step,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "workers": workers,
        "threads": threads,
        "init_from": init_from,
        # the targets' convention lives in code, not in the run's configuration: say which one this piece used
        WALL_CAP: si.EXPERTS_MAX_WALL_FRACTION,
    }
    began = time.perf_counter()
    losses: dict[str, list[float]] = {name: [] for name in models}

    def row(stream: ExampleStream) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": state.step,
            "train_seconds": round(state.train_seconds + time.perf_counter() - began, 1),
            "learning_rate": float(config.learning_rate_at(max(state.step - 1, 0))),
            "samples_drawn": state.samples_drawn + stream.samples_drawn,
            "wait_seconds": round(stream.wait_seconds, 1),
        }
        for name, values in losses.items():
            out["loss" if name == SEG else f"{name}_loss"] = (
                float(np.mean(values)) if values else float("nan")
            )
            values.clear()
        return out

    stopping = _stop_on_signals()
    with ExampleStream(config.stream, start_step=state.step, workers=workers) as stream:
        while state.step < (config.steps if stop_at_step is None else min(config.steps, stop_at_step)):
            if max_train_seconds is not None and time.perf_counter() - began >= max_train_seconds:
                break
            if stopping.is_set():
                LOG.info(
                    "stopping at step %d on a signal: checkpoint written, resume with the same command",
                    state.step,
                )
                break
            batch = stream.next_batch()
            images = tf.constant(batch[0])
            for name, train_step in steps.items():
                optimizers[name].learning_rate.assign(config.learning_rate_at(state.step))
                losses[name].append(float(train_step(images, tf.constant(batch[target[name]]))))
            state.step += 1
            last = state.step == config.steps
            if state.step % checkpoint_every == 0 or last:
                entry = row(stream)
                if state.step % validate_every == 0 or last:
                    for name, model in models.items():
                        entry.update(validate(name, model, validation, config))
                state.history.append(entry)
                _save(run_dir, config, models, optimizers, state, began, stream, invocation)
                if snapshot_every and state.step % snapshot_every == 0:
                    (run_dir / SNAPSHOTS).mkdir(exist_ok=True)
                    shutil.copyfile(path, run_dir / SNAPSHOTS / f"step_{state.step}.npz")
                LOG.info("step %d: %s", state.step, {k: v for k, v in entry.items() if k != "step"})
        if not state.history or state.history[-1]["step"] != state.step:  # where this invocation stopped
            state.history.append(row(stream))
        _save(run_dir, config, models, optimizers, state, began, stream, invocation, final=True)
    return state


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (a machine being taken back, Ctrl-C): the loop then finishes its step
    and writes the checkpoint instead of dying between two. Only the main thread may install handlers."""
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
    return stopping


def _save(
    run_dir: Path,
    config: FitConfig,
    models: dict[str, Any],
    optimizers: dict[str, Any],
    state: RunState,
    began: float,
    stream: ExampleStream,
    invocation: dict[str, Any],
    *,
    final: bool = False,
) -> None:
    elapsed = time.perf_counter() - began
    saved = dataclasses.replace(
        state,
        train_seconds=state.train_seconds + elapsed,
        samples_drawn=state.samples_drawn + stream.samples_drawn,
        invocations=[
            *state.invocations,
            {**invocation, "end_step": state.step, "seconds": round(elapsed, 1)},
        ],
    )
    save_checkpoint(run_dir / CHECKPOINT, config, models, optimizers, saved)
    if final:
        state.train_seconds, state.samples_drawn, state.invocations = (
            saved.train_seconds,
            saved.samples_drawn,
            saved.invocations,
        )
    with open(run_dir / LOG_FILE, "w", newline="") as handle:
        keys = sorted({k for r in state.history for k in r}, key=lambda k: (k != "step", k))
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(state.history)


# --- Export ------------------------------------------------------------------------------------------

SLICE_MODEL_FILENAME = "slice_model.keras"
SEG_POSTPROCESS = LV_WITH_CLOSED_RINGS  # the exported ML4H_seg's card: the LV alone, short ring gaps closed
SEG_TEST_TIME_FLIPS = True  # ... and its probabilities averaged with those of the mirrored image
WALL_CAP = "experts_max_wall_fraction"  # the invocation's and the card's key for the targets' wall cap
DEFAULT_CROP_PX = 160  # the first crop of the pipeline's handler: a dilated heart and its margin fit


def model_card(config: FitConfig, state: RunState, which: str, *, version: str) -> Any:
    """The card of an exported default model (``lvmass.core.model_card.ModelCard``)."""
    from lvmass.core import contracts
    from lvmass.core.model_card import LABEL_SOURCE_TRUE_ANATOMY, ModelCard, tensor_contract

    seg = which == SEG
    prefix = "val_" if seg else "reg_val_"
    last_validation = next(
        (
            {k: v for k, v in r.items() if k.startswith(prefix)}
            for r in reversed(state.history)
            if any(k.startswith(prefix) for k in r)
        ),
        {},
    )
    stream = dataclasses.asdict(config.stream)
    architecture = (
        {"kind": "2-D U-Net per slice", "base_filters": config.base_filters, "levels": config.levels}
        if seg
        else {
            "kind": "2-D counting network per slice (myocardium density, summed)",
            "base_filters": config.reg_base_filters,
            "levels": config.reg_levels,
            "input_pool": config.reg_input_pool,
        }
    )
    return ModelCard(
        kind=contracts.MODEL_KIND_SEG if seg else contracts.MODEL_KIND_REG,
        version=version,
        tensor=tensor_contract(contracts.PER_SLICE_SLICES),
        training_data={
            "source": "synthetic short-axis slices drawn on the fly (lvmass.synth.slice_scene, "
            "lvmass.synth.slice_image); never a real image",
            "seed": config.stream.seed,
            "samples_drawn": state.samples_drawn,
            "scene_ranges": stream["scene"],
            "appearance_ranges": stream["appearance"],
            "labels": "true anatomy (papillary muscles and trabeculae as cavity)"
            if seg
            else "true myocardial area of each crop (no labels)",
            # the last piece's wall cap (slice_image.EXPERTS_MAX_WALL_FRACTION); None: not recorded
            WALL_CAP: next((i[WALL_CAP] for i in reversed(state.invocations) if WALL_CAP in i), None),
        },
        hyperparameters={
            "trainer": "trainer.synthslice",
            "task": config.task,
            "model": which,
            "architecture": architecture,
            "steps": state.step,
            "batch_size": config.stream.batch_size,
            "crop_px": config.stream.crop_px,
            "uses_per_sample": config.stream.uses,
            "learning_rate": config.learning_rate,
            "final_learning_rate": config.final_learning_rate,
            "warmup_steps": config.warmup_steps,
            "train_seconds": round(state.train_seconds, 1),
            "invocations": state.invocations,
            "weights_averaged_over_steps": next(
                (r["averaged_steps"] for r in reversed(state.history) if "averaged_steps" in r), None
            ),
        },
        metrics={"synthetic_validation": last_validation},
        trained_on_synthetic_data=True,
        notes=(
            "Trained on SYNTHETIC slices only (SynthSeg-style: label maps of the heart and chest, every "
            "appearance drawn at random); validated on real studies it never saw "
            "(benchmarks/results/real_study_evaluation.md). Measures every acquired slice."
        ),
        pixel_spacing_mm=config.stream.grid_mm,
        training_pixel_spacing_mm=[float(v) for v in config.stream.appearance.pixel_mm],
        label_source=LABEL_SOURCE_TRUE_ANATOMY,
        crop_inference={"signature": contracts.SEG_CROP_SIGNATURE, "align_px": 1, "crop_px": DEFAULT_CROP_PX}
        if seg
        else None,
        postprocess=SEG_POSTPROCESS if seg else None,
        test_time_flips=SEG_TEST_TIME_FLIPS if seg else False,
    )


def export(run_dir: Path, export_dir: Path, *, which: str | None = None, version: str = "1.0.0") -> Path:
    """The run's network ``which`` as the pipeline's SavedModel (``trainer.export``: per-slice contract, crop
    and window signatures for ML4H_seg), its 2-D Keras model (``slice_model.keras``) and card."""
    from lvmass.core import contracts
    from trainer.export import export_model
    from trainer.slice_models import mass_model, model_levels, volume_twin

    checkpoint = read_checkpoint(checkpoint_path(run_dir))
    which = which or checkpoint.config.models[0]
    model, config = trained_model(run_dir, which)
    twin = volume_twin(model, levels=model_levels(model))
    seg = which == SEG
    # ML4H_reg counts within a window of its training crop's size (slice_models.DensityToMass)
    network = twin if seg else mass_model(twin, window_px=config.stream.crop_px // config.reg_input_pool)
    kind = contracts.MODEL_KIND_SEG if seg else contracts.MODEL_KIND_REG
    export_dir.mkdir(parents=True, exist_ok=True)
    card = model_card(config, checkpoint.state, which, version=version)
    export_model(network, kind=kind, export_dir=str(export_dir), card=card)
    model.save(export_dir / SLICE_MODEL_FILENAME)
    return export_dir


# --- Command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from lvmass.cli_args import ArgumentParser

    parser = ArgumentParser(prog="python -m trainer.synthslice", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, help="what to do")
    p = sub.add_parser("fit", help="train (or go on training) a run")
    p.add_argument("--run_dir", required=True, help="the run's folder (checkpoint.npz, training_log.csv)")
    p.add_argument(
        "--task",
        choices=TASKS,
        default=SEG,
        help="seg: ML4H_seg; reg: ML4H_reg (area counter); both: the two on the same batches",
    )
    p.add_argument("--steps", type=int, default=20000, help="train up to this many steps in all")
    p.add_argument("--base_filters", type=int, default=16, help="ML4H_seg: filters at full resolution")
    p.add_argument("--levels", type=int, default=4, help="ML4H_seg: resolutions of the U-Net")
    p.add_argument(
        "--reg_base_filters", type=int, default=16, help="ML4H_reg: filters at its first resolution"
    )
    p.add_argument("--reg_levels", type=int, default=4, help="ML4H_reg: resolutions")
    p.add_argument("--batch_size", type=int, default=16, help="slices per step")
    p.add_argument("--crop_px", type=int, default=128, help="training crop on the grid")
    p.add_argument("--grid_mm", type=float, default=1.5, help="the models' pixel size (mm)")
    p.add_argument("--uses", type=int, default=2, help="crops per drawn slice")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="peak learning rate (Adam)")
    p.add_argument(
        "--seed", type=int, default=1, help="the run's seed: its samples, batches and initial weights"
    )
    p.add_argument("--workers", type=int, default=1, help="processes drawing samples (0: this one)")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow threads")
    p.add_argument(
        "--max_train_seconds", type=float, default=None, help="stop this invocation after this long"
    )
    p.add_argument("--stop_at_step", type=int, default=None, help="stop this invocation at this step")
    p.add_argument("--checkpoint_every", type=int, default=200, help="steps between checkpoints")
    p.add_argument(
        "--snapshot_every",
        type=int,
        default=None,
        help="also keep every this many steps' checkpoint in snapshots/ (a multiple of --checkpoint_every)",
    )
    p.add_argument("--validate_every", type=int, default=1000, help="steps between synthetic validations")
    p.add_argument("--validation_samples", type=int, default=64, help="held-out synthetic slices")
    p.add_argument(
        "--init_from", default=None, help="start a new run from these weights (checkpoint or export)"
    )
    p.add_argument(
        "--experts_endocardium",
        type=float,
        default=si.AppearanceRanges.experts_endocardium,
        help="the targets' endocardium as experts draw it on a cine (0: the truth as drawn; "
        "lvmass.synth.slice_image.experts_cavity)",
    )
    a = sub.add_parser("average", help="one checkpoint from the mean weights of a run's late snapshots")
    a.add_argument("checkpoints", nargs="+", help="checkpoint files of one run, the last one last")
    a.add_argument("--out", required=True, help="the averaged checkpoint to write (.npz)")
    a.add_argument(
        "--validation_samples",
        type=int,
        default=256,
        help="score the mean and the last snapshot on this many held-out synthetic slices (0: skip)",
    )
    e = sub.add_parser("export", help="write a run's model as the pipeline's SavedModel with its card")
    e.add_argument("--run_dir", required=True, help="the run's folder (or a checkpoint file)")
    e.add_argument(
        "--task", choices=(SEG, REG), default=None, help="which of the run's models (default: its first)"
    )
    e.add_argument("--export_dir", required=True, help="the SavedModel folder to write")
    e.add_argument("--version", default="1.0.0", help="the model's version (model card)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lvmass.cli_args import configure_logging

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(getattr(args, "log_level", "INFO"))
    command = "python -m trainer.synthslice " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.command == "fit":
        config = FitConfig(
            task=args.task,
            base_filters=args.base_filters,
            levels=args.levels,
            reg_base_filters=args.reg_base_filters,
            reg_levels=args.reg_levels,
            steps=args.steps,
            learning_rate=args.learning_rate,
            stream=StreamConfig(
                seed=args.seed,
                grid_mm=args.grid_mm,
                crop_px=args.crop_px,
                batch_size=args.batch_size,
                uses=args.uses,
                appearance=si.AppearanceRanges(experts_endocardium=args.experts_endocardium),
            ),
        )
        state = fit(
            Path(args.run_dir),
            config,
            workers=args.workers,
            max_train_seconds=args.max_train_seconds,
            checkpoint_every=args.checkpoint_every,
            validate_every=args.validate_every,
            validation_samples=args.validation_samples,
            init_from=args.init_from,
            threads=args.threads,
            command=command,
            stop_at_step=args.stop_at_step,
            snapshot_every=args.snapshot_every,
        )
        print(
            json.dumps(
                {
                    "step": state.step,
                    "train_seconds": round(state.train_seconds, 1),
                    "last": state.history[-1] if state.history else None,
                },
                indent=2,
            )
        )
    elif args.command == "average":
        averaged = average_checkpoints(
            args.checkpoints, Path(args.out), validation_samples=args.validation_samples
        )
        print(json.dumps(averaged.state.history[-1], indent=2))
    elif args.command == "export":
        print(export(Path(args.run_dir), Path(args.export_dir), which=args.task, version=args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
