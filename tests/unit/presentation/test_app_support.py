"""The pages' helpers (``ui`` and the data it shows): CSV export, figures and tables, without a
browser or TensorFlow."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bcclassify import CLASS_NAMES
from bcclassify.presentation import pages, tables
from bcclassify.presentation.tables import PREDICT_HEADER
from bcclassify.review import reviews
from bcclassify.serving.classifier import Prediction
from bcclassify.storage.cards import write_card
from bcclassify.storage.store import REPO_ROOT
from ui import figures, session


def test_batch_csv_has_the_predict_columns():
    ok = Prediction("a.png", probabilities=np.full(8, 1 / 8))
    bad = Prediction("b.png", error="b.png: the file is empty;\naccepted: …")
    lines = pages.results_csv([ok, bad], CLASS_NAMES).splitlines()
    assert lines[0].split(",") == PREDICT_HEADER + list(CLASS_NAMES)
    assert lines[1].startswith("a.png,basophil,0.125000,low_confidence,,")
    assert lines[2].startswith("b.png,,,error,") and len(lines) == 3


def test_confusion_figure_normalises_rows():
    matrix = np.diag([4, 0, 2, 1, 1, 1, 1, 1])
    matrix[0, 1] = 4
    z = np.asarray(figures.confusion_figure(matrix, CLASS_NAMES, normalized=True).data[0].z)
    assert z[0, 0] == 0.5 and z[0, 1] == 0.5
    assert np.all(z[1] == 0)  # a class without test images stays 0, not NaN


def test_probability_figure_highlights_the_top_class():
    probs = np.array([0.05, 0.6, 0.05, 0.05, 0.05, 0.1, 0.05, 0.05])
    bar = figures.probability_figure(probs).data[0]
    assert list(bar.y) == [tables.class_label(n) for n in CLASS_NAMES]
    assert len(set(bar.marker.color)) == 2 and bar.marker.color[1] != bar.marker.color[0]


def test_cross_validation_per_class_scores_come_from_the_pooled_matrix(tmp_path):
    matrix = np.eye(8, dtype=int) * 3
    matrix[0, 1] = 1  # one basophil called an eosinophil
    record = pages.RunView(
        run_id="cv",
        folder=tmp_path,
        run={},
        config={},
        environment={},
        metrics={"summary": {}, "confusion_matrix": matrix.tolist()},
        history=pd.DataFrame(),
        folds=[{"fold": 1, "folder": tmp_path, "metrics": {}, "history": pd.DataFrame()}],
    )
    table = pages.per_class_table(record).set_index("class")
    assert table.loc["Basophil", "recall"] == 0.75
    assert table.loc["Eosinophil", "precision"] == 0.75
    assert table.loc["macro average", "support"] == 25


def test_data_dir_prefers_the_environment_then_the_secret(monkeypatch, tmp_path):
    monkeypatch.delenv("BCCLASSIFY_DATA_DIR", raising=False)
    assert reviews.default_data_dir({"BCCLASSIFY_DATA_DIR": str(tmp_path)}) == tmp_path
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(tmp_path / "env"))
    assert reviews.default_data_dir({"BCCLASSIFY_DATA_DIR": "elsewhere"}) == tmp_path / "env"


def test_run_progress_reports_epochs_and_eta(tmp_path):
    record = pages.RunView(
        "r", tmp_path, {"epochs_done": 3, "eta_s": 125}, {"epochs": 10}, {}, {}, pd.DataFrame(), []
    )
    fraction, text = pages.run_progress(record)
    assert fraction == 0.3 and "epoch 3/10" in text and "2m 05s" in text


def test_batch_csv_escapes_spreadsheet_formulas_in_file_names():
    hostile = Prediction("=HYPERLINK(1).png", probabilities=np.full(8, 1 / 8))
    line = pages.results_csv([hostile], CLASS_NAMES).splitlines()[1]
    assert line.startswith("'=HYPERLINK(1).png,")


def test_the_model_cache_reloads_a_re_promoted_model(tiny_store, tmp_path, monkeypatch):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", store / "models" / "tiny-cnn")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    first = session.cached_model("tiny-cnn")
    assert session.cached_model("tiny-cnn") is first
    folder = store / "models" / "tiny-cnn"
    card = json.loads((folder / "card.json").read_text())
    write_card(folder, {"note": "re-promoted", **card})  # as promote writes it (card.sha256 too)
    assert session.cached_model("tiny-cnn") is not first  # same name, new card: loaded afresh


def test_runs_table_puts_the_best_run_first_and_unscored_runs_last():
    runs = [
        {"run_id": "a", "test_accuracy": 0.91, "status": "finished"},
        {"run_id": "b", "test_accuracy": None, "status": "running"},
        {"run_id": "c", "test_accuracy": 0.97, "status": "finished"},
    ]
    table = tables.runs_table(runs)
    assert list(table["run id"]) == ["c", "a", "b"]
    assert list(table.columns[:3]) == ["run id", "test accuracy", "macro-F1"]
    assert session.table_height(len(table)) > session.table_height(2)


def test_machine_paths_are_not_shown():
    record = {
        "command": "/work/main/bcclassify/__main__.py train --data ../shared/data/pbc224",
        "folders": ["/home/ana/weights/xception.h5", "relative/kept.txt"],
        "url": "https://example.org/a/b",
        "ratio": "1/255",
        "epochs": 4,
    }
    shown = pages.without_machine_paths(record)
    assert shown["command"] == "python -m bcclassify train --data ../shared/data/pbc224"
    assert shown["folders"] == ["…/xception.h5", "relative/kept.txt"]
    assert shown["url"] == record["url"] and shown["ratio"] == "1/255" and shown["epochs"] == 4
    inside = str(REPO_ROOT / "cache" / "x.npz")
    assert pages.without_machine_paths(inside) == "cache/x.npz"


def test_a_model_shows_its_own_figures_and_a_run_its_own(tiny_store, tmp_path, monkeypatch):
    import shutil

    from bcclassify.evaluation.scoring import promote
    from bcclassify.storage.store import read_csv, read_json

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs", store / "runs")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    promote("fixture-cnn-32px", "plain")
    promote("fixture-cnn-32px", "viewed", views=["identity", "flip_lr", "rot90"])
    # The served model's own answers, made to differ from the run's so the source is visible.
    own = store / "models" / "viewed" / "test_predictions.csv"
    rows = read_csv(own)
    rows[0]["predicted"] = next(c for c in CLASS_NAMES if c != rows[0]["predicted"])
    pd.DataFrame(rows).to_csv(own, index=False)

    assert {"model: plain", "model: viewed", "run: fixture-cnn-32px"} <= set(pages.figure_sources())
    run = pages.load_figures("run: fixture-cnn-32px")
    viewed = pages.load_figures("model: viewed")
    plain = pages.load_figures("model: plain")
    run_matrix = np.asarray(read_json(store / "runs" / "fixture-cnn-32px" / "metrics.json")[
        "confusion_matrix"])  # fmt: skip
    assert np.array_equal(pages.run_confusion(run), run_matrix)
    assert np.array_equal(pages.run_confusion(plain), run_matrix)  # single view: the run's figures
    served = pages.run_confusion(viewed)
    assert served.sum() == len(rows) and not np.array_equal(served, run_matrix)
    assert list(pages.run_predictions(viewed)["predicted"]) == [r["predicted"] for r in rows]
    assert "Installed model viewed" in pages.figures_caption(viewed)
    assert "3 views averaged" in pages.figures_caption(viewed)
    assert "Training run fixture-cnn-32px" in pages.figures_caption(run)


def test_leaderboard_puts_the_best_first(tiny_store):
    board = tables.leaderboard()
    accuracy = [float(a.rstrip("%")) for a in board["test accuracy"] if a != tables.MISSING]
    assert len(accuracy) >= 3 and accuracy == sorted(accuracy, reverse=True)


def test_calibration_figures_come_from_the_card():
    import json

    from helpers import REPO

    card = json.loads((REPO / "model_store" / "models" / "hybrid" / "card.json").read_text())
    figure = figures.reliability_figure(card)
    assert [t.name for t in figure.data] == ["perfect calibration", "before", "after (shown)"]
    after = card["calibration"]["reliability_test_after"]
    assert list(figure.data[2].y) == [row["accuracy"] for row in after]
    summary = pages.trust_summary(card)
    test_row = summary[summary["set"] == "test split"].iloc[0]
    assert test_row["flagged"] == card["novelty"]["test"]["flagged_fraction"]
    assert test_row["ECE after"] == card["calibration"]["test"]["ece_after"]
    # The model as served on the originals it did not train on, with what chance gives there.
    held = card["evaluations"]["pbc-originals (held out)"]["trust"]
    held_row = summary[summary["set"] == "pbc-originals (held out), as served now"].iloc[0]
    assert held_row["ECE after"] == held["ece"] and held_row["flagged"] == held["flagged_fraction"]
    assert held_row["ECE by chance alone"] == held["ece_noise_floor"]["median"]
    assert figures.reliability_figure({}) is None and pages.trust_summary({}) is None
