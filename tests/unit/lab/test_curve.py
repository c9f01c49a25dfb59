"""Adapt's learning curve: the per-K summary of the study's draws, the card section, the table."""

from __future__ import annotations

import json

import pytest

from bcclassify.lab.curve import CARD_KEY, curve_rows, record_curve, summarise_curve
from bcclassify.presentation.adapt import curve_table
from bcclassify.storage.cards import card_seal_problem, load_card, write_card


def draw(k: int, seed: int, accuracy: float, silent: float, before: float = 0.3) -> dict:
    return {
        "per_class": k,
        "seed": seed,
        "taken": 4 * k + 1,
        "held_back": 300 - 4 * k - 1,
        "adapt_seconds": 60.0 + k,
        "before": {"accuracy": before},
        "after": {
            "accuracy": accuracy,
            "flagged_fraction": 0.5,
            "unidentified_fraction": 0.25,
            "wrong_and_unflagged_fraction": silent,
        },
    }


DRAWS = [
    draw(10, 1, 0.91, 0.03),
    draw(5, 0, 0.80, 0.02),
    draw(10, 0, 0.87, 0.01),
    draw(5, 1, 0.84, 0.04, before=0.34),
]


def test_summary_is_one_row_per_k_with_mean_and_worst_draw():
    rows = summarise_curve(DRAWS)
    assert [r["per_class"] for r in rows] == [5, 10]
    five, ten = rows
    assert five["draws"] == 2 and five["seeds"] == [0, 1]
    assert five["accuracy_mean"] == pytest.approx(0.82)
    assert five["accuracy_worst"] == pytest.approx(0.80)
    assert five["accuracy_before_mean"] == pytest.approx(0.32)
    assert five["wrong_and_unflagged_worst"] == pytest.approx(0.04)
    assert five["taken_mean"] == 21 and five["held_back_mean"] == 279
    assert ten["accuracy_mean"] == pytest.approx(0.89)
    assert ten["accuracy_worst"] == pytest.approx(0.87)
    assert ten["wrong_and_unflagged_mean"] == pytest.approx(0.02)


def test_curve_is_written_through_the_card_writer_and_read_back(tmp_path):
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    write_card(folder, {"name": "m", "architecture": "hybrid", "calibration": {"t": 1.5}})
    rows = summarise_curve(DRAWS)
    command = "python scripts/adapt_study.py --cells cache/lab-a --per-class 5 10 --seeds 0 1"
    record_curve(folder, rows, cells="lab-a", study="adapt-curve-lab-a.json", command=command)
    record_curve(folder, rows[:1], "lab-b", "adapt-curve-lab-b.json", "python scripts/x.py")

    card = load_card(folder)
    assert card_seal_problem(folder) is None  # resealed: the model still loads
    assert card.get("calibration") == {"t": 1.5}  # other sections kept
    assert set(card.get(CARD_KEY)) == {"lab-a", "lab-b"}
    assert card.get(CARD_KEY)["lab-a"]["command"] == command  # as typed: the set lives in cache/
    read = curve_rows(json.loads((folder / "card.json").read_text()))
    assert read["lab-a"] == json.loads(json.dumps(rows))
    assert [r["per_class"] for r in read["lab-b"]] == [5]
    assert curve_rows({"name": "m"}) == {}


def test_curve_table_shows_percentages_per_k():
    table = curve_table(summarise_curve(DRAWS))
    assert list(table["cells a class"]) == [5, 10]
    assert list(table["accuracy after (worst draw)"]) == ["80.0%", "87.0%"]
    assert list(table["wrong and not flagged (worst draw)"]) == ["4.0%", "3.0%"]
