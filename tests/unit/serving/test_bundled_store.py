"""The repository's own model_store: what the app and `predict` ship with must be whole.

These checks read files only (no TensorFlow): the cards' checksums, the storage limits, and that
every shipped run record agrees with itself (metrics recomputed from its predictions.csv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from bcclassify import CLASS_NAMES
from bcclassify.evaluation.metrics import classification_metrics, confidence_coverage
from bcclassify.storage.store import read_csv, read_json

STORE = REPO / "model_store"
MAX_FILE_MB = 95
MAX_STORE_MB = 300

pytestmark = pytest.mark.skipif(not STORE.is_dir(), reason="no bundled model_store")


@pytest.fixture
def bundled_store(monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(STORE))
    return STORE


def _models() -> list[Path]:
    return sorted(p.parent for p in (STORE / "models").glob("*/card.json"))


def _scored_records() -> list[Path]:
    """Every folder under runs/ with test metrics and predictions (a run, or a fold of one)."""
    return sorted(
        p.parent
        for p in (STORE / "runs").rglob("metrics.json")
        if (p.parent / "predictions.csv").is_file()
    )


def test_the_default_model_is_an_installed_hybrid(bundled_store):
    from bcclassify.serving.classifier import resolve_model_name

    name = resolve_model_name(None)
    card = read_json(STORE / "models" / name / "card.json")
    assert card["architecture"] == "hybrid"
    assert card["class_names"] == list(CLASS_NAMES)


@pytest.mark.parametrize("folder", _models(), ids=lambda p: p.name)
def test_installed_model_files_match_their_card(bundled_store, folder):
    from bcclassify.serving.classifier import verify_model_files

    card = verify_model_files(folder.name)
    weight_files = {p.name for p in folder.iterdir()} - {"card.json", "card.sha256", "bench.json"}
    assert weight_files == set(card["files_sha256"]), "every weight file is checksummed"
    assert (STORE / "runs" / card["training_run"] / "metrics.json").is_file()
    run_metrics = read_json(STORE / "runs" / card["training_run"] / "metrics.json")
    if card.get("test_time_views"):
        # Averaged views: the card scores the installed model on its own test predictions,
        # over the same test images as its run; the run's own figures are kept beside them.
        single = card["single_view_test_metrics"]
        assert single["accuracy"] == pytest.approx(run_metrics["accuracy"])
        rows = read_csv(folder / "test_predictions.csv")
        run_rows = read_csv(STORE / "runs" / card["training_run"] / "predictions.csv")
        assert sorted(r["file"] for r in rows) == sorted(r["file"] for r in run_rows)
        names = card["class_names"]
        y_true = [names.index(r["true"]) for r in rows]
        y_pred = [names.index(r["predicted"]) for r in rows]
        served = classification_metrics(np.array(y_true), np.array(y_pred), names)
        assert card["test_metrics"]["accuracy"] == pytest.approx(served["accuracy"])
        assert card["test_metrics"]["macro_f1"] == pytest.approx(served["macro_f1"])
    else:
        assert card["test_metrics"]["accuracy"] == pytest.approx(run_metrics["accuracy"])


def test_storage_limits():
    # Checkpoints and run-local model.keras files are git-ignored: count what is shipped.
    sizes = [
        p.stat().st_size
        for p in STORE.rglob("*")
        if p.is_file() and "checkpoints" not in p.parts and p.name != "model.keras"
    ]
    largest = max(sizes) / 2**20
    assert largest < MAX_FILE_MB, f"a file of {largest:.1f} MB"
    assert sum(sizes) / 2**20 < MAX_STORE_MB


@pytest.mark.parametrize(
    "record", _scored_records(), ids=lambda p: str(p.relative_to(STORE / "runs"))
)
def test_run_metrics_agree_with_their_predictions(record):
    metrics = read_json(record / "metrics.json")
    rows = read_csv(record / "predictions.csv")
    names = metrics["class_names"]
    index = {name: i for i, name in enumerate(names)}
    y_true = np.array([index[r["true"]] for r in rows])
    y_pred = np.array([index[r["predicted"]] for r in rows])
    recomputed = classification_metrics(y_true, y_pred, names)
    assert len(rows) == metrics["num_samples"]
    assert recomputed["confusion_matrix"] == metrics["confusion_matrix"]
    assert recomputed["accuracy"] == pytest.approx(metrics["accuracy"])
    assert recomputed["macro_f1"] == pytest.approx(metrics["macro_f1"])
    probabilities = np.array([[float(r[n]) for n in names] for r in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (probabilities.argmax(axis=1) == y_pred).all()
    if "by_confidence" in metrics:  # recorded by runs since 2026-11-26
        thresholds = tuple(row["threshold"] for row in metrics["by_confidence"])
        recomputed = confidence_coverage(y_true, probabilities, thresholds)
        assert [r["flagged"] for r in recomputed] == [
            r["flagged"] for r in metrics["by_confidence"]
        ]


@pytest.mark.parametrize("folder", _models(), ids=lambda p: p.name)
def test_figure_pages_show_each_models_own_test_figures(bundled_store, folder):
    from bcclassify.presentation import pages as ui  # the figure pages' data

    card = read_json(folder / "card.json")
    matrix = ui.run_confusion(ui.load_figures(f"model: {folder.name}"))
    assert matrix.trace() / matrix.sum() == pytest.approx(card["test_metrics"]["accuracy"])
    assert matrix.sum() == card["test_metrics"]["num_samples"]


def test_runs_stopped_on_purpose_get_no_resume_advice(bundled_store):
    from bcclassify.storage.store import can_resume, list_runs

    stopped = [r for r in list_runs() if r["stopped_on_purpose"]]
    assert len(stopped) == 2 and all(r["status"] == "stopped" for r in stopped)
    assert not any(can_resume(r) for r in stopped)
