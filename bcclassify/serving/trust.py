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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcclassify.serving.colour_check import CARD_KEY as COLOUR_CHECK_KEY
from bcclassify.serving.floors import CARD_KEY as FLOORS_KEY
from bcclassify.serving.floors import LOW_CONFIDENCE_KEY
from bcclassify.storage.cards import weights_id, write_card

HEAD_LAYER = "predictions"
# A model whose head is more than one Dense layer (adapt with mid-level blocks) names the tensor
# before its softmax: what Grad-CAM differentiates (bcclassify/explain/maps.py).
LOGITS_LAYER = "logits"


def features_model(keras_model):
    """The Keras model pixels -> (pooled features the head reads, class probabilities)."""
    import keras

    head = keras_model.get_layer(HEAD_LAYER)
    return keras.Model(keras_model.inputs, [head.input, keras_model.outputs[0]])


def feature_forward(keras_model):
    """A compiled function pixels -> (pooled features the head reads, class probabilities)."""
    import tensorflow as tf

    both = features_model(keras_model)
    return tf.function(lambda x: both(x, training=False), reduce_retracing=True)


def features_and_probabilities(
    classifier, pixels: np.ndarray, averaged: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (image as given), its probabilities, and probabilities over the card's views.

    One forward pass over all views: the image as given is the first view, so its features and
    probabilities come out of the same batch that serves the averaged answer.
    """
    from bcclassify.serving.classifier import SINGLE_VIEW, VIEW_TRANSFORMS

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

NOVELTY_METHODS = ("knn+oe", "knn", "mahalanobis")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(bank: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    """1 - cosine similarity to the k-th nearest of the (L2-normalised) training features
    (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022)."""
    # float32: the bank is thousands of rows of thousands of features; doubles add nothing here.
    sims = l2_normalise(features).astype(np.float32) @ np.asarray(bank, dtype=np.float32).T
    k = min(k, sims.shape[1])
    return 1.0 + np.partition(-sims, k - 1, axis=1)[:, k - 1]


def mahalanobis_distance(arrays: dict, features: np.ndarray) -> np.ndarray:
    """Smallest class-conditional Mahalanobis distance, shared covariance, in the top principal
    components of the training features (Lee et al., NeurIPS 2018)."""
    z = (np.asarray(features, dtype=np.float64) - arrays["center"]) @ arrays["components"]
    means, precision = arrays["class_means"], arrays["precision"]
    # (z - m)' P (z - m) for every class mean m, expanded into three matrix products.
    zp = z @ precision
    dist = (
        np.einsum("nk,nk->n", zp, z)[:, None]
        - 2.0 * zp @ means.T
        + np.einsum("ck,kl,cl->c", means, precision, means)[None, :]
    )
    return np.sqrt(np.maximum(dist.min(axis=1), 0.0))


def outlier_logit(arrays: dict, features: np.ndarray) -> np.ndarray:
    """A linear cell-vs-non-cell score on normalised features, fitted with outlier exposure
    (Hendrycks et al., "Deep Anomaly Detection with Outlier Exposure", ICLR 2019)."""
    return l2_normalise(features) @ arrays["oe_weights"] + float(arrays["oe_bias"])


@dataclass
class NoveltyDetector:
    """How unlike the training cells an image's features are (higher: more novel).

    ``method``:
    - ``knn``: the k-th nearest-neighbour distance to training cells;
    - ``knn+oe``: the larger of that distance and an outlier-exposure score (a linear model of
      training cells against a separate set of non-cell images), each put on a common scale by
      its median and spread on the validation split, so either can raise the flag: the
      distance catches anything unlike the cells, the linear model catches near misses such as
      crops of red cells only, which sit close to platelet images;
    - ``mahalanobis``: class-conditional Mahalanobis distance (kept for comparison).
    ``arrays`` holds what the method needs; ``threshold`` comes from the validation split.
    """

    method: str
    arrays: dict
    k: int = 10
    threshold: float = float("inf")

    def components(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The raw scores the method combines, by name."""
        if self.method == "mahalanobis":
            return {"mahalanobis": mahalanobis_distance(self.arrays, features)}
        parts = {"knn": knn_distance(self.arrays["bank"], features, self.k)}
        if self.method == "knn+oe":
            parts["oe"] = outlier_logit(self.arrays, features)
        return parts

    def scaled_components(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The components on the threshold's scale (``knn+oe``: each by its validation median and
        spread; other methods: as they are)."""
        parts = self.components(features)
        if self.method != "knn+oe":
            return parts
        scale = self.arrays["scale"]  # [knn median, knn spread, oe median, oe spread]
        return {
            "knn": (parts["knn"] - scale[0]) / scale[1],
            "oe": (parts["oe"] - scale[2]) / scale[3],
        }

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.maximum.reduce(list(self.scaled_components(features).values()))

    def with_bank(self, features: np.ndarray) -> NoveltyDetector:
        """This detector with ``features`` added to its k-NN bank (same k, scales, threshold):
        how ``adapt`` makes a lab's cells count as known cells."""
        bank = np.concatenate([self.arrays["bank"], l2_normalise(features).astype(np.float32)])
        return NoveltyDetector(self.method, {**self.arrays, "bank": bank}, self.k, self.threshold)

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    def to_arrays(self) -> dict[str, np.ndarray]:
        stored = {
            key: value.astype(np.float16 if key == "bank" else np.float32)
            for key, value in self.arrays.items()
        }
        stored.update(
            method=np.asarray(self.method),
            k=np.asarray(self.k),
            threshold=np.asarray(self.threshold),
        )
        return stored

    @classmethod
    def from_arrays(cls, stored) -> NoveltyDetector:
        meta = ("method", "k", "threshold")
        return cls(
            method=str(stored["method"]),
            arrays={
                key: np.asarray(stored[key], dtype=np.float32 if key == "bank" else np.float64)
                for key in stored
                if key not in meta
            },
            k=int(stored["k"]),
            threshold=float(stored["threshold"]),
        )


def fit_novelty(
    features: np.ndarray,
    labels: np.ndarray,
    method: str = "knn+oe",
    outliers: np.ndarray | None = None,
    validation: np.ndarray | None = None,
    k: int = 10,
    dims: int = 256,
    seed: int = 0,
) -> NoveltyDetector:
    """Fit a :class:`NoveltyDetector` on training features (its threshold is set separately).

    ``outliers``: features of non-cell images (``knn+oe`` only); ``validation``: features of
    held-out cells that put the two scores of ``knn+oe`` on one scale.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if method not in NOVELTY_METHODS:
        raise ValueError(f"unknown novelty method {method!r}; choose from {NOVELTY_METHODS}")
    if method == "mahalanobis":
        return NoveltyDetector(method, _fit_mahalanobis(features, labels, dims, seed))
    detector = NoveltyDetector(method, {"bank": l2_normalise(features)}, k=k)
    if method == "knn+oe":
        from sklearn.linear_model import LogisticRegression

        if outliers is None or validation is None or not len(outliers):
            raise ValueError("knn+oe needs non-cell features (outliers) and validation features")
        inputs = np.concatenate([l2_normalise(features), l2_normalise(outliers)])
        is_outlier = np.r_[np.zeros(len(features)), np.ones(len(outliers))]
        model = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")
        model.fit(inputs, is_outlier)
        detector.arrays.update(oe_weights=model.coef_[0], oe_bias=np.asarray(model.intercept_[0]))
        held_out = detector.components(validation)
        detector.arrays["scale"] = np.asarray(
            [
                np.median(held_out["knn"]),
                max(np.std(held_out["knn"]), 1e-9),
                np.median(held_out["oe"]),
                max(np.std(held_out["oe"]), 1e-9),
            ]
        )
    return detector


def _fit_mahalanobis(features: np.ndarray, labels: np.ndarray, dims: int, seed: int) -> dict:
    from sklearn.covariance import LedoitWolf
    from sklearn.utils.extmath import randomized_svd

    center = features.mean(axis=0)
    # A randomised SVD finds the top ``dims`` directions in seconds, not minutes.
    dims = min(dims, *features.shape)
    _, _, vt = randomized_svd(features - center, dims, n_iter=6, random_state=seed)
    z = (features - center) @ vt.T
    classes = np.unique(labels)
    means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    within = z - means[np.searchsorted(classes, labels)]
    # Ledoit-Wolf shrinkage keeps the shared covariance well conditioned.
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    return {"center": center, "components": vt.T, "class_means": means, "precision": precision}


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

    from bcclassify.data.imaging import ImageLoadError, load_image

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
            atomic_savez(part_file, part)
        parts.append(part)
    bar.close()
    merged = {k: np.concatenate([p[k] for p in parts if len(p["kept"])]) for k in parts[0]}
    if cache is not None:
        atomic_savez(cache, merged)
        for start in range(0, len(paths), chunk):
            cache.with_name(f"{cache.stem}.part{start}.npz").unlink(missing_ok=True)
    return merged


def atomic_savez(path: Path, arrays: dict) -> None:
    import io

    from bcclassify.storage.store import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())  # whole or not at all, even if killed


def trust_figures(
    labels: np.ndarray,
    probabilities: np.ndarray,
    novelty: np.ndarray,
    novelty_threshold: float,
    low_confidence: float | np.ndarray,
    disputed: np.ndarray | None = None,
) -> dict:
    """What a reviewer meets on a labelled set: how many cells are flagged, and how often an
    unflagged answer is wrong. ``probabilities`` are the served (calibrated) ones;
    ``low_confidence`` one threshold, or one per class (``ClassifierModel.class_thresholds``);
    ``disputed`` marks the cells a second opinion disputes (second_opinion.py), none when not
    given."""
    labels = np.asarray(labels)
    predicted = np.asarray(probabilities).argmax(axis=1)
    if np.ndim(low_confidence):  # the threshold of each cell's served class
        low_confidence = np.asarray(low_confidence)[predicted]
    unidentified = np.asarray(novelty) > novelty_threshold
    disputed = np.zeros(len(labels), bool) if disputed is None else np.asarray(disputed, bool)
    disputed = ~unidentified & disputed
    low = ~unidentified & ~disputed & (np.asarray(probabilities).max(axis=1) < low_confidence)
    flagged = unidentified | disputed | low
    correct = predicted == labels
    n = max(len(labels), 1)
    # Each class present weighted equally, as on a set balanced by class (the withheld PBC
    # originals are judged on one: a rare class's flags count as much as a common one's).
    weight = np.zeros(len(labels))
    present = np.unique(labels)
    for c in present:
        weight[labels == c] = 1.0 / ((labels == c).sum() * len(present))
    return {
        "num_samples": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else None,
        "unidentified_fraction": float(unidentified.sum() / n),
        "disputed_fraction": float(disputed.sum() / n),
        "low_confidence_fraction": float(low.sum() / n),
        "flagged_fraction": float(flagged.sum() / n),
        "accuracy_of_unflagged": float(correct[~flagged].mean()) if (~flagged).any() else None,
        "wrong_and_unflagged_fraction": float((~correct & ~flagged).sum() / n),
        "class_balanced": {
            "accuracy": float(weight @ correct),
            "flagged_fraction": float(weight @ flagged),
            "wrong_and_unflagged_fraction": float(weight @ (~correct & ~flagged)),
        },
    }


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


def training_subset(indices: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``indices`` (0: all), a seeded choice kept in order: the training
    cells the novelty bank and the acquisition range are fitted on."""
    if not limit or len(indices) <= limit:
        return indices
    return np.sort(np.random.default_rng(seed).permutation(indices)[:limit])


def calibrate_model(
    name: str | None,
    data: str | Path,
    outliers: str | Path | None = None,
    noncell: str | Path | None = None,
    shifted: str | Path | None = None,
    method: str = "knn+oe",
    quantile: float = 0.995,
    low_confidence: float | None = None,
    train_limit: int = 4000,
    cache_root: Path | None = None,
) -> dict:
    """Fit the temperature and the novelty detector of an installed model and install them.

    On the model's own training data (``data`` must be it: the splits are recomputed from the
    card's manifest and seed): the detector on (up to ``train_limit``) training-split features,
    the temperature and the ``unidentified`` threshold (the ``quantile`` of validation novelty
    scores) on the validation split; ``outliers``, a folder of non-cell images, for the
    outlier-exposure part of ``knn+oe``. The test split, the ``noncell`` folder (non-cell images
    kept apart from ``outliers``) and ``shifted`` (cells from another lab, in class folders)
    only report figures. Writes ``novelty-*.npz`` and the card's ``calibration`` and ``novelty``
    sections, checksummed; returns the new card.
    """
    from bcclassify.data.imaging import collect_image_paths
    from bcclassify.evaluation.metrics import (
        auroc,
        brier_score,
        expected_calibration_error,
        reliability_table,
    )
    from bcclassify.serving.classifier import NOVELTY_FILE, load_model
    from bcclassify.storage.store import sha256_file

    classifier = load_model(name)
    card = dict(classifier.card)
    dataset, split, seed = _own_split(classifier.name, card, data)
    train_idx = training_subset(split.train, train_limit, seed)
    cache = _features_cache(classifier, cache_root)

    def labelled(indices, averaged, set_name):
        got = _extract_cached(classifier, dataset, indices, averaged, cache, set_name)
        return got, dataset.labels[indices][got["kept"]]

    train, train_labels = labelled(train_idx, False, "train")
    val, val_labels = labelled(split.val, True, "val")
    test, test_labels = labelled(split.test, False, "test")
    test_rel = [dataset.relative_paths[i] for i in split.test[test["kept"]]]
    test_served = _served_from_record(classifier, test_rel)
    if test_served is None:
        test, test_labels = labelled(split.test, True, "test-views")
        test_served = test["served"]

    def folder(root, averaged, set_name):
        paths = collect_image_paths([root])
        got = extract(classifier, paths, averaged, cache / f"{set_name}.npz", desc=set_name)
        return got, [paths[i] for i in got["kept"]]

    outlier_features = None
    if outliers is not None:
        outlier_features = folder(outliers, False, f"outliers-{Path(outliers).name}")[0]["features"]
    temperature = fit_temperature(val["served"], val_labels)
    detector = fit_novelty(
        train["features"],
        train_labels,
        method,
        outliers=outlier_features,
        validation=val["features"],
        seed=seed,
    )
    val_scores = detector.score(val["features"])
    detector.threshold = float(np.quantile(val_scores, quantile))
    test_scores = detector.score(test["features"])
    # The figures are the served flags: outside the acquisition range is unidentified too (the
    # threshold above stays the novelty score's own quantile).
    acquisition, outside_of = _fit_acquisition(card, dataset, split, seed)

    def gated(scores: np.ndarray, paths: list) -> np.ndarray:
        return np.where(outside_of(paths), np.inf, scores)

    val_gated = gated(val_scores, [dataset.paths[i] for i in split.val[val["kept"]]])
    test_gated = gated(test_scores, [dataset.paths[i] for i in split.test[test["kept"]]])
    if low_confidence is not None:
        card["low_confidence_threshold"] = float(low_confidence)
        card.pop(LOW_CONFIDENCE_KEY, None)  # a threshold set by hand replaces a budgeted one
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

    # Floors and the colour check are in calibrated-probability units: chosen under the old
    # temperature, they go.
    card.pop(FLOORS_KEY, None)
    card.pop(COLOUR_CHECK_KEY, None)
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
        "k": detector.k,
        "features": "pooled features the classifier head reads, image as given",
        "fitted_on": f"{len(train_labels)} training-split cells"
        + (
            f"; outlier exposure: {len(outlier_features)} non-cell images ({Path(outliers).name}, "
            "scripts/make_noncell_sets.py)"
            if outlier_features is not None
            else ""
        ),
        "threshold": detector.threshold,
        "threshold_rule": f"the {quantile:.3f} quantile of the validation split's novelty scores "
        f"({len(val_labels)} cells)",
        "validation": trust_figures(
            val_labels, temper(val["served"], temperature), val_gated, detector.threshold, low
        ),
        "test": trust_figures(
            test_labels, temper(test_served, temperature), test_gated, detector.threshold, low
        ),
    }
    if noncell is not None:
        got, paths = folder(noncell, True, f"noncell-{Path(noncell).name}")
        scores = detector.score(got["features"])
        served = temper(got["served"], temperature)
        unidentified = gated(scores, paths) > detector.threshold
        rejected = unidentified | (served.max(axis=1) < low)
        kinds = np.asarray([p.parent.name for p in paths])
        novelty["noncell_development_set"] = {
            "note": NONCELL_FIGURES_NOTE,
            "num_images": int(len(scores)),
            "auroc_vs_test_cells": auroc(test_scores, scores),  # of the novelty score alone
            "unidentified_fraction": float(np.mean(unidentified)),
            "flagged_fraction": float(rejected.mean()),
            "flagged_by_kind": {k: float(rejected[kinds == k].mean()) for k in sorted(set(kinds))},
        }
    if shifted is not None:
        got, paths = folder(shifted, True, f"shifted-{Path(shifted).name}")
        names = list(classifier.class_names)
        known = np.asarray([p.relative_to(shifted).parts[0] in names for p in paths])
        labels = np.asarray(
            [
                names.index(p.relative_to(shifted).parts[0]) if k else -1
                for p, k in zip(paths, known)
            ]
        )
        novelty["shifted_cells"] = {
            "data": Path(shifted).name,
            **trust_figures(
                labels[known],
                temper(got["served"][known], temperature),
                gated(
                    detector.score(got["features"][known]),
                    [p for p, k in zip(paths, known) if k],
                ),
                detector.threshold,
                low,
            ),
        }
    # A new file name per fit, then the card (atomic), then the old file: a process killed at
    # any point leaves a card whose listed files all exist and match.
    staged = classifier.folder / f".{NOVELTY_FILE}"
    atomic_savez(staged, detector.to_arrays())
    digest = sha256_file(staged)
    file_name = f"{Path(NOVELTY_FILE).stem}-{digest[:12]}.npz"
    staged.replace(classifier.folder / file_name)
    novelty["file"] = file_name
    card["novelty"] = novelty
    card["acquisition"] = _acquisition_section(acquisition, outside_of, dataset, split, shifted)
    old_name = (classifier.card.get("novelty") or {}).get("file")
    files = {k: v for k, v in card["files_sha256"].items() if k != old_name}
    files[file_name] = digest
    card["files_sha256"] = dict(sorted(files.items()))
    write_card(classifier.folder, card)
    if old_name and old_name != file_name:
        (classifier.folder / old_name).unlink(missing_ok=True)
    return card


def _features_cache(classifier, cache_root: Path | None = None) -> Path:
    """Where a model's extracted features and probabilities are kept between fits: beside the
    store (the repository's cache/ for the bundled one), never inside a model, one folder per
    weights."""
    from bcclassify.storage.store import store_root

    cache_root = cache_root or store_root().resolve().parent / "cache" / "trust"
    return cache_root / f"{classifier.name}-{weights_id(classifier.card)}"


def _extract_cached(classifier, dataset, indices, averaged: bool, cache: Path, set_name: str):
    """:func:`extract` for ``dataset``'s cells at ``indices``, kept as ``cache/set_name.npz``."""
    return extract(
        classifier,
        [dataset.paths[i] for i in indices],
        averaged,
        cache / f"{set_name}.npz",
        desc=set_name,
    )


def highest_own_novelty(name: str | None, data: str | Path, cache_root: Path | None = None) -> dict:
    """The highest novelty score of any cell of the model's validation and test splits (its
    own data held out of training): above it, a cell is further from the training cells than
    any of PBC's own held-out cells (blood_prior.py's ``beyond_novelty``); and the validation
    split's highest, from which the guess fades in (``fade_from``). The originals not
    in the training split are left to check it on. Features as ``calibrate`` extracts them,
    from its cache when it has run (else minutes)."""
    from bcclassify.serving.classifier import load_model

    classifier = load_model(name)
    if classifier.novelty is None:
        raise ValueError(f"{classifier.name} has no novelty detector: run calibrate first")
    dataset, split, _ = _own_split(classifier.name, classifier.card, data)
    cache = _features_cache(classifier, cache_root)
    highest = {}
    # The same sets, views and cache files as calibrate_model's, so either reuses the other's.
    for indices, averaged, set_name in ((split.val, True, "val"), (split.test, False, "test")):
        got = _extract_cached(classifier, dataset, indices, averaged, cache, set_name)
        highest[set_name] = (
            float(classifier.novelty.score(got["features"]).max()),
            len(got["kept"]),
        )
    cells = sum(n for _, n in highest.values())
    return {
        "score": max(score for score, _ in highest.values()),
        # The guess fades in above every validation cell (the split that chose the unidentified
        # threshold); none when no test cell lies higher.
        "fade_from": highest["val"][0] if highest["val"][0] < highest["test"][0] else None,
        "rule": f"the highest novelty score of the validation and test splits' {cells} cells "
        f"(validation's highest {highest['val'][0]:.3f}, test's {highest['test'][0]:.3f})",
    }


def _own_split(model_name: str, card: Mapping, data: str | Path):
    """(dataset, split, seed) of the model's own training data, recomputed from its card."""
    from bcclassify.data.datasets import scan_dataset, train_val_test_split

    trained_on = card.get("training_data") or {}
    seed = int((card.get("training_config") or {}).get("seed", 42))
    dataset = scan_dataset(data)
    if dataset.manifest_hash() != trained_on.get("manifest_sha256"):
        raise ValueError(
            f"{data} is not the data {model_name} was trained on (manifest differs), so its "
            "training/validation/test split cannot be recomputed"
        )
    split = train_val_test_split(dataset.labels, dataset.hashes, seed)
    if not (len(split.train) and len(split.val) and len(split.test)):
        raise ValueError(
            f"{data}: too few images to calibrate on (split {split.sizes()}); the training, "
            "validation and test splits must all hold cells"
        )
    return dataset, split, seed


ACQUISITION_TRAIN_LIMIT = 3000  # training images the range is fitted on (a few seconds each 100)


def _fit_acquisition(card: Mapping, dataset, split, seed: int):
    """The acquisition range of the training split's images (at most ACQUISITION_TRAIN_LIMIT,
    seeded), and a function telling which of some image paths lie outside it."""
    from bcclassify.serving.acquisition import file_summaries, fit_range

    size = int(card["image_size"])
    known: dict = {}  # path -> outside, so figures over the same images load them once

    def outside_of(paths) -> np.ndarray:
        missing = [p for p in dict.fromkeys(paths) if p not in known]
        known.update(zip(missing, fitted.outside(file_summaries(missing, size)).tolist()))
        return np.asarray([known[p] for p in paths], dtype=bool)

    train_idx = training_subset(split.train, ACQUISITION_TRAIN_LIMIT, seed)
    fitted = fit_range(
        file_summaries([dataset.paths[i] for i in train_idx], size),
        f"{len(train_idx)} training-split images at {size} px",
    )
    return fitted, outside_of


def _acquisition_section(fitted, outside_of, dataset, split, shifted=None) -> dict:
    """The card's ``acquisition`` section: the range (from :func:`_fit_acquisition`), with the
    share of the validation and test splits and of ``shifted`` (another lab's cells) outside."""
    from bcclassify.data.imaging import collect_image_paths

    section = fitted.to_card()
    section["outside_fraction"] = {
        part: float(outside_of([dataset.paths[i] for i in idx]).mean())
        for part, idx in (("validation", split.val), ("test", split.test))
    }
    if shifted is not None:
        section["outside_fraction"][Path(shifted).name] = float(
            outside_of(collect_image_paths([shifted])).mean()
        )
    return section


def fit_acquisition(name: str | None, data: str | Path, shifted: str | Path | None = None) -> dict:
    """Fit only the acquisition range of an installed model (calibrate does it too) and write
    it into the card; no TensorFlow needed. Returns the new card."""
    from bcclassify.serving.classifier import read_card, resolve_model_name
    from bcclassify.storage.store import models_dir

    chosen = resolve_model_name(name)
    folder = models_dir() / chosen
    card = dict(read_card(folder))
    dataset, split, seed = _own_split(chosen, card, data)
    fitted, outside_of = _fit_acquisition(card, dataset, split, seed)
    card["acquisition"] = _acquisition_section(fitted, outside_of, dataset, split, shifted)
    write_card(folder, card)
    return card


def fit_second_opinion(
    name: str | None,
    second: str,
    data: str | Path,
    budget: float = 0.01,
    batch_size: int = 32,
) -> dict:
    """Name ``second`` as the second opinion of installed model ``name`` (issue 21), with the
    support floor chosen on ``name``'s own validation split so that disputes add at most
    ``budget`` to the cells flagged there (second_opinion.choose_min_support). Writes the card's
    ``second_opinion`` section and returns the new card."""
    from bcclassify.serving.classifier import load_model
    from bcclassify.serving.second_opinion import (
        CARD_KEY,
        choose_min_support,
        disputed_mask,
        resize_batch,
        support_for,
    )
    from bcclassify.storage.store import sha256_file

    classifier = load_model(name)
    if second == classifier.name:
        raise ValueError(f"{second}: a model cannot be its own second opinion")
    other = load_model(second)
    classifier.second_opinion = None  # the served flags without any earlier second opinion
    dataset, split, _ = _own_split(classifier.name, classifier.card, data)
    paths = [dataset.paths[i] for i in split.val]
    served, support_rows, flagged = [], [], []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        pixels = np.stack([classifier.load(p) for p in chunk])  # decoded once for both models
        predictions = classifier.classify_pixels(pixels, [str(p) for p in chunk])
        probabilities = np.stack([p.probabilities for p in predictions])
        served.append(probabilities)
        support_rows.append(other.predict_pixels(resize_batch(pixels, other.image_size)))
        flagged.append(np.array([p.flag != "" for p in predictions]))
    served_all, second_all = np.concatenate(served), np.concatenate(support_rows)
    already = np.concatenate(flagged)
    min_support = choose_min_support(served_all, second_all, already, budget)
    disputed = disputed_mask(support_for(second_all, served_all.argmax(axis=1)), min_support)
    labels = dataset.labels[split.val]
    wrong = served_all.argmax(axis=1) != labels
    card = dict(classifier.card)
    card[CARD_KEY] = {
        "model": other.name,
        "min_support": min_support,
        "card_sha256": sha256_file(other.folder / "card.json"),
        "chosen_on": f"validation split of {Path(data).name} ({len(paths)} cells)",
        "budget_extra_flagged": budget,
        "validation": {
            "disputed_fraction": float(disputed.mean()),
            "extra_flagged_fraction": float((disputed & ~already).mean()),
            "flagged_fraction_before": float(already.mean()),
            "flagged_fraction": float((disputed | already).mean()),
            "wrong_and_unflagged_before": float((wrong & ~already).mean()),
            "wrong_and_unflagged": float((wrong & ~already & ~disputed).mean()),
            "second_accuracy": float((second_all.argmax(axis=1) == labels).mean()),
        },
    }
    write_card(classifier.folder, card)
    return card


def _served_validation(
    classifier, data: str | Path, batch_size: int, each_batch: Callable | None = None
):
    """(dataset, split, predictions): the model's own validation cells served as ``predict``
    serves them (views, calibration, novelty, acquisition range, second opinion, floors,
    colour check). ``each_batch(pixels, predictions)``: also called on every batch."""
    dataset, split, _ = _own_split(classifier.name, classifier.card, data)
    paths = [dataset.paths[i] for i in split.val]
    predictions = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        pixels = np.stack([classifier.load(p) for p in chunk])
        batch = classifier.classify_pixels(pixels, [str(p) for p in chunk])
        if each_batch is not None:
            each_batch(pixels, batch)
        predictions += batch
    return dataset, split, predictions


def fit_class_floors(
    name: str | None,
    data: str | Path,
    classes: Sequence[str],
    budget: float = 0.005,
    batch_size: int = 32,
) -> dict:
    """Set confidence floors for ``classes`` of installed model ``name`` (floors.py): each the
    highest value that flags at most ``budget / len(classes)`` of the model's own validation
    cells beyond those the served flags (second opinion included) already flag. Writes the
    card's ``class_confidence_floors`` section and returns the new card."""
    from bcclassify.serving.classifier import load_model
    from bcclassify.serving.floors import choose_floor

    classifier = load_model(name)
    unknown = [c for c in classes if c not in classifier.class_names]
    if unknown or not classes:
        raise ValueError(
            f"class floors need class names of {classifier.name} "
            f"({', '.join(classifier.class_names)}); got {', '.join(unknown) or 'none'}"
        )
    classifier.class_floors = {}  # the served flags without any earlier floors
    dataset, split, predictions = _served_validation(classifier, data, batch_size)
    paths = [dataset.paths[i] for i in split.val]
    served = np.array([p.top_index for p in predictions])
    confidence = np.array([p.confidence for p in predictions])
    already = np.array([p.flag != "" for p in predictions])
    wrong = served != dataset.labels[split.val]
    floors = {
        c: choose_floor(
            confidence[(served == classifier.class_names.index(c)) & ~already],
            len(paths),
            budget / len(classes),
            classifier.threshold,
        )
        for c in classes
    }
    limits = np.array([floors.get(n, 0.0) for n in classifier.class_names])[served]
    flagged = already | (confidence < limits)
    card = dict(classifier.card)
    card[FLOORS_KEY] = {
        "floors": floors,
        "temperature": classifier.temperature,
        "budget_extra_flagged": budget,
        "chosen_on": f"validation split of {Path(data).name} ({len(paths)} cells), served",
        "validation": {
            "flagged_fraction_before": float(already.mean()),
            "flagged_fraction": float(flagged.mean()),
            "wrong_and_unflagged_before": float((wrong & ~already).mean()),
            "wrong_and_unflagged": float((wrong & ~flagged).mean()),
        },
    }
    write_card(classifier.folder, card)
    return card


def fit_colour_check(
    name: str | None,
    data: str | Path,
    classes: Sequence[str],
    budget: float = 0.005,
    batch_size: int = 32,
) -> dict:
    """Set the colour check of installed model ``name`` (colour_check.py): ``classes`` is
    (checked, rival); an answer of the checked class is disputed when the greyscale view gives
    the rival at least ``min_rival``, the lowest candidate that flags at most ``budget`` of the
    model's own validation cells beyond those the other served flags already flag. Writes the
    card's ``colour_check`` section and returns the new card."""
    from bcclassify.serving.classifier import load_model
    from bcclassify.serving.colour_check import (
        ColourCheck,
        choose_min_rival,
        colour_disputed_mask,
    )

    classifier = load_model(name)
    if (
        len(classes) != 2
        or len(set(classes)) != 2
        or any(c not in classifier.class_names for c in classes)
    ):
        raise ValueError(
            "the colour check needs two different class names of "
            f"{classifier.name} (the checked class, then its rival; of "
            f"{', '.join(classifier.class_names)}); got {', '.join(classes) or 'none'}"
        )
    checked, rival_class = classes
    classifier.colour_check = None  # the served flags without any earlier colour check
    probe = ColourCheck(checked, rival_class, 1.0)
    rival = []

    def check(pixels: np.ndarray, predictions: list) -> None:
        probabilities = np.stack([p.probabilities for p in predictions])
        rival.append(probe.rival_probability(classifier, pixels, probabilities))

    dataset, split, predictions = _served_validation(classifier, data, batch_size, check)
    rival_all = np.concatenate(rival)
    already = np.array([p.flag != "" for p in predictions])
    min_rival = choose_min_rival(rival_all, already, budget)
    disputed = colour_disputed_mask(rival_all, min_rival)
    wrong = np.array([p.top_index for p in predictions]) != dataset.labels[split.val]
    card = dict(classifier.card)
    card[COLOUR_CHECK_KEY] = {
        "checked": checked,
        "rival": rival_class,
        "min_rival": min_rival,
        "view": "greyscale (BT.601 luma in each channel), the image as given",
        "temperature": classifier.temperature,
        "budget_extra_flagged": budget,
        "chosen_on": f"validation split of {Path(data).name} ({len(predictions)} cells), served",
        "validation": {
            "checked_fraction": float(np.isfinite(rival_all).mean()),
            "disputed_fraction": float(disputed.mean()),
            "flagged_fraction_before": float(already.mean()),
            "flagged_fraction": float((already | disputed).mean()),
            "wrong_and_unflagged_before": float((wrong & ~already).mean()),
            "wrong_and_unflagged": float((wrong & ~already & ~disputed).mean()),
        },
    }
    write_card(classifier.folder, card)
    return card


# The global low-confidence thresholds ``calibrate --flag-budget`` chooses among.
LOW_CONFIDENCE_GRID = (0.5, 0.55, 0.6, 0.65, 0.7)


def choose_low_confidence(
    confidence: np.ndarray,
    served: np.ndarray,
    wrong: np.ndarray,
    otherwise: np.ndarray,
    floors: np.ndarray,
    budget: float,
    grid: Sequence[float] = LOW_CONFIDENCE_GRID,
) -> tuple[float, list[dict]]:
    """The threshold of ``grid`` with the fewest wrong-and-unflagged cells among those whose
    flags, with ``otherwise`` (unidentified or disputed) and the class ``floors`` (by served
    class index) on, fall on at most ``budget`` of the cells; the highest on a tie. Returns it
    and each threshold's figures. ValueError when none stays within the budget."""
    rows = []
    for threshold in grid:
        flagged = otherwise | (confidence < np.maximum(threshold, floors)[served])
        rows.append(
            {
                "threshold": float(threshold),
                "flagged_fraction": float(flagged.mean()),
                "wrong_and_unflagged": float((wrong & ~flagged).mean()),
            }
        )
    within = [row for row in rows if row["flagged_fraction"] <= budget + 1e-12]
    if not within:
        fewest = min(rows, key=lambda row: row["flagged_fraction"])
        raise ValueError(
            f"no low-confidence threshold in {tuple(grid)} keeps the served flags within "
            f"{budget:.1%} of the validation cells (the fewest: {fewest['flagged_fraction']:.2%} "
            f"at {fewest['threshold']}); give a larger --flag-budget"
        )
    chosen = min(within, key=lambda row: (row["wrong_and_unflagged"], -row["threshold"]))
    return chosen["threshold"], rows


def fit_low_confidence(
    name: str | None, data: str | Path, budget: float = 0.03, batch_size: int = 32
) -> dict:
    """Choose the global low-confidence threshold of installed model ``name`` with every other
    flag on, so that all the flags together stay within ``budget`` of its validation cells.

    Why: the threshold was chosen (0.7) before the guards for other labs (second opinion, class
    floors) were added, each within its own budget, so together they flagged more of the source
    lab's cells than issue 21 allows (3%); the guards catch other labs' confident errors, the
    global threshold only PBC's own doubtful cells. Rule: of LOW_CONFIDENCE_GRID, the threshold
    with the fewest wrong-and-unflagged validation cells among those flagging at most
    ``budget`` of them, the highest on a tie (the rule the first threshold was chosen by, now
    over the served flags). Class floors stay where they are (never under the threshold).
    Writes ``low_confidence_threshold`` and the card's ``low_confidence`` section (the grid's
    figures); returns the new card."""
    from bcclassify.serving.classifier import load_model

    classifier = load_model(name)
    dataset, split, predictions = _served_validation(classifier, data, batch_size)
    probabilities = np.stack([p.probabilities for p in predictions])
    served, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    otherwise = np.array([p.unidentified or p.disputed for p in predictions])
    floors = np.array([classifier.class_floors.get(n, 0.0) for n in classifier.class_names])
    wrong = served != dataset.labels[split.val]
    chosen, grid = choose_low_confidence(confidence, served, wrong, otherwise, floors, budget)
    card = dict(classifier.card)
    card["low_confidence_threshold"] = chosen
    card[LOW_CONFIDENCE_KEY] = {
        "threshold": chosen,
        "budget_flagged": budget,
        "rule": "of the grid, the fewest wrong-and-unflagged validation cells with all served "
        "flags within the budget; the highest threshold on a tie",
        "chosen_on": f"validation split of {Path(data).name} ({len(predictions)} cells), served "
        "(second opinion and class floors on)",
        # The threshold before any budget chose one (what ``adapt`` restores without the
        # floors), kept when the budget is re-chosen after another flag was added.
        "before": float(
            (classifier.card.get(LOW_CONFIDENCE_KEY) or {}).get("before", classifier.threshold)
        ),
        "grid": grid,
    }
    write_card(classifier.folder, card)
    return card
