"""Group norm that starts where batch norm left off (issue 21).

:func:`bcclassify.models.registry.with_group_norm` keeps each batch norm's learnt scale and offset
and drops its running statistics. A converted pretrained network then computes something else:
MobileNetV2 at 128 px was at 31% on PBC's validation cells after a whole epoch of fine-tuning,
and group norm needed more epochs than the CPU had to catch up (docs/other-labs.md). Here
each group norm's scale and offset are instead *fitted*, by least squares per channel on a few
hundred training images, so that its output matches what the batch norm it replaced gave on the
same images. What group norm cannot represent (a channel's offset that
differs between images, which its per-image statistics remove) is left to fine-tuning.

Each layer is fitted on what it will really receive: its input in the converted network, whose
earlier layers are already fitted.

Keras 3 only (any backend); the statistics are accumulated in NumPy, float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIT_BATCH = 32  # images a forward pass carries while fitting (memory: see the fit)


@dataclass
class _Moments:
    """Per-channel sums for the least-squares fit of ``y ~ scale * z + offset``."""

    channels: int
    count: float = 0.0
    z: np.ndarray = field(init=False)
    y: np.ndarray = field(init=False)
    zz: np.ndarray = field(init=False)
    zy: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.z, self.y, self.zz, self.zy = (np.zeros(self.channels) for _ in range(4))

    def add(self, z: np.ndarray, y: np.ndarray) -> None:
        z = z.reshape(-1, self.channels)
        y = y.reshape(-1, self.channels)
        self.count += len(z)
        # float64 sums of float32 arrays: no float64 copy of activations the size of a batch
        self.z += z.sum(0, dtype=np.float64)
        self.y += y.sum(0, dtype=np.float64)
        self.zz += np.einsum("nc,nc->c", z, z, dtype=np.float64)
        self.zy += np.einsum("nc,nc->c", z, y, dtype=np.float64)

    def fit(self) -> tuple[np.ndarray, np.ndarray]:
        """Scale and offset per channel; a channel that group norm makes constant gets scale 0
        and the target's mean as offset."""
        mean_z, mean_y = self.z / self.count, self.y / self.count
        var_z = self.zz / self.count - mean_z**2
        cov = self.zy / self.count - mean_z * mean_y
        scale = np.where(var_z > 1e-8, cov / np.maximum(var_z, 1e-8), 0.0)
        return scale, mean_y - scale * mean_z


def group_normalised(x: np.ndarray, groups: int, epsilon: float) -> np.ndarray:
    """What a GroupNormalization layer computes before its scale and offset (channels last),
    in float32 with float64 statistics."""
    x = np.asarray(x, dtype=np.float32)
    shape = x.shape
    grouped = x.reshape(shape[0], -1, groups, shape[-1] // groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True, dtype=np.float64)
    var = grouped.var(axis=(1, 3), keepdims=True, dtype=np.float64)
    scale = (1.0 / np.sqrt(var + epsilon)).astype(np.float32)
    return ((grouped - mean.astype(np.float32)) * scale).reshape(shape)


def matched_layer_names(source, converted) -> list[str]:
    """Group norms of ``converted`` that replaced a batch norm of the same name in ``source``."""
    import keras

    names = {
        layer.name for layer in source.layers if isinstance(layer, keras.layers.BatchNormalization)
    }
    return [
        layer.name
        for layer in converted.layers
        if isinstance(layer, keras.layers.GroupNormalization) and layer.name in names
    ]


def fit_group_norm_affine(
    source, converted, images: np.ndarray, batch_size: int = FIT_BATCH
) -> dict:
    """Fit the scale and offset of every group norm of ``converted`` (made from ``source`` by
    ``with_group_norm``) to reproduce ``source``'s batch-norm outputs on ``images`` (pixels as
    the model takes them; a few hundred). Returns a summary for the run record.

    Layer by layer in the graph's order: a forward pass carries two copies of a batch, one
    through the batch norms (the targets) and one through the group norms, and each group norm
    is fitted to its target on its real input (what the layers before it, already fitted,
    give) before the pass moves on. The batches stream through one after another, each adding
    to every layer's sums and refitting it (Keras keeps every activation of a forward pass
    until it ends, so a pass over all the images at once would not fit in memory for the
    hybrid). Fitting every layer at once and repeating does not converge: each layer's fit
    assumes inputs that the others' new fits then change (measured on MobileNetV2: agreement
    with the batch-norm network 79% after two such passes, 22% after four).
    """
    import keras

    names = matched_layer_names(source, converted)
    if not names:
        raise ValueError("the converted model has no group norm that replaced a batch norm")
    images = np.asarray(images, dtype=np.float32)
    layers = [converted.get_layer(n) for n in names]
    moments = {n: _Moments(int(converted.get_layer(n).gamma.shape[0])) for n in names}
    errors: dict[str, float] = {}

    def fitting_call(layer, batch_norm, group_norm_call):
        def call(inputs):
            half = int(inputs.shape[0]) // 2
            target = batch_norm(inputs[:half], training=False)
            z = group_normalised(inputs[half:], layer.groups, layer.epsilon)
            moments[layer.name].add(z, np.asarray(target))
            layer.set_weights(_affine_weights(layer, *moments[layer.name].fit()))
            fitted = group_norm_call(inputs[half:])
            errors[layer.name] = _relative_error(fitted, target)  # the last batch's
            return keras.ops.concatenate([target, fitted], axis=0)

        return call

    for layer in layers:
        layer.call = fitting_call(layer, source.get_layer(layer.name), layer.call)
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            converted(np.concatenate([batch, batch]), training=False)
    finally:
        for layer in layers:
            del layer.call  # the class's own call again
    return {
        "method": "least-squares scale and offset per channel to the batch norm's outputs, "
        f"layer by layer, {batch_size} images at a time",
        "layers": len(names),
        "images": int(len(images)),
        "relative_error_last_batch": {
            "mean": float(np.mean(list(errors.values()))),
            "max": float(np.max(list(errors.values()))),
        },
        "top_class_agreement": _agreement(source, converted, images, batch_size),
    }


def _agreement(source, converted, images: np.ndarray, batch_size: int) -> float:
    """Share of ``images`` on which both networks name the same class."""
    same = 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        a = np.asarray(source(batch, training=False)).argmax(-1)
        b = np.asarray(converted(batch, training=False)).argmax(-1)
        same += int((a == b).sum())
    return same / len(images)


def _relative_error(fitted, target) -> float:
    import keras

    difference = keras.ops.sum(keras.ops.square(fitted - target))
    return float(
        np.sqrt(float(difference) / max(float(keras.ops.sum(keras.ops.square(target))), 1e-12))
    )


def _affine_weights(layer, scale: np.ndarray, offset: np.ndarray) -> list[np.ndarray]:
    if not (layer.scale and layer.center):
        raise ValueError(f"{layer.name}: only a group norm with scale and offset can be fitted")
    return [scale.astype(np.float32), offset.astype(np.float32)]


def calibration_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` indices of each class, drawn with ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(
            np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())), replace=False
        )
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))
