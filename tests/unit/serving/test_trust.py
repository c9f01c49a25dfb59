"""Calibration, novelty scores and the unidentified flag.

(bcclassify.serving.trust, bcclassify.evaluation.metrics)"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bcclassify.evaluation.metrics import (
    auroc,
    brier_score,
    expected_calibration_error,
    reliability_table,
)
from bcclassify.serving.classifier import Prediction
from bcclassify.serving.trust import (
    NoveltyDetector,
    fit_novelty,
    fit_temperature,
    temper,
    trust_figures,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int = 4000, sharpen: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(logits), served as softmax(sharpen * logits): overconfident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, 8))
    truth = _softmax(logits)
    labels = np.array([rng.choice(8, p=p) for p in truth])
    return _softmax(sharpen * logits), labels


def test_temperature_keeps_the_answer_and_sums_to_one():
    probs, _ = _overconfident(200)
    for t in (0.5, 1.0, 3.0):
        tempered = temper(probs, t)
        assert np.allclose(tempered.sum(axis=1), 1.0)
        assert (tempered.argmax(axis=1) == probs.argmax(axis=1)).all()
    assert np.allclose(temper(probs, 1.0), probs, atol=1e-9)


def test_fitted_temperature_undoes_overconfidence():
    probs, labels = _overconfident()
    t = fit_temperature(probs, labels)
    assert 2.2 < t < 2.8  # the sharpening factor it was made with
    before = expected_calibration_error(labels, probs)
    after = expected_calibration_error(labels, temper(probs, t))
    assert before > 0.15 and after < 0.04  # what is left is sampling noise of 4,000 cells
    assert brier_score(labels, temper(probs, t)) < brier_score(labels, probs)


def test_ece_and_reliability_table_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    table = reliability_table(labels, probs, bins=10)
    assert [row["count"] for row in table] == [2, 2]
    assert table[0]["accuracy"] == 1.0 and table[1]["accuracy"] == 0.5
    # bins: 0.6 with accuracy 1.0 (gap 0.4), 0.9 with accuracy 0.5 (gap 0.4)
    assert expected_calibration_error(labels, probs, bins=10) == pytest.approx(0.4)
    assert brier_score(np.array([0]), np.array([[1.0, 0.0]])) == 0.0


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    neg = rng.integers(0, 5, size=300).astype(float)
    pos = rng.integers(2, 8, size=200).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[neg, pos])
    assert auroc(neg, pos) == pytest.approx(expected)


def _clusters(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(4, 32))
    labels = np.repeat(np.arange(4), 100)
    return rng, centres, labels, centres[labels] + rng.normal(0, 1, size=(400, 32))


@pytest.mark.parametrize("method", ["mahalanobis", "knn", "knn+oe"])
def test_novelty_scores_far_points_higher_and_round_trips(method):
    rng, centres, labels, features = _clusters()
    validation = centres[labels[::4]] + rng.normal(0, 1, size=(100, 32))
    outliers = rng.normal(0, 5, size=(60, 32)) + 40.0
    detector = fit_novelty(
        features, labels, method, outliers=outliers, validation=validation, k=5, dims=16
    )
    near = centres[labels[:50]] + rng.normal(0, 1, size=(50, 32))
    far = rng.normal(0, 5, size=(50, 32)) - 40.0  # not where the outliers were
    near_scores, far_scores = detector.score(near), detector.score(far)
    assert far_scores.min() > near_scores.max()
    restored = NoveltyDetector.from_arrays(detector.to_arrays())
    assert restored.method == method
    assert np.allclose(restored.score(far), far_scores, rtol=1e-2, atol=1e-2)


def test_outlier_exposure_catches_near_misses_the_distance_misses():
    """Outliers close to one class (like red-cells-only crops next to platelet images) are
    raised by the outlier-exposure score even where the neighbour distance stays low."""
    rng, centres, labels, features = _clusters(1)
    validation = centres[labels[::4]] + rng.normal(0, 1, size=(100, 32))
    shift = np.zeros(32)
    shift[0] = 6.0  # a consistent difference from class 0, small beside the class spread
    near_miss = centres[0] + shift + rng.normal(0, 1, size=(200, 32))
    detector = fit_novelty(
        features, labels, "knn+oe", outliers=near_miss[:100], validation=validation, k=5
    )
    detector.threshold = float(np.quantile(detector.score(validation), 0.99))
    plain = fit_novelty(features, labels, "knn", k=5)
    plain.threshold = float(np.quantile(plain.score(validation), 0.99))
    unseen = near_miss[100:]
    assert detector.flags(unseen).mean() > 0.8
    assert plain.flags(unseen).mean() < detector.flags(unseen).mean()


def test_knn_plus_oe_needs_outliers():
    _, _, labels, features = _clusters()
    with pytest.raises(ValueError, match="outliers"):
        fit_novelty(features, labels, "knn+oe")


def test_unidentified_flag_takes_precedence_over_low_confidence():
    probs = np.array([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    shown = Prediction("x.png", probabilities=probs, threshold=0.6, novelty=1.0)
    assert shown.flag == "low_confidence"  # no threshold on the novelty: never unidentified
    shown.novelty_threshold = 2.0
    assert shown.flag == "low_confidence"
    shown.novelty = 2.5
    assert shown.flag == "unidentified" and shown.unidentified
    assert Prediction("y.png", error="bad").flag == "error"


def test_trust_figures_count_flags_and_silent_errors():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.8, 0.2], [0.1, 0.9]])
    novelty = np.array([0.1, 0.1, 5.0, 0.1])
    figures = trust_figures(labels, probs, novelty, novelty_threshold=1.0, low_confidence=0.6)
    assert figures["unidentified_fraction"] == 0.25  # the third cell
    assert figures["low_confidence_fraction"] == 0.25  # the second
    assert figures["flagged_fraction"] == 0.5
    assert figures["accuracy_of_unflagged"] == 1.0
    assert figures["wrong_and_unflagged_fraction"] == 0.0
    novelty[2] = 0.0  # the wrong answer is no longer flagged
    assert trust_figures(labels, probs, novelty, 1.0, 0.6)["wrong_and_unflagged_fraction"] == 0.25


def test_class_balanced_figures_weight_every_class_equally():
    # Class 0: four cells, all right, one under the threshold. Class 1: one cell, wrong and sure.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    labels = np.array([0, 0, 0, 0, 1])
    figures = trust_figures(labels, probabilities, np.zeros(5), 1.0, 0.7)
    assert figures["flagged_fraction"] == pytest.approx(0.2)
    assert figures["wrong_and_unflagged_fraction"] == pytest.approx(0.2)
    balanced = figures["class_balanced"]
    # Half the weight on each class: a quarter of class 0 flagged, all of class 1 silently wrong.
    assert balanced["flagged_fraction"] == pytest.approx(0.125)
    assert balanced["wrong_and_unflagged_fraction"] == pytest.approx(0.5)
    assert balanced["accuracy"] == pytest.approx(0.5)
