"""Pure metric functions against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from bcclassify.evaluation.metrics import (
    classification_metrics,
    confidence_coverage,
    confusion_matrix,
    ece_noise_floor,
    expected_calibration_error,
    row_normalize,
    summarize_folds,
)
from bcclassify.review.report import differential_count

NAMES = tuple("abcd")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 4, 300))
    y_pred[y_pred == 3] = 2  # class 3 never predicted: precision is undefined, counted as 0
    m = classification_metrics(y_true, y_pred, NAMES)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, average=avg, labels=range(4), zero_division=0
        )
        assert m[f"{avg}_precision"] == pytest.approx(p)
        assert m[f"{avg}_recall"] == pytest.approx(r)
        assert m[f"{avg}_f1"] == pytest.approx(f)
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(4), zero_division=0
    )
    for i, name in enumerate(NAMES):
        assert m["per_class"][name]["precision"] == pytest.approx(p[i])
        assert m["per_class"][name]["recall"] == pytest.approx(r[i])
        assert m["per_class"][name]["f1"] == pytest.approx(f[i])
        assert m["per_class"][name]["support"] == s[i]
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()


def test_known_small_case():
    matrix = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert matrix.tolist() == [[1, 1], [0, 2]]
    np.testing.assert_allclose(row_normalize(matrix), [[0.5, 0.5], [0.0, 1.0]])
    np.testing.assert_allclose(row_normalize(np.zeros((2, 2))), np.zeros((2, 2)))


def test_confidence_coverage_flags_low_top_probabilities():
    probabilities = np.array(
        [
            [0.95, 0.05],  # right, confident
            [0.70, 0.30],  # right, under 0.8
            [0.20, 0.80],  # wrong, exactly 0.8: kept at 0.8
            [0.55, 0.45],  # wrong, under 0.6
        ]
    )
    y_true = np.array([0, 0, 0, 1])
    at_06, at_08, at_099 = confidence_coverage(y_true, probabilities, (0.6, 0.8, 0.99))
    assert (at_06["flagged"], at_06["accuracy_of_kept"]) == (1, pytest.approx(2 / 3))
    assert (at_08["flagged"], at_08["accuracy_of_kept"]) == (2, pytest.approx(1 / 2))
    assert at_08["flagged_fraction"] == pytest.approx(0.5)
    assert (at_099["flagged"], at_099["accuracy_of_kept"]) == (4, None)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)


def test_fold_summary_mean_and_std():
    folds = [{"accuracy": 0.9, "macro_f1": 0.8}, {"accuracy": 1.0, "macro_f1": 0.6}]
    summary = summarize_folds(folds, keys=("accuracy", "macro_f1"))
    assert summary["accuracy"] == {"mean": pytest.approx(0.95), "std": pytest.approx(0.05)}
    assert summary["macro_f1"]["mean"] == pytest.approx(0.7)


def test_differential_count_reports_like_a_hematology_report():
    labels = ["neutrophil"] * 6 + ["lymphocyte"] * 3 + ["ig", "erythroblast", "erythroblast"]
    labels += ["platelet"] * 4 + [None]
    report = differential_count(labels)
    assert report["total_cells"] == 16
    assert report["leukocytes"] == 10
    wbc = {row["class"]: row for row in report["leukocyte_differential"]}
    assert wbc["neutrophil"]["percent"] == pytest.approx(60.0)
    assert wbc["ig"]["percent"] == pytest.approx(10.0)
    assert sum(row["percent"] for row in report["leukocyte_differential"]) == pytest.approx(100)
    assert report["erythroblasts_per_100_leukocytes"] == pytest.approx(20.0)
    assert report["platelets"] == 4
    assert differential_count([])["erythroblasts_per_100_leukocytes"] is None


def _pred(label: str | None, flag: str = ""):
    from types import SimpleNamespace

    return SimpleNamespace(label=label, flag=flag)


def test_flagged_cells_wait_for_a_reviewer_before_they_count():
    from bcclassify.review.report import reviewed_differential

    cells = [
        ("a", _pred("lymphocyte")),
        ("b", _pred("neutrophil", "low_confidence")),
        ("c", _pred("platelet", "unidentified")),
        ("d", _pred("ig", "unidentified")),
        ("e", _pred(None, "error")),
        ("f", _pred("monocyte")),
        ("g", _pred("eosinophil", "disputed")),
    ]
    report = reviewed_differential(cells, {"d": "eosinophil", "f": "basophil"})
    counted = {r["class"]: r["count"] for r in report["all_cells"] if r["count"]}
    assert counted == {"lymphocyte": 1, "eosinophil": 1, "basophil": 1}
    assert report["total_cells"] == 3 and report["reviewed"] == 2
    assert report["awaiting_review"] == 3
    assert report["awaiting_by_flag"] == {"unidentified": 1, "disputed": 1, "low_confidence": 1}


def test_reviewed_differential_with_real_predictions():
    import numpy as np

    from bcclassify.review.report import reviewed_differential
    from bcclassify.serving.classifier import Prediction

    sure = Prediction("a.png", probabilities=np.eye(8)[4])  # lymphocyte at 1.0
    unsure = Prediction("b.png", probabilities=np.full(8, 1 / 8))  # low confidence
    report = reviewed_differential([("a", sure), ("b", unsure)], {})
    assert report["total_cells"] == 1 and report["awaiting_review"] == 1
    report = reviewed_differential([("a", sure), ("b", unsure)], {"b": "monocyte"})
    assert report["total_cells"] == 2 and report["awaiting_review"] == 0


def test_spreadsheet_safe_escapes_formula_starts_only():
    from bcclassify.review.report import spreadsheet_safe

    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(text) == "'" + text
    assert spreadsheet_safe("lymphocyte") == "lymphocyte"
    assert spreadsheet_safe(0.5) == 0.5 and spreadsheet_safe("") == ""


def test_batch_shift_notice_fires_only_when_much_of_a_batch_is_unidentified():
    from bcclassify.review.report import SHIFT_MIN_CELLS, batch_shift_notice

    assert batch_shift_notice(0, 0) is None
    assert batch_shift_notice(SHIFT_MIN_CELLS - 1, SHIFT_MIN_CELLS - 1) is None  # too few cells
    assert batch_shift_notice(100, 29) is None  # odd cells in a batch of the training lab's look
    notice = batch_shift_notice(100, 30)
    assert notice is not None and notice.startswith("30 of 100 cells (30%)")
    assert "bcclassify adapt" in notice


def _confident_mix(cells: int, seed: int) -> np.ndarray:
    """Two-class probabilities whose top values are mostly near 1, as a good model's are."""
    rng = np.random.default_rng(seed)
    top = np.clip(1.0 - rng.exponential(0.03, size=cells), 0.5, 1.0)
    return np.stack([top, 1.0 - top], axis=1)


def test_ece_noise_floor_is_what_calibrated_answers_show_by_chance():
    probs = _confident_mix(400, seed=1)
    floor = ece_noise_floor(probs, draws=300, seed=0)
    assert floor["cells"] == 400 and floor["draws"] == 300
    assert 0.0 < floor["median"] < floor["p95"]
    assert ece_noise_floor(probs, draws=300, seed=0) == floor  # seeded: the same figures
    # Answers right exactly as often as their confidence says: ECE under the floor's p95 in
    # most sets of this size, though never zero.
    rng = np.random.default_rng(5)
    observed = [
        expected_calibration_error(np.where(rng.random(400) < probs[:, 0], 0, 1), probs)
        for _ in range(40)
    ]
    assert 0.0 < np.median(observed)
    assert np.mean(np.array(observed) <= floor["p95"]) >= 0.85
    # A tenfold set of the same mix: the chance part shrinks (about as 1 / sqrt(n)).
    larger = ece_noise_floor(np.tile(probs, (10, 1)), draws=100, seed=0)
    assert larger["median"] < floor["median"] / 2


def test_ece_noise_floor_does_not_excuse_real_miscalibration():
    # Served at 0.99 but right 90% of the time: far above what chance gives on 500 cells.
    probs = np.tile([[0.99, 0.01]], (500, 1))
    labels = np.r_[np.zeros(450, int), np.ones(50, int)]
    floor = ece_noise_floor(probs, draws=200, seed=0)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.09)
    assert floor["p95"] < 0.02
    # Every answer certain: chance can add nothing.
    assert ece_noise_floor(np.tile([[1.0, 0.0]], (50, 1)), draws=20)["p95"] == 0.0
