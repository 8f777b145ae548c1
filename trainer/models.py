"""Builders for ML4H_seg (3D U-Net segmenter) and ML4H_reg (3D CNN regressor), Khurshid et al. 2021.

Both take the tensor of ``lvmass.core.contracts`` (float32 ``(256, 256, 13, 1)``: rows, columns,
slices base to apex, channel). Sizes come from a frozen config; two presets each:

* ``paper``: the released ml4h configuration (Conv3D 32 3x3x3 stem, three dense blocks of 32 filters x
  3 convolutions, mish, max-pool (2, 2, 1), U-Net skips, 1x1x1 softmax over background / LV cavity /
  myocardium). Meant for a GPU (Vertex custom job).
* ``cpu``: the same design, narrower and with in-plane (3, 3, 1) kernels at full resolution, so that it
  trains and infers on a 2-core CPU.

ML4H_seg's mass comes from voxel counts, so it needs no spacing; ML4H_reg concatenates the voxel size
(``spacing_mm``) to its pooled features before its dense layers, as the paper did, so that scanners with
other pixel sizes are handled; its output is optionally scaled by the voxel volume so that a network that
has learned to "count" myocardium generalises across pixel sizes.

Every layer is named from a block prefix (``stem_``, ``down0_``, ``up1_``, ``head_``...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from lvmass.core import contracts

PRESETS = ("paper", "cpu")
ACTIVATIONS = ("mish", "relu", "swish", "elu")
NORMALIZATIONS = ("none", "batch", "layer")
# Voxel size the reg head's spacing inputs are scaled by (UK Biobank SAX cine: ~1.8 mm, 10 mm apart).
REFERENCE_SPACING_MM = (1.8, 1.8, 10.0)

Triple = tuple[int, int, int]


def _check_triple(name: str, value: Any) -> Triple:
    try:
        triple = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be 3 positive integers. Received: {value!r}") from None
    if len(triple) != 3 or any(v < 1 for v in triple):
        raise ValueError(f"{name} must be 3 positive integers. Received: {value!r}")
    return triple  # type: ignore[return-value]


def _check_positive_ints(name: str, values: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive integers. Received: {values!r}") from None
    if (not out and not allow_empty) or any(v < 1 for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers. Received: {values!r}")
    return out


def _check_common(config: Any) -> None:
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}. Received: {config.activation!r}")
    if config.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: {config.normalization!r}")
    if config.convs_per_block < 1:
        raise ValueError(f"convs_per_block must be >= 1. Received: {config.convs_per_block!r}")
    if tuple(config.input_shape) != contracts.TENSOR_SHAPE:
        raise ValueError(
            f"input_shape must be the tensor contract {contracts.TENSOR_SHAPE}. "
            f"Received: {config.input_shape!r}"
        )


@dataclass(frozen=True)
class SegConfig:
    """ML4H_seg sizes. ``dense_blocks[i]`` is the filter count of every conv in the level-``i`` block."""

    stem_filters: int = 32
    stem_kernel: Triple = (3, 3, 3)
    dense_blocks: tuple[int, ...] = (32, 32, 32)
    convs_per_block: int = 3
    kernel_size: Triple = (3, 3, 3)
    pool_size: Triple = (2, 2, 1)
    activation: str = "mish"
    normalization: str = "none"
    num_classes: int = contracts.NUM_CLASSES
    input_shape: tuple[int, ...] = contracts.TENSOR_SHAPE

    def __post_init__(self) -> None:
        _check_common(self)
        if self.stem_filters < 1:
            raise ValueError(f"stem_filters must be >= 1. Received: {self.stem_filters!r}")
        object.__setattr__(self, "stem_kernel", _check_triple("stem_kernel", self.stem_kernel))
        object.__setattr__(self, "kernel_size", _check_triple("kernel_size", self.kernel_size))
        object.__setattr__(self, "pool_size", _check_triple("pool_size", self.pool_size))
        object.__setattr__(self, "dense_blocks", _check_positive_ints("dense_blocks", self.dense_blocks))
        if self.num_classes != contracts.NUM_CLASSES:
            raise ValueError(
                f"num_classes must be {contracts.NUM_CLASSES} (contracts.LABEL_MAP). "
                f"Received: {self.num_classes!r}"
            )
        levels = len(self.dense_blocks) - 1
        for axis, (size, pool) in enumerate(zip(self.input_shape[:3], self.pool_size, strict=True)):
            if size % (pool**levels):
                raise ValueError(
                    f"input axis {axis} of size {size} is not divisible by pool_size[{axis}]**{levels} "
                    f"({pool**levels}) for {levels + 1} dense blocks. Received: pool_size={self.pool_size!r}"
                )


@dataclass(frozen=True)
class RegConfig:
    """ML4H_reg sizes: conv blocks with pooling, global pooling, spacing-aware dense head."""

    input_pool: Triple = (1, 1, 1)
    stem_filters: int = 32
    stem_kernel: Triple = (3, 3, 3)
    conv_blocks: tuple[int, ...] = (32, 32, 32, 64)
    convs_per_block: int = 3
    kernel_size: Triple = (3, 3, 3)
    pool_size: Triple = (2, 2, 1)
    dense_units: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    activation: str = "mish"
    normalization: str = "none"
    # The head predicts z; mass_g = (mass_offset_g + mass_scale_g * z) [* voxel volume / reference].
    mass_offset_g: float = 90.0
    mass_scale_g: float = 20.0
    scale_by_voxel_volume: bool = True
    input_shape: tuple[int, ...] = contracts.TENSOR_SHAPE

    def __post_init__(self) -> None:
        _check_common(self)
        if self.stem_filters < 1:
            raise ValueError(f"stem_filters must be >= 1. Received: {self.stem_filters!r}")
        for name in ("input_pool", "stem_kernel", "kernel_size", "pool_size"):
            object.__setattr__(self, name, _check_triple(name, getattr(self, name)))
        object.__setattr__(self, "conv_blocks", _check_positive_ints("conv_blocks", self.conv_blocks))
        object.__setattr__(
            self, "dense_units", _check_positive_ints("dense_units", self.dense_units, allow_empty=True)
        )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: {self.dropout!r}")
        if not self.mass_scale_g > 0:
            raise ValueError(f"mass_scale_g must be > 0. Received: {self.mass_scale_g!r}")
        shape = [s // p for s, p in zip(self.input_shape[:3], self.input_pool, strict=True)]
        if any(s < 1 for s in shape):
            raise ValueError(f"input_pool larger than the input. Received: input_pool={self.input_pool!r}")


_SEG_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {
        "stem_filters": 8,
        "stem_kernel": (3, 3, 1),
        "dense_blocks": (8, 16, 32),
        "convs_per_block": 2,
        "kernel_size": (3, 3, 3),
        "pool_size": (2, 2, 1),
    },
    # Four levels (a wider field of view) and 1.5x the cpu widths: still within the 2 s per participant
    # CPU inference budget; trained on a GPU (trainer.portable) for the bundled model.
    "compact": {
        "stem_filters": 12,
        "stem_kernel": (3, 3, 1),
        "dense_blocks": (12, 24, 48, 64),
        "convs_per_block": 2,
        "kernel_size": (3, 3, 3),
        "pool_size": (2, 2, 1),
    },
}
_REG_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {
        "input_pool": (2, 2, 1),
        "stem_filters": 8,
        "stem_kernel": (3, 3, 1),
        "conv_blocks": (8, 16, 32, 32),
        "convs_per_block": 1,
        "kernel_size": (3, 3, 3),
        "pool_size": (2, 2, 1),
        "dense_units": (32, 16),
    },
}


def _preset(table: dict[str, dict[str, Any]], preset: str) -> dict[str, Any]:
    if preset not in table:
        raise ValueError(f"preset must be one of {tuple(table)}. Received: {preset!r}")
    return dict(table[preset])


def seg_config(preset: str = "paper", **overrides: Any) -> SegConfig:
    """A :class:`SegConfig` from a named preset with some fields overridden (``None`` = keep)."""
    values = _preset(_SEG_PRESETS, preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SegConfig(**values)


def reg_config(preset: str = "paper", **overrides: Any) -> RegConfig:
    """A :class:`RegConfig` from a named preset with some fields overridden (``None`` = keep)."""
    values = _preset(_REG_PRESETS, preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RegConfig(**values)


def config_to_dict(config: SegConfig | RegConfig) -> dict[str, Any]:
    """JSON-friendly config (tuples as lists), for the model card."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


@keras.saving.register_keras_serializable(package="lvmass")
class SpacingRelative(layers.Layer):
    """``spacing_mm / REFERENCE_SPACING_MM``: the voxel size as a dimensionless input of the head."""

    def call(self, spacing_mm: Any) -> Any:
        reference = keras.ops.convert_to_tensor(REFERENCE_SPACING_MM, dtype=spacing_mm.dtype)
        return spacing_mm / reference


@keras.saving.register_keras_serializable(package="lvmass")
class MassFromLogit(layers.Layer):
    """``(offset_g + scale_g * z)``, times the relative voxel volume when ``scale_by_voxel_volume``.

    Inputs ``[z (B, 1), spacing_relative (B, 3)]``; output grams ``(B,)``.
    """

    def __init__(self, offset_g: float, scale_g: float, scale_by_voxel_volume: bool, **kwargs: Any):
        super().__init__(**kwargs)
        self.offset_g = float(offset_g)
        self.scale_g = float(scale_g)
        self.scale_by_voxel_volume = bool(scale_by_voxel_volume)

    def call(self, inputs: Any) -> Any:
        z, spacing_rel = inputs
        mass_g = self.offset_g + self.scale_g * keras.ops.squeeze(z, axis=-1)
        if self.scale_by_voxel_volume:
            mass_g = mass_g * keras.ops.prod(spacing_rel, axis=-1)
        return mass_g

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "offset_g": self.offset_g,
            "scale_g": self.scale_g,
            "scale_by_voxel_volume": self.scale_by_voxel_volume,
        }


# --- building blocks --------------------------------------------------------------------------------


def _conv(x: Any, filters: int, kernel: Triple, config: Any, name: str) -> Any:
    """Conv3D -> optional normalisation -> activation, layers named ``{name}_conv`` etc."""
    use_bias = config.normalization == "none"
    x = layers.Conv3D(filters, kernel, padding="same", use_bias=use_bias, name=f"{name}_conv")(x)
    if config.normalization == "batch":
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    elif config.normalization == "layer":
        x = layers.LayerNormalization(name=f"{name}_ln")(x)
    return layers.Activation(config.activation, name=f"{name}_{config.activation}")(x)


def _dense_block(x: Any, filters: int, config: Any, prefix: str) -> Any:
    """DenseNet-style block (ml4h): each conv sees the concatenation of the block input and all before.

    Returns only the block's new feature maps (``convs_per_block * filters`` channels), as in the
    one-hundred-layer Tiramisu, so channel counts stay bounded at full resolution.
    """
    features = [x]
    for j in range(config.convs_per_block):
        if len(features) == 1:
            inputs = features[0]
        else:
            inputs = layers.Concatenate(name=f"{prefix}_concat{j}")(features)
        features.append(_conv(inputs, filters, config.kernel_size, config, name=f"{prefix}_{j}"))
    if len(features) == 2:
        return features[1]
    return layers.Concatenate(name=f"{prefix}_out")(features[1:])


def build_ml4h_seg(
    config: SegConfig | None = None, *, fully_convolutional: bool = False, name: str = "ml4h_seg"
) -> keras.Model:
    """ML4H_seg: image ``(B, 256, 256, 13, 1)`` -> softmax ``(B, 256, 256, 13, 3)`` (contracts.LABEL_MAP).

    Input is a dict ``{"image": ...}`` (``contracts.SIGNATURE_INPUT_IMAGE``) so that the same datasets
    and signatures serve both models. ``fully_convolutional`` leaves rows/columns unspecified so that the
    trainer can fit on in-plane crops (much cheaper on a CPU) and the weights still serve full tensors.
    """
    config = config or SegConfig()
    if not isinstance(config, SegConfig):
        raise ValueError(f"config must be a SegConfig. Received: {type(config).__name__}")
    shape = (None, None, *config.input_shape[2:]) if fully_convolutional else config.input_shape
    image = keras.Input(shape=shape, name=contracts.SIGNATURE_INPUT_IMAGE, dtype="float32")
    x = _conv(image, config.stem_filters, config.stem_kernel, config, name="stem")
    skips = []
    for level, filters in enumerate(config.dense_blocks):
        x = _dense_block(x, filters, config, prefix=f"down{level}")
        if level < len(config.dense_blocks) - 1:
            skips.append(x)
            x = layers.MaxPooling3D(config.pool_size, name=f"down{level}_pool")(x)
    for level in reversed(range(len(skips))):
        x = layers.UpSampling3D(config.pool_size, name=f"up{level}_upsample")(x)
        x = _conv(x, config.dense_blocks[level], (1, 1, 1), config, name=f"up{level}_reduce")
        x = layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _dense_block(x, config.dense_blocks[level], config, prefix=f"up{level}")
    probabilities = layers.Conv3D(
        config.num_classes, (1, 1, 1), activation="softmax", name="head_softmax", dtype="float32"
    )(x)
    return keras.Model({contracts.SIGNATURE_INPUT_IMAGE: image}, probabilities, name=name)


def build_ml4h_reg(config: RegConfig | None = None, *, name: str = "ml4h_reg") -> keras.Model:
    """ML4H_reg: ``{"image": (B,256,256,13,1), "spacing_mm": (B,3)}`` -> LV mass in grams ``(B,)``.

    The voxel size enters the dense layers (scaled by :data:`REFERENCE_SPACING_MM`); with
    ``scale_by_voxel_volume`` the output is also multiplied by voxel volume / reference voxel volume.
    """
    config = config or RegConfig()
    if not isinstance(config, RegConfig):
        raise ValueError(f"config must be a RegConfig. Received: {type(config).__name__}")
    image = keras.Input(shape=config.input_shape, name=contracts.SIGNATURE_INPUT_IMAGE, dtype="float32")
    spacing = keras.Input(shape=(len(contracts.SPACING_FIELDS),), name=contracts.SIGNATURE_INPUT_SPACING)
    x = image
    if config.input_pool != (1, 1, 1):
        x = layers.AveragePooling3D(config.input_pool, name="stem_input_pool")(x)
    x = _conv(x, config.stem_filters, config.stem_kernel, config, name="stem")
    for level, filters in enumerate(config.conv_blocks):
        for j in range(config.convs_per_block):
            x = _conv(x, filters, config.kernel_size, config, name=f"down{level}_{j}")
        x = layers.MaxPooling3D(config.pool_size, padding="same", name=f"down{level}_pool")(x)
    pooled_mean = layers.GlobalAveragePooling3D(name="head_gap")(x)
    pooled_max = layers.GlobalMaxPooling3D(name="head_gmp")(x)
    spacing_rel = SpacingRelative(name="head_spacing_relative")(spacing)
    h = layers.Concatenate(name="head_concat")([pooled_mean, pooled_max, spacing_rel])
    for i, units in enumerate(config.dense_units):
        h = layers.Dense(units, name=f"head_dense{i}")(h)
        h = layers.Activation(config.activation, name=f"head_dense{i}_{config.activation}")(h)
        if config.dropout:
            h = layers.Dropout(config.dropout, name=f"head_dense{i}_dropout")(h)
    z = layers.Dense(1, name="head_out", kernel_initializer="zeros")(h)
    mass = MassFromLogit(
        offset_g=config.mass_offset_g,
        scale_g=config.mass_scale_g,
        scale_by_voxel_volume=config.scale_by_voxel_volume,
        name="head_mass",
    )([z, spacing_rel])
    mass = layers.Activation("linear", name=contracts.SIGNATURE_OUTPUT_MASS, dtype="float32")(mass)
    inputs = {contracts.SIGNATURE_INPUT_IMAGE: image, contracts.SIGNATURE_INPUT_SPACING: spacing}
    return keras.Model(inputs, mass, name=name)


def build_model(kind: str, config: SegConfig | RegConfig | None = None) -> keras.Model:
    """Dispatch on ``contracts.MODEL_KIND_SEG`` / ``contracts.MODEL_KIND_REG``."""
    if kind == contracts.MODEL_KIND_SEG:
        return build_ml4h_seg(config)  # type: ignore[arg-type]
    if kind == contracts.MODEL_KIND_REG:
        return build_ml4h_reg(config)  # type: ignore[arg-type]
    raise ValueError(
        f"kind must be {contracts.MODEL_KIND_SEG!r} or {contracts.MODEL_KIND_REG!r}. Received: {kind!r}"
    )
