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
    BEYOND_KEY,
    CARD_KEY,
    FADE_KEY,
    RARE_IN_BLOOD,
    UnidentifiedPrior,
    reweighted,
    white_cell_prior,
)
from bcclassify.serving.blood_prior import (
    SECOND_OPINION_SHARE_KEY as SHARE_KEY,
)
from bcclassify.serving.colour_check import CARD_KEY as COLOUR_CHECK_KEY
from bcclassify.serving.colour_check import greyscale
from bcclassify.serving.second_opinion import mixed_in
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


def _range_fitted_store(tmp_path, tiny_store, monkeypatch) -> tuple:
    """A copy of the tiny store whose tiny-cnn card has an acquisition range fitted on the
    fixture cells: (its folder, its card, the fixture paths)."""
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    folder = store / "models" / "tiny-cnn"
    paths = sorted(FIXTURE_IMAGES.rglob("*.jpg"))
    own = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in paths])
    card = json.loads((folder / "card.json").read_text())
    card["acquisition"] = fit_range(summaries(own), "fixture cells").to_card()
    return folder, card, paths


def _served_with_another_labs(model, paths) -> tuple:
    """The fixture cells and their yellowed copies (another lab's look, outside the range):
    (pixels, names, the served predictions)."""
    cells = np.stack([model.load(p) for p in paths])
    pixels = np.concatenate([cells, _yellowed(cells)])
    names = [f"cell-{n}" for n in range(len(pixels))]
    return pixels, names, model.classify_pixels(pixels, names)


def test_served_unidentified_cells_carry_the_guess_and_the_others_do_not_change(
    tmp_path, tiny_store, monkeypatch
):
    from bcclassify.serving.classifier import load_model

    folder, card, paths = _range_fitted_store(tmp_path, tiny_store, monkeypatch)
    write_card(folder, card)
    pixels, names, plain = _served_with_another_labs(load_model("tiny-cnn", verify=False), paths)
    cells = pixels[: len(paths)]
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


def test_guessed_rows_are_outside_the_range_and_beyond_the_own_cells_score():
    weights = np.ones(3)
    scores = np.array([np.inf, 5.0, 4.0, -np.inf, 2.0])
    assert UnidentifiedPrior(weights).guessed_rows(scores).tolist() == [1, 0, 0, 0, 0]
    beyond = UnidentifiedPrior(weights, beyond_novelty=4.0).guessed_rows(scores)
    assert beyond.tolist() == [1, 1, 0, 0, 0]  # strictly above: the highest own cell is not
    section = {"prior": {"a": 1, "b": 1, "c": 1}, "training_mix": {"a": 1, "b": 1, "c": 1}}
    names = ("a", "b", "c")
    assert UnidentifiedPrior.from_card({CARD_KEY: section}, names).beyond_novelty is None
    read = UnidentifiedPrior.from_card({CARD_KEY: {**section, BEYOND_KEY: 4.5}}, names)
    assert read.beyond_novelty == 4.5
    with pytest.raises(ValueError, match="finite"):
        UnidentifiedPrior.from_card({CARD_KEY: {**section, BEYOND_KEY: float("inf")}}, names)


def test_the_guess_fades_in_between_the_two_scores():
    prior = UnidentifiedPrior(np.array([4.0, 1.0]), beyond_novelty=5.0, fade_from_novelty=4.0)
    scores = np.array([np.inf, 6.0, 5.0, 4.5, 4.0, 3.0, -np.inf])
    assert prior.strengths(scores).tolist() == [1, 1, 1, 0.5, 0, 0, 0]
    assert prior.guessed_rows(scores).tolist() == [1, 1, 1, 1, 0, 0, 0]
    probabilities = np.full((len(scores), 2), 0.5)
    written = prior.apply(probabilities, prior.guessed_rows(scores), prior.strengths(scores))
    # weights (4, 1) raised to the share: 4 -> 0.8, 2 -> 2/3, none -> as served
    np.testing.assert_allclose(written[:, 0], [0.8, 0.8, 0.8, 2 / 3, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(written.sum(axis=1), 1.0)
    # Without the fade: the step at beyond_novelty alone.
    step = UnidentifiedPrior(np.array([4.0, 1.0]), beyond_novelty=5.0)
    assert step.strengths(scores).tolist() == [1, 1, 0, 0, 0, 0, 0]

    section = {"prior": {"a": 1, "b": 1}, "training_mix": {"a": 1, "b": 1}, BEYOND_KEY: 5.0}
    read = UnidentifiedPrior.from_card({CARD_KEY: {**section, FADE_KEY: 4.0}}, ("a", "b"))
    assert (read.beyond_novelty, read.fade_from_novelty) == (5.0, 4.0)
    for refused in ({**section, FADE_KEY: 5.0}, {**section, FADE_KEY: 6.0}):
        with pytest.raises(ValueError, match="below"):
            UnidentifiedPrior.from_card({CARD_KEY: refused}, ("a", "b"))
    no_beyond = {k: v for k, v in section.items() if k != BEYOND_KEY}
    with pytest.raises(ValueError, match="below"):
        UnidentifiedPrior.from_card({CARD_KEY: {**no_beyond, FADE_KEY: 4.0}}, ("a", "b"))


def test_the_guess_beyond_the_own_cells_is_fitted_on_their_scores_and_served(
    tmp_path, cli, monkeypatch
):
    from bcclassify.data.datasets import scan_dataset, train_val_test_split
    from bcclassify.presentation.classify import guess_note
    from bcclassify.serving.classifier import load_model

    store, data = variants_store(tmp_path)
    alone = ["calibrate", "--model", "tiny-cnn", "--data", data, "--beyond-own-cells"]
    refused = cli(alone, store=store)
    assert refused.returncode == 2 and "--unidentified-prior" in refused.stderr
    base = ["calibrate", "--model", "tiny-cnn", "--data", data]
    fitted = cli([*base, "--method", "knn", "--train-limit", "0", "--quantile", "0.5"], store=store)
    assert fitted.returncode == 0, fitted.stderr
    result = cli([*base, "--unidentified-prior", "--beyond-own-cells"], store=store)
    assert result.returncode == 0, result.stderr
    section = json.loads(result.stdout)[CARD_KEY]

    # The score is the highest novelty score of the validation and test cells, served.
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    dataset = scan_dataset(data)
    split = train_val_test_split(dataset.labels, dataset.hashes, 42)
    held = [dataset.paths[i] for i in np.concatenate([split.val, split.test])]
    model = load_model("tiny-cnn", verify=False)
    model.acquisition = None  # the features' score alone, as the rule reads it
    pixels = np.stack([model.load(p) for p in held])
    _, scores = model.assess_pixels(pixels)
    # (float32 features from other batches: the untrained model's scores are ~1e-3, so abs)
    assert section[BEYOND_KEY] == pytest.approx(float(scores.max()), rel=1e-3, abs=1e-5)
    assert section[BEYOND_KEY] > np.median(scores) + 1e-5
    assert "validation and test splits'" in section["beyond_novelty_rule"]
    assert model.unidentified_prior.beyond_novelty == section[BEYOND_KEY]
    # The fade starts at the validation cells' highest, if the test split's lies higher.
    validation_highest = float(scores[: len(split.val)].max())
    if validation_highest < float(scores[len(split.val) :].max()) - 1e-5:
        assert section[FADE_KEY] == pytest.approx(validation_highest, rel=1e-3, abs=1e-5)
        assert section[FADE_KEY] < section[BEYOND_KEY]
    else:
        assert FADE_KEY not in section

    # Served with a lower score, as another lab's cells would reach: the unidentified cells
    # above it carry the guess (the prior's re-weighting of the model's own probabilities), the
    # others not. Set under the unidentified threshold (the validation median here), it guesses
    # for unidentified cells only.
    folder = store / "models" / "tiny-cnn"
    card = json.loads((folder / "card.json").read_text())
    lower = float(np.quantile(scores, 0.25))
    card[CARD_KEY] = {**card[CARD_KEY], BEYOND_KEY: lower}
    card[CARD_KEY].pop(FADE_KEY, None)  # the step alone first
    card.pop(COLOUR_CHECK_KEY, None)
    write_card(folder, card)
    plain = load_model("tiny-cnn", verify=False)
    plain.unidentified_prior = None  # the model's own probabilities
    before = plain.classify_pixels(pixels, [str(p) for p in held])
    served = load_model("tiny-cnn", verify=False).classify_pixels(pixels, [str(p) for p in held])
    weights = UnidentifiedPrior.from_card(card, CLASS_NAMES).weights
    beyond = np.array([p.novelty > lower and p.unidentified for p in served])
    assert 0 < beyond.sum() < (np.array([p.novelty for p in served]) > lower).sum()
    for own, after, guessed in zip(before, served, beyond):
        assert after.guessed == guessed and after.novelty == pytest.approx(own.novelty)
        # The Classify page says which the shown probabilities are.
        assert ("counts erythroblasts" in guess_note(after)) == guessed
        if not guessed:
            np.testing.assert_array_equal(after.probabilities, own.probabilities)
            continue
        assert after.flag == "unidentified"
        expected = own.probabilities * weights / (own.probabilities * weights).sum()
        np.testing.assert_allclose(after.probabilities, expected, rtol=1e-5, atol=1e-7)

    # Fading in between two scores: an unidentified cell between them gets the weights raised
    # to its share of the way up, one above the higher all of them, the rest none.
    higher = float(np.quantile(scores, 0.75))
    card[CARD_KEY] = {**card[CARD_KEY], FADE_KEY: lower, BEYOND_KEY: higher}
    write_card(folder, card)
    faded = load_model("tiny-cnn", verify=False).classify_pixels(pixels, [str(p) for p in held])
    shares = [
        min(1.0, (p.novelty - lower) / (higher - lower)) if p.unidentified else 0.0 for p in faded
    ]
    assert any(0 < s < 1 for s in shares) and any(s == 1 for s in shares)
    for own, after, share in zip(before, faded, shares):
        assert after.guessed == (share > 0)
        expected = own.probabilities * weights ** max(share, 0.0)
        np.testing.assert_allclose(
            after.probabilities, expected / expected.sum(), rtol=1e-5, atol=1e-7
        )


def test_mixing_in_the_second_opinion_is_a_weighted_geometric_mean_per_row():
    own = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    second = np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    mixed = mixed_in(own, second, np.array([0.0, 0.5, 0.25]))
    np.testing.assert_array_equal(mixed[0], own[0])  # share 0: exactly as served
    expected = np.sqrt(own[1] * second[1])
    np.testing.assert_allclose(mixed[1], expected / expected.sum(), rtol=1e-6)
    expected = own[2] ** 0.75 * second[2] ** 0.25
    np.testing.assert_allclose(mixed[2], expected / expected.sum(), rtol=1e-6)
    assert mixed[1].argmax() == 1  # the second opinion's class wins where it is surer
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0)


def test_the_second_opinions_share_is_read_from_the_card_and_bounded():
    section = {"prior": {"a": 1, "b": 1}, "training_mix": {"a": 1, "b": 1}}
    names = ("a", "b")
    assert UnidentifiedPrior.from_card({CARD_KEY: section}, names).second_opinion_share == 0.0
    read = UnidentifiedPrior.from_card({CARD_KEY: {**section, SHARE_KEY: 0.5}}, names)
    assert read.second_opinion_share == 0.5
    for refused in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match=SHARE_KEY):
            UnidentifiedPrior.from_card({CARD_KEY: {**section, SHARE_KEY: refused}}, names)


def test_a_guessed_cell_is_mixed_with_the_second_opinion_before_the_prior(
    tmp_path, tiny_store, monkeypatch
):
    import keras

    from bcclassify.models.registry import build
    from bcclassify.serving.classifier import export_model, load_model
    from bcclassify.serving.second_opinion import resize_batch

    folder, card, paths = _range_fitted_store(tmp_path, tiny_store, monkeypatch)
    store = folder.parent.parent
    # A second model apart from the served one: another CNN, its own random weights.
    keras.utils.set_random_seed(7)
    second_card = {"name": "tiny-second", "architecture": "cnn", "image_size": 32}
    second_card["class_names"] = list(CLASS_NAMES)
    second_model = build("cnn", 32, len(CLASS_NAMES), weights="none")
    export_model(second_model, store / "models" / "tiny-second", second_card)
    card["second_opinion"] = {"model": "tiny-second", "min_support": 1e-6}
    card.pop(COLOUR_CHECK_KEY, None)
    shares = {c: 1.0 for c in CLASS_NAMES}
    weights = np.linspace(0.5, 2.0, len(CLASS_NAMES))  # a prior that moves the mixture too
    card[CARD_KEY] = {"prior": dict(zip(CLASS_NAMES, weights)), "training_mix": shares}
    write_card(folder, card)
    plain_model = load_model("tiny-cnn", verify=False)
    pixels, names, plain = _served_with_another_labs(plain_model, paths)

    card[CARD_KEY][SHARE_KEY] = 0.5
    write_card(folder, card)
    model = load_model("tiny-cnn", verify=False)
    served = model.classify_pixels(pixels, names)
    second = load_model("tiny-second", verify=False).predict_pixels(resize_batch(pixels, 32))
    unweighted = plain_model.predict_pixels(pixels)
    moved = 0
    for n, (before, after) in enumerate(zip(plain, served)):
        assert after.guessed == before.guessed and after.flag == before.flag
        if not before.guessed:  # PBC's own look: untouched
            np.testing.assert_array_equal(after.probabilities, before.probabilities)
            continue
        mixed = mixed_in(unweighted[n : n + 1], second[n : n + 1], np.array([0.5]))[0]
        expected = mixed * weights / (mixed * weights).sum()
        np.testing.assert_allclose(after.probabilities, expected, rtol=1e-5, atol=1e-7)
        moved += not np.allclose(after.probabilities, before.probabilities, atol=1e-4)
    assert sum(p.guessed for p in served) >= len(paths) and moved > 0


def test_calibrate_sets_the_second_opinions_share_only_with_a_second_opinion(tmp_path, cli):
    store, data = variants_store(tmp_path)
    base = ["calibrate", "--model", "tiny-cnn", "--data", data]
    alone = cli([*base, "--second-opinion-share", "0.5"], store=store)
    assert alone.returncode == 2 and "--unidentified-prior" in alone.stderr
    prior = [*base, "--unidentified-prior", "--second-opinion-share"]
    refused = cli([*prior, "1.5"], store=store)
    assert refused.returncode == 2 and "[0, 1)" in refused.stderr
    none_named = cli([*prior, "0.5"], store=store)
    assert none_named.returncode == 2 and "no second opinion" in none_named.stderr
    folder = store / "models" / "tiny-cnn"
    card = json.loads((folder / "card.json").read_text())
    card["second_opinion"] = {"model": "tiny-cnn", "min_support": 0.1}
    write_card(folder, card)
    written = cli([*prior, "0.5"], store=store)
    assert written.returncode == 0, written.stderr
    section = json.loads(written.stdout)[CARD_KEY]
    assert section[SHARE_KEY] == 0.5 and "second opinion" in section["applies_to"]
    assert json.loads((folder / "card.json").read_text())[CARD_KEY] == section
