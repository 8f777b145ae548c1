"""Match a Keras 2 file's layers to ml4h's U-Net (:mod:`trainer.ml4h_arch`), layer by layer, and pick its
weights with a shape check. Pure: plain data in (:class:`trainer.ml4h_h5.FileLayer`), plain data out.

Why a graph match and not layer names: Keras 2 named ml4h's layers by class and creation order
(``conv3d_7``, ``activation_12``, ``concatenate_3``), which depends on what else the session had built;
only the wiring is stable. :func:`match_layers` walks the expected graph from the input, in topological
order, and for each node takes the file layer that consumes exactly the file layers already matched to the
node's inputs (in the same order: a concatenation's order decides which kernel rows see which channels),
then checks its class and settings. The first node without a fitting layer raises
:class:`ArchitectureMismatch` naming the file's layer that is there instead (or the layer after which the
expected one is missing); a file layer left over at the end is named too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.ml4h_arch import (
    ACTIVATION,
    CONCATENATE,
    CONV,
    INPUT,
    MAX_POOL,
    UPSAMPLE,
    Ml4hUnetConfig,
    Node,
)
from trainer.ml4h_h5 import FileLayer

# Keras 2 spells some classes two ways; the config records the class the code named
CLASS_ALIASES = {"MaxPool3D": MAX_POOL, "Convolution3D": CONV, "Conv3d": CONV}
# how Keras 2 recorded TensorFlow Addons' mish (registered as "Addons>mish"), or by its own name
ACTIVATION_ALIASES = {"Addons>mish": "mish", "addons>mish": "mish"}


class ArchitectureMismatch(ValueError):
    """The file is not ml4h's U-Net of the expected sizes; the message names the first layer that does not
    fit and what ml4h's graph has there."""


@dataclass(frozen=True)
class ImportPlan:
    """Which file layer each node is (``layer_map``: node name -> file layer name) and each conv node's
    ``[kernel, bias]`` from the file, shapes checked."""

    layer_map: dict[str, str]
    weights: dict[str, list[np.ndarray]]


def activation_name(value: Any) -> str:
    """A Keras 2 activation setting as a plain name: ``"Addons>mish"`` and the serialised-function dicts
    of later Keras 2 releases become ``"mish"``."""
    if isinstance(value, dict):
        value = value.get("registered_name") or value.get("config") or value.get("class_name")
    text = str(value)
    return ACTIVATION_ALIASES.get(text, text.split(">")[-1])


def _triple(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value, value)
    return tuple(int(v) for v in value)


def _input_shape(layer: FileLayer) -> tuple[Any, ...] | None:
    shape = layer.config.get("batch_input_shape") or layer.config.get("batch_shape")
    return None if shape is None else tuple(shape[1:])


def difference(node: Node, layer: FileLayer) -> str | None:
    """How ``layer`` differs from ``node`` (the first difference, in words), or None when it fits."""
    kind = CLASS_ALIASES.get(layer.class_name, layer.class_name)
    if kind != node.kind:
        return f"is a {layer.class_name}, expected a {node.kind}"
    c, p = layer.config, node.params
    if kind == INPUT:
        shape = _input_shape(layer)
        if shape != tuple(p["shape"]):
            return f"takes shape {shape}, expected {tuple(p['shape'])}"
    elif kind == CONV:
        checks = (("filters", c.get("filters"), p["filters"]),
                  ("kernel_size", _triple(c.get("kernel_size")), tuple(p["kernel_size"])),
                  ("strides", _triple(c.get("strides", 1)), (1, 1, 1)),
                  ("dilation_rate", _triple(c.get("dilation_rate", 1)), (1, 1, 1)),
                  ("activation", activation_name(c.get("activation", "linear")), p["activation"]),
                  ("use_bias", bool(c.get("use_bias", True)), True),
                  ("groups", int(c.get("groups", 1)), 1),
                  ("data_format", c.get("data_format") or "channels_last", "channels_last"))
        for key, got, want in checks:
            if got != want:
                return f"has {key} {got!r}, expected {want!r}"
        one_by_one = tuple(p["kernel_size"]) == (1, 1, 1)
        if not one_by_one and c.get("padding", "valid") != p["padding"]:
            return f"has padding {c.get('padding')!r}, expected {p['padding']!r}"
    elif kind == ACTIVATION:
        if activation_name(c.get("activation")) != p["activation"]:
            return f"has activation {activation_name(c.get('activation'))!r}, expected {p['activation']!r}"
    elif kind == CONCATENATE:
        if int(c.get("axis", -1)) not in (-1, 4):
            return f"concatenates along axis {c.get('axis')!r}, expected the channels (-1)"
    elif kind == MAX_POOL:
        pool = _triple(c.get("pool_size"))
        strides = _triple(c.get("strides")) or pool
        if pool != tuple(p["pool_size"]) or strides != pool or c.get("padding", "valid") != "valid":
            return (f"pools {pool} with strides {strides} and padding {c.get('padding')!r}, expected "
                    f"{tuple(p['pool_size'])}, non-overlapping, 'valid'")
    elif kind == UPSAMPLE:
        if _triple(c.get("size")) != tuple(p["size"]):
            return f"upsamples by {_triple(c.get('size'))}, expected {tuple(p['size'])}"
    return None


def _where(node: Node) -> str:
    return f"ml4h's U-Net has {node.role} there ({node.kind}, lvmass layer {node.name!r})"


def match_layers(layers: Sequence[FileLayer], input_layers: Sequence[str], output_layers: Sequence[str],
                 graph: Sequence[Node]) -> dict[str, str]:
    """``{node name: file layer name}`` for every node of ``graph`` (module docstring). Raises
    :class:`ArchitectureMismatch` naming the first file layer that does not fit."""
    if len(input_layers) != 1 or len(output_layers) != 1:
        raise ArchitectureMismatch(f"the model has inputs {list(input_layers)} and outputs "
                                   f"{list(output_layers)}; ml4h's ML4H_seg has one of each")
    by_name = {layer.name: layer for layer in layers}
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for node in graph:
        if node.kind == INPUT:
            candidates = [by_name[input_layers[0]]]
        else:
            sources = tuple(mapping[name] for name in node.inputs)
            candidates = [layer for layer in layers if layer.inputs == sources and layer.name not in used]
            if not candidates:
                intruders = [layer for layer in layers
                             if layer.name not in used and set(layer.inputs) & set(sources)]
                if intruders:
                    layer = intruders[0]
                    raise ArchitectureMismatch(
                        f"layer {layer.name!r} ({layer.class_name} of {list(layer.inputs)}) does not fit: "
                        f"{_where(node)}, taking {list(sources)}")
                raise ArchitectureMismatch(
                    f"layer {sources[-1]!r} is not followed by what {_where(node)}: no layer takes "
                    f"{list(sources)}")
        fitting = [layer for layer in candidates if difference(node, layer) is None]
        if not fitting:
            layer = candidates[0]
            raise ArchitectureMismatch(f"layer {layer.name!r} ({layer.class_name}) does not fit: it "
                                       f"{difference(node, layer)}; {_where(node)}")
        mapping[node.name] = fitting[0].name
        used.add(fitting[0].name)
    extra = [layer for layer in layers if layer.name not in used]
    if extra:
        first = extra[0]
        raise ArchitectureMismatch(f"layer {first.name!r} ({first.class_name} of {list(first.inputs)}) is "
                                   f"not part of ml4h's U-Net ({len(extra)} layer(s) left over)")
    if output_layers[0] != mapping[graph[-1].name]:
        raise ArchitectureMismatch(f"the model's output is layer {output_layers[0]!r}; ml4h's U-Net ends in "
                                   f"{mapping[graph[-1].name]!r}")
    return mapping


def channels(graph: Sequence[Node]) -> dict[str, int]:
    """Output channels of every node (a concatenation adds its inputs')."""
    out: dict[str, int] = {}
    for node in graph:
        if node.kind == INPUT:
            out[node.name] = int(node.params["shape"][-1])
        elif node.kind == CONV:
            out[node.name] = int(node.params["filters"])
        elif node.kind == CONCATENATE:
            out[node.name] = sum(out[name] for name in node.inputs)
        else:
            out[node.name] = out[node.inputs[0]]
    return out


def plan_import(layers: Sequence[FileLayer], input_layers: Sequence[str], output_layers: Sequence[str],
                weights: Mapping[str, Sequence[tuple[str, np.ndarray]]], graph: Sequence[Node]) -> ImportPlan:
    """Match the layers (:func:`match_layers`) and take each conv's kernel and bias from ``weights``
    (``{file layer: [(weight name, array)]}``), checking their shapes against the graph's.

    Raises :class:`ArchitectureMismatch` naming the layer and weight whose shape does not fit, or a conv
    whose weights are missing; a layer without weights in the graph must have none in the file.
    """
    mapping = match_layers(layers, input_layers, output_layers, graph)
    widths = channels(graph)
    picked: dict[str, list[np.ndarray]] = {}
    for node in graph:
        file_name = mapping[node.name]
        arrays = list(weights.get(file_name, []))
        if node.kind != CONV:
            if arrays:
                raise ArchitectureMismatch(f"layer {file_name!r} holds weights {[n for n, _ in arrays]}; "
                                           f"{_where(node)}, which has none")
            continue
        cin = widths[node.inputs[0]]
        wanted = {"kernel": (*node.params["kernel_size"], cin, node.params["filters"]),
                  "bias": (node.params["filters"],)}
        found: dict[str, np.ndarray] = {}
        for weight_name, array in arrays:
            key = weight_name.rsplit("/", 1)[-1].split(":")[0]
            if key not in wanted:
                raise ArchitectureMismatch(f"layer {file_name!r} holds an unexpected weight {weight_name!r}; "
                                           f"{_where(node)}, with a kernel and a bias")
            if tuple(array.shape) != wanted[key]:
                raise ArchitectureMismatch(f"layer {file_name!r} weight {weight_name!r} has shape "
                                           f"{tuple(array.shape)}, expected {wanted[key]}; {_where(node)}")
            found[key] = np.asarray(array, dtype=np.float32)
        missing = [key for key in wanted if key not in found]
        if missing:
            raise ArchitectureMismatch(f"layer {file_name!r} lacks its {' and '.join(missing)} in the file's "
                                       f"model_weights; {_where(node)}")
        picked[node.name] = [found["kernel"], found["bias"]]
    return ImportPlan(layer_map=mapping, weights=picked)


def _depths(layers: Sequence[FileLayer]) -> dict[str, int]:
    """Longest path from an input, per layer (the file's list is not always in call order)."""
    by_name = {layer.name: layer for layer in layers}
    depth: dict[str, int] = {}

    def visit(name: str, trail: tuple[str, ...] = ()) -> int:
        if name in depth:
            return depth[name]
        if name in trail or name not in by_name:
            raise ArchitectureMismatch(f"layer {name!r}: the graph has a cycle or a missing layer")
        sources = by_name[name].inputs
        depth[name] = 1 + max((visit(s, (*trail, name)) for s in sources), default=-1)
        return depth[name]

    for layer in layers:
        visit(layer.name)
    return depth


def infer_config(layers: Sequence[FileLayer], input_layers: Sequence[str]) -> Ml4hUnetConfig:
    """The sizes of an ml4h U-Net of any width (``--any_size``): the stem conv that takes the input, one
    max-pooling per dense block, ``2 + 2 x blocks x block_size`` convs, each block's width from the conv
    after its pooling. The graph is then matched in full (:func:`match_layers`); this only reads sizes.

    Raises :class:`ArchitectureMismatch` naming the layer where the file stops looking like one.
    """
    if len(input_layers) != 1:
        raise ArchitectureMismatch(f"the model has inputs {list(input_layers)}; ml4h's ML4H_seg has one")
    by_name = {layer.name: layer for layer in layers}
    source = by_name[input_layers[0]]
    shape = _input_shape(source)
    if not shape or len(shape) != 4:
        raise ArchitectureMismatch(f"input layer {source.name!r} takes shape {shape}: ml4h's ML4H_seg takes "
                                   "(rows, columns, slices, 1)")

    def consumer(name: str, kind: str) -> FileLayer:
        for layer in layers:
            if layer.inputs == (name,) and CLASS_ALIASES.get(layer.class_name, layer.class_name) == kind:
                return layer
        raise ArchitectureMismatch(f"layer {name!r} is not followed by a {kind}, as ml4h's U-Net is there")

    stem = consumer(source.name, CONV)
    stem_activation = consumer(stem.name, ACTIVATION)
    depth = _depths(layers)
    pools = sorted((layer for layer in layers if CLASS_ALIASES.get(layer.class_name, layer.class_name)
                    == MAX_POOL), key=lambda layer: depth[layer.name])
    convs = [layer for layer in layers if CLASS_ALIASES.get(layer.class_name, layer.class_name) == CONV]
    if not pools:
        raise ArchitectureMismatch(f"layer {stem_activation.name!r} is not followed by a MaxPooling3D, as "
                                   "ml4h's U-Net is after its stem")
    block_size, remainder = divmod(len(convs) - 2, 2 * len(pools))
    if block_size < 1 or remainder:
        raise ArchitectureMismatch(f"the file has {len(convs)} Conv3D layers and {len(pools)} poolings: "
                                   "ml4h's U-Net has 2 + 2 x poolings x block_size")
    first_convs = [consumer(pool.name, CONV) for pool in pools]
    return Ml4hUnetConfig(
        stem_filters=int(stem.config["filters"]), stem_kernel=_triple(stem.config["kernel_size"]),
        dense_blocks=tuple(int(c.config["filters"]) for c in first_convs), block_size=block_size,
        kernel_size=_triple(first_convs[0].config["kernel_size"]),
        pool_size=_triple(pools[0].config["pool_size"]),
        activation=activation_name(stem_activation.config.get("activation")),
        input_shape=tuple(int(v) for v in shape))
