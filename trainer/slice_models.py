"""Per-slice models of the default ML4H_seg and ML4H_reg, and their volume twins for the pipeline.

Why 2-D: short-axis slices lie 8-10 mm apart, so a slice's neighbours say little about its own boundaries;
the UK Biobank reference segmenter (Bai et al. 2018) is per-slice 2-D, and a 2-D U-Net trains on this
project's 2-core CPU (``benchmarks/results/synthslice_training_default_stage*.md`` record its speed).

* :func:`build_slice_unet`: a 2-D U-Net, ``levels`` resolutions of two 3 x 3 convolutions (batch
  normalisation, ReLU), max pooling and nearest upsampling with skip connections, softmax over the
  contract's three classes.
* :func:`build_area_counter`: ML4H_reg as a counting network: a small fully convolutional network whose
  non-negative output per pixel is the myocardium it holds (a density); its sum over a slice, times the
  pixel area, is the slice's myocardial area, and the areas times the slice distance times 1.05 g/mL are the
  mass. It learns from the true area only, never from labels.
* :func:`volume_twin`: the same network as 3-D Keras layers with ``(3, 3, 1)`` kernels and ``(2, 2, 1)``
  pooling on ``(rows, cols, slices)`` (batch normalisation folded into the convolutions), so the pipeline's
  SavedModel contract, its crop and window signatures (``trainer.export``, ``trainer.windowed``) and the
  receptive-field bookkeeping apply unchanged, and every slice of any stack is segmented.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np

from lvmass.core import contracts

IMAGE_INPUT = contracts.SIGNATURE_INPUT_IMAGE


@dataclass(frozen=True)
class UNetConfig:
    """A 2-D U-Net: ``base_filters`` at full resolution, doubling at each of ``levels`` resolutions."""

    base_filters: int = 16
    levels: int = 4
    num_classes: int = contracts.NUM_CLASSES

    def __post_init__(self) -> None:
        if self.base_filters < 1 or not 2 <= self.levels <= 6 or self.num_classes < 2:
            raise ValueError(
                f"need base_filters >= 1, 2 <= levels <= 6, num_classes >= 2. Received: {self!r}"
            )

    @property
    def align_px(self) -> int:
        """Inputs' rows and columns must be multiples of this (the poolings)."""
        return 2 ** (self.levels - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CounterConfig:
    """ML4H_reg's counting network: average-pooled ``input_pool`` times first (a count needs no fine
    boundary, and the network then sees the whole field of view cheaply), then a U-Net of ``levels``
    resolutions whose output is the myocardium density of each pooled pixel."""

    base_filters: int = 16
    levels: int = 4
    input_pool: int = 2

    def __post_init__(self) -> None:
        if self.base_filters < 1 or not 2 <= self.levels <= 6 or self.input_pool not in (1, 2, 4):
            raise ValueError(
                f"need base_filters >= 1, 2 <= levels <= 6, input_pool 1, 2 or 4. Received: {self!r}"
            )

    @property
    def align_px(self) -> int:
        return self.input_pool * 2 ** (self.levels - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block(x: Any, filters: int, name: str) -> Any:
    for k in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{k}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{k}")(x)
    return x


def _unet_body(inputs: Any, base_filters: int, levels: int) -> Any:
    x = inputs
    skips = []
    for level in range(levels):
        x = _block(x, base_filters * 2**level, f"down{level}")
        if level < levels - 1:
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
    for level in reversed(range(levels - 1)):
        x = keras.layers.UpSampling2D(2, name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, base_filters * 2**level, f"dec{level}")
    return x


def build_slice_unet(config: UNetConfig = UNetConfig()) -> keras.Model:
    """The default ML4H_seg per slice: ``image`` (B, rows, cols, 1) -> probabilities (B, rows, cols, C)."""
    inputs = keras.Input((None, None, 1), name=IMAGE_INPUT)
    x = _unet_body(inputs, config.base_filters, config.levels)
    outputs = keras.layers.Conv2D(config.num_classes, 1, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="slice_unet")


def build_area_counter(config: CounterConfig = CounterConfig()) -> keras.Model:
    """The default ML4H_reg per slice: ``image`` (B, rows, cols, 1) -> myocardium density (B, rows / p,
    cols / p, 1): summed, the slice's myocardial area in grid pixels (``p`` the input pooling)."""
    inputs = keras.Input((None, None, 1), name=IMAGE_INPUT)
    x = inputs
    if config.input_pool > 1:
        x = keras.layers.AveragePooling2D(config.input_pool, name="input_pool")(x)
    x = _unet_body(x, config.base_filters, config.levels)
    outputs = keras.layers.Conv2D(1, 1, activation="softplus", name="density")(x)
    return keras.Model(inputs, outputs, name="area_counter")


# --- Volume twins ---------------------------------------------------------------------------------


def _folded(
    conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization | None
) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D convolution's (kernel, bias) with the batch normalisation after it folded in, the kernel as
    ``(kh, kw, 1, in, out)`` for a 3-D convolution of one slice's depth."""
    kernel = np.asarray(conv.kernel.numpy(), dtype=np.float64)
    bias = np.asarray(conv.bias.numpy(), dtype=np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    if bn is not None:
        gamma = np.asarray(bn.gamma.numpy(), dtype=np.float64)
        beta = np.asarray(bn.beta.numpy(), dtype=np.float64)
        mean = np.asarray(bn.moving_mean.numpy(), dtype=np.float64)
        var = np.asarray(bn.moving_variance.numpy(), dtype=np.float64)
        scale = gamma / np.sqrt(var + bn.epsilon)
        kernel = kernel * scale
        bias = (bias - mean) * scale + beta
    return kernel[:, :, None].astype(np.float32), bias.astype(np.float32)


def volume_twin(model: keras.Model, *, levels: int) -> keras.Model:
    """The per-slice ``model`` (built by this module) as 3-D layers over ``(B, rows, cols, slices, 1)``
    with its weights, batch normalisation folded: the same numbers for every slice, up to rounding.

    The twin's layers are the kinds ``trainer.export`` and ``trainer.windowed`` understand (Conv3D,
    MaxPooling3D, UpSampling3D, Concatenate, Activation)."""
    layers = {layer.name: layer for layer in model.layers}
    inputs = keras.Input((None, None, None, 1), name=IMAGE_INPUT)
    x = inputs
    if "input_pool" in layers:
        size = int(layers["input_pool"].pool_size[0])
        x = keras.layers.AveragePooling3D((size, size, 1), name="input_pool")(x)
    skips = []
    convs: list[tuple[keras.layers.Layer, str, str | None]] = []

    def block(x: Any, filters: int, name: str) -> Any:
        for k in (1, 2):
            conv = keras.layers.Conv3D(filters, (3, 3, 1), padding="same", name=f"{name}_conv{k}")
            x = keras.layers.Activation("relu", name=f"{name}_relu{k}")(conv(x))
            convs.append((conv, f"{name}_conv{k}", f"{name}_bn{k}"))
        return x

    base = int(layers["down0_conv1"].filters)
    for level in range(levels):
        x = block(x, base * 2**level, f"down{level}")
        if level < levels - 1:
            skips.append(x)
            x = keras.layers.MaxPooling3D((2, 2, 1), name=f"pool{level}")(x)
    for level in reversed(range(levels - 1)):
        x = keras.layers.UpSampling3D((2, 2, 1), name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = block(x, base * 2**level, f"dec{level}")
    head_name = "probabilities" if "probabilities" in layers else "density"
    head2d = layers[head_name]
    head = keras.layers.Conv3D(int(head2d.filters), 1, activation=head2d.activation, name=head_name)
    convs.append((head, head_name, None))
    outputs = head(x)
    twin = keras.Model({IMAGE_INPUT: inputs}, outputs, name=f"{model.name}_volume")
    for conv, name2d, bn_name in convs:
        kernel, bias = _folded(layers[name2d], layers.get(bn_name) if bn_name else None)
        conv.set_weights([kernel, bias])
    return twin


@keras.saving.register_keras_serializable(package="lvmass")
class DensityToMass(keras.layers.Layer):
    """LV mass (g) from a stack's myocardium density ``(B, rows, cols, slices, 1)`` on the grid of
    ``spacing_mm`` ``(B, 3)``: density x grid pixel area x slice distance x 1.05 g/mL, summed. The density
    counts grid pixels (its map may be pooled: each value already holds its pooled pixels' count).

    ``window_px`` (in the density map's pixels): only the density inside the square window that holds the
    most of it, summed over all slices, counts. The network learned to count within its training crops (a
    heart and its surroundings); on a whole field of view it would also count a little everywhere else.
    The window is that crop's size, placed where the stack's myocardium is."""

    def __init__(self, window_px: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.window_px = window_px

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "window_px": self.window_px}

    def call(self, density: Any, spacing_mm: Any) -> Any:
        ops = keras.ops
        if self.window_px:
            projected = ops.sum(density, axis=3)  # (B, rows, cols, 1): the stack's density seen from the apex
            boxed = ops.average_pool(projected, self.window_px, strides=1, padding="same")
            shape = ops.shape(boxed)
            best = ops.argmax(ops.reshape(boxed, (shape[0], -1)), axis=-1)
            row = ops.cast(best // shape[2], "int32")[:, None, None]
            col = ops.cast(best % shape[2], "int32")[:, None, None]
            rows = ops.arange(shape[1], dtype="int32")[None, :, None]
            cols = ops.arange(shape[2], dtype="int32")[None, None, :]
            # the very window the pooling summed at its maximum: "same" padding puts (k - 1) // 2 before
            low, high = (self.window_px - 1) // 2, self.window_px // 2 + 1
            inside = (rows >= row - low) & (rows < row + high) & (cols >= col - low) & (cols < col + high)
            density = density * ops.cast(inside, density.dtype)[:, :, :, None, None]
        pixels = ops.sum(density, axis=(1, 2, 3, 4))
        voxel_ml = spacing_mm[:, 0] * spacing_mm[:, 1] * spacing_mm[:, 2] / 1000.0
        return pixels * voxel_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML


def mass_model(twin: keras.Model, *, window_px: int | None = None) -> keras.Model:
    """ML4H_reg's exported network: ``{image, spacing_mm}`` -> LV mass (B, 1), as ``trainer.export`` wants;
    ``window_px``: :class:`DensityToMass`'s window, in the density map's pixels."""
    image = keras.Input((contracts.TENSOR_ROWS, contracts.TENSOR_COLS, None, 1), name=IMAGE_INPUT)
    spacing = keras.Input((len(contracts.SPACING_FIELDS),), name=contracts.SIGNATURE_INPUT_SPACING)
    density = twin({IMAGE_INPUT: image})
    mass = DensityToMass(window_px, name="lv_mass_g")(density, spacing)
    return keras.Model(
        {IMAGE_INPUT: image, contracts.SIGNATURE_INPUT_SPACING: spacing},
        keras.layers.Reshape((1,), name="mass")(mass),
        name="area_counter_mass",
    )


def model_levels(model: keras.Model) -> int:
    """How many resolutions a model of this module has (from its layer names)."""
    return 1 + sum(1 for layer in model.layers if layer.name.startswith("pool") and layer.name[4:].isdigit())
