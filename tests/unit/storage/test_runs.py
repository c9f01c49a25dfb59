"""Run records: one reader and writer of a run folder; summaries keep unknown keys, headline
figures read once."""

from __future__ import annotations

from bcclassify.storage.runs import RunRecord, RunSummary, headline, mean_or_value, run_summaries
from bcclassify.storage.store import list_runs, write_json


def test_a_fold_summary_gives_its_mean_and_a_plain_value_itself():
    assert mean_or_value({"mean": 0.9, "std": 0.02}) == 0.9
    assert mean_or_value(0.87) == 0.87 and mean_or_value(None) is None
    cv = {"summary": {"accuracy": {"mean": 0.89, "std": 0.02}}, "duration_s": 10}
    assert headline(cv) == {"accuracy": 0.89}
    assert headline({"accuracy": 0.95, "macro_f1": 0.94})["macro_f1"] == 0.94


def test_a_run_summary_round_trips_and_keeps_unknown_keys():
    row = {"run_id": "r", "status": "running", "interrupted": True, "later_field": [1, 2]}
    summary = RunSummary.from_json(row)
    assert summary.other == {"later_field": [1, 2]} and summary.state == "interrupted"
    again = summary.to_json()
    assert {k: again[k] for k in row} == row
    assert RunSummary.from_json(again).to_json() == again


def test_a_cross_validated_runs_summary_shows_the_fold_mean(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path))
    folder = tmp_path / "runs" / "cv"
    write_json(folder / "run.json", {"arch": "cnn", "status": "finished", "created": "2"})
    write_json(folder / "config.json", {"arch": "cnn", "image_size": 32, "folds": 5})
    write_json(
        folder / "metrics.json",
        {"summary": {"accuracy": {"mean": 0.8, "std": 0.1}, "macro_f1": {"mean": 0.7}}},
    )
    plain = tmp_path / "runs" / "plain"
    write_json(plain / "run.json", {"arch": "cnn", "status": "finished", "created": "1"})
    write_json(plain / "metrics.json", {"accuracy": 0.9, "macro_f1": 0.85})
    [cv, single] = run_summaries()  # newest first
    assert (cv.run_id, cv.test_accuracy, cv.macro_f1, cv.folds) == ("cv", 0.8, 0.7, 5)
    assert (single.test_accuracy, single.macro_f1) == (0.9, 0.85)
    assert list_runs() == [cv.to_json(), single.to_json()]


def test_a_run_record_reads_back_what_it_wrote(tmp_path):
    record = RunRecord(tmp_path / "r")
    record.create(run_id="r", status="running", created="2026-01-01T00:00:00+00:00")
    record.write_config({"arch": "cnn", "folds": 2})
    record.write_history([{"epoch": 1, "loss": 0.5, "stage": "classifier"}])
    for k in (2, 1):
        RunRecord(record.folder / f"fold-{k}").write_metrics({"accuracy": k / 4})
    record.start_clock()
    record.finish({"summary": {"accuracy": {"mean": 0.375, "std": 0.125}}})
    assert record.read()["status"] == "finished" and record.config()["folds"] == 2
    assert record.history()[0] == {
        "epoch": 1.0, "loss": 0.5, "accuracy": None, "val_loss": None, "val_accuracy": None,
        "learning_rate": None, "seconds": None, "stage": "classifier",
    }  # fmt: skip
    assert [(f.fold, f.metrics()["accuracy"]) for f in record.folds()] == [(1, 0.25), (2, 0.5)]
    summary = record.summary()
    assert (summary.run_id, summary.test_accuracy, summary.finished) == ("r", 0.375, True)
    assert summary.duration_s == record.metrics()["duration_s"]
