"""The global low-confidence threshold chosen within a budget for all the served flags (#21)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import variants_store

from bcclassify.serving.floors import LOW_CONFIDENCE_KEY
from bcclassify.serving.trust import choose_low_confidence

# Ten cells of two classes; class 1 carries a floor of 0.9. Confidence, served class, wrong?
CONFIDENCE = np.array([0.99, 0.98, 0.68, 0.62, 0.58, 0.52, 0.95, 0.92, 0.88, 0.97])
SERVED = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
WRONG = np.array([0, 0, 1, 0, 0, 1, 0, 0, 1, 0], dtype=bool)
DISPUTED = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
FLOORS = np.array([0.0, 0.9])


def test_the_threshold_with_fewest_silent_errors_within_the_budget_is_chosen():
    # Always flagged: the disputed cell and the class-1 answer under its floor (0.88).
    # 0.7 flags 0.68, 0.62, 0.58, 0.52 too (6 of 10, no silent error); 0.6 flags 0.58 and 0.52
    # (4, the wrong 0.68 silent); 0.5 flags none of them (2, both wrong ones silent).
    grid = (0.5, 0.55, 0.6, 0.65, 0.7)
    chosen, rows = choose_low_confidence(CONFIDENCE, SERVED, WRONG, DISPUTED, FLOORS, 0.6, grid)
    assert chosen == 0.7 and rows[-1]["flagged_fraction"] == 0.6
    assert rows[-1]["wrong_and_unflagged"] == 0.0
    chosen, rows = choose_low_confidence(CONFIDENCE, SERVED, WRONG, DISPUTED, FLOORS, 0.4, grid)
    figures = {row["threshold"]: row for row in rows}
    assert figures[0.6]["flagged_fraction"] == 0.4 and figures[0.6]["wrong_and_unflagged"] == 0.1
    # 0.55 (flags 0.52: 30%) and 0.6 (40%) leave the same wrong cell, 0.68, silent: a tie on
    # silent errors, so the higher threshold, the more cautious one, is taken.
    assert figures[0.55]["wrong_and_unflagged"] == 0.1 and chosen == 0.6
    # The floor is never lowered by a threshold under it: 0.88 stays flagged at every one.
    assert all(row["flagged_fraction"] >= 0.2 for row in rows)


def test_no_threshold_within_the_budget_is_refused_with_the_fewest_possible():
    with pytest.raises(ValueError, match=r"the fewest: 20\.00% at 0\.5"):
        choose_low_confidence(CONFIDENCE, SERVED, WRONG, DISPUTED, FLOORS, 0.1)


def test_calibrate_flag_budget_refuses_what_the_model_cannot_meet(tmp_path, cli):
    # The untrained model is unsure of every cell (about 1/8 each): every threshold flags all
    # of its validation cells, so no budget under 100% can be met; the card is left as it was.
    store, data = variants_store(tmp_path)
    card_path = store / "models" / "tiny-cnn" / "card.json"
    before = card_path.read_text()
    result = cli(
        ["calibrate", "--model", "tiny-cnn", "--data", data, "--flag-budget", "0.5"], store
    )
    assert result.returncode == 2 and "the fewest: 100.00%" in result.stderr
    assert card_path.read_text() == before and LOW_CONFIDENCE_KEY not in json.loads(before)
    bad = cli(["calibrate", "--model", "tiny-cnn", "--data", data, "--flag-budget", "1.5"], store)
    assert bad.returncode == 2 and "--flag-budget" in bad.stderr


def test_rechoosing_the_threshold_keeps_the_one_before_any_budget(tmp_path, monkeypatch):
    # ``adapt`` restores ``before``, the threshold chosen without the floors: re-choosing within
    # the budget after another flag is added must not record the budgeted one as ``before``.
    from bcclassify.serving.trust import fit_low_confidence

    store, data = variants_store(tmp_path)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    first = fit_low_confidence("tiny-cnn", data, budget=1.0)
    # Every threshold flags all of the untrained model's cells: the highest is taken.
    assert first["low_confidence_threshold"] == 0.7
    assert first[LOW_CONFIDENCE_KEY]["before"] == 0.6  # the card had none: the default
    again = fit_low_confidence("tiny-cnn", data, budget=1.0)
    assert again[LOW_CONFIDENCE_KEY]["before"] == 0.6
