"""Each op of the lab preset: the TensorFlow original against the keras.ops port, same numbers.

``save`` (here, TensorFlow + bcclassify) runs ``bcclassify.data.augment``'s private ops with a
scripted generator that hands out pre-drawn numbers, and stores images, numbers and outputs;
``compare`` (any Keras backend: JAX on CPU here, or on the GPU) feeds the same numbers to
``lab_ops`` and prints the largest differences. tests/unit/training/test_gpu_pipeline.py does both
under TensorFlow. JPEG is compared with Pillow's encoder (libjpeg, accurate DCT): in-graph it can
only be simulated (lab_ops.jpeg), and TensorFlow's own adjust_jpeg_quality decodes with the fast
integer DCT, a level off on average itself.

Usage: python scripts/gpu/ops_parity.py save FILE.npz
       KERAS_BACKEND=jax python scripts/gpu/ops_parity.py compare FILE.npz
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

JPEG_QUALITIES = (40, 70, 95)


class ScriptedGenerator:
    """Stands in for ``tf.random.Generator``: draws with NumPy and records every draw, in
    order, so the port can be given exactly the numbers the original used."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.draws: list[np.ndarray] = []

    def uniform(self, shape, minval=0, maxval=None, dtype=None):
        import tensorflow as tf

        shape = [int(s) for s in shape]
        if dtype is not None and tf.as_dtype(dtype).is_integer:
            value = self.rng.integers(int(minval), int(maxval), size=shape).astype(np.int32)
        else:
            high = 1.0 if maxval is None else maxval
            value = self.rng.uniform(minval, high, shape).astype(np.float32)
        self.draws.append(value)
        return tf.constant(value)

    def normal(self, shape, mean=0.0, stddev=1.0):
        import tensorflow as tf

        value = (self.rng.normal(size=[int(s) for s in shape]) * stddev + mean).astype(np.float32)
        self.draws.append(value)
        return tf.constant(value)


def original_ops(images: np.ndarray) -> dict[str, np.ndarray]:
    """The TF original, op by op, with recorded numbers: {name: output, name/params: ...}."""
    import dataclasses

    import tensorflow as tf

    from bcclassify.data import augment

    cfg = augment.preset("lab")
    x = tf.constant(images, tf.float32)
    n = len(images)
    result: dict[str, np.ndarray] = {}

    g = ScriptedGenerator(1)
    result["dihedral"] = augment.dihedral(x, g).numpy()
    result["dihedral/flips"] = np.concatenate([d.reshape(n, 1) for d in g.draws], axis=1)

    g = ScriptedGenerator(2)
    result["scale_shift"] = augment.scale_shift(x, g, cfg).numpy()
    result["scale_shift/scale"] = np.exp(g.draws[0])
    result["scale_shift/shift"] = g.draws[1] * images.shape[1]

    g = ScriptedGenerator(3)
    result["stain_wb"] = augment.lab_colour(x, g, cfg).numpy()
    result["stain_wb/mixing"] = np.eye(3, dtype=np.float32)[None] + g.draws[0]
    result["stain_wb/gain"] = 1.0 + g.draws[1]

    g = ScriptedGenerator(4)
    result["colour"] = augment.colour(x, g, cfg).numpy()
    result["colour/hue"] = g.draws[0]
    result["colour/saturation"] = 1.0 + g.draws[1]
    result["colour/contrast"] = 1.0 + g.draws[2]
    result["colour/brightness"] = g.draws[3]

    no_jpeg = dataclasses.replace(cfg, jpeg_quality=100)
    for seed in (5, 6):
        g = ScriptedGenerator(seed)
        name = f"camera{seed}"
        result[name] = augment.camera(x, g, no_jpeg).numpy()
        result[f"{name}/resolution"] = g.draws[0]
        result[f"{name}/blur_sigma"] = g.draws[1]
        result[f"{name}/blur_on"] = g.draws[2] < 0.5
        result[f"{name}/noise_std"] = g.draws[3] * 255.0
        result[f"{name}/noise"] = g.draws[4]
    return result


def pillow_jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Baseline JPEG (4:2:0, accurate DCT) through Pillow, and back."""
    from PIL import Image

    out = []
    for image in np.clip(np.round(images), 0, 255).astype(np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return np.stack(out).astype(np.float32)


def port_ops(images: np.ndarray, saved: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keras.ops port fed the recorded numbers; same names as :func:`original_ops`."""
    import keras

    from bcclassify.data import augment_ops as lab_ops

    cfg = lab_ops.LabConfig()
    x = images.astype(np.float32)
    out = {
        "dihedral": lab_ops.dihedral(x, saved["dihedral/flips"]),
        "scale_shift": lab_ops.scale_shift(
            x, saved["scale_shift/scale"], saved["scale_shift/shift"]
        ),
        "stain_wb": lab_ops.stain_and_white_balance(
            x, saved["stain_wb/mixing"], saved["stain_wb/gain"]
        ),
        "colour": lab_ops.colour(
            x,
            saved["colour/hue"],
            saved["colour/saturation"],
            saved["colour/contrast"],
            saved["colour/brightness"],
        ),
    }
    for seed in (5, 6):
        name = f"camera{seed}"
        params = {k.split("/")[1]: v for k, v in saved.items() if k.startswith(f"{name}/")}
        out[name] = lab_ops.camera(x, params, cfg)
    for quality in JPEG_QUALITIES:
        out[f"jpeg{quality}"] = lab_ops.jpeg(x, np.full(len(x), quality, np.float32))
    return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}


def differences(saved: dict[str, np.ndarray], port: dict[str, np.ndarray]) -> dict[str, dict]:
    """Max and mean absolute difference per op (0-255 scale); for JPEG also how far the real
    codec moved the pixels, the scale the simulation's error should be read against."""
    images = saved["images"]
    rows = {}
    for name, mine in port.items():
        theirs = saved[name]
        gap = np.abs(mine.astype(np.float64) - theirs)
        rows[name] = {"max": float(gap.max()), "mean": float(gap.mean())}
        if name.startswith("jpeg"):
            rows[name]["codec_mean_change"] = float(np.abs(theirs - images).mean())
    return rows


def save(path: Path, images: np.ndarray) -> None:
    saved = {"images": images.astype(np.float32), **original_ops(images)}
    for quality in JPEG_QUALITIES:
        saved[f"jpeg{quality}"] = pillow_jpeg(images, quality)
    np.savez(path, **saved)


def example_images(size: int = 213) -> np.ndarray:
    """The shipped example cells (bcclassify/examples/pbc), decoded as the models see them."""
    from train_lab import decode_image

    paths = sorted((HERE.parents[1] / "bcclassify" / "examples" / "pbc").glob("*/*.jpg"))
    return np.stack([decode_image(p.read_bytes(), size) for p in paths[::2]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("action", choices=("save", "compare"))
    p.add_argument("file")
    args = p.parse_args(argv)
    if args.action == "save":
        save(Path(args.file), example_images())
        print(f"saved {args.file}")
        return 0
    import keras

    with np.load(args.file) as stored:
        saved = {k: stored[k] for k in stored.files}
    rows = differences(saved, port_ops(saved["images"], saved))
    print(f"keras {keras.__version__} on {keras.backend.backend()}")
    for name, row in rows.items():
        print(f"  {name:12s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
