"""The "lab" augmentation of ``bcclassify/data/augment.py`` ported to ``keras.ops`` and
``keras.random`` (backend-neutral: the GPU fine-tune, ``scripts/gpu/train_lab.py``, runs it).

The original is TensorFlow-only (``tf.raw_ops``, ``tf.image``, a ``tf.random.Generator``), and the
lent GPU machine has no TensorFlow: this port runs under any Keras backend, inside the jitted
train step (JAX on the GPU, TensorFlow here for the tests). Imports: keras and numpy only.

Each operation takes its random parameters as tensors (drawn by :func:`draw_params`), so a test
can feed the TensorFlow original and the port the same numbers and compare the outputs. The order
of operations and the distributions are the original's:

- dihedral: one of the 8 flips/rotations per image;
- scale/shift: log-uniform zoom about the centre plus a shift, bilinear, reflected edges
  (``keras.ops.image.affine_transform`` is the same ``ImageProjectiveTransformV3`` under TF);
- stain: near-identity mixing of the optical-density channels per image; white balance: per
  channel gain, normalised by the largest;
- colour: hue shift and saturation factor in HSV (0 for the ``grey`` share of images), contrast
  about the image mean, brightness;
- camera: down- and up-sampling by one factor per batch (the original's dynamic-size
  ``tf.image.resize`` pair, written as two fixed-size resampling matrices with the same triangle
  weights, because jit needs static shapes), Gaussian blur with one sigma per batch on a random
  half, Gaussian noise with a per-image strength, then JPEG at a per-image quality.

JPEG cannot be encoded inside a compiled graph. :func:`jpeg` simulates it instead: YCbCr,
4:2:0 chroma subsampling, 8x8 DCT quantised with the IJG tables scaled by the quality, and the
"fancy" (triangle) chroma upsampling of libjpeg's decoder. That is every lossy step of baseline
JPEG (entropy coding is lossless); what differs from libjpeg is its integer rounding, a level or
so per pixel (``tests/unit/training/test_gpu_pipeline.py`` measures it against
``tf.image.adjust_jpeg_quality``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

__all__ = [
    "CHROMA_TABLE",
    "JPEG_MAX_QUALITY",
    "LUMA_TABLE",
    "LabConfig",
    "augment",
    "blur",
    "camera",
    "colour",
    "dihedral",
    "draw_params",
    "gaussian_kernel",
    "jpeg",
    "make_layer_class",
    "quality_tables",
    "resampling_matrix",
    "resolution",
    "scale_shift",
    "stain_and_white_balance",
]


@dataclass(frozen=True)
class LabConfig:
    """The fields of ``bcclassify.data.augment.AugmentConfig``; defaults are ``PRESETS["lab"]``.

    Copied rather than imported (this runs where bcclassify cannot be imported); the pack writes
    the library's preset into its manifest, and a test checks that the two agree.
    """

    max_scale: float = 0.10
    max_shift: float = 0.04
    brightness: float = 0.15
    contrast: float = 0.12
    saturation: float = 0.3
    hue: float = 0.05
    zoom: tuple[float, float] | None = (0.8, 3.0)
    stain: float = 0.12
    white_balance: float = 0.25
    blur: float = 1.5
    noise: float = 0.03
    resolution: float = 0.4
    jpeg_quality: int = 40
    grey: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> LabConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown augmentation fields: {', '.join(sorted(unknown))}")
        values = dict(values)
        if values.get("zoom") is not None:
            values["zoom"] = tuple(values["zoom"])
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


JPEG_MAX_QUALITY = 96  # the original draws the quality from [jpeg_quality, 96)


def _ops():
    from keras import ops

    return ops


# ----------------------------------------------------------------------------- parameters


def draw_params(images, cfg: LabConfig, seed, clean_fraction: float = 0.0) -> dict:
    """Fresh random parameters for one batch (``seed``: a ``keras.random.SeedGenerator``).

    Distributions and per-image/per-batch choices as in ``bcclassify/data/augment.py``.
    """
    import keras

    ops = _ops()
    n = ops.shape(images)[0]
    size = float(images.shape[1])

    def uniform(shape, low=0.0, high=1.0):
        return keras.random.uniform(shape, minval=low, maxval=high, seed=seed)

    params = {"flips": uniform((n, 3))}
    if cfg.zoom is not None:
        params["scale"] = ops.exp(uniform((n,), math.log(cfg.zoom[0]), math.log(cfg.zoom[1])))
    else:
        params["scale"] = 1.0 + uniform((n,), -cfg.max_scale, cfg.max_scale)
    params["shift"] = uniform((n, 2), -cfg.max_shift, cfg.max_shift) * size
    if cfg.stain > 0:
        params["mixing"] = ops.eye(3)[None] + keras.random.normal((n, 3, 3), seed=seed) * cfg.stain
    if cfg.white_balance > 0:
        params["gain"] = 1.0 + uniform((n, 1, 1, 3), -cfg.white_balance, cfg.white_balance)
    params["hue"] = uniform((n, 1, 1), -cfg.hue, cfg.hue)
    params["saturation"] = 1.0 + uniform((n, 1, 1), -cfg.saturation, cfg.saturation)
    if cfg.grey > 0:  # a saturation factor of 0 takes the colour out, as the original does
        params["saturation"] = ops.where(uniform((n, 1, 1)) < cfg.grey, 0.0, params["saturation"])
    params["contrast"] = 1.0 + uniform((n, 1, 1, 1), -cfg.contrast, cfg.contrast)
    params["brightness"] = uniform((n, 1, 1, 1), -cfg.brightness, cfg.brightness)
    if cfg.resolution < 1.0:
        params["resolution"] = uniform((), cfg.resolution, 1.0)  # one factor per batch
    if cfg.blur > 0:
        params["blur_sigma"] = uniform((), 0.0, cfg.blur)  # one sigma per batch
        params["blur_on"] = uniform((n, 1, 1, 1)) < 0.5
    if cfg.noise > 0:
        params["noise_std"] = uniform((n, 1, 1, 1), 0.0, cfg.noise) * 255.0
        params["noise"] = keras.random.normal(ops.shape(images), seed=seed)
    if cfg.jpeg_quality < 100:
        params["quality"] = ops.floor(uniform((n,), cfg.jpeg_quality, JPEG_MAX_QUALITY))
    params["clean"] = uniform((n, 1, 1, 1)) < clean_fraction
    return params


# ----------------------------------------------------------------------------- operations


def dihedral(images, flips):
    """``flips`` (n, 3) in [0, 1): flip left-right, up-down, transpose where below 0.5."""
    ops = _ops()
    flip_lr, flip_ud, transpose = (ops.reshape(flips[:, i] < 0.5, (-1, 1, 1, 1)) for i in range(3))
    images = ops.where(flip_lr, ops.flip(images, axis=2), images)
    images = ops.where(flip_ud, ops.flip(images, axis=1), images)
    return ops.where(transpose, ops.transpose(images, (0, 2, 1, 3)), images)


def scale_shift(images, scale, shift):
    """Zoom by ``scale`` (n,) about the centre, then shift by ``shift`` (n, 2) pixels (x, y)."""
    ops = _ops()
    size = float(images.shape[1])
    centre = (size - 1.0) / 2.0
    inverse = 1.0 / scale
    offset_x = centre - centre * inverse + shift[:, 0]
    offset_y = centre - centre * inverse + shift[:, 1]
    zeros = ops.zeros_like(inverse)
    transform = ops.stack([inverse, zeros, offset_x, zeros, inverse, offset_y, zeros, zeros], 1)
    return ops.image.affine_transform(
        images, transform, interpolation="bilinear", fill_mode="reflect", fill_value=0.0
    )


def stain_and_white_balance(images, mixing=None, gain=None):
    """OD-space stain mixing (n, 3, 3), then the illuminant's gain (n, 1, 1, 3); 0-255 in/out."""
    ops = _ops()
    if mixing is not None:
        od = -ops.log((images + 1.0) / 256.0)
        od = ops.relu(ops.einsum("nhwc,ncd->nhwd", od, mixing))
        images = 256.0 * ops.exp(-od) - 1.0
    if gain is not None:
        images = images * gain / ops.max(gain, axis=-1, keepdims=True)
    return ops.clip(images, 0.0, 255.0)


def colour(images, hue, saturation, contrast, brightness):
    """HSV hue shift and saturation factor, contrast about the image mean, brightness."""
    ops = _ops()
    unit = images / 255.0
    hsv = ops.image.rgb_to_hsv(ops.clip(unit, 0.0, 1.0))
    h = ops.mod(hsv[..., 0] + hue, 1.0)
    s = ops.clip(hsv[..., 1] * saturation, 0.0, 1.0)
    unit = ops.image.hsv_to_rgb(ops.stack([h, s, hsv[..., 2]], axis=-1))
    mean = ops.mean(unit, axis=(1, 2, 3), keepdims=True)
    unit = (unit - mean) * contrast + mean + brightness
    return ops.clip(unit, 0.0, 1.0) * 255.0


def _triangle_weights(sample, count, size: int, kernel_scale):
    """Rows: normalised triangle-kernel weights over ``size`` input pixels, the first ``count``
    of them valid, at the positions ``sample`` (pixel-centre coordinates); TensorFlow's
    ``scale_and_translate`` / ``resize_bilinear`` weights written as a dense matrix."""
    ops = _ops()
    source = ops.arange(size, dtype="float32")[None, :]
    weights = ops.relu(1.0 - ops.abs(sample[:, None] - source) / kernel_scale)
    weights = ops.where(source < count, weights, 0.0)
    total = ops.sum(weights, axis=1, keepdims=True)
    return ops.where(total > 1e-4, weights / ops.where(total > 0, total, 1.0), 0.0)


def resampling_matrix(factor, size: int):
    """The (size, size) matrix of ``tf.image.resize(tf.image.resize(x, small, antialias=True),
    size)`` along one axis, ``small = int(size * factor)``: antialiased triangle down, bilinear
    (half-pixel centres) up. Built with static shapes, so a traced ``factor`` jit-compiles."""
    ops = _ops()
    small = ops.floor(float(size) * factor)
    index = ops.arange(size, dtype="float32")
    # down: output i < small samples the input at (i + 0.5) * size / small - 0.5
    down_sample = (index + 0.5) * (float(size) / small) - 0.5
    down = _triangle_weights(down_sample, float(size), size, ops.maximum(size / small, 1.0))
    down = ops.where((index < small)[:, None], down, 0.0)
    # up: output j samples the small image at (j + 0.5) * small / size - 0.5
    up_sample = (index + 0.5) * (small / float(size)) - 0.5
    up = _triangle_weights(up_sample, small, size, 1.0)
    return ops.matmul(up, down)


def resolution(images, factor):
    """Lower resolution: down by ``factor`` (scalar, antialiased), back up (bilinear)."""
    ops = _ops()
    matrix = resampling_matrix(factor, int(images.shape[1]))
    images = ops.einsum("ik,nkwc->niwc", matrix, images)
    return ops.einsum("jk,nikc->nijc", matrix, images)


def gaussian_kernel(sigma, radius: int):
    ops = _ops()
    x = ops.arange(-radius, radius + 1, dtype="float32")
    k = ops.exp(-0.5 * ops.square(x / ops.maximum(sigma, 1e-3)))
    return k / ops.sum(k)


def blur(images, sigma, chosen, max_sigma: float):
    """Separable Gaussian (zero-padded "same", as the original's depthwise_conv2d) of ``sigma``
    (scalar) on the images where ``chosen`` (n, 1, 1, 1) is true."""
    ops = _ops()
    radius = int(np.ceil(2 * max_sigma))
    k = gaussian_kernel(sigma, radius)
    channels = int(images.shape[-1])
    row = ops.tile(ops.reshape(k, (1, -1, 1, 1)), (1, 1, channels, 1))
    col = ops.tile(ops.reshape(k, (-1, 1, 1, 1)), (1, 1, channels, 1))
    blurred = ops.depthwise_conv(images, row, strides=1, padding="same")
    blurred = ops.depthwise_conv(blurred, col, strides=1, padding="same")
    return ops.where(chosen, blurred, images)


# IJG (libjpeg) base quantisation tables, natural (row-major) order.
LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float32,
)
CHROMA_TABLE = np.array(
    [
        [17, 18, 24, 47, 99, 99, 99, 99],
        [18, 21, 26, 66, 99, 99, 99, 99],
        [24, 26, 56, 99, 99, 99, 99, 99],
        [47, 66, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
    ],
    dtype=np.float32,
)


def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II: JPEG's 2-D transform is ``D @ block @ D.T``."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    d = np.cos((2 * x + 1) * u * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


def quality_tables(quality, base: np.ndarray):
    """IJG quality scaling (jpeg_quality_scaling + jpeg_add_quant_table, baseline): (n, 8, 8)."""
    ops = _ops()
    q = ops.clip(quality, 1.0, 100.0)
    scale = ops.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    table = ops.floor((base[None] * scale[:, None, None] + 50.0) / 100.0)
    return ops.clip(table, 1.0, 255.0)


def _pad_edge(x, height: int, width: int):
    """Replicate the last row/column up to (height, width) (libjpeg's edge expansion)."""
    ops = _ops()
    if height > x.shape[1]:
        extra = ops.repeat(x[:, -1:], height - x.shape[1], axis=1)
        x = ops.concatenate([x, extra], axis=1)
    if width > x.shape[2]:
        extra = ops.repeat(x[:, :, -1:], width - x.shape[2], axis=2)
        x = ops.concatenate([x, extra], axis=2)
    return x


def _quantise_blocks(plane, table):
    """8x8 DCT, quantise with ``table`` (n, 8, 8), dequantise, inverse DCT; plane (n, H, W)."""
    ops = _ops()
    d = _dct_matrix()
    h, w = plane.shape[1], plane.shape[2]
    blocks = ops.reshape(plane - 128.0, (-1, h // 8, 8, w // 8, 8))
    coeffs = ops.einsum("ui,nhiwj,vj->nhuwv", d, blocks, d)
    q = table[:, None, :, None, :]
    coeffs = ops.round(coeffs / q) * q
    blocks = ops.einsum("ui,nhuwv,vj->nhiwj", d, coeffs, d)
    out = ops.reshape(blocks, (-1, h, w)) + 128.0
    return ops.clip(ops.round(out), 0.0, 255.0)


def _fancy_upsample(plane):
    """libjpeg's h2v2 "fancy" upsampling: a (3/4, 1/4) triangle filter per axis, edges held."""
    ops = _ops()

    def along(x, axis: int):
        length = x.shape[axis]

        def part(start, stop):
            return x[(slice(None),) * axis + (slice(start, stop),)]

        before = ops.concatenate([part(0, 1), part(0, length - 1)], axis=axis)
        after = ops.concatenate([part(1, length), part(length - 1, length)], axis=axis)
        even = 0.75 * x + 0.25 * before
        odd = 0.75 * x + 0.25 * after
        stacked = ops.stack([even, odd], axis=axis + 1)
        shape = list(x.shape)
        shape[0] = -1
        shape[axis] = 2 * length
        return ops.reshape(stacked, shape)

    return along(along(plane, 1), 2)


def jpeg(images, quality):
    """Baseline JPEG (4:2:0) at ``quality`` (n,) and back, simulated in-graph; 0-255 in/out."""
    ops = _ops()
    size_h, size_w = int(images.shape[1]), int(images.shape[2])
    h, w = -(-size_h // 16) * 16, -(-size_w // 16) * 16
    rgb = _pad_edge(ops.round(ops.clip(images, 0.0, 255.0)), h, w)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0

    def subsample(plane):
        return ops.mean(ops.reshape(plane, (-1, h // 2, 2, w // 2, 2)), axis=(2, 4))

    luma_q = quality_tables(quality, LUMA_TABLE)
    chroma_q = quality_tables(quality, CHROMA_TABLE)
    y = _quantise_blocks(ops.round(y), luma_q)
    cb = _fancy_upsample(_quantise_blocks(ops.round(subsample(cb)), chroma_q))
    cr = _fancy_upsample(_quantise_blocks(ops.round(subsample(cr)), chroma_q))
    out = ops.stack(
        [
            y + 1.402 * (cr - 128.0),
            y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0),
            y + 1.772 * (cb - 128.0),
        ],
        axis=-1,
    )
    out = ops.clip(ops.round(out), 0.0, 255.0)
    return out[:, :size_h, :size_w, :]


def camera(images, params: dict, cfg: LabConfig):
    """Resolution, blur, noise, clip, JPEG: the original's ``camera`` in its order."""
    ops = _ops()
    if "resolution" in params:
        images = resolution(images, params["resolution"])
    if "blur_sigma" in params:
        images = blur(images, params["blur_sigma"], params["blur_on"], cfg.blur)
    if "noise" in params:
        images = images + params["noise"] * params["noise_std"]
    images = ops.clip(images, 0.0, 255.0)
    if "quality" in params:
        images = jpeg(images, params["quality"])
    return images


def augment(images, params: dict, cfg: LabConfig):
    """The whole lab preset on a float batch (0-255), in ``augment_batch``'s order.

    Images drawn as ``clean`` get only the dihedral view (a flip or rotation is still a real
    cell), so every batch keeps some unaltered PBC views.
    """
    ops = _ops()
    images = dihedral(images, params["flips"])
    clean = images
    images = scale_shift(images, params["scale"], params["shift"])
    if "mixing" in params or "gain" in params:
        images = stain_and_white_balance(images, params.get("mixing"), params.get("gain"))
    images = colour(
        images, params["hue"], params["saturation"], params["contrast"], params["brightness"]
    )
    if any(k in params for k in ("resolution", "blur_sigma", "noise", "quality")):
        images = camera(images, params, cfg)
    return ops.where(params["clean"], clean, images)


def make_layer_class():
    """``LabAugment``, a Keras layer (defined on demand: Keras is imported only when needed)."""
    import keras

    class LabAugment(keras.layers.Layer):
        """Lab augmentation with fresh parameters every training step; identity (cast to
        float32) otherwise. The seed generator's state is a layer variable, so under JAX the
        jitted train step threads it through and each step draws new numbers."""

        def __init__(self, config: dict | None = None, clean_fraction=0.0, seed=0, **kwargs):
            kwargs["dtype"] = "float32"  # augmentation stays float32 under mixed precision
            super().__init__(**kwargs)
            self.lab_config = LabConfig.from_dict(config) if config else LabConfig()
            self.clean_fraction = float(clean_fraction)
            self.seed = int(seed)
            self.seed_generator = keras.random.SeedGenerator(self.seed)

        def call(self, inputs, training=None):
            images = keras.ops.cast(inputs, "float32")
            if not training:
                return images
            params = draw_params(images, self.lab_config, self.seed_generator, self.clean_fraction)
            return augment(images, params, self.lab_config)

        def compute_output_spec(self, inputs, training=None):
            return keras.KerasTensor(inputs.shape, dtype="float32")

        def get_config(self):
            config = super().get_config()
            config.update(
                config=self.lab_config.to_dict(),
                clean_fraction=self.clean_fraction,
                seed=self.seed,
            )
            return config

    return LabAugment
