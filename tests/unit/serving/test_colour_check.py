"""The colour check (issue 21): an answer disputed when its greyscale view says a rival class."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, variants_store

from bcclassify.serving.colour_check import (
    CARD_KEY,
    ColourCheck,
    choose_min_rival,
    colour_disputed_mask,
    greyscale,
)
from bcclassify.storage.cards import write_card


def test_greyscale_is_luma_in_every_channel():
    pixels = np.array([[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [200, 200, 200]]]], np.uint8)
    grey = greyscale(pixels)
    assert grey.dtype == np.uint8 and grey.shape == pixels.shape
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # BT.601: red 0.299, green 0.587, blue 0.114 of full scale; a grey pixel stays as it was.
    assert grey[0, :, :, 0].tolist() == [[76, 150], [29, 200]]


def test_unchecked_answers_are_never_disputed():
    rival = np.array([np.nan, 0.95, 0.89, 0.9])
    assert colour_disputed_mask(rival, 0.9).tolist() == [False, True, False, True]


def test_the_lowest_rival_probability_within_the_budget_is_chosen():
    # 20 validation cells, 6 of them checked; the first is flagged already by another flag.
    rival = np.full(20, np.nan)
    rival[:6] = [0.97, 0.999, 0.92, 0.85, 0.6, 0.3]
    already = np.zeros(20, dtype=bool)
    already[0] = True
    # Budget 0.1: two more cells may be flagged. 0.9 adds 0.999 and 0.92 (0.97 is flagged).
    assert choose_min_rival(rival, already, 0.1) == 0.9
    assert choose_min_rival(rival, already, 0.05) == 0.95
    assert choose_min_rival(rival, already, 0.5) == 0.5
    with pytest.raises(ValueError, match="budget"):
        choose_min_rival(rival, np.zeros(20, dtype=bool), 0.0, candidates=(0.9, 0.5))


def test_a_check_chosen_under_another_temperature_is_not_used():
    section = {"checked": "eosinophil", "rival": "neutrophil", "min_rival": 0.9}
    card = {"calibration": {"temperature": 1.2}, CARD_KEY: {**section, "temperature": 1.2}}
    assert ColourCheck.from_card(card) == ColourCheck("eosinophil", "neutrophil", 0.9)
    assert ColourCheck.from_card({**card, "calibration": {"temperature": 1.5}}) is None
    assert ColourCheck.from_card({"calibration": {"temperature": 1.2}}) is None
    with pytest.raises(ValueError, match="min_rival"):
        ColourCheck.from_card({CARD_KEY: {**section, "min_rival": 0.0}})


def test_served_answers_of_the_checked_class_carry_the_grey_views_rival(
    tmp_path, tiny_store, monkeypatch
):
    from bcclassify.presentation.classify import disputed_note
    from bcclassify.serving.classifier import load_model

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    paths = sorted(FIXTURE_IMAGES.rglob("*.jpg"))
    card_path = store / "models" / "tiny-cnn" / "card.json"
    plain_model = load_model("tiny-cnn", verify=False)
    pixels = np.stack([plain_model.load(p) for p in paths])
    names = [str(p) for p in paths]
    plain = plain_model.classify_pixels(pixels, names)
    labels = [p.label for p in plain]
    checked = max(set(labels), key=labels.count)
    rival = next(c for c in plain_model.class_names if c != checked)
    card = json.loads(card_path.read_text())
    temperature = float((card.get("calibration") or {}).get("temperature", 1.0))
    card[CARD_KEY] = {
        "checked": checked,
        "rival": rival,
        "min_rival": 1e-9,  # any rival probability disputes: every checked answer is disputed
        "temperature": temperature,
    }
    write_card(card_path.parent, card)
    model = load_model("tiny-cnn", verify=False)
    served = model.classify_pixels(pixels, names)
    grey = model.predict_pixels(greyscale(pixels), views=("identity",))
    rival_index = model.class_names.index(rival)
    for n, (before, after) in enumerate(zip(plain, served)):
        assert after.label == before.label and after.confidence == before.confidence
        if after.label == checked:
            assert after.colour_rival == pytest.approx(grey[n, rival_index], rel=1e-6)
            assert after.disputed_by_colour and after.disputed
            assert after.flag in ("unidentified", "disputed")
            article = "an" if rival[0] in "aeiou" else "a"
            assert f"calls it {article} {rival}" in disputed_note(after)
        else:
            assert after.colour_rival is None and not after.disputed_by_colour
            assert after.flag == before.flag
    assert any(p.flag == "disputed" for p in served)
    # The batch form agrees with the per-cell flags.
    probabilities = np.stack([p.probabilities for p in served])
    assert model.disputed(pixels, probabilities).tolist() == [p.disputed for p in served]


def test_fitting_the_check_writes_a_section_serving_reads(tmp_path, monkeypatch):
    from bcclassify.serving.classifier import load_model
    from bcclassify.serving.trust import fit_colour_check

    store, data = variants_store(tmp_path)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    card = fit_colour_check("tiny-cnn", data, ["eosinophil", "neutrophil"], budget=0.2)

    section = card[CARD_KEY]
    assert (section["checked"], section["rival"]) == ("eosinophil", "neutrophil")
    validation = section["validation"]
    assert validation["flagged_fraction"] - validation["flagged_fraction_before"] <= 0.2 + 1e-9
    assert validation["wrong_and_unflagged"] <= validation["wrong_and_unflagged_before"]
    served = load_model("tiny-cnn")
    assert served.colour_check == ColourCheck("eosinophil", "neutrophil", section["min_rival"])
    for bad in (["eosinophil"], ["eosinophil", "eosinophil"], ["eosinophil", "neutrophils"]):
        with pytest.raises(ValueError, match="two different class names"):
            fit_colour_check("tiny-cnn", data, bad)


def test_calibrate_sets_the_check_and_refuses_bad_ones_in_one_line(tmp_path, cli):
    store, data = variants_store(tmp_path)
    base = ["calibrate", "--model", "tiny-cnn", "--data", data, "--colour-check"]
    result = cli([*base, "eosinophil", "neutrophil"], store=store)
    assert result.returncode == 0, result.stderr
    section = json.loads(result.stdout)[CARD_KEY]
    assert section["rival"] == "neutrophil" and section["budget_extra_flagged"] == 0.005
    unknown = cli([*base, "eosinophil", "neutrophils"], store=store)
    assert unknown.returncode == 2 and "neutrophils" in unknown.stderr
    budget = cli([*base, "eosinophil", "neutrophil", "--colour-budget", "-1"], store=store)
    assert budget.returncode == 2 and "--colour-budget" in budget.stderr
