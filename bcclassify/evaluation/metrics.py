"""Pure classification metrics: functions of (y_true, y_pred) and nothing else."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes on rows and predicted classes on columns."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    flat = y_true * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # An undefined ratio (no predictions or no samples of a class) counts as 0, as in scikit-learn.
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)}


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...] | list[str]
) -> dict:
    """Accuracy; macro and weighted precision/recall/F1; per-class scores; the confusion matrix."""
    names = list(class_names)
    matrix = confusion_matrix(y_true, y_pred, len(names))
    scores = per_class_scores(matrix)
    support = scores["support"]
    total = int(support.sum())
    weights = support / total if total else np.zeros(len(names))
    result: dict = {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "num_samples": total,
        "class_names": names,
        "confusion_matrix": matrix.astype(int).tolist(),
        "per_class": {
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
    }
    for metric in ("precision", "recall", "f1"):
        result[f"macro_{metric}"] = float(np.mean(scores[metric]))
        result[f"weighted_{metric}"] = float(np.sum(scores[metric] * weights))
    return result


def summarize_folds(fold_metrics: list[dict], keys: tuple[str, ...] = ()) -> dict:
    """Mean and standard deviation over cross-validation folds for the headline metrics."""
    keys = keys or (
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_f1",
    )
    summary = {}
    for key in keys:
        values = np.array([m[key] for m in fold_metrics], dtype=np.float64)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0))}
    return summary


def row_normalize(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its total (recall view of a confusion matrix); empty rows stay 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return _safe_divide(matrix, matrix.sum(axis=1, keepdims=True))


def confidence_coverage(
    y_true: np.ndarray, probabilities: np.ndarray, thresholds: tuple[float, ...] = (0.6, 0.8, 0.9)
) -> list[dict]:
    """For each threshold: how many cells fall under it (flagged for review, as an analyser's
    "unidentified" cells) and the accuracy on the cells kept."""
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    rows = []
    for threshold in thresholds:
        kept = top >= threshold
        rows.append(
            {
                "threshold": float(threshold),
                "flagged": int((~kept).sum()),
                "flagged_fraction": float((~kept).mean()) if len(top) else 0.0,
                "accuracy_of_kept": float(correct[kept].mean()) if kept.any() else None,
            }
        )
    return rows


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins
    weighted by their share of cells (Guo et al., "On Calibration of Modern Neural Networks",
    ICML 2017)."""
    return _ece(*_top_and_correct(y_true, probabilities), bins)


def ece_noise_floor(
    probabilities: np.ndarray, bins: int = 15, draws: int = 500, seed: int = 0
) -> dict[str, float | int]:
    """The ECE a perfectly calibrated model would show on these cells, from sampling alone.

    ECE is biased upwards on a finite set: even when every answer given at confidence ``c`` is
    right with probability exactly ``c``, the bins' accuracies scatter around their confidences.
    Each draw keeps the cells' top probabilities and makes each answer right with that
    probability; the median and 95th percentile over the draws say how large an ECE the set's
    size and confidence mix give by chance. An observed ECE inside that range is no evidence of
    miscalibration.
    """
    top = np.asarray(probabilities, dtype=np.float64).max(axis=1)
    rng = np.random.default_rng(seed)
    values = [_ece(top, rng.random(len(top)) < top, bins) for _ in range(draws)]
    return {
        "median": float(np.median(values)),
        "p95": float(np.quantile(values, 0.95)),
        "cells": int(len(top)),
        "draws": int(draws),
    }


def reliability_table(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> list[dict]:
    """Per confidence bin (equal width on [0, 1]): cells, mean confidence, accuracy.

    Empty bins are left out; the rows are what a reliability diagram draws.
    """
    return _reliability_rows(*_top_and_correct(y_true, probabilities), bins)


def _top_and_correct(y_true: np.ndarray, probabilities: np.ndarray):
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == np.asarray(y_true)


def _ece(top: np.ndarray, correct: np.ndarray, bins: int) -> float:
    rows = _reliability_rows(top, correct, bins)
    total = sum(row["count"] for row in rows)
    if not total:
        return 0.0
    gaps = sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows)
    return float(gaps / total)


def _reliability_rows(top: np.ndarray, correct: np.ndarray, bins: int) -> list[dict]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, top, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(members.sum()),
                    "confidence": float(top[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return rows


def brier_score(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared distance between the probability vector and the one-hot truth."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    onehot = np.zeros_like(probabilities)
    onehot[np.arange(len(probabilities)), np.asarray(y_true, dtype=np.int64)] = 1.0
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1))) if len(onehot) else 0.0


def auroc(scores_negative: np.ndarray, scores_positive: np.ndarray) -> float:
    """Area under the ROC curve for telling positives (higher scores) from negatives: the
    chance a random positive outscores a random negative, ties counting half."""
    neg = np.asarray(scores_negative, dtype=np.float64)
    pos = np.asarray(scores_positive, dtype=np.float64)
    if not len(neg) or not len(pos):
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([neg, pos]))  # ties get their average rank
    pos_rank_sum = ranks[len(neg) :].sum()
    return float((pos_rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
