"""Dataset scanning, duplicate grouping and the reference work's splits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, SHARED_DATA

from bcclassify import CLASS_NAMES
from bcclassify.data.datasets import (
    kfold_splits,
    load_pixels,
    scan_dataset,
    thinned_train,
    train_subset_seed,
    train_val_test_split,
)


def _synthetic(n_per_class=(60, 120, 40, 100, 50, 45, 130, 80), duplicates=25, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(n_per_class)])
    hashes = [f"h{i}" for i in range(len(labels))]
    # Byte-identical copies: same hash, same class.
    for i in rng.choice(len(labels), duplicates, replace=False):
        j = rng.choice(np.flatnonzero(labels == labels[i]))
        hashes[j] = hashes[i]
    return labels, hashes


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    labels, hashes = _synthetic()
    a = train_val_test_split(labels, hashes, seed=7)
    b = train_val_test_split(labels, hashes, seed=7)
    c = train_val_test_split(labels, hashes, seed=8)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)


def test_split_partitions_all_samples_70_30_then_80_20():
    labels, hashes = _synthetic()
    split = train_val_test_split(labels, hashes, seed=1)
    every = np.concatenate([split.train, split.val, split.test])
    assert sorted(every.tolist()) == list(range(len(labels)))
    assert abs(len(split.test) / len(labels) - 0.30) < 0.02
    assert abs(len(split.val) / (len(split.train) + len(split.val)) - 0.20) < 0.02


def test_split_is_stratified():
    labels, hashes = _synthetic()
    split = train_val_test_split(labels, hashes, seed=3)
    overall = np.bincount(labels) / len(labels)
    for part in (split.train, split.test):
        share = np.bincount(labels[part], minlength=len(overall)) / len(part)
        assert np.max(np.abs(share - overall)) < 0.02


def test_thinned_train_caps_each_class_and_leaves_validation_and_test_whole():
    """``train --train-per-class``: a continued model's held-out cells must stay held out."""
    labels, hashes = _synthetic()
    split = train_val_test_split(labels, hashes, seed=5)
    thin = thinned_train(split, labels, 20, seed=5)
    np.testing.assert_array_equal(thin.val, split.val)
    np.testing.assert_array_equal(thin.test, split.test)
    assert set(thin.train) <= set(split.train)
    counts = np.bincount(labels[thin.train], minlength=8)
    full = np.bincount(labels[split.train], minlength=8)
    np.testing.assert_array_equal(counts, np.minimum(full, 20))
    np.testing.assert_array_equal(thinned_train(split, labels, 20, seed=5).train, thin.train)
    assert not np.array_equal(thinned_train(split, labels, 20, seed=6).train, thin.train)
    assert thinned_train(split, labels, None, seed=5) is split


def test_a_train_subset_seed_draws_other_cells_from_the_same_split():
    """``--train-subset-seed``: a further round sees other training cells, while the split,
    set by ``--seed`` alone, keeps its held-out cells (a seed of 0 is a seed, not "unset")."""
    assert train_subset_seed({"seed": 42}) == 42
    assert train_subset_seed({"seed": 42, "train_subset_seed": None}) == 42
    assert train_subset_seed({"seed": 42, "train_subset_seed": 0}) == 0
    labels, hashes = _synthetic()
    split = train_val_test_split(labels, hashes, seed=42)
    first = thinned_train(split, labels, 20, train_subset_seed({"seed": 42}))
    again = thinned_train(
        split, labels, 20, train_subset_seed({"seed": 42, "train_subset_seed": 43})
    )
    assert not np.array_equal(first.train, again.train)
    np.testing.assert_array_equal(first.test, again.test)


def _sides(split, hashes):
    side = {}
    for name in ("train", "val", "test"):
        for i in getattr(split, name):
            side.setdefault(hashes[i], set()).add(name)
    return side


def test_duplicates_stay_on_one_side_of_every_split():
    labels, hashes = _synthetic(duplicates=60)
    assert len(set(hashes)) < len(hashes)
    for seed in range(5):
        sides = _sides(train_val_test_split(labels, hashes, seed=seed), hashes)
        assert all(len(s) == 1 for s in sides.values())
    for split in kfold_splits(labels, hashes, folds=5, seed=0):
        assert all(len(s) == 1 for s in _sides(split, hashes).values())


def test_kfold_test_parts_cover_everything_once():
    labels, hashes = _synthetic()
    splits = kfold_splits(labels, hashes, folds=5, seed=0)
    tests = np.concatenate([s.test for s in splits])
    assert sorted(tests.tolist()) == list(range(len(labels)))
    with pytest.raises(ValueError, match="at least 2"):
        kfold_splits(labels, hashes, folds=1)


def test_tiny_dataset_still_splits_with_every_class_in_test():
    labels = np.repeat(np.arange(8), 2)
    split = train_val_test_split(labels, [str(i) for i in range(16)], seed=0)
    assert sorted(labels[split.test].tolist()) == list(range(8))


def test_scan_reads_class_folders_and_skips_undecodable(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(FIXTURE_IMAGES, root)
    (root / "monocyte" / "notes.txt").write_text("not an image")
    (root / "ig" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    dataset = scan_dataset(root)
    assert len(dataset) == 16
    assert dataset.class_counts() == {name: 2 for name in CLASS_NAMES}
    assert {p.rsplit("/", 1)[-1] for p in dataset.skipped} == {"notes.txt", "broken.jpg"}
    # A byte-identical copy shares its content hash.
    original = next((root / "platelet").iterdir())
    shutil.copy(original, root / "platelet" / "copy.jpg")
    again = scan_dataset(root)
    hashes = {p.name: h for p, h in zip(again.paths, again.hashes)}
    assert hashes["copy.jpg"] == hashes[original.name]
    assert again.manifest_hash() != dataset.manifest_hash()


def test_load_pixels_skips_files_that_fail(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    good = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:2]
    pixels, kept = load_pixels([good[0], bad, good[1]], 40)
    assert pixels.shape == (2, 40, 40, 3) and pixels.dtype == np.uint8
    assert kept.tolist() == [0, 2]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/pbc224 not present")
def test_pbc224_manifest_groups_duplicates():
    dataset = scan_dataset(SHARED_DATA)
    assert len(dataset) > 14000
    assert len(set(dataset.hashes)) < len(dataset.hashes)  # the dataset has duplicate originals
    split = train_val_test_split(dataset.labels, dataset.hashes, seed=42)
    assert all(len(s) == 1 for s in _sides(split, dataset.hashes).values())
