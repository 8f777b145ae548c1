"""A stand-in for ml4h's released ``sax_diastole_segment_no_flat.h5``, written byte-layout by byte-layout.

The real file (Git LFS, 15,191,464 bytes) cannot be fetched here. This writes what ml4h's training run
would have saved, from ml4h's own rules rather than from ``trainer.ml4h_arch`` (the code under test):

* the graph of ml4h's ``make_multimodal_multitask_model`` (``ml4h/models.py``, 2020) for
  ``--u_connect sax_all_diastole sax_all_diastole_segmented --bottleneck_type no_bottleneck``:
  ``ConvEncoder`` = a one-conv ``ResidualBlock`` (the stem), a max-pool, then dense blocks each followed by
  a pool except the last; ``ConvDecoder`` = per level ``concatenate([encoder intermediate, x])`` -> dense
  block -> upsample, then ``concatenate([stem, x])`` -> the 1x1x1 softmax conv named after the output
  TensorMap. A ``DenseConvolutionalBlock`` applies conv -> activation and, before every conv but the
  first, ``Concatenate()`` of the block input and all activations so far; it returns the last activation;
* ml4h's layer names: inputs and outputs from the TensorMaps (``input_sax_all_diastole_continuous``,
  ``output_sax_all_diastole_segmented_categorical``), every other layer named by Keras 2 from its class
  and the order the factory *constructed* it: the encoder's convs and activations first (block by
  block), its pools (one more than it uses), the decoder's convs and activations, its upsamplings (one
  more than it uses); ``Concatenate`` layers are made when called, so they count in call order;
* Keras 2's ``save_model_to_hdf5`` layout: ``model_config`` / ``training_config`` / ``keras_version``
  attributes, ``model_weights/<layer>/<layer>/kernel:0`` with ``weight_names`` and ``layer_names``
  attributes, and an ``optimizer_weights`` group holding RAdam's slots; activations recorded as
  TensorFlow Addons registered ``mish``: ``"Addons>mish"``;
* random weights (He-scaled, so that the softmax is far from uniform and every class wins somewhere).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "input_sax_all_diastole_continuous"
OUTPUT_NAME = "output_sax_all_diastole_segmented_categorical"
KERAS_VERSION = "2.4.0"


@dataclass
class _Graph:
    """Layers in call order, as Keras 2 lists them in ``model_config``."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, list[tuple[str, tuple[int, ...]]]] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def name(self, snake: str) -> str:
        """Keras 2's ``backend.unique_object_name``: ``conv3d``, ``conv3d_1``, ..."""
        n = self.counts[snake]
        self.counts[snake] += 1
        return snake if n == 0 else f"{snake}_{n}"

    def add(self, class_name: str, name: str, config: dict[str, Any], inputs: list[str]) -> str:
        config = {"name": name, "trainable": True, "dtype": "float32", **config}
        self.layers.append({"class_name": class_name, "config": config, "name": name,
                            "inbound_nodes": [[[source, 0, 0, {}] for source in inputs]] if inputs else []})
        return name


def _conv_config(filters: int, kernel: tuple[int, int, int], *, activation: str = "linear",
                 padding: str = "same") -> dict[str, Any]:
    return {"filters": filters, "kernel_size": list(kernel), "strides": [1, 1, 1], "padding": padding,
            "data_format": "channels_last", "dilation_rate": [1, 1, 1], "groups": 1, "activation": activation,
            "use_bias": True,
            "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None}


def ml4h_graph(*, conv_layers: int = 32, dense_blocks: tuple[int, ...] = (32, 32, 32), block_size: int = 3,
               kernel: tuple[int, int, int] = (3, 3, 3), pool: tuple[int, int, int] = (2, 2, 1),
               shape: tuple[int, int, int, int] = (256, 256, 13, 1),
               activation: str = "Addons>mish") -> _Graph:
    """The layers ml4h's factory builds for these command-line sizes (module docstring)."""
    g = _Graph()
    n = len(dense_blocks)
    # construction order: ResidualBlock (1 conv, 1 activation), dense blocks (convs, then activations)
    stem_conv, stem_act = g.name("conv3d"), g.name("activation")
    enc = [([g.name("conv3d") for _ in range(block_size)], [g.name("activation") for _ in range(block_size)])
           for _ in dense_blocks]
    pools = [g.name("max_pooling3d") for _ in range(n + 1)]
    dec = [([g.name("conv3d") for _ in range(block_size)], [g.name("activation") for _ in range(block_size)])
           for _ in dense_blocks]
    ups = [g.name("up_sampling3d") for _ in range(n + 1)]

    def conv(name: str, source: str, filters: int, k: tuple[int, int, int], **kw: Any) -> str:
        g.add("Conv3D", name, _conv_config(filters, k, **kw), [source])
        g.weights[name] = [("kernel:0", (*k, g.channels[source], filters)), ("bias:0", (filters,))]
        g.channels[name] = filters
        return name

    def act(name: str, source: str) -> str:
        g.add("Activation", name, {"activation": activation}, [source])
        g.channels[name] = g.channels[source]
        return name

    def concat(sources: list[str]) -> str:
        name = g.add("Concatenate", g.name("concatenate"), {"axis": -1}, sources)
        g.channels[name] = sum(g.channels[s] for s in sources)
        return name

    def one_input(class_name: str, name: str, config: dict[str, Any], source: str) -> str:
        g.add(class_name, name, config, [source])
        g.channels[name] = g.channels[source]
        return name

    def dense_block(x: str, filters: int, convs: list[str], acts: list[str]) -> str:
        connections = [x]
        for i, (c, a) in enumerate(zip(convs, acts, strict=True)):
            x = act(a, conv(c, x, filters, kernel))
            if i < block_size - 1:
                connections.append(x)
                x = concat(list(connections))
        return x

    g.add("InputLayer", INPUT_NAME, {"batch_input_shape": [None, *shape], "sparse": False, "ragged": False},
          [])
    g.channels[INPUT_NAME] = shape[-1]
    pool_config = {"pool_size": list(pool), "padding": "valid", "strides": list(pool),
                   "data_format": "channels_last"}
    x = act(stem_act, conv(stem_conv, INPUT_NAME, conv_layers, kernel))
    intermediates = [x]
    x = one_input("MaxPooling3D", pools[0], pool_config, x)
    for i, filters in enumerate(dense_blocks):
        x = dense_block(x, filters, *enc[i])
        intermediates.append(x)
        if i < n - 1:
            x = one_input("MaxPooling3D", pools[i + 1], pool_config, x)
    for i, filters in enumerate(dense_blocks[::-1]):
        x = concat([intermediates[-(i + 1)], x])
        x = dense_block(x, filters, *dec[i])
        x = one_input("UpSampling3D", ups[i], {"size": list(pool), "data_format": "channels_last"}, x)
    x = concat([intermediates[0], x])
    conv(OUTPUT_NAME, x, 3, (1, 1, 1), activation="softmax", padding="valid")
    return g


def random_weights(graph: _Graph, seed: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """He-normal kernels and small random biases, so activations neither vanish nor explode."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer, specs in graph.weights.items():
        arrays = []
        for weight, shape in specs:
            if weight.startswith("kernel"):
                fan_in = int(np.prod(shape[:-1]))
                arrays.append((weight, rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)))
            else:
                arrays.append((weight, rng.normal(0.0, 0.1, shape).astype(np.float32)))
        out[layer] = arrays
    return out


def write_standin(path: Path, *, seed: int = 0, with_optimizer: bool = True, **sizes: Any) -> Path:
    """Write the stand-in ``.h5`` (module docstring) with ml4h's sizes overridden by ``sizes`` (the
    keywords of :func:`ml4h_graph`); returns ``path``."""
    import h5py

    graph = ml4h_graph(**sizes)
    weights = random_weights(graph, seed)
    model_config = {"class_name": "Functional", "config": {
        "name": "functional_1", "layers": graph.layers,
        "input_layers": [[INPUT_NAME, 0, 0]], "output_layers": [[OUTPUT_NAME, 0, 0]]},
        "keras_version": KERAS_VERSION, "backend": "tensorflow"}
    training_config = {
        "loss": "categorical_crossentropy",
        "metrics": [["categorical_accuracy", "background_precision", "ventricle_precision",
                     "myocardium_precision", "background_recall", "ventricle_recall", "myocardium_recall"]],
        "optimizer_config": {"class_name": "RectifiedAdam", "config": {
            "name": "RectifiedAdam", "learning_rate": 0.0002, "beta_1": 0.9, "beta_2": 0.999,
            "epsilon": 1e-07, "weight_decay": 0.0, "amsgrad": False, "sma_threshold": 5.0,
            "total_steps": 0, "warmup_proportion": 0.1, "min_lr": 0.0}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = KERAS_VERSION.encode()
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(model_config).encode()
        f.attrs["training_config"] = json.dumps(training_config).encode()
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [layer["name"].encode() for layer in graph.layers]
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = KERAS_VERSION.encode()
        for layer in graph.layers:
            layer_group = group.create_group(layer["name"])
            arrays = weights.get(layer["name"], [])
            layer_group.attrs["weight_names"] = np.array([f"{layer['name']}/{w}".encode() for w, _ in arrays])
            for weight, array in arrays:
                layer_group.create_dataset(f"{layer['name']}/{weight}", data=array)
        if with_optimizer:
            optimizer = f.create_group("optimizer_weights")
            names = ["RectifiedAdam/iter:0"]
            optimizer.create_dataset("RectifiedAdam/iter:0", data=np.int64(1234))
            for layer, arrays in weights.items():
                for weight, array in arrays:
                    for slot in ("m", "v"):
                        name = f"RectifiedAdam/{layer}/{weight.split(':')[0]}/{slot}:0"
                        names.append(name)
                        optimizer.create_dataset(name, data=np.zeros_like(array))
            optimizer.attrs["weight_names"] = [n.encode() for n in names]
    return path


def legacy_keras_model(path: Path):
    """The independent forward pass: Keras 3's own reader of Keras 2 ``.h5`` files (it rebuilds the model
    from the file's ``model_config`` and loads the weights by layer name), with TensorFlow Addons' mish
    supplied as the custom object ml4h's runs registered. Shares no code with ``trainer.ml4h_*``."""
    import keras

    return keras.models.load_model(str(path), compile=False,
                                   custom_objects={"Addons>mish": keras.activations.mish,
                                                   "mish": keras.activations.mish})
