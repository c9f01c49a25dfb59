"""Batch normalisation folded into the convolution before it, for serving.

At inference a BatchNormalization layer is a per-channel affine map with frozen statistics,
``y = gamma * (x - mean) / sqrt(var + eps) + beta``; when ``x`` is a convolution's linear output
the map can be written into that convolution's kernel and bias (Jacob et al., CVPR 2018, §3.2).
The installed files stay as trained (their checksums and weights id unchanged); only the graph
built in memory loses the 134 BatchNormalization layers of the hybrid, whose 536 variables cost
about a third of its build time at start-up (measured in the README, "Start-up").

Everything here works on the Keras functional config (``model.json``) and the weight arrays in
``model.weights`` order, so it runs before Keras is imported. Anything it does not recognise is
left as it is: a layer class whose weights it cannot count makes it return its input unchanged.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable

import numpy as np

__all__ = ["FOLDABLE", "fold_batch_norm", "layer_weights", "weight_counts"]

# Layers that hold no weights in a served model.
WEIGHTLESS = frozenset(
    {
        "Activation", "Add", "AveragePooling2D", "CenterCrop", "Concatenate", "Dropout",
        "Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Identity", "InputLayer",
        "MaxPooling2D", "Multiply", "ReLU", "Rescaling", "Reshape", "Resizing",
        "UnitNormalization", "ZeroPadding2D",
    }
)  # fmt: skip
# Convolutions whose output channels a following batch normalisation can be folded into.
FOLDABLE = frozenset({"Conv2D", "SeparableConv2D", "DepthwiseConv2D"})


def _count(layer: dict) -> int | None:
    cls, cfg = layer["class_name"], layer["config"]
    if cls in WEIGHTLESS:
        return 0
    if cls in ("Conv2D", "DepthwiseConv2D", "Dense"):
        return 1 + bool(cfg.get("use_bias", True))
    if cls == "SeparableConv2D":
        return 2 + bool(cfg.get("use_bias", True))
    if cls == "BatchNormalization":
        return bool(cfg.get("scale", True)) + bool(cfg.get("center", True)) + 2
    return None


def weight_counts(config: dict) -> list[int] | None:
    """How many weight arrays each layer of a functional ``config`` holds (None: unknown)."""
    counts = [_count(layer) for layer in config["config"]["layers"]]
    return None if None in counts else counts


def _history_refs(node) -> Iterable[list]:
    """Every ``keras_history`` triple inside a layer's inbound-node structure."""
    if isinstance(node, dict):
        if "keras_history" in node:
            yield node["keras_history"]
        for value in node.values():
            yield from _history_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _history_refs(value)


def layer_weights(config: dict, arrays: list[np.ndarray]) -> dict[str, list[np.ndarray]] | None:
    """``arrays`` (in ``model.weights`` order) split by layer name, or None if they do not fit."""
    counts = weight_counts(config)
    if counts is None or sum(counts) != len(arrays):
        return None
    by_name, start = {}, 0
    for layer, count in zip(config["config"]["layers"], counts, strict=True):
        if count:
            by_name[layer["name"]] = list(arrays[start : start + count])
        start += count
    return by_name


def _output_refs(config: dict) -> list[list]:
    """The model's output references: one ``[name, node, index]`` or a list of them."""
    outputs = config["config"]["output_layers"]
    return [outputs] if outputs and isinstance(outputs[0], str) else list(outputs)


def fold_batch_norm(
    config: dict, arrays: list[np.ndarray], keep: Iterable[str] = ()
) -> tuple[dict, dict[str, list[np.ndarray]]] | None:
    """``config`` with each foldable BatchNormalization merged into its conv, and the weights.

    A BatchNormalization is folded when its only input is a linear Conv2D, SeparableConv2D or
    DepthwiseConv2D read by nothing else, both are called once, its axis is the channel axis,
    and neither is named in ``keep`` (layers read by name: Grad-CAM targets, the head).

    Returns the new config and each weighted layer's arrays by layer name (Keras orders the
    weights of a rebuilt graph by its own traversal, which changes when layers go), or None when
    ``config`` is not a functional model whose weights this module can account for. The
    arguments are not changed.
    """
    by_name = layer_weights(config, arrays) if config.get("class_name") == "Functional" else None
    if by_name is None:
        return None
    layers = config["config"]["layers"]
    keep = set(keep)
    index = {layer["name"]: i for i, layer in enumerate(layers)}
    readers = Counter(ref[0] for layer in layers for ref in _history_refs(layer["inbound_nodes"]))
    readers.update(ref[0] for ref in _output_refs(config))

    folded: dict[str, str] = {}  # batch-norm name -> conv name
    for layer in layers:
        nodes = layer["inbound_nodes"]
        sources = list(_history_refs(nodes))
        if (
            layer["class_name"] != "BatchNormalization"
            or layer["name"] in keep
            or len(nodes) != 1
            or len(sources) != 1
            or sources[0][0] not in index
        ):
            continue
        conv = layers[index[sources[0][0]]]
        cfg = conv["config"]
        if (
            conv["class_name"] not in FOLDABLE
            or conv["name"] in keep
            or len(conv["inbound_nodes"]) != 1
            or readers[conv["name"]] != 1
            or cfg.get("activation", "linear") != "linear"
            or cfg.get("data_format", "channels_last") != "channels_last"
            or layer["config"].get("axis") not in (-1, 3, [-1], [3])
        ):
            continue
        bn_cfg = layer["config"]
        bn = by_name.pop(layer["name"])
        gamma = bn.pop(0) if bn_cfg.get("scale", True) else 1.0
        beta = bn.pop(0) if bn_cfg.get("center", True) else 0.0
        mean, variance = (np.asarray(a, np.float64) for a in bn)
        scale = np.asarray(gamma, np.float64) / np.sqrt(
            variance + float(bn_cfg.get("epsilon", 1e-3))
        )
        conv_arrays = by_name[conv["name"]]
        bias = np.asarray(conv_arrays.pop(), np.float64) if cfg.get("use_bias", True) else 0.0
        k = 1 if conv["class_name"] == "SeparableConv2D" else 0  # the pointwise kernel
        kernel = np.asarray(conv_arrays[k], np.float32)
        if conv["class_name"] == "DepthwiseConv2D":  # output channel c*dm+d is kernel[..., c, d]
            conv_arrays[k] = kernel * scale.reshape(kernel.shape[-2:]).astype(np.float32)
        else:
            conv_arrays[k] = kernel * scale.astype(np.float32)
        conv_arrays.append(
            (np.asarray(beta, np.float64) + (bias - mean) * scale).astype(np.float32)
        )
        folded[layer["name"]] = conv["name"]

    if not folded:
        return config, by_name
    new_config = copy.deepcopy(config)
    new_layers = []
    for layer in new_config["config"]["layers"]:
        if layer["name"] in folded:
            continue
        if layer["name"] in folded.values():
            layer["config"]["use_bias"] = True
        for ref in _history_refs(layer["inbound_nodes"]):
            ref[0] = folded.get(ref[0], ref[0])
        new_layers.append(layer)
    new_config["config"]["layers"] = new_layers
    for ref in _output_refs(new_config):
        ref[0] = folded.get(ref[0], ref[0])
    return new_config, by_name
