"""ML4H_seg on a crop, computing each layer only where the kept window needs it.

The pipeline segments a heart-centred crop and keeps only its inner window (the crop less a margin on each
side, ``beam_pipeline.inference``): labels in the margin band are never used. A U-Net's encoder needs the
whole crop (its deep layers see far), but its decoder does not: the last convolution at full resolution
needs the kept window plus one pixel, the one before it two, and so on down the levels. In the bundled
ML4H_seg two thirds of the operations are in the decoder, most of them in the margin band.

:func:`window_demands` walks the functional graph backwards from the output and gives every layer input
the inset (pixels cut from each in-plane side, at that tensor's own resolution) that still holds what the
layer's output needs: a k-wide convolution needs ``(k - 1) / 2`` more, a pooling of p needs p times the
inset, an upsampling by p the inset divided by p, rounded down. A tensor is computed at the smallest
inset any of its consumers asks for. :func:`windowed_forward` then runs the layers on those cut tensors.

Why the values are the same as on the whole crop: every tensor keeps only positions whose inputs were all
present (a cut edge is at least the convolution's radius away), or that lie on the crop's own edge, where
the zero padding is the same as on the whole crop; insets of pooled tensors are multiples of the pooling
so the pooling windows do not move. Only floating-point rounding may differ (kernels block differently
for other shapes), which the tests measure.
"""

from __future__ import annotations

from typing import Any

import keras

from lvmass.core import contracts

POINTWISE = (keras.layers.Activation, keras.layers.BatchNormalization, keras.layers.Dropout,
             keras.layers.Concatenate, keras.layers.Add, keras.layers.Multiply, keras.layers.InputLayer)


def _producers(layer: keras.layers.Layer) -> list[str]:
    if isinstance(layer, keras.layers.InputLayer):
        return []
    if len(layer._inbound_nodes) != 1:
        raise ValueError(f"layer {layer.name} is called {len(layer._inbound_nodes)} times; "
                         "windowed inference needs each layer called once")
    inputs = keras.tree.flatten(layer._inbound_nodes[0].input_tensors)
    return [t._keras_history.operation.name for t in inputs]


def _in_plane_square(name: str, values: Any) -> int:
    rows, cols = (int(v) for v in tuple(values)[:2])
    if rows != cols:
        raise ValueError(f"layer {name}: rows and columns must be treated alike for windowed inference. "
                         f"Received: {tuple(values)}")
    return rows


def _input_inset(layer: keras.layers.Layer, output_inset: int) -> int:
    """The inset of this layer's inputs that still gives its output at ``output_inset``."""
    if isinstance(layer, keras.layers.Conv3D):
        kernel = _in_plane_square(layer.name, layer.kernel_size)
        if (layer.padding != "same" and kernel != 1) or _in_plane_square(layer.name, layer.strides) != 1:
            raise ValueError(f"layer {layer.name}: windowed inference needs stride-1 'same' convolutions")
        radius = (kernel - 1) // 2 * _in_plane_square(layer.name, layer.dilation_rate)
        return max(0, output_inset - radius)
    if isinstance(layer, keras.layers.MaxPooling3D | keras.layers.AveragePooling3D):
        pool = _in_plane_square(layer.name, layer.pool_size)
        strides = layer.strides if layer.strides is not None else layer.pool_size
        if layer.padding != "valid" or _in_plane_square(layer.name, strides) != pool:
            raise ValueError(f"layer {layer.name}: windowed inference needs non-overlapping 'valid' pooling")
        return output_inset * pool
    if isinstance(layer, keras.layers.UpSampling3D):
        return output_inset // _in_plane_square(layer.name, layer.size)
    if isinstance(layer, POINTWISE):
        if isinstance(layer, keras.layers.Concatenate) and layer.axis not in (-1, 4):
            raise ValueError(f"layer {layer.name}: windowed inference needs concatenation along channels")
        return output_inset
    raise ValueError(f"layer {layer.name} ({type(layer).__name__}) is not supported by windowed inference")


def _output_inset(layer: keras.layers.Layer, input_inset: int) -> int:
    """The inset of what this layer computes from inputs at ``input_inset``."""
    if isinstance(layer, keras.layers.MaxPooling3D | keras.layers.AveragePooling3D):
        return input_inset // _in_plane_square(layer.name, layer.pool_size)
    if isinstance(layer, keras.layers.UpSampling3D):
        return input_inset * _in_plane_square(layer.name, layer.size)
    return input_inset


def window_demands(model: keras.Model, margin_px: int) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
    """Per layer input ``(layer name, input index)`` the inset it is given, and per layer the inset its
    output is computed at, for an output at ``margin_px`` (module docstring).

    Raises ``ValueError`` for a graph it cannot window (a layer it does not know, one called twice, more
    than one output).
    """
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0. Received: {margin_px}")
    outputs = keras.tree.flatten(model.outputs)
    if len(outputs) != 1:
        raise ValueError(f"windowed inference needs one output. Received: {len(outputs)}")
    wanted: dict[str, int] = {outputs[0]._keras_history.operation.name: margin_px}
    edges: dict[tuple[str, int], int] = {}
    for layer in reversed(model.layers):
        if layer.name not in wanted:
            continue
        inset = _input_inset(layer, wanted[layer.name])
        for index, producer in enumerate(_producers(layer)):
            edges[(layer.name, index)] = inset
            wanted[producer] = min(wanted.get(producer, inset), inset)
    computed: dict[str, int] = {}
    for layer in model.layers:
        if layer.name not in wanted:
            continue
        producers = _producers(layer)
        if not producers:
            computed[layer.name] = wanted[layer.name]
            continue
        computed[layer.name] = _output_inset(layer, edges[(layer.name, 0)])
    return edges, computed


def _cut(x: Any, inset: int) -> Any:
    if inset == 0:
        return x
    return x[:, inset:-inset, inset:-inset]


def windowed_forward(model: keras.Model, image: Any, margin_px: int) -> Any:
    """``model``'s output on the crop ``image`` (B, rows, cols, slices, 1), less ``margin_px`` on each
    in-plane side: (B, rows - 2 margin, cols - 2 margin, ...), computing each layer only where needed.

    ``model`` takes ``{"image": ...}`` (``contracts.SIGNATURE_INPUT_IMAGE``), as ML4H_seg does. The crop's
    sides and its origin on the full grid must be multiples of the in-plane pooling, as for any crop.
    """
    edges, computed = window_demands(model, margin_px)
    values: dict[str, tuple[Any, int]] = {}
    output_name = keras.tree.flatten(model.outputs)[0]._keras_history.operation.name
    for layer in model.layers:
        if layer.name not in computed:
            continue
        producers = _producers(layer)
        if not producers:
            if layer.name != contracts.SIGNATURE_INPUT_IMAGE:
                raise ValueError(f"windowed inference takes one input, {contracts.SIGNATURE_INPUT_IMAGE!r}. "
                                 f"Received: {layer.name!r}")
            values[layer.name] = (_cut(image, computed[layer.name]), computed[layer.name])
            continue
        inputs = []
        for index, producer in enumerate(producers):
            tensor, inset = values[producer]
            inputs.append(_cut(tensor, edges[(layer.name, index)] - inset))
        if isinstance(layer, keras.layers.Concatenate | keras.layers.Add | keras.layers.Multiply):
            result = layer(inputs, training=False)
        else:
            result = layer(inputs[0], training=False)
        values[layer.name] = (result, computed[layer.name])
    tensor, inset = values[output_name]
    return _cut(tensor, margin_px - inset)
