"""Mid-level features for ``adapt``: pooled activations of blocks below the head (issue 21).

Why: another lab's stain and camera move the last blocks' features most; blocks lower in the
trunks keep more of what a cell looks like there. Fitting adapt's head on the pooled activations
of a few such blocks as well as on the head's own features lifted the worst of 5 draws of 10
ext-tecom cells a class from 88.8% to 90.7% right on the cells not taken, and on its
low-resolution copy from 89.6% to 91.1% (scripts/adapt_head_study.py,
docs/adapt-head-study-ext-tecom*.json).

How it is served: the adapted model is the source graph, unchanged up to its head, plus a global
average pool of each block (``adapt_layers`` in the registry) concatenated into
``lab_mid_features``, read by a Dense layer without bias (``lab_mid_logits``); the head
(``predictions``) becomes linear, the two are added (``logits``) and a softmax gives the
probabilities. The head still reads the source's pooled features, so the novelty detector's
k-NN bank (in that space) stays valid and the compiled graph's (features, probabilities) are the
same kind of answer. The blocks' scales (each block brought to ``weight`` times the head
features' mean norm on the taken cells, so one pull suits blocks whose norms differ 20-fold) are
folded into ``lab_mid_logits``'s kernel: nothing but ordinary Keras layers is saved.
"""

from __future__ import annotations

import numpy as np

from bcclassify.serving.trust import HEAD_LAYER, LOGITS_LAYER

MID_FEATURES_LAYER = "lab_mid_features"
MID_LOGITS_LAYER = "lab_mid_logits"
PROBABILITIES_LAYER = "probabilities"
DEFAULT_MID_WEIGHT = 5.0  # chosen on the head study's draws (0.5-5 tried): not a blind figure


def mid_layers(classifier) -> tuple[str, ...]:
    """The blocks adapt pools for ``classifier``: those its own adaptation used (a model adapted
    again keeps its blocks), else its architecture's ``adapt_layers``; () for head only."""
    from bcclassify.models.registry import get_architecture

    used = (classifier.card.get("adaptation") or {}).get("mid_layers")
    if used:
        return tuple(used)
    try:
        return tuple(get_architecture(classifier.architecture).adapt_layers)
    except ValueError:  # an architecture this version does not know: the head alone
        return ()


def _pooled(keras_model, layers: tuple[str, ...], prefix: str) -> list:
    """A global average pool of each block, named ``prefix``-i: named always, since Keras's
    automatic names restart in each process and may repeat one of the loaded model's."""
    import keras

    from bcclassify.models.registry import boundary_tensor

    return [
        keras.layers.GlobalAveragePooling2D(name=f"{prefix}_{i}")(
            boundary_tensor(keras_model, spec)
        )
        for i, spec in enumerate(layers)
    ]


def block_sizes(keras_model, layers: tuple[str, ...]) -> list[int]:
    """The width (channels) of each block's pooled activations."""
    from bcclassify.models.registry import boundary_tensor

    return [int(boundary_tensor(keras_model, spec).shape[-1]) for spec in layers]


def feature_forward_with_mid(keras_model, layers: tuple[str, ...]):
    """pixels -> ([head features, pooled blocks] concatenated, probabilities), compiled; the
    head's features come first, so ``[..., :D]`` is what the novelty detector reads."""
    import keras
    import tensorflow as tf

    head = keras_model.get_layer(HEAD_LAYER)
    pooled = _pooled(keras_model, layers, "lab_extract_pool")
    joined = keras.layers.Concatenate(name="lab_extract_features")([head.input, *pooled])
    both = keras.Model(keras_model.inputs, [joined, keras_model.outputs[0]])
    return tf.function(lambda x: both(x, training=False), reduce_retracing=True)


def block_scales(features: np.ndarray, head_dim: int, sizes: list[int], weight: float):
    """A factor for each feature column: 1 for the head's, and for each block ``weight`` times
    the head features' mean norm over ``features`` (views, cells, D) divided by the block's."""
    reference = np.linalg.norm(features[..., :head_dim], axis=-1).mean()
    scales, start = [np.ones(head_dim)], head_dim
    for size in sizes:
        norm = np.linalg.norm(features[..., start : start + size], axis=-1).mean()
        scales.append(np.full(size, weight * reference / max(norm, 1e-12)))
        start += size
    return np.concatenate(scales)


def source_mid_kernel(keras_model, total: int | None) -> np.ndarray | None:
    """The source's own ``lab_mid_logits`` kernel (raw features -> logits) when it has one (of
    ``total`` rows, unless None), else None."""
    names = {layer.name for layer in keras_model.layers}
    if MID_LOGITS_LAYER not in names:
        return None
    kernel = np.asarray(keras_model.get_layer(MID_LOGITS_LAYER).get_weights()[0], np.float64)
    return kernel if total is None or kernel.shape[0] == total else None


def with_mid_head(keras_model, layers: tuple[str, ...], weights: np.ndarray, bias: np.ndarray):
    """The source graph with the mid-level head: ``weights`` (head features + blocks, raw
    scale, classes) and ``bias`` as fitted (scales already folded in)."""
    import keras

    head = keras_model.get_layer(HEAD_LAYER)
    head_dim = int(head.input.shape[-1])
    classes = weights.shape[1]
    mids = keras.layers.Concatenate(name=MID_FEATURES_LAYER)(
        _pooled(keras_model, layers, "lab_pool")
    )
    mid_logits = keras.layers.Dense(classes, use_bias=False, name=MID_LOGITS_LAYER)
    head_logits = keras.layers.Dense(classes, name=HEAD_LAYER)
    logits = keras.layers.Add(name=LOGITS_LAYER)([head_logits(head.input), mid_logits(mids)])
    probabilities = keras.layers.Activation("softmax", name=PROBABILITIES_LAYER)(logits)
    model = keras.Model(keras_model.inputs, probabilities, name=keras_model.name)
    head_logits.set_weights([weights[:head_dim].astype(np.float32), bias.astype(np.float32)])
    mid_logits.set_weights([weights[head_dim:].astype(np.float32)])
    return model
