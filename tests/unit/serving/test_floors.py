"""Per-class confidence floors (issue 21): a stricter low-confidence threshold for one class."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, variants_store

from bcclassify.serving.floors import (
    CARD_KEY,
    choose_floor,
    floors_from_card,
    thresholds_by_class,
)
from bcclassify.serving.trust import trust_figures
from bcclassify.storage.cards import write_card


def test_the_floor_is_the_highest_that_flags_no_more_than_the_budget():
    confidences = np.array([0.99, 0.75, 0.97, 0.999, 0.9, 0.98])
    # 20 validation cells, budget 0.1: at most 2 of these may fall under the floor.
    floor = choose_floor(confidences, total=20, budget=0.1, threshold=0.7)
    assert floor == 0.97 and (confidences < floor).sum() == 2
    # No budget: nothing of the class is flagged, the floor sits at its least confident cell.
    assert choose_floor(confidences, 20, 0.0, 0.7) == 0.75
    # Never under the model's own threshold, and a budget covering every cell flags them all.
    assert choose_floor(confidences, 20, 0.0, 0.8) == 0.8
    assert choose_floor(confidences, 100, 0.5, 0.7) == 1.0


def test_thresholds_by_class_raise_only_the_classes_with_a_floor():
    names = ("a", "b", "c")
    assert thresholds_by_class(0.7, {"b": 0.95, "c": 0.5}, names).tolist() == [0.7, 0.95, 0.7]


def test_floors_chosen_under_another_temperature_are_not_used():
    card = {
        "calibration": {"temperature": 1.2},
        CARD_KEY: {"floors": {"eosinophil": 0.96}, "temperature": 1.2},
    }
    assert floors_from_card(card) == {"eosinophil": 0.96}
    assert floors_from_card({**card, "calibration": {"temperature": 1.5}}) == {}
    assert floors_from_card({"calibration": {"temperature": 1.2}}) == {}


def test_figures_take_the_threshold_of_each_cells_served_class():
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    labels = np.array([0, 0, 1])
    flat = trust_figures(labels, probabilities, np.zeros(3), 1.0, 0.7)
    floored = trust_figures(labels, probabilities, np.zeros(3), 1.0, np.array([0.7, 0.95]))
    assert flat["low_confidence_fraction"] == 0.0 and flat["wrong_and_unflagged_fraction"] == 1 / 3
    # Both class-1 answers (one wrong) fall under class 1's floor; the class-0 answer does not.
    assert floored["low_confidence_fraction"] == 2 / 3
    assert floored["wrong_and_unflagged_fraction"] == 0.0


def test_served_answers_of_a_floored_class_are_low_confidence(tmp_path, tiny_store, monkeypatch):
    from bcclassify.serving.classifier import iter_sources, load_model

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    paths = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:8]
    card_path = store / "models" / "tiny-cnn" / "card.json"
    card = json.loads(card_path.read_text())
    # A global threshold the tiny model's answers pass, so that the floor is what flags them.
    card["low_confidence_threshold"] = 0.01
    write_card(card_path.parent, card)
    plain = load_model("tiny-cnn", verify=False).classify(iter_sources(paths))
    answered = {p.label for p in plain}
    card = json.loads(card_path.read_text())
    temperature = float((card.get("calibration") or {}).get("temperature", 1.0))
    card[CARD_KEY] = {"floors": dict.fromkeys(answered, 0.9999), "temperature": temperature}
    write_card(card_path.parent, card)
    floored = load_model("tiny-cnn", verify=False).classify(iter_sources(paths))
    for before, after in zip(plain, floored):
        assert after.label == before.label and after.confidence == before.confidence
        assert after.threshold == max(before.threshold, 0.9999)
        if not after.unidentified and not after.disputed:
            assert after.flag == ("low_confidence" if after.confidence < 0.9999 else "")
    # The floor turns answers shown unflagged before into low-confidence ones.
    assert any(b.flag == "" and a.flag == "low_confidence" for b, a in zip(plain, floored))


def test_fitting_floors_writes_a_section_serving_reads(tmp_path, monkeypatch):
    from bcclassify.serving.classifier import load_model
    from bcclassify.serving.trust import fit_class_floors

    store, data = variants_store(tmp_path)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    classes = list(load_model("tiny-cnn").class_names[:2])
    card = fit_class_floors("tiny-cnn", data, classes, budget=0.2)

    section = card[CARD_KEY]
    assert set(section["floors"]) == set(classes)
    validation = section["validation"]
    assert validation["flagged_fraction"] - validation["flagged_fraction_before"] <= 0.2 + 1e-9
    assert validation["wrong_and_unflagged"] <= validation["wrong_and_unflagged_before"]
    served = load_model("tiny-cnn")
    assert served.class_floors == section["floors"]
    with pytest.raises(ValueError, match="class names"):
        fit_class_floors("tiny-cnn", data, ["not-a-class"])


def test_calibrate_sets_floors_and_refuses_bad_ones_in_one_line(tmp_path, cli):
    store, data = variants_store(tmp_path)
    base = ["calibrate", "--model", "tiny-cnn", "--data", data, "--class-floor"]
    result = cli([*base, "eosinophil"], store=store)
    assert result.returncode == 0, result.stderr
    section = json.loads(result.stdout)[CARD_KEY]
    assert list(section["floors"]) == ["eosinophil"] and section["budget_extra_flagged"] == 0.005
    unknown = cli([*base, "eosinophils"], store=store)
    assert unknown.returncode == 2 and "eosinophils" in unknown.stderr
    budget = cli([*base, "eosinophil", "--floor-budget", "1.5"], store=store)
    assert budget.returncode == 2 and "--floor-budget" in budget.stderr
