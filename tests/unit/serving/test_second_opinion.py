"""The second opinion (issue 21): a second model's low support for the served class disputes it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, variants_store

from bcclassify.serving.second_opinion import (
    SecondOpinionConfig,
    choose_min_support,
    disputed_mask,
    resize_batch,
    support_for,
)
from bcclassify.storage.cards import write_card


def test_support_is_the_second_models_probability_of_the_served_class():
    second = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]])
    assert support_for(second, [0, 0, 2]).tolist() == [0.7, 0.05, 0.4]
    assert disputed_mask(support_for(second, [0, 0, 2]), 0.1).tolist() == [False, True, False]


def test_min_support_is_the_strictest_within_the_budget():
    served = np.eye(3)[[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    # The second model's support for class 0 on ten cells: one cell at 0.15, one at 0.04.
    second = np.tile([0.9, 0.05, 0.05], (10, 1))
    second[3] = [0.15, 0.8, 0.05]
    second[7] = [0.04, 0.9, 0.06]
    none_flagged = np.zeros(10, bool)
    assert choose_min_support(served, second, none_flagged, budget=0.0) == 0.02
    assert choose_min_support(served, second, none_flagged, budget=0.1) == 0.1
    assert choose_min_support(served, second, none_flagged, budget=0.2) == 0.5
    # A cell flagged already does not count against the budget.
    flagged = none_flagged.copy()
    flagged[7] = True
    assert choose_min_support(served, second, flagged, budget=0.1) == 0.5
    with pytest.raises(ValueError, match="budget"):
        choose_min_support(served, second, none_flagged, budget=0.0, candidates=(0.5, 0.1))


def test_config_from_the_card_refuses_a_support_outside_zero_one():
    assert SecondOpinionConfig.from_card(None) is None
    assert SecondOpinionConfig.from_card({"model": "m", "min_support": 0.1}).min_support == 0.1
    with pytest.raises(ValueError, match="min_support"):
        SecondOpinionConfig.from_card({"model": "m", "min_support": 1.5})


def test_resize_keeps_a_batch_at_its_size_and_resizes_others():
    batch = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    assert resize_batch(batch, 40) is batch
    small = resize_batch(batch, 20)
    assert small.shape == (2, 20, 20, 3) and small.dtype == np.uint8
    assert abs(float(small.mean()) - float(batch.mean())) < 3


def _with_second_opinion(store, min_support: float) -> None:
    card_path = store / "models" / "tiny-cnn" / "card.json"
    card = json.loads(card_path.read_text())
    card["second_opinion"] = {"model": "tiny-cnn", "min_support": min_support}
    write_card(card_path.parent, card)


def test_served_predictions_are_disputed_where_the_second_model_gives_little(
    tmp_path, tiny_store, monkeypatch
):
    from bcclassify.serving.classifier import iter_sources, load_model

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    paths = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:8]
    # The model as its own second opinion: its support for its answer is its top probability,
    # so a floor of 0.999 disputes every answer below it, and a floor near zero disputes none.
    _with_second_opinion(store, 0.999)
    strict = load_model("tiny-cnn", verify=False).classify(iter_sources(paths))
    _with_second_opinion(store, 1e-6)
    lenient = load_model("tiny-cnn", verify=False).classify(iter_sources(paths))
    for s, p in zip(strict, lenient):
        assert s.second_support == pytest.approx(s.confidence, abs=1e-5)
        assert s.disputed == (s.confidence < 0.999) and not p.disputed
        if s.disputed and not s.unidentified:
            assert s.flag == "disputed"
    assert any(s.flag == "disputed" for s in strict)
    assert not any(p.flag == "disputed" for p in lenient)


def test_fitting_a_second_opinion_decodes_each_validation_image_once(tmp_path, monkeypatch):
    from bcclassify.serving import classifier as serving
    from bcclassify.serving.trust import fit_second_opinion

    store, data = variants_store(tmp_path)
    shutil.copytree(store / "models" / "tiny-cnn", store / "models" / "tiny-cnn-b")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    decoded: list[str] = []
    real_load = serving.load_image

    def counting_load(source, size, name=None):
        decoded.append(str(source))
        return real_load(source, size, name=name)

    monkeypatch.setattr(serving, "load_image", counting_load)
    card = fit_second_opinion("tiny-cnn", "tiny-cnn-b", data, budget=0.5)

    section = card["second_opinion"]
    validation = section["validation"]
    assert section["model"] == "tiny-cnn-b" and 0 < section["min_support"] < 1
    assert validation["extra_flagged_fraction"] <= 0.5
    cells = int(section["chosen_on"].split("(")[1].split()[0])
    assert cells > 0 and len(decoded) == cells == len(set(decoded))
    # Written through the card writer: the model loads with its second opinion.
    served = serving.load_model("tiny-cnn")
    assert served.second_opinion is not None and served.second_opinion.model.name == "tiny-cnn-b"


def test_calibrate_refuses_a_dispute_budget_outside_zero_one(tmp_path, cli):
    store, data = variants_store(tmp_path)
    base = ["calibrate", "--model", "tiny-cnn", "--data", data, "--second-opinion", "tiny-cnn"]
    result = cli([*base, "--dispute-budget", "1.5"], store=store)
    assert result.returncode == 2 and "--dispute-budget must be in [0, 1)" in result.stderr
    own = cli(base, store=store)
    assert own.returncode == 2 and "its own second opinion" in own.stderr
