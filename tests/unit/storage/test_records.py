"""Run summaries and model cards as typed records: unknown keys kept, headline figures read once."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

from bcclassify.storage.cards import ModelCard
from bcclassify.storage.runs import RunSummary, headline, mean_or_value, run_summaries
from bcclassify.storage.store import list_runs, write_json


def test_a_fold_summary_gives_its_mean_and_a_plain_value_itself():
    assert mean_or_value({"mean": 0.9, "std": 0.02}) == 0.9
    assert mean_or_value(0.87) == 0.87 and mean_or_value(None) is None
    cv = {"summary": {"accuracy": {"mean": 0.89, "std": 0.02}}, "duration_s": 10}
    assert headline(cv) == {"accuracy": 0.89}
    assert headline({"accuracy": 0.95, "macro_f1": 0.94})["macro_f1"] == 0.94


def test_a_card_round_trips_with_its_unknown_sections_in_order():
    card = {
        "name": "m",
        "architecture": "cnn",
        "calibration": {"temperature": 1.2},
        "test_metrics": {"accuracy": 0.9},
        "adaptation": {"cells": 10},
        "explain_layers": None,
    }
    typed = ModelCard.from_json(card)
    assert typed.accuracy == 0.9 and typed.views == ["identity"]
    assert typed.sections == {"calibration": {"temperature": 1.2}, "adaptation": {"cells": 10}}
    assert list(typed.to_json().items()) == list(card.items())  # same keys, same order
    assert typed.get("adaptation") == {"cells": 10}
    typed.size_mb = 5.0  # a new field goes after the card's own keys
    assert list(typed.to_json())[-1] == "size_mb"


@pytest.mark.parametrize("folder", sorted((REPO / "model_store" / "models").iterdir()))
def test_bundled_cards_are_written_back_byte_for_byte(folder):
    text = (folder / "card.json").read_text()
    card = ModelCard.from_json(json.loads(text))
    assert json.dumps(card.to_json(), indent=2) + "\n" == text  # what store.write_json writes


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
