"""What a run trains and evaluates on: pixels, or the cached activations of a frozen stem.

A pixel feed augments on the fly. An activation feed serves the stem's outputs, computed once per
image (and once per augmented copy) and cached on disk under a key of everything that determines
them, so a resumed or repeated run skips the expensive part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from bcclassify.models.registry import get_architecture

if TYPE_CHECKING:
    from bcclassify.data.datasets import Dataset, Split
    from bcclassify.training.runs import TrainConfig

__all__ = [
    "ActivationFeed",
    "Feeds",
    "PixelFeed",
    "STEM_CHUNK",
    "activation_cache",
    "apply_smote",
    "epoch_order",
    "indices_key",
    "make_feeds",
    "stem_activations",
]

log = logging.getLogger(__name__)

STEM_CHUNK = 256  # images per cached chunk of stem activations


def apply_smote(
    features: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE (imbalanced-learn) on flattened samples; returns (features, labels) incl. synthetic."""
    from imblearn.over_sampling import SMOTE  # lazy: ~4 s with scikit-learn; only --smote runs

    shape = features.shape[1:]
    flat = features.reshape(len(features), -1).astype(np.float32)
    k = int(min(5, np.bincount(labels).min() - 1))
    if k < 1:
        log.warning("SMOTE skipped: a class has fewer than 2 training samples")
        return features, labels
    resampled, new_labels = SMOTE(k_neighbors=k, random_state=seed).fit_resample(flat, labels)
    resampled = resampled.reshape((-1, *shape))
    if features.dtype == np.uint8:
        resampled = np.clip(np.rint(resampled), 0, 255)
    return resampled.astype(features.dtype), new_labels


def epoch_order(labels: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Training order: shuffled per epoch, or in class order (the reference's 'unshuffled')."""
    if shuffle:
        return np.random.default_rng([seed, epoch]).permutation(len(labels))
    return np.argsort(labels, kind="stable")


class PixelFeed:
    """Training data as pixels, augmented on the fly."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, config: TrainConfig):
        self.pixels, self.labels, self.config = pixels, labels, config
        if config.smote:
            self.pixels, self.labels = apply_smote(pixels, labels, config.seed)

    def epoch(self, epoch: int):
        import tensorflow as tf  # lazy: TensorFlow takes seconds; the CLI starts without it

        from bcclassify.data.augment import augment_batch, preset  # lazy: imports TensorFlow

        augmentation = preset(self.config.augment_preset)
        order = epoch_order(self.labels, self.config.shuffle, self.config.seed, epoch)
        ds = tf.data.Dataset.from_tensor_slices((self.pixels[order], self.labels[order]))
        ds = ds.batch(self.config.batch_size)
        if self.config.augment:
            generator = tf.random.Generator.from_seed(self.config.seed * 100_003 + epoch)
            ds = ds.map(lambda x, y: (augment_batch(x, generator, augmentation), y))
        else:
            ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
        return ds.prefetch(2)

    @staticmethod
    def inputs(pixels: np.ndarray, batch_size: int, labels: np.ndarray | None = None):
        """Evaluation feed: elements (x, y) with labels, else (x,) for predict."""
        import tensorflow as tf  # lazy: TensorFlow takes seconds; the CLI starts without it

        if labels is None:
            ds = tf.data.Dataset.from_tensor_slices(pixels).batch(batch_size)
            return ds.map(lambda x: (tf.cast(x, tf.float32),)).prefetch(2)
        ds = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(batch_size)
        return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)


class ActivationFeed:
    """Training data as cached stem activations: one identity copy and K augmented copies."""

    def __init__(self, copies: list[list[np.ndarray]], labels: np.ndarray, config: TrainConfig):
        self.copies, self.labels, self.config = copies, labels, config
        self._smoted: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}

    def _copy(self, index: int) -> tuple[list[np.ndarray], np.ndarray]:
        arrays = self.copies[index]
        if not self.config.smote:
            return arrays, self.labels
        if index not in self._smoted:
            # SMOTE here interpolates stem activations (trunk embeddings), not pixels.
            sizes = [int(np.prod(a.shape[1:])) for a in arrays]
            joined = np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)
            joined, labels = apply_smote(joined, self.labels, self.config.seed + index)
            parts = np.split(joined, np.cumsum(sizes)[:-1], axis=1)
            self._smoted[index] = (
                [p.reshape((-1, *a.shape[1:])) for p, a in zip(parts, arrays)],
                labels,
            )
        return self._smoted[index]

    def epoch(self, epoch: int):
        import tensorflow as tf  # lazy: TensorFlow takes seconds; the CLI starts without it

        arrays, labels = self._copy(epoch % len(self.copies))
        order = epoch_order(labels, self.config.shuffle, self.config.seed, epoch)
        ds = tf.data.Dataset.from_tensor_slices((tuple(a[order] for a in arrays), labels[order]))
        ds = ds.batch(self.config.batch_size)
        return ds.map(lambda x, y: (tuple(tf.cast(t, tf.float32) for t in x), y)).prefetch(2)

    @staticmethod
    def inputs(arrays: list[np.ndarray], batch_size: int, labels: np.ndarray | None = None):
        """Evaluation feed: elements (x, y) with labels, else (x,) for predict."""
        import tensorflow as tf  # lazy: TensorFlow takes seconds; the CLI starts without it

        def cast(x):
            return tuple(tf.cast(t, tf.float32) for t in x)

        if labels is None:
            ds = tf.data.Dataset.from_tensor_slices(tuple(arrays)).batch(batch_size)
            return ds.map(lambda *x: (cast(x),)).prefetch(2)
        ds = tf.data.Dataset.from_tensor_slices((tuple(arrays), labels)).batch(batch_size)
        return ds.map(lambda x, y: (cast(x), y)).prefetch(2)


def stem_activations(
    stem,
    pixels: np.ndarray,
    batch_size: int,
    cache: Path | None,
    augment_seed: int | None,
    augmentation: str = "standard",
) -> list[np.ndarray]:
    """Run the frozen stem over pixels in chunks, caching each chunk (float16) on disk.

    A killed extraction resumes at the first missing chunk.
    """
    import tensorflow as tf  # lazy: TensorFlow takes seconds; the CLI starts without it

    from bcclassify.data.augment import augment_batch, preset  # lazy: imports TensorFlow

    outputs: list[list[np.ndarray]] = []
    generator = tf.random.Generator.from_seed(augment_seed) if augment_seed is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    desc = "stem activations" + (" (augmented)" if generator is not None else "")
    for start in tqdm(range(0, len(pixels), STEM_CHUNK), desc=desc, unit="chunk"):
        target = cache / f"chunk-{start:07d}.npz" if cache else None
        batch = pixels[start : start + STEM_CHUNK]
        if generator is not None:
            # Consumed even when the chunk is cached, so resumed extraction draws the same numbers.
            batch = augment_batch(batch, generator, preset(augmentation)).numpy()
        if target is not None and target.is_file():
            with np.load(target) as stored:
                outputs.append([stored[f"arr_{i}"] for i in range(len(stored.files))])
            continue
        result = stem.predict(batch.astype(np.float32), batch_size=batch_size, verbose=0)
        result = [result] if not isinstance(result, list) else result
        parts = [np.asarray(r, dtype=np.float16) for r in result]
        if target is not None:
            partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npz")
            np.savez(partial, *parts)
            partial.replace(target)
        outputs.append(parts)
    return [np.concatenate([o[i] for o in outputs]) for i in range(len(outputs[0]))]


def activation_cache(
    config: TrainConfig,
    dataset: Dataset,
    image_size: int,
    boundaries: tuple[str, ...],
    init_record: dict,
) -> Path:
    """The cache folder of one stem's activations, keyed on everything that determines them."""
    # Architectures with the same stem share one cache (models.Architecture.shares_stem_with).
    family = get_architecture(config.arch).cache_family
    parts = [family, image_size, list(boundaries), init_record, dataset.manifest_hash()]
    if config.center_crop < 1.0:  # appended only when set, so existing caches keep their keys
        parts.append(config.center_crop)
    key = json.dumps(parts, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(config.cache_dir or "cache") / "activations" / f"{family}-{digest}"


def indices_key(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:12]


@dataclass
class Feeds:
    """One split's data as the trainable model takes it."""

    train: PixelFeed | ActivationFeed
    val: Any  # tf.data.Dataset of (x, y)
    test: Any  # tf.data.Dataset of (x,), for predict


def make_feeds(
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    pixels: np.ndarray,
    stem,
    cache_root: Path | None,
    raw_pixels: bool = False,
) -> Feeds:
    """Pixels when nothing is frozen (``stem`` None), else the stem's cached activations under
    ``cache_root``: an identity copy of every image and ``aug_copies`` augmented copies of the
    training part. ``raw_pixels``: the trainer augments itself, so the pixel feed must not."""
    y_train, y_val = dataset.labels[split.train], dataset.labels[split.val]
    if stem is None:
        feed_config = dataclasses.replace(config, augment=False) if raw_pixels else config
        return Feeds(
            PixelFeed(pixels[split.train], y_train, feed_config),
            PixelFeed.inputs(pixels[split.val], config.batch_size, y_val),
            PixelFeed.inputs(pixels[split.test], config.batch_size),
        )
    every = stem_activations(stem, pixels, config.batch_size, cache_root / "identity", None)
    copies = [[a[split.train] for a in every]]
    if config.augment:
        suffix = "" if config.augment_preset == "standard" else f"-{config.augment_preset}"
        for k in range(1, config.aug_copies + 1):
            copies.append(
                stem_activations(
                    stem,
                    pixels[split.train],
                    config.batch_size,
                    # The standard preset keeps its folder names, so existing caches still hit.
                    cache_root / f"augmented{suffix}-{k}-{indices_key(split.train)}",
                    augment_seed=config.seed * 1000 + k,
                    augmentation=config.augment_preset,
                )
            )
    return Feeds(
        ActivationFeed(copies, y_train, config),
        ActivationFeed.inputs([a[split.val] for a in every], config.batch_size, y_val),
        ActivationFeed.inputs([a[split.test] for a in every], config.batch_size),
    )
