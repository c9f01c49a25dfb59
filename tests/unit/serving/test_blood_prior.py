"""The guess written for a cell taken unlike the training images (issue 21): re-weighted to the
blood's class mix, and read from the greyscale view where the colour check disputes it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, variants_store
from PIL import Image

from bcclassify import CLASS_NAMES
from bcclassify.serving.acquisition import fit_range, summaries
from bcclassify.serving.blood_prior import (
    CARD_KEY,
    RARE_IN_BLOOD,
    UnidentifiedPrior,
    reweighted,
    white_cell_prior,
)
from bcclassify.serving.colour_check import CARD_KEY as COLOUR_CHECK_KEY
from bcclassify.serving.colour_check import greyscale
from bcclassify.storage.cards import write_card


def test_the_prior_gives_rare_classes_their_share_and_keeps_the_others_proportions():
    mix = {"basophil": 1, "erythroblast": 2, "ig": 3, "lymphocyte": 1, "neutrophil": 3}
    prior = white_cell_prior(mix, ("erythroblast", "ig"), 0.05)
    assert prior["erythroblast"] == prior["ig"] == 0.05
    # 90% left for the three others, in the proportions 1 : 1 : 3.
    assert prior["basophil"] == pytest.approx(0.18) and prior["lymphocyte"] == pytest.approx(0.18)
    assert prior["neutrophil"] == pytest.approx(0.54)
    assert sum(prior.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not classes"):
        white_cell_prior(mix, ("platelet",))
    with pytest.raises(ValueError, match="no share"):
        white_cell_prior(mix, ("erythroblast", "ig"), 0.5)


def test_only_the_chosen_rows_are_reweighted_and_each_still_sums_to_one():
    probabilities = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]], dtype=np.float32)
    weights = np.array([0.1, 1.0, 1.0])
    out = reweighted(probabilities, weights, np.array([True, False]))
    # 0.06 : 0.3 : 0.1, renormalised: the second class is now the guess.
    np.testing.assert_allclose(out[0], np.array([0.06, 0.3, 0.1]) / 0.46, rtol=1e-6)
    assert out[0].argmax() == 1 and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], probabilities[1])
    np.testing.assert_array_equal(probabilities[0], probabilities[1])  # the input is untouched


def test_the_cards_weights_are_prior_over_training_share_in_class_order():
    names = ("a", "b", "c")
    card = {
        CARD_KEY: {
            "prior": {"c": 0.5, "a": 0.25, "b": 0.25},
            "training_mix": {"a": 2, "b": 1, "c": 1},
        }
    }
    prior = UnidentifiedPrior.from_card(card, names)
    # shares 0.25/0.5, 0.25/0.25, 0.5/0.25 (the mix is read as shares of its total)
    np.testing.assert_allclose(prior.weights, [0.5, 1.0, 2.0])
    assert UnidentifiedPrior.from_card({}, names) is None
    with pytest.raises(ValueError, match="no share for c"):
        UnidentifiedPrior.from_card(
            {CARD_KEY: {"prior": {"a": 1, "b": 1}, "training_mix": card[CARD_KEY]["training_mix"]}},
            names,
        )
    with pytest.raises(ValueError, match="positive"):
        UnidentifiedPrior.from_card(
            {CARD_KEY: {**card[CARD_KEY], "prior": {"a": 0, "b": 1, "c": 1}}}, names
        )


def _yellowed(image: np.ndarray) -> np.ndarray:
    """Another lab's illuminant (as ext-tecom's yellowish backgrounds)."""
    return np.clip(image.astype(np.float32) * [1.08, 1.02, 0.80], 0, 255).astype(np.uint8)


def test_served_unidentified_cells_carry_the_guess_and_the_others_do_not_change(
    tmp_path, tiny_store, monkeypatch
):
    from bcclassify.serving.classifier import load_model

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    folder = store / "models" / "tiny-cnn"
    paths = sorted(FIXTURE_IMAGES.rglob("*.jpg"))
    own = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in paths])
    card = json.loads((folder / "card.json").read_text())
    card["acquisition"] = fit_range(summaries(own), "fixture cells").to_card()
    write_card(folder, card)

    plain_model = load_model("tiny-cnn", verify=False)
    cells = np.stack([plain_model.load(p) for p in paths])
    pixels = np.concatenate([cells, _yellowed(cells)])  # the second half: another lab's look
    names = [f"cell-{n}" for n in range(len(pixels))]
    plain = plain_model.classify_pixels(pixels, names)
    # The guess is made for cells taken unlike the training images (outside the range) only.
    guessed = np.array([p.taken_unlike_training for p in plain])
    assert guessed[len(cells) :].all() and guessed[: len(cells)].sum() <= 1

    # A prior that makes the commonest served class of the yellowed cells rare, so guesses move.
    labels = [p.label for p in plain[len(cells) :]]
    rare = max(set(labels), key=labels.count)
    shares = {c: 1.0 for c in CLASS_NAMES}
    card[CARD_KEY] = {"prior": {**shares, rare: 1e-3}, "training_mix": shares}
    # ... and a colour check that takes every unidentified answer of another class from grey.
    checked = next(c for c in sorted(set(labels)) if c != rare) if len(set(labels)) > 1 else rare
    rival = next(c for c in CLASS_NAMES if c != checked)
    temperature = float((card.get("calibration") or {}).get("temperature", 1.0))
    card[COLOUR_CHECK_KEY] = {
        "checked": checked,
        "rival": rival,
        "min_rival": 1e-9,
        "temperature": temperature,
    }
    write_card(folder, card)
    model = load_model("tiny-cnn", verify=False)
    served = model.classify_pixels(pixels, names)

    weights = model.unidentified_prior.weights
    grey = model.predict_pixels(greyscale(pixels), views=("identity",))
    for n, (before, after) in enumerate(zip(plain, served)):
        if not guessed[n]:  # as served before; an answer of the checked class disputed
            np.testing.assert_array_equal(after.probabilities, before.probabilities)
            if before.flag != "unidentified":
                assert after.flag == ("disputed" if before.label == checked else before.flag)
            continue
        assert after.flag == "unidentified"
        source = grey[n] if before.label == checked else before.probabilities
        expected = source * weights / (source * weights).sum()
        np.testing.assert_allclose(after.probabilities, expected, rtol=1e-5, atol=1e-7)
        assert after.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert not any(p.label == rare for p, u in zip(served, guessed) if u)


def test_calibrate_writes_the_prior_from_the_datas_mix_and_refuses_bad_shares(tmp_path, cli):
    store, data = variants_store(tmp_path)
    base = ["calibrate", "--model", "tiny-cnn", "--data", data, "--unidentified-prior"]
    result = cli(base, store=store)
    assert result.returncode == 0, result.stderr
    section = json.loads(result.stdout)[CARD_KEY]
    counts = {c.name: len(list(c.iterdir())) for c in data.iterdir()}
    total = sum(counts.values())
    assert section["training_mix"] == pytest.approx({c: n / total for c, n in counts.items()})
    assert all(section["prior"][c] == 0.01 for c in RARE_IN_BLOOD)
    assert sum(section["prior"].values()) == pytest.approx(1.0)
    card = json.loads((store / "models" / "tiny-cnn" / "card.json").read_text())
    assert card[CARD_KEY] == section
    refused = cli([*base, "--rare-share", "0.4"], store=store)
    assert refused.returncode == 2 and "--rare-share" in refused.stderr
