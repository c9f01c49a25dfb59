"""Augmentation for single-cell crops: geometry a smear does not care about, stain/camera jitter.

A cell has no canonical orientation, so all eight flips/90-degree rotations are equally valid;
scale and shift are kept small so the cell stays centred and whole; colour jitter imitates the
variation of May Grünwald-Giemsa staining and of camera white balance between analysers.
Used for training only, never at evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    max_scale: float = 0.10  # zoom in/out by up to 10%
    max_shift: float = 0.06  # translate by up to 6% of the side
    brightness: float = 0.08  # additive, as a fraction of the full range
    contrast: float = 0.12  # multiplicative around the image mean
    saturation: float = 0.15
    hue: float = 0.025  # fraction of the hue circle

    def to_dict(self) -> dict:
        return asdict(self)


def _dihedral(images: tf.Tensor, generator: tf.random.Generator) -> tf.Tensor:
    """Per image, one of the 8 flips/rotations of the square (needs square images)."""
    n = tf.shape(images)[0]
    flip_lr, flip_ud, transpose = (generator.uniform([n, 1, 1, 1]) < 0.5 for _ in range(3))
    images = tf.where(flip_lr, tf.reverse(images, axis=[2]), images)
    images = tf.where(flip_ud, tf.reverse(images, axis=[1]), images)
    return tf.where(transpose, tf.transpose(images, [0, 2, 1, 3]), images)


def _scale_shift(images: tf.Tensor, generator: tf.random.Generator, cfg: AugmentConfig):
    n = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)
    scale = 1.0 + generator.uniform([n], -cfg.max_scale, cfg.max_scale)
    shift = generator.uniform([n, 2], -cfg.max_shift, cfg.max_shift) * size
    # Output pixel (x, y) samples input (x/scale + offset): zoom about the centre, then shift.
    centre = (size - 1.0) / 2.0
    inverse = 1.0 / scale
    offset_x = centre - centre * inverse + shift[:, 0]
    offset_y = centre - centre * inverse + shift[:, 1]
    zeros = tf.zeros([n])
    transforms = tf.stack([inverse, zeros, offset_x, zeros, inverse, offset_y, zeros, zeros], 1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def _colour(images: tf.Tensor, generator: tf.random.Generator, cfg: AugmentConfig):
    n = tf.shape(images)[0]
    unit = images / 255.0
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(unit, 0.0, 1.0))
    hue = tf.math.floormod(hsv[..., 0] + generator.uniform([n, 1, 1], -cfg.hue, cfg.hue), 1.0)
    sat_factor = 1.0 + generator.uniform([n, 1, 1], -cfg.saturation, cfg.saturation)
    sat = tf.clip_by_value(hsv[..., 1] * sat_factor, 0.0, 1.0)
    unit = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1))
    mean = tf.reduce_mean(unit, axis=[1, 2, 3], keepdims=True)
    contrast = 1.0 + generator.uniform([n, 1, 1, 1], -cfg.contrast, cfg.contrast)
    brightness = generator.uniform([n, 1, 1, 1], -cfg.brightness, cfg.brightness)
    unit = (unit - mean) * contrast + mean + brightness
    return tf.clip_by_value(unit, 0.0, 1.0) * 255.0


def augment_batch(
    images: tf.Tensor | np.ndarray,
    generator: tf.random.Generator,
    cfg: AugmentConfig | None = None,
) -> tf.Tensor:
    """Augment a batch of square RGB images (0-255); returns float32 in the same range."""
    cfg = cfg or AugmentConfig()
    images = tf.cast(images, tf.float32)
    images = _dihedral(images, generator)
    images = _scale_shift(images, generator, cfg)
    return _colour(images, generator, cfg)
