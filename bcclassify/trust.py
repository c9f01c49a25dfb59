"""When not to answer: novelty detection on the model's own features, and calibrated confidence.

A classifier always names one of its classes; this module decides when that answer should not be
shown as one. Two parts, both fitted on the model's own training data and stored beside its
weights (``novelty.npz``, checksummed in the card):

- a **novelty score** on the pooled features the classifier head reads: how unlike the training
  cells an image is. Above the card's threshold (chosen on the validation split) the cell is
  flagged ``unidentified``;
- a **temperature** for the served class probabilities, fitted on the validation split, so a
  shown confidence of 0.9 is right about nine times in ten.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD_LAYER = "predictions"


def feature_forward(keras_model):
    """A compiled function pixels -> (pooled features the head reads, class probabilities)."""
    import keras
    import tensorflow as tf

    head = keras_model.get_layer(HEAD_LAYER)
    both = keras.Model(keras_model.inputs, [head.input, keras_model.outputs[0]])
    return tf.function(lambda x: both(x, training=False), reduce_retracing=True)


def features_and_probabilities(
    classifier, pixels: np.ndarray, averaged: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (image as given), its probabilities, and probabilities over the card's views.

    One forward pass over all views: the image as given is the first view, so its features and
    probabilities come out of the same batch that serves the averaged answer.
    """
    from .serving import SINGLE_VIEW, VIEW_TRANSFORMS

    pixels = np.asarray(pixels, dtype=np.float32)
    forward = classifier.feature_forward()
    views = classifier.test_time_views if averaged else SINGLE_VIEW
    if "identity" in views:
        views = ("identity",) + tuple(v for v in views if v != "identity")
    else:
        views = ("identity",) + tuple(views)
    stacked = np.concatenate([VIEW_TRANSFORMS[v](pixels) for v in views])
    features, probs = forward(stacked)
    n = len(pixels)
    features = np.asarray(features[:n], dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(views), n, -1)
    served_views = classifier.test_time_views if averaged else SINGLE_VIEW
    chosen = [views.index(v) for v in served_views]
    served = probs[chosen].mean(axis=0)
    return features, probs[0], served / served.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- calibration


def temper(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of served probabilities: softmax(log p / T).

    The served probabilities may be an average over test-time views, so the temperature acts on
    their logarithm (the log-probabilities of a softmax are its logits up to a constant); the
    class order, hence the answer, never changes.
    """
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))
    scaled = logp / float(temperature)
    scaled -= scaled.max(axis=-1, keepdims=True)
    out = np.exp(scaled)
    return out / out.sum(axis=-1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (Guo et al. 2017).

    A bounded scalar search on log T in [1/20, 20]: one parameter, so it cannot change accuracy
    and cannot overfit a validation split of thousands of cells.
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.mean(np.log(temper(probabilities, np.exp(log_t))[rows, labels] + 1e-300)))

    best = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))


# ----------------------------------------------------------------------------- novelty


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class NoveltyDetector:
    """How unlike the training cells an image's features are (higher: more novel).

    ``method``:
    - ``mahalanobis``: the smallest class-conditional Mahalanobis distance with one shared
      covariance (Lee et al., NeurIPS 2018), in the top ``dims`` principal components of the
      training features (the full 4,096-dimensional covariance would need more cells than the
      training split has, and 64 MB of storage);
    - ``knn``: the distance to the k-th nearest training cell after L2 normalisation (Sun et al.,
      "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022), on a bank of
      training features projected the same way.
    """

    method: str
    center: np.ndarray  # (D,) mean training feature
    components: np.ndarray  # (D, K) principal directions
    class_means: np.ndarray  # (C, K) in the projected space
    precision: np.ndarray  # (K, K) inverse shared covariance in the projected space
    bank: np.ndarray  # (N, K) L2-normalised projected training features (knn)
    k: int = 10
    threshold: float = float("inf")

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.center) @ self.components

    def score(self, features: np.ndarray) -> np.ndarray:
        z = self.project(features)
        if self.method == "mahalanobis":
            diffs = z[:, None, :] - self.class_means[None]  # (N, C, K)
            dist = np.einsum("nck,kl,ncl->nc", diffs, self.precision, diffs)
            return np.sqrt(np.maximum(dist.min(axis=1), 0.0))
        if self.method == "knn":
            sims = _l2_normalise(z) @ self.bank.T
            kth = np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1]
            return 1.0 + kth  # 1 - cosine similarity of the k-th neighbour
        raise ValueError(f"unknown novelty method {self.method!r}")

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "method": np.asarray(self.method),
            "center": self.center.astype(np.float32),
            "components": self.components.astype(np.float32),
            "class_means": self.class_means.astype(np.float32),
            "precision": self.precision.astype(np.float32),
            "bank": self.bank.astype(np.float16),
            "k": np.asarray(self.k),
            "threshold": np.asarray(self.threshold),
        }

    @classmethod
    def from_arrays(cls, arrays) -> NoveltyDetector:
        return cls(
            method=str(arrays["method"]),
            center=np.asarray(arrays["center"], dtype=np.float64),
            components=np.asarray(arrays["components"], dtype=np.float64),
            class_means=np.asarray(arrays["class_means"], dtype=np.float64),
            precision=np.asarray(arrays["precision"], dtype=np.float64),
            bank=np.asarray(arrays["bank"], dtype=np.float64),
            k=int(arrays["k"]),
            threshold=float(arrays["threshold"]),
        )


def fit_novelty(
    features: np.ndarray,
    labels: np.ndarray,
    method: str = "mahalanobis",
    dims: int = 256,
    k: int = 10,
    bank_size: int = 4000,
    seed: int = 0,
) -> NoveltyDetector:
    """Fit a :class:`NoveltyDetector` on training features (its threshold is set separately)."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    center = features.mean(axis=0)
    # Principal directions from the SVD of the centred features.
    _, _, vt = np.linalg.svd(features - center, full_matrices=False)
    components = vt[: min(dims, vt.shape[0])].T
    z = (features - center) @ components
    classes = np.unique(labels)
    class_means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    within = z - class_means[np.searchsorted(classes, labels)]
    # Ledoit-Wolf shrinkage keeps the shared covariance well conditioned.
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(z))[:bank_size]
    return NoveltyDetector(
        method=method,
        center=center,
        components=components,
        class_means=class_means,
        precision=precision,
        bank=_l2_normalise(z[np.sort(chosen)]),
        k=k,
    )


# ----------------------------------------------------------------------------- fitting

NONCELL_FIGURES_NOTE = (
    "non-cell development set: everyday photographs, red-cells-only corners of PBC test-split "
    "images, blank stain, noise, text and icons (scripts/make_noncell_sets.py); never used to fit "
    "or to choose a threshold"
)


def extract(
    classifier,
    paths: list[Path],
    averaged: bool,
    cache: Path | None = None,
    desc: str = "features",
    chunk: int = 256,
) -> dict[str, np.ndarray]:
    """Features, single-view and served (view-averaged) probabilities for image files.

    Returns arrays for the files that loaded (``kept`` indexes ``paths``). With ``cache``, work
    is saved in chunks beside it and the finished set in ``cache`` itself, so a killed run
    resumes where it stopped.
    """
    from tqdm import tqdm

    from .imaging import ImageLoadError, load_image

    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            return {k: stored[k] for k in stored.files}
    parts: list[dict[str, np.ndarray]] = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=None)
    for start in range(0, len(paths), chunk):
        part_file = None if cache is None else cache.with_name(f"{cache.stem}.part{start}.npz")
        if part_file is not None and part_file.is_file():
            with np.load(part_file) as stored:
                parts.append({k: stored[k] for k in stored.files})
            bar.update(min(chunk, len(paths) - start))
            continue
        pixels, kept = [], []
        for i in range(start, min(start + chunk, len(paths))):
            try:
                pixels.append(load_image(paths[i], classifier.image_size))
                kept.append(i)
            except ImageLoadError:
                pass  # refused files are not cells; the caller sees them missing from ``kept``
        out: dict[str, list] = {"features": [], "single": [], "served": []}
        for b in range(0, len(pixels), 32):
            f, p1, pv = features_and_probabilities(
                classifier, np.stack(pixels[b : b + 32]), averaged
            )
            out["features"].append(f)
            out["single"].append(p1)
            out["served"].append(pv)
            bar.update(len(f))
        part = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}
        part["kept"] = np.asarray(kept, dtype=np.int64)
        if part_file is not None:
            _atomic_savez(part_file, part)
        parts.append(part)
    bar.close()
    merged = {k: np.concatenate([p[k] for p in parts if len(p["kept"])]) for k in parts[0]}
    if cache is not None:
        _atomic_savez(cache, merged)
        for start in range(0, len(paths), chunk):
            cache.with_name(f"{cache.stem}.part{start}.npz").unlink(missing_ok=True)
    return merged


def _atomic_savez(path: Path, arrays: dict) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def trust_figures(
    labels: np.ndarray,
    probabilities: np.ndarray,
    novelty: np.ndarray,
    novelty_threshold: float,
    low_confidence: float,
) -> dict:
    """What a reviewer meets on a labelled set: how many cells are flagged, and how often an
    unflagged answer is wrong. ``probabilities`` are the served (calibrated) ones."""
    labels = np.asarray(labels)
    predicted = np.asarray(probabilities).argmax(axis=1)
    unidentified = np.asarray(novelty) > novelty_threshold
    low = ~unidentified & (np.asarray(probabilities).max(axis=1) < low_confidence)
    flagged = unidentified | low
    correct = predicted == labels
    n = max(len(labels), 1)
    return {
        "num_samples": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else None,
        "unidentified_fraction": float(unidentified.sum() / n),
        "low_confidence_fraction": float(low.sum() / n),
        "flagged_fraction": float(flagged.sum() / n),
        "accuracy_of_unflagged": float(correct[~flagged].mean()) if (~flagged).any() else None,
        "wrong_and_unflagged_fraction": float((~correct & ~flagged).sum() / n),
    }


def _weights_id(card: dict) -> str:
    """A short id of the model's weights, so cached features never outlive the model."""
    import hashlib

    listed = card.get("files_sha256") or {}
    text = "".join(
        f"{k}={v}"
        for k, v in sorted(listed.items())
        if k.endswith((".npz", ".json")) and k != "novelty.npz"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _served_from_record(classifier, relative_paths: list[str]) -> np.ndarray | None:
    """The installed model's own test-split probabilities (test_predictions.csv), if it has them."""
    import csv

    record = classifier.folder / "test_predictions.csv"
    if "test_predictions.csv" not in (classifier.card.get("files_sha256") or {}):
        return None
    with record.open() as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    if not all(p in rows for p in relative_paths):
        return None
    return np.asarray([[float(rows[p][c]) for c in classifier.class_names] for p in relative_paths])


def calibrate_model(
    name: str | None,
    data: str | Path,
    noncell: str | Path | None = None,
    method: str = "mahalanobis",
    dims: int = 128,
    quantile: float = 0.99,
    train_limit: int = 4000,
    cache_root: Path | None = None,
) -> dict:
    """Fit the temperature and the novelty detector of an installed model and install them.

    On the model's own training data (``data`` must be it: the splits are recomputed from the
    card's manifest and seed): the detector on (up to ``train_limit``) training-split features,
    the temperature and the ``unidentified`` threshold (the ``quantile`` of validation novelty
    scores) on the validation split. The test split and the optional ``noncell`` folder only
    report figures. Writes ``novelty.npz`` and the card's ``calibration`` and ``novelty``
    sections, checksummed; returns the new card.
    """
    from .data import scan_dataset, train_val_test_split
    from .imaging import collect_image_paths
    from .metrics import auroc, brier_score, expected_calibration_error, reliability_table
    from .serving import NOVELTY_FILE, load_model
    from .store import sha256_file, write_json

    classifier = load_model(name)
    card = dict(classifier.card)
    trained_on = card.get("training_data") or {}
    seed = int((card.get("training_config") or {}).get("seed", 42))
    dataset = scan_dataset(data)
    if dataset.manifest_hash() != trained_on.get("manifest_sha256"):
        raise ValueError(
            f"{data} is not the data {classifier.name} was trained on (manifest differs), so its "
            "training/validation/test split cannot be recomputed"
        )
    split = train_val_test_split(dataset.labels, dataset.hashes, seed)
    train_idx = split.train
    if train_limit and len(train_idx) > train_limit:
        train_idx = np.sort(np.random.default_rng(seed).permutation(train_idx)[:train_limit])
    cache = (cache_root or Path("cache") / "trust") / f"{classifier.name}-{_weights_id(card)}"

    def labelled(indices, averaged, set_name):
        got = extract(
            classifier,
            [dataset.paths[i] for i in indices],
            averaged,
            cache / f"{set_name}.npz",
            desc=set_name,
        )
        return got, dataset.labels[indices][got["kept"]]

    train, train_labels = labelled(train_idx, False, "train")
    val, val_labels = labelled(split.val, True, "val")
    test, test_labels = labelled(split.test, False, "test")
    test_rel = [dataset.relative_paths[i] for i in split.test[test["kept"]]]
    test_served = _served_from_record(classifier, test_rel)
    if test_served is None:
        test, test_labels = labelled(split.test, True, "test-views")
        test_served = test["served"]

    temperature = fit_temperature(val["served"], val_labels)
    detector = fit_novelty(train["features"], train_labels, method, dims=dims, seed=seed)
    val_scores = detector.score(val["features"])
    detector.threshold = float(np.quantile(val_scores, quantile))
    test_scores = detector.score(test["features"])
    low = float(card.get("low_confidence_threshold", 0.6))

    def calibration(labels, probs):
        tempered = temper(probs, temperature)
        return {
            "num_samples": int(len(labels)),
            "ece_before": expected_calibration_error(labels, probs),
            "ece_after": expected_calibration_error(labels, tempered),
            "brier_before": brier_score(labels, probs),
            "brier_after": brier_score(labels, tempered),
        }

    card["calibration"] = {
        "method": "temperature scaling of the served log-probabilities, softmax(log p / T), "
        "fitted by negative log-likelihood on the validation split",
        "temperature": temperature,
        "validation": calibration(val_labels, val["served"]),
        "test": calibration(test_labels, test_served),
        "reliability_test_before": reliability_table(test_labels, test_served),
        "reliability_test_after": reliability_table(test_labels, temper(test_served, temperature)),
    }
    novelty = {
        "method": method,
        "dims": dims,
        "k": detector.k,
        "features": "pooled features the classifier head reads, image as given",
        "fitted_on": f"{len(train_labels)} training-split cells",
        "threshold": detector.threshold,
        "threshold_rule": f"the {quantile:.3f} quantile of the validation split's novelty scores "
        f"({len(val_labels)} cells)",
        "validation": trust_figures(
            val_labels, temper(val["served"], temperature), val_scores, detector.threshold, low
        ),
        "test": trust_figures(
            test_labels, temper(test_served, temperature), test_scores, detector.threshold, low
        ),
    }
    if noncell is not None:
        paths = collect_image_paths([noncell])
        got = extract(
            classifier, paths, True, cache / f"noncell-{Path(noncell).name}.npz", desc="non-cell"
        )
        scores = detector.score(got["features"])
        served = temper(got["served"], temperature)
        rejected = (scores > detector.threshold) | (served.max(axis=1) < low)
        kinds = np.asarray([paths[i].parent.name for i in got["kept"]])
        novelty["noncell_development_set"] = {
            "note": NONCELL_FIGURES_NOTE,
            "num_images": int(len(scores)),
            "auroc_vs_test_cells": auroc(test_scores, scores),
            "unidentified_fraction": float(np.mean(scores > detector.threshold)),
            "flagged_fraction": float(rejected.mean()),
            "flagged_by_kind": {k: float(rejected[kinds == k].mean()) for k in sorted(set(kinds))},
        }
    # A new file name per fit, then the card (atomic), then the old file: a process killed at
    # any point leaves a card whose listed files all exist and match.
    staged = classifier.folder / f".{NOVELTY_FILE}"
    _atomic_savez(staged, detector.to_arrays())
    digest = sha256_file(staged)
    file_name = f"{Path(NOVELTY_FILE).stem}-{digest[:12]}.npz"
    staged.replace(classifier.folder / file_name)
    novelty["file"] = file_name
    card["novelty"] = novelty
    old_name = (classifier.card.get("novelty") or {}).get("file")
    files = {k: v for k, v in card["files_sha256"].items() if k != old_name}
    files[file_name] = digest
    card["files_sha256"] = dict(sorted(files.items()))
    write_json(classifier.folder / "card.json", card)
    if old_name and old_name != file_name:
        (classifier.folder / old_name).unlink(missing_ok=True)
    return card
