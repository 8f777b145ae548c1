"""The Keras training metric of ML4H_seg (``MyocardiumDice``, streamed over batches). The numpy measures
that reports and evaluations use (Dice, mass agreement) are ``lvmass.core.metrics``, defined once."""

from __future__ import annotations

import keras

from lvmass.core import contracts


@keras.saving.register_keras_serializable(package="lvmass")
class MyocardiumDice(keras.metrics.Metric):
    """Streaming Dice of the myocardium between argmax predictions and integer labels (training metric)."""

    def __init__(self, name: str = "myocardium_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        truth = ops.equal(ops.cast(y_true, "int32"), contracts.MYOCARDIUM)
        pred = ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), contracts.MYOCARDIUM)
        self.intersection.assign_add(ops.sum(ops.cast(ops.logical_and(truth, pred), "float32")))
        self.total.assign_add(ops.sum(ops.cast(truth, "float32")) + ops.sum(ops.cast(pred, "float32")))

    def result(self):
        return keras.ops.divide_no_nan(2.0 * self.intersection, self.total)

    def reset_state(self):
        self.intersection.assign(0.0)
        self.total.assign(0.0)
