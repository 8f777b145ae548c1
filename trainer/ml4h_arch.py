"""ML4H_seg as ml4h's model factory wired it: the graph of the released ``sax_diastole_segment_no_flat.h5``.

Khurshid et al. (2021) trained ML4H_seg with ml4h's ``recipes.py --mode train`` (the arguments file beside the
weights in ml4h's ``model_zoo/cardiac_mri_derived_left_ventricular_mass/``: ``--conv_layers 32 --conv_x 3 3 3
--conv_y 3 3 3 --conv_z 3 3 3 --dense_blocks 32 32 32 --block_size 3 --activation mish --pool_x 2 --pool_y 2
--u_connect sax_all_diastole sax_all_diastole_segmented --bottleneck_type no_bottleneck``). Those are exactly
the sizes of :mod:`trainer.models`' ``paper`` preset (stem 32 of 3x3x3, dense blocks 32/32/32 of 3 convs,
3x3x3 kernels, (2, 2, 1) pooling, mish, no normalisation), but ml4h's ``make_multimodal_multitask_model``
(``ml4h/models.py``, 2020: ``ConvEncoder``, ``DenseConvolutionalBlock``, ``ConvDecoder``) wires them
differently from :func:`trainer.models.build_ml4h_seg`, so its weights only fit this graph:

==========================  ================================================  ================================
                            ml4h (this module)                                ``models.build_ml4h_seg``
==========================  ================================================  ================================
after the stem conv         max-pool: every dense block runs at 1/2 or less   no pool: block 0 at full size
poolings                    one per dense block (3 for the paper: 1/8)        one fewer (1/4)
a dense block returns       its last conv only (32 channels)                  all its convs (96 channels)
decoder level               concat(skip, x) -> dense block -> upsample        upsample -> 1x1 conv -> concat
deepest decoder input       the last encoder block concatenated with itself   --
head                        concat(stem, x) -> 1x1x1 softmax                  1x1x1 softmax
==========================  ================================================  ================================

Each conv is a bias-carrying ``Conv3D`` ('same', linear) followed by its own ``Activation``; in a dense block
conv ``j`` sees ``concat(block input, conv 0 .. conv j-1)``. :func:`ml4h_unet_graph` describes the graph as
plain data (one :class:`Node` per Keras layer, named as lvmass names layers: ``stem_``, ``down1_``, ``up0_``,
``head_``...); the importer (:mod:`trainer.ml4h_import`) matches a file's layers against it and
:func:`build_ml4h_unet` builds it in Keras 3, taking ``{"image": (B, 256, 256, 13, 1)}`` like every
lvmass ML4H_seg, so that ``trainer.export`` gives it the pipeline's signatures (``serving_crop``,
``serving_window``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import keras
from keras import layers

from lvmass.core import contracts
from trainer.models import SegConfig, seg_config

Triple = tuple[int, int, int]

CONV = "Conv3D"
ACTIVATION = "Activation"
CONCATENATE = "Concatenate"
MAX_POOL = "MaxPooling3D"
UPSAMPLE = "UpSampling3D"
INPUT = "InputLayer"


@dataclass(frozen=True)
class Ml4hUnetConfig:
    """The sizes ml4h's command line gives its U-Net. ``kernel_size`` is every dense block's conv kernel
    (ml4h allows one per block; the paper used 3x3x3 throughout)."""

    stem_filters: int = 32  # --conv_layers
    stem_kernel: Triple = (3, 3, 3)  # first entry of --conv_x/y/z
    dense_blocks: tuple[int, ...] = (32, 32, 32)  # --dense_blocks
    block_size: int = 3  # --block_size
    kernel_size: Triple = (3, 3, 3)  # later entries of --conv_x/y/z
    pool_size: Triple = (2, 2, 1)  # --pool_x/y/z, also the decoder's upsampling
    activation: str = "mish"
    num_classes: int = contracts.NUM_CLASSES
    input_shape: tuple[int, ...] = contracts.TENSOR_SHAPE

    def __post_init__(self) -> None:
        for name in ("stem_kernel", "kernel_size", "pool_size"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3 or min(value) < 1:
                raise ValueError(f"{name} must be 3 positive integers. Received: {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "dense_blocks", tuple(int(v) for v in self.dense_blocks))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        if not self.dense_blocks or min(self.dense_blocks) < 1:
            raise ValueError(f"dense_blocks must be positive integers. Received: {self.dense_blocks!r}")
        if self.stem_filters < 1 or self.block_size < 1:
            raise ValueError("stem_filters and block_size must be >= 1. "
                             f"Received: {self.stem_filters!r}, {self.block_size!r}")
        if self.num_classes != contracts.NUM_CLASSES:
            raise ValueError(f"num_classes must be {contracts.NUM_CLASSES} (contracts.LABEL_MAP). "
                             f"Received: {self.num_classes!r}")
        pools = len(self.dense_blocks)
        for axis, (size, pool) in enumerate(zip(self.input_shape[:3], self.pool_size, strict=True)):
            if size % pool**pools:
                raise ValueError(f"input axis {axis} of size {size} is not divisible by pool_size[{axis}]**"
                                 f"{pools} for {pools} poolings. Received: pool_size={self.pool_size!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (tuples as lists), for the model card."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def from_seg_config(config: SegConfig) -> Ml4hUnetConfig:
    """The ml4h wiring of a :class:`trainer.models.SegConfig`'s sizes (normalisation must be none, as in
    ml4h's run: ``--conv_normalize`` unset)."""
    if config.normalization != "none":
        raise ValueError(f"ml4h's ML4H_seg has no normalisation layers. Received: {config.normalization!r}")
    return Ml4hUnetConfig(stem_filters=config.stem_filters, stem_kernel=config.stem_kernel,
                          dense_blocks=config.dense_blocks, block_size=config.convs_per_block,
                          kernel_size=config.kernel_size, pool_size=config.pool_size,
                          activation=config.activation, num_classes=config.num_classes,
                          input_shape=config.input_shape)


def paper_config() -> Ml4hUnetConfig:
    """The released model's sizes: :mod:`trainer.models`' ``paper`` preset."""
    return from_seg_config(seg_config("paper"))


@dataclass(frozen=True)
class Node:
    """One Keras layer of the graph: its lvmass ``name``, Keras ``kind``, the settings that define it
    (``params``, in Keras' config vocabulary), the names of the layers it takes (in order) and where it
    sits in ml4h's factory (``role``, for error messages)."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    role: str = ""


def _conv(name: str, filters: int, kernel: Triple, source: str, role: str, *,
          activation: str = "linear", padding: str = "same") -> Node:
    return Node(name, CONV, {"filters": filters, "kernel_size": tuple(kernel), "padding": padding,
                             "activation": activation, "use_bias": True}, (source,), role)


def _dense_block(nodes: list[Node], source: str, filters: int, config: Ml4hUnetConfig, prefix: str,
                 role: str) -> str:
    """ml4h's ``DenseConvolutionalBlock``: conv j sees concat(block input, activations 0..j-1); the block
    returns the last activation only. Returns its name."""
    connections = [source]
    x = source
    for j in range(config.block_size):
        nodes.append(_conv(f"{prefix}_{j}_conv", filters, config.kernel_size, x, f"{role}, conv {j}"))
        x = f"{prefix}_{j}_{config.activation}"
        nodes.append(Node(x, ACTIVATION, {"activation": config.activation}, (f"{prefix}_{j}_conv",),
                          f"{role}, activation {j}"))
        if j < config.block_size - 1:
            connections.append(x)
            nodes.append(Node(f"{prefix}_concat{j + 1}", CONCATENATE, {"axis": -1}, tuple(connections),
                              f"{role}, dense concatenation {j + 1}"))
            x = f"{prefix}_concat{j + 1}"
    return x


def ml4h_unet_graph(config: Ml4hUnetConfig | None = None) -> tuple[Node, ...]:
    """The layers of ml4h's U-Net in a topological order (module docstring), the first being the input."""
    config = config or paper_config()
    pool = {"pool_size": config.pool_size}
    nodes = [Node(contracts.SIGNATURE_INPUT_IMAGE, INPUT, {"shape": config.input_shape}, (), "input")]
    nodes.append(_conv("stem_conv", config.stem_filters, config.stem_kernel, nodes[0].name,
                       "encoder stem conv (--conv_layers)"))
    stem = f"stem_{config.activation}"
    nodes.append(Node(stem, ACTIVATION, {"activation": config.activation}, ("stem_conv",),
                      "encoder stem activation"))
    nodes.append(Node("stem_pool", MAX_POOL, pool, (stem,), "encoder pool after the stem"))
    skips = [stem]
    x = "stem_pool"
    levels = len(config.dense_blocks)
    for level, filters in enumerate(config.dense_blocks):
        x = _dense_block(nodes, x, filters, config, f"down{level}", f"encoder dense block {level}")
        skips.append(x)
        if level < levels - 1:
            nodes.append(Node(f"down{level}_pool", MAX_POOL, pool, (x,), f"encoder pool after block {level}"))
            x = f"down{level}_pool"
    # the decoder: at level L (deepest first) concat(encoder block L's output, x) -> dense block -> upsample
    for level in reversed(range(levels)):
        nodes.append(Node(f"up{level}_skip", CONCATENATE, {"axis": -1}, (skips[level + 1], x),
                          f"decoder u-connection to encoder block {level}"))
        x = _dense_block(nodes, f"up{level}_skip", config.dense_blocks[level], config, f"up{level}",
                         f"decoder dense block {levels - 1 - level}")
        nodes.append(Node(f"up{level}_upsample", UPSAMPLE, {"size": config.pool_size}, (x,),
                          f"decoder upsampling {levels - 1 - level}"))
        x = f"up{level}_upsample"
    nodes.append(Node("head_skip", CONCATENATE, {"axis": -1}, (stem, x), "u-connection to the stem"))
    nodes.append(_conv("head_softmax", config.num_classes, (1, 1, 1), "head_skip",
                       "output conv (softmax over background / LV cavity / myocardium)",
                       activation="softmax", padding="valid"))
    return tuple(nodes)


def build_ml4h_unet(config: Ml4hUnetConfig | None = None, *, name: str = "ml4h_seg_released") -> keras.Model:
    """:func:`ml4h_unet_graph` as a Keras 3 model: ``{"image": (B, 256, 256, 13, 1)}`` -> softmax
    ``(B, 256, 256, 13, 3)`` float32, each layer named as its node."""
    graph = ml4h_unet_graph(config)
    tensors: dict[str, Any] = {}
    for node in graph:
        if node.kind == INPUT:
            tensors[node.name] = keras.Input(shape=node.params["shape"], name=node.name, dtype="float32")
            continue
        inputs = [tensors[source] for source in node.inputs]
        if node.kind == CONV:
            layer = layers.Conv3D(node.params["filters"], node.params["kernel_size"],
                                  padding=node.params["padding"], activation=node.params["activation"],
                                  use_bias=True, name=node.name, dtype="float32")
        elif node.kind == ACTIVATION:
            layer = layers.Activation(node.params["activation"], name=node.name)
        elif node.kind == CONCATENATE:
            layer = layers.Concatenate(axis=-1, name=node.name)
        elif node.kind == MAX_POOL:
            layer = layers.MaxPooling3D(node.params["pool_size"], name=node.name)
        elif node.kind == UPSAMPLE:
            layer = layers.UpSampling3D(node.params["size"], name=node.name)
        else:  # pragma: no cover - ml4h_unet_graph makes only the kinds above
            raise ValueError(f"unknown node kind {node.kind!r}")
        tensors[node.name] = layer(inputs if node.kind == CONCATENATE else inputs[0])
    image = graph[0].name
    return keras.Model({image: tensors[image]}, tensors[graph[-1].name], name=name)
