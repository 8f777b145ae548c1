"""Read a Keras 2 whole-model ``.h5`` (what ml4h's ``ModelCheckpoint`` wrote) as plain data, with h5py only.

Why not ``keras.models.load_model``: ml4h's files name custom objects that only exist with ml4h and
TensorFlow Addons installed (the ``Addons>mish`` activation, the ``RectifiedAdam`` optimizer, ml4h's
per-class metrics in the training config), and the importer needs the graph itself, to check it, not a
model built from it. The layout read here is Keras 2's ``save_model_to_hdf5``:

* file attributes ``model_config`` (JSON: ``{"class_name": "Functional" | "Model", "config": {"layers":
  [...], "input_layers": ..., "output_layers": ...}}``), ``training_config`` (JSON: optimizer, loss,
  metrics), ``keras_version``, ``backend``;
* group ``model_weights``: attribute ``layer_names``; per layer a group whose attribute ``weight_names``
  lists its arrays in order (``conv3d_4/kernel:0``, ``conv3d_4/bias:0``), stored under those paths;
* group ``optimizer_weights`` (when saved with the optimizer): the optimizer's slots, not needed to infer.

Each layer of ``model_config`` carries ``inbound_nodes``: Keras 2 writes one list per call, each a list of
``[layer_name, node_index, tensor_index, kwargs]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FileLayer:
    """One layer of a file's ``model_config``: name, Keras class, config and the layers it takes."""

    name: str
    class_name: str
    config: dict[str, Any]
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Keras2File:
    """What the importer needs from a Keras 2 ``.h5``: the graph, the weights by layer, and provenance."""

    path: str
    sha256: str
    size_bytes: int
    keras_version: str
    model_class: str
    layers: tuple[FileLayer, ...]
    input_layers: tuple[str, ...]
    output_layers: tuple[str, ...]
    # layer name -> [(weight name, array)] in the file's order
    weights: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    optimizer_weight_count: int = 0

    @property
    def optimizer(self) -> str | None:
        """The optimizer's class name in the training config (``RectifiedAdam`` for ml4h's ``radam``)."""
        optimizer = self.training_config.get("optimizer_config") or {}
        return optimizer.get("class_name")


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


def _names(values: Any) -> list[str]:
    return [_text(v) for v in np.atleast_1d(values)] if values is not None else []


def _inbound(name: str, raw: Any) -> tuple[str, ...]:
    """The producers of a layer's only call; ``ValueError`` when it is called more than once."""
    if not raw:
        return ()
    if len(raw) != 1:
        raise ValueError(f"layer {name!r} is called {len(raw)} times; an ML4H_seg graph calls each layer "
                         "once")
    node = raw[0]
    if isinstance(node, dict):  # Keras 3 style: {"args": [...], "kwargs": {...}}, not ml4h's, but legible
        raise ValueError(f"layer {name!r}: inbound nodes in the Keras 3 format; expected a Keras 2 file")
    return tuple(_text(entry[0]) for entry in node)


def parse_model_config(model_config: dict[str, Any]) -> tuple[tuple[FileLayer, ...], tuple[str, ...],
                                                                 tuple[str, ...]]:
    """(layers, input layer names, output layer names) of a Keras 2 functional ``model_config``.

    Raises ``ValueError`` for a model that is not functional (a ``Sequential`` has no graph to match).
    """
    class_name = model_config.get("class_name")
    if class_name not in ("Functional", "Model"):
        raise ValueError(f"model_config class {class_name!r}: expected a functional model (Functional/Model)")
    config = model_config.get("config") or {}
    layers = tuple(FileLayer(name=_text(layer["config"].get("name", layer.get("name"))),
                             class_name=_text(layer["class_name"]), config=dict(layer["config"]),
                             inputs=_inbound(_text(layer.get("name", "")), layer.get("inbound_nodes")))
                   for layer in config.get("layers", []))
    inputs = tuple(_text(entry[0]) for entry in config.get("input_layers", []))
    outputs = tuple(_text(entry[0]) for entry in config.get("output_layers", []))
    return layers, inputs, outputs


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_keras2_h5(path: str) -> Keras2File:
    """Read ``path`` (a Keras 2 whole-model ``.h5``). Raises ``ValueError`` naming the file when it is not
    one: not HDF5, no ``model_config`` (a weights-only file), no ``model_weights``."""
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(200)
    if head.startswith(b"version https://git-lfs"):
        raise ValueError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull --include "
                         f"{os.path.basename(path)}` in the ml4h clone first")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not an HDF5 file")
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(f"{path} has no model_config attribute: a weights-only file; the importer needs "
                             "the whole model Keras saved (model.save), as ml4h's model zoo ships it")
        model_config = json.loads(_text(f.attrs["model_config"]))
        training = f.attrs.get("training_config")
        training_config = json.loads(_text(training)) if training is not None else {}
        layers, inputs, outputs = parse_model_config(model_config)
        if "model_weights" not in f:
            raise ValueError(f"{path} has no model_weights group")
        group = f["model_weights"]
        weights: dict[str, list[tuple[str, np.ndarray]]] = {}
        for layer_name in _names(group.attrs.get("layer_names")):
            layer_group = group[layer_name]
            weights[layer_name] = [(name, np.asarray(layer_group[name]))
                                   for name in _names(layer_group.attrs.get("weight_names"))]
        optimizer_count = (len(_names(f["optimizer_weights"].attrs.get("weight_names")))
                           if "optimizer_weights" in f else 0)
        keras_version = _text(f.attrs.get("keras_version", model_config.get("keras_version", "unknown")))
    return Keras2File(path=path, sha256=file_sha256(path), size_bytes=os.path.getsize(path),
                      keras_version=keras_version, model_class=_text(model_config.get("class_name")),
                      layers=layers, input_layers=inputs, output_layers=outputs, weights=weights,
                      training_config=training_config, optimizer_weight_count=optimizer_count)
