"""Image-folder datasets, content-hash grouping, and the reference work's splits."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import StratifiedKFold, train_test_split
from tqdm import tqdm

from bcclassify import CLASS_NAMES
from bcclassify.data.imaging import ImageLoadError, is_hidden, load_image
from bcclassify.storage.store import sha256_file, write_csv

__all__ = [
    "Dataset",
    "Split",
    "TEST_FRACTION",
    "VALIDATION_FRACTION",
    "cached_pixels",
    "kfold_splits",
    "load_pixels",
    "scan_dataset",
    "subsample",
    "thinned_train",
    "train_subset_seed",
    "train_val_test_split",
    "write_predictions",
]

log = logging.getLogger(__name__)

TEST_FRACTION = 0.30  # reference work: stratified 70/30 train/test
VALIDATION_FRACTION = 0.20  # reference work: 20% of the training part for validation


@dataclass
class Dataset:
    """An image-folder dataset: parallel lists of files, class indices and content hashes."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    hashes: list[str]
    class_names: tuple[str, ...] = CLASS_NAMES
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def relative_paths(self) -> list[str]:
        # cached: callers index it per row (predictions.csv), and datasets are never mutated
        return [p.relative_to(self.root).as_posix() for p in self.paths]

    def manifest_hash(self) -> str:
        """A hash of (relative path, class, content hash) for every file: identifies the data."""
        digest = hashlib.sha256()
        for rel, label, content in zip(self.relative_paths, self.labels, self.hashes):
            digest.update(f"{rel}\t{self.class_names[label]}\t{content}\n".encode())
        return digest.hexdigest()

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(
            root=self.root,
            paths=[self.paths[i] for i in indices],
            labels=self.labels[indices],
            hashes=[self.hashes[i] for i in indices],
            class_names=self.class_names,
        )


def _manifest_hashes(root: Path) -> dict[str, str]:
    """Content hashes from ``manifest.csv`` (class,file,sha256) when the dataset ships one.

    The PBC 224 px copy lists the hash of each *original* file, so duplicates among the originals
    stay grouped even though re-encoding could have changed their bytes.
    """
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as handle:
        return {f"{row['class']}/{row['file']}": row["sha256"] for row in csv.DictReader(handle)}


def _is_decodable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsing the header is the check
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def scan_dataset(root: str | Path, class_names: tuple[str, ...] = CLASS_NAMES) -> Dataset:
    """Read an image-folder dataset (one sub-folder per class, named as ``class_names``).

    Files that are not decodable images are skipped with one warning line each.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    folders = {p.name: p for p in root.iterdir() if p.is_dir()}
    missing = [name for name in class_names if name not in folders]
    if len(missing) == len(class_names):
        raise ValueError(
            f"{root}: no class folders found; expected sub-folders named {', '.join(class_names)}"
        )
    known_hashes = _manifest_hashes(root)
    paths: list[Path] = []
    labels: list[int] = []
    hashes: list[str] = []
    skipped: list[str] = []
    for index, name in enumerate(class_names):
        if name not in folders:
            log.warning("%s: no folder for class %r", root, name)
            continue
        for path in sorted(folders[name].rglob("*")):
            if not path.is_file() or is_hidden(path.relative_to(root)):
                continue
            if not _is_decodable(path):
                log.warning("skipping %s: not a decodable image", path)
                skipped.append(str(path))
                continue
            rel = path.relative_to(root).as_posix()
            paths.append(path)
            labels.append(index)
            hashes.append(known_hashes.get(rel) or sha256_file(path))
    return Dataset(root, paths, np.asarray(labels, dtype=np.int64), hashes, class_names, skipped)


def _group_ids(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Group byte-identical files: returns (group id per sample, first sample of each group)."""
    group_by_hash: dict[str, int] = {}
    representatives: list[int] = []
    group_of = np.empty(len(hashes), dtype=np.int64)
    for i, content in enumerate(hashes):
        if content not in group_by_hash:
            group_by_hash[content] = len(representatives)
            representatives.append(i)
        group_of[i] = group_by_hash[content]
    return group_of, np.asarray(representatives, dtype=np.int64)


def _expand(group_of: np.ndarray, chosen_groups: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(group_of, chosen_groups))


@dataclass(frozen=True)
class Split:
    """Sample indices of one train/validation/test partition."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _split_groups(
    groups: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out of ``fraction`` of ``groups`` (``labels`` aligned with them).

    scikit-learn's stratified ``train_test_split``; on data too small for it (fewer held-out
    groups than classes), a class-by-class hold-out of round(n * fraction), at least one group
    per class that has two.
    """
    try:
        kept, held = train_test_split(
            groups, test_size=fraction, stratify=labels, random_state=seed, shuffle=True
        )
        return np.asarray(kept), np.asarray(held)
    except ValueError:
        pass
    rng = np.random.default_rng(seed)
    kept_parts, held_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(groups[labels == label])
        n_held = int(round(len(members) * fraction))
        if len(members) >= 2:
            n_held = min(max(n_held, 1), len(members) - 1)
        held_parts.append(members[:n_held])
        kept_parts.append(members[n_held:])
    return np.concatenate(kept_parts), np.concatenate(held_parts)


def train_val_test_split(
    labels: np.ndarray,
    hashes: list[str],
    seed: int = 42,
    test_fraction: float = TEST_FRACTION,
    val_fraction: float = VALIDATION_FRACTION,
) -> Split:
    """Stratified 70/30 train/test, then 20% of train as validation; duplicates stay together."""
    group_of, representatives = _group_ids(hashes)
    group_labels = labels[representatives]
    all_groups = np.arange(len(representatives))
    trainval, test = _split_groups(all_groups, group_labels, test_fraction, seed)
    train, val = _split_groups(trainval, group_labels[trainval], val_fraction, seed)
    return Split(_expand(group_of, train), _expand(group_of, val), _expand(group_of, test))


def train_subset_seed(config: Mapping[str, Any]) -> int:
    """The seed ``--train-per-class`` draws its cells with: a run configuration's
    ``train_subset_seed`` where it set one, else its ``seed`` (which alone sets the split)."""
    chosen = config.get("train_subset_seed")
    return int(config["seed"] if chosen is None else chosen)


def thinned_train(split: Split, labels: np.ndarray, limit: int | None, seed: int) -> Split:
    """``split`` with at most ``limit`` training samples a class, drawn with ``seed``; the
    validation and test parts are unchanged (the whole split when no limit)."""
    if not limit:
        return split
    rng = np.random.default_rng(seed)
    train_labels = labels[split.train]
    keep = [
        rng.permutation(np.flatnonzero(train_labels == label))[:limit]
        for label in np.unique(train_labels)
    ]
    return Split(np.sort(split.train[np.concatenate(keep)]), split.val, split.test)


def kfold_splits(
    labels: np.ndarray,
    hashes: list[str],
    folds: int,
    seed: int = 42,
    val_fraction: float = VALIDATION_FRACTION,
) -> list[Split]:
    """Stratified K-fold over duplicate groups; 20% of each fold's training part validates."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    group_of, representatives = _group_ids(hashes)
    group_labels = labels[representatives]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    for trainval, test in splitter.split(np.zeros(len(group_labels)), group_labels):
        train, val = _split_groups(trainval, group_labels[trainval], val_fraction, seed)
        splits.append(
            Split(_expand(group_of, train), _expand(group_of, val), _expand(group_of, test))
        )
    return splits


def load_pixels(
    paths: list[Path], image_size: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Load images as a uint8 ``(N, S, S, 3)`` array; returns (pixels, indices that loaded).

    A file that fails to decode is skipped with a warning, never a crash.
    """
    out = np.zeros((len(paths), image_size, image_size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    iterator = enumerate(paths)
    if progress:
        iterator = tqdm(iterator, total=len(paths), desc=f"loading images at {image_size}px")
    for i, path in iterator:
        try:
            out[i] = load_image(path, image_size)
            ok[i] = True
        except ImageLoadError as exc:
            log.warning("skipping %s", exc)
    kept = np.flatnonzero(ok)
    return out[kept], kept


def cached_pixels(
    dataset: Dataset, image_size: int, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_pixels` for a whole dataset, memoised on disk by manifest hash and size."""
    if cache_dir is None:
        return load_pixels(dataset.paths, image_size, progress=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"pixels-{dataset.manifest_hash()[:16]}-{image_size}.npz"
    if target.is_file():
        with np.load(target) as stored:
            return stored["pixels"], stored["kept"]
    pixels, kept = load_pixels(dataset.paths, image_size, progress=True)
    # Per-process temporary name: two runs filling the same cache never write one file.
    partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npz")
    np.savez(partial, pixels=pixels, kept=kept)
    partial.replace(target)  # atomic: a killed process never leaves a half-written cache
    return pixels, kept


def subsample(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most ``limit`` images per class, drawn with ``seed`` (the whole dataset when no limit)."""
    if not limit:
        return dataset
    rng = np.random.default_rng(seed)
    keep = []
    for label in range(len(dataset.class_names)):
        members = np.flatnonzero(dataset.labels == label)
        keep.extend(rng.permutation(members)[:limit])
    return dataset.subset(np.sort(np.asarray(keep, dtype=np.int64)))


def write_predictions(path: Path, dataset: Dataset, indices, probabilities) -> None:
    """predictions.csv: file (relative to the data folder), true, predicted, probabilities."""
    names = dataset.class_names
    rows = []
    for i, probs in zip(indices, probabilities):
        rows.append(
            [
                dataset.relative_paths[i],
                names[dataset.labels[i]],
                names[int(np.argmax(probs))],
                *[f"{p:.6f}" for p in probs],
            ]
        )
    write_csv(path, ["file", "true", "predicted", *names], rows)
