"""Method verification figures against hand-computed values, sklearn, and the delta method."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from bcclassify import CLASS_NAMES
from bcclassify.evaluation.agreement import (
    agreement_matrix,
    agreement_report,
    cohen_kappa,
    kappa_interval,
    kappa_standard_error,
    log_models,
    reviewed_pairs,
    wilson_interval,
)
from bcclassify.review.reviews import ReviewLog


@pytest.mark.parametrize(
    "successes, total, expected",
    [
        # (p + z²/2n) / (1 + z²/n) ± z/(1 + z²/n)·sqrt(p(1-p)/n + z²/4n²), z = 1.95996, by hand:
        (8, 10, (0.4902, 0.9433)),
        (0, 10, (0.0, 0.2775)),  # upper = z² / (n + z²)
        (10, 10, (0.7225, 1.0)),
        (95, 100, (0.8882, 0.9785)),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, total, expected):
    low, high = wilson_interval(successes, total)
    assert (low, high) == pytest.approx(expected, abs=5e-5)


def test_wilson_interval_of_nothing_is_undefined_and_bad_counts_are_refused():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="11 successes out of 10"):
        wilson_interval(11, 10)


def test_kappa_and_its_standard_error_by_hand_on_a_two_by_two_table():
    # p = [[.4, .1], [.2, .3]]: observed .7, chance .5*.6 + .5*.4 = .5, kappa .4.
    # A = .4(1 - 1.1*.6)^2 + .3(1 - .9*.6)^2 = .10972; B = .6^2 (.1*1.1^2 + .2*.9^2) = .10188;
    # C = (.4 - .5*.6)^2 = .01; var = (A + B - C) / (50 * .5^2) = .016128.
    table = np.array([[20, 5], [10, 15]])
    assert cohen_kappa(table) == pytest.approx(0.4)
    assert kappa_standard_error(table) == pytest.approx(math.sqrt(0.016128), rel=1e-9)
    low, high = kappa_interval(table)
    assert (low, high) == pytest.approx((0.4 - 1.959964 * 0.126996, 0.4 + 1.959964 * 0.126996))


def test_kappa_of_fleiss_three_category_example():
    # Fleiss, Statistical Methods for Rates and Proportions: observed .89, chance .66.
    table = np.array([[75, 1, 4], [5, 4, 1], [0, 0, 10]])
    assert cohen_kappa(table) == pytest.approx(0.23 / 0.34)


def test_kappa_matches_sklearn_on_random_eight_class_labels():
    rng = np.random.default_rng(7)
    reviewer = rng.choice(CLASS_NAMES, 400)
    model = np.where(rng.random(400) < 0.8, reviewer, rng.choice(CLASS_NAMES, 400))
    matrix = agreement_matrix(list(reviewer), list(model), CLASS_NAMES)
    assert cohen_kappa(matrix) == pytest.approx(cohen_kappa_score(reviewer, model), abs=1e-12)


def test_kappa_standard_error_is_the_delta_method_variance_of_kappa():
    """Fleiss-Cohen-Everitt's closed form equals the multinomial delta method, computed here
    independently from a numerical gradient of kappa in the cell proportions."""
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 40, (4, 4)) + np.diag(rng.integers(50, 120, 4))
    total = counts.sum()
    p = counts / total

    step = 1e-7
    gradient = np.zeros_like(p)
    for index in np.ndindex(p.shape):
        up, down = p.copy(), p.copy()
        up[index] += step
        down[index] -= step
        gradient[index] = (kappa_of_raw(up) - kappa_of_raw(down)) / (2 * step)
    variance = (np.sum(p * gradient**2) - np.sum(p * gradient) ** 2) / total
    assert kappa_standard_error(counts) == pytest.approx(math.sqrt(variance), rel=1e-5)
    assert kappa_of_raw(p) == pytest.approx(cohen_kappa(counts))


def kappa_of_raw(q: np.ndarray) -> float:
    """Kappa as a function of the cell proportions, off the simplex too (the gradient moves one
    cell at a time); it differs from the normalised one only along (1, ..., 1), which the
    multinomial covariance ignores."""
    chance = q.sum(axis=1) @ q.sum(axis=0)
    return (np.trace(q) - chance) / (1 - chance)


def test_per_class_positive_and_negative_agreement_by_hand():
    classes = ("a", "b", "c")
    # rows: reviewer, columns: model
    table = np.array([[8, 2, 0], [1, 5, 0], [0, 0, 4]])
    report = agreement_report(table, classes)
    assert (report.total, report.agreed) == (20, 17)
    assert report.percent_agreement == pytest.approx(0.85)
    a, b, c = report.per_class
    assert (a.reviewer_count, a.model_count, a.agreed) == (10, 9, 8)
    assert a.ppa == pytest.approx(0.8) and a.ppa_ci == pytest.approx((0.4902, 0.9433), abs=5e-5)
    assert a.npa == pytest.approx(9 / 10)  # reviewer not-a: 10 cells, model not-a on 9 of them
    assert b.ppa == pytest.approx(5 / 6) and b.npa == pytest.approx(12 / 14)
    assert c.ppa == 1.0 and c.npa == 1.0
    assert report.kappa == pytest.approx(cohen_kappa(table))


def test_an_empty_log_and_a_class_nobody_chose_give_nan_not_an_error():
    report = agreement_report(np.zeros((3, 3), dtype=int), ("a", "b", "c"))
    assert report.total == 0 and math.isnan(report.kappa) and math.isnan(report.per_class[0].ppa)
    one_class = agreement_report(np.array([[5, 0], [0, 0]]), ("a", "b"))
    assert math.isnan(one_class.kappa) and math.isnan(one_class.per_class[1].ppa)
    assert one_class.per_class[0].ppa == 1.0


def test_agreement_matrix_refuses_unknown_classes_and_unequal_lists():
    with pytest.raises(ValueError, match="classes blast are not among"):
        agreement_matrix(["blast"], ["lymphocyte"], CLASS_NAMES)
    with pytest.raises(ValueError, match="2 reviewer classes but 1 model"):
        agreement_matrix(["ig", "ig"], ["ig"], CLASS_NAMES)


def test_pairs_from_a_real_review_log_use_the_newest_decision_per_cell_and_model_card(tmp_path):
    log = ReviewLog(tmp_path)
    probs = [1 / 8] * 8

    def decide(sha, model, card, predicted, chosen):
        log.record(f"{sha}.png", sha, model, predicted, probs, chosen, reviewer="dr.lee",
                   model_card_sha256=card)  # fmt: skip

    decide("c1", "hybrid", "card1", "neutrophil", "monocyte")
    decide("c1", "hybrid", "card1", "neutrophil", "neutrophil")  # supersedes the first
    decide("c2", "hybrid", "card1", "ig", "neutrophil")
    decide("c3", "hybrid", "card2", "ig", "ig")  # the name promoted again: another method
    decide("c1", "xception", "cardx", "monocyte", "neutrophil")
    entries = log.entries()
    assert log_models(entries) == [
        ("hybrid", "card1", 2),
        ("hybrid", "card2", 1),
        ("xception", "cardx", 1),
    ]
    reviewer, model = reviewed_pairs(entries, "hybrid", "card1")
    assert sorted(zip(reviewer, model)) == [("neutrophil", "ig"), ("neutrophil", "neutrophil")]
