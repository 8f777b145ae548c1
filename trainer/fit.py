"""The training loop the Keras trainers share (``trainer.task`` on TFRecords, ``trainer.portable`` on any
backend): build the model inside the distribution scope, optionally from earlier weights, compile it with
Adam on an exponentially decaying learning rate, fit, and time it. What differs between them is injected:
the model builder, the loss and metrics, the data, the callbacks and the scope."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.weights import load_weights


@dataclass(frozen=True)
class Schedule:
    """Adam's learning rate: ``learning_rate`` x ``decay_rate`` ** (step / ``decay_steps``) (Keras'
    ``ExponentialDecay``, not staircase)."""

    learning_rate: float
    decay_steps: int
    decay_rate: float

    def optimizer(self) -> Any:
        import keras

        return keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(
            self.learning_rate, decay_steps=self.decay_steps, decay_rate=self.decay_rate))


@dataclass(frozen=True)
class FitRequest:
    """One fit: ``epochs`` of ``steps_per_epoch`` steps (None: the data's length) over ``data``, validated
    on ``validation_data`` when given; ``objective`` builds the loss and the metrics (called inside the
    scope, where a distribution strategy needs their variables); ``callbacks`` as Keras takes them;
    ``verbose`` Keras' verbosity."""

    data: Any
    epochs: int
    schedule: Schedule
    objective: Callable[[], tuple[Any, Sequence[Any]]]
    steps_per_epoch: int | None = None
    validation_data: Any = None
    callbacks: Sequence[Any] = ()
    verbose: int = 2
    initial_weights: str | None = None  # a weights file (trainer.weights) to start from
    scope: Callable[[], contextlib.AbstractContextManager[Any]] = field(default=contextlib.nullcontext)


@dataclass(frozen=True)
class Fitted:
    """A fitted model, Keras' ``history.history`` (per epoch) and the seconds ``model.fit`` took."""

    model: Any
    history: dict[str, list[float]]
    train_seconds: float

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))


def fit_model(build: Callable[[], Any], request: FitRequest) -> Fitted:
    """Build (inside ``request.scope``), load the initial weights, compile and fit."""
    with request.scope():
        model = build()
        if request.initial_weights:
            load_weights(model, request.initial_weights)
        loss, metrics = request.objective()
        model.compile(optimizer=request.schedule.optimizer(), loss=loss, metrics=list(metrics) or None)
    started = time.perf_counter()
    history = model.fit(request.data, epochs=request.epochs, steps_per_epoch=request.steps_per_epoch,
                        validation_data=request.validation_data, verbose=request.verbose,
                        callbacks=list(request.callbacks))
    return Fitted(model, {k: list(v) for k, v in history.history.items()}, time.perf_counter() - started)
