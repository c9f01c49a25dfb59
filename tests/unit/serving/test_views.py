"""Test-time views: the eight symmetries of the square, averaged probabilities, promote --views."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES

from bcclassify.serving.classifier import (
    VIEW_TRANSFORMS,
    check_views,
    load_model,
    predict_with_views,
)
from bcclassify.storage.store import read_csv, read_json


def _asymmetric_batch() -> np.ndarray:
    return np.arange(2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3)


def test_the_eight_views_are_the_distinct_symmetries_of_the_square():
    batch = _asymmetric_batch()
    seen = {VIEW_TRANSFORMS[name](batch).tobytes() for name in VIEW_TRANSFORMS}
    assert len(VIEW_TRANSFORMS) == 8 and len(seen) == 8
    one = batch[0, ..., 0]
    assert np.array_equal(VIEW_TRANSFORMS["rot90"](batch)[0, ..., 0], np.rot90(one))
    assert np.array_equal(VIEW_TRANSFORMS["rot270"](batch)[0, ..., 0], np.rot90(one, 3))
    assert np.array_equal(VIEW_TRANSFORMS["flip_lr"](batch)[0, ..., 0], one[:, ::-1])
    for name, transform in VIEW_TRANSFORMS.items():
        assert transform(batch).shape == batch.shape, name


def test_predict_with_views_averages_each_images_views():
    batch = _asymmetric_batch()
    calls = []

    def forward(x):  # a "model" whose class-0 score is the top-left pixel: view dependent
        calls.append(len(x))
        corner = x[:, 0, 0, 0] / 1000.0
        return np.stack([corner, 1.0 - corner], axis=1)

    views = ("identity", "flip_lr", "flip_ud", "rot180")
    averaged = predict_with_views(forward, batch, views)
    corners = [batch[:, r, c, 0] / 1000.0 for r, c in ((0, 0), (0, 4), (4, 0), (4, 4))]
    assert calls == [8]  # one forward call over every view of every image
    np.testing.assert_allclose(averaged[:, 0], np.mean(corners, axis=0))
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0)
    single = predict_with_views(forward, batch, ("identity",))
    np.testing.assert_allclose(single[:, 0], corners[0])


@pytest.mark.parametrize(
    "views, message",
    [(["identity", "mirror"], "unknown test-time view(s) mirror"), (["flip_lr"] * 2, "repeat")],
)
def test_bad_views_are_refused_with_the_accepted_names(views, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        check_views(views)
    if "unknown" in message:
        assert "flip_lr" in str(caught.value)


def test_installed_model_averages_the_views_given(tiny_store):
    classifier = load_model("tiny-cnn")
    pixels = classifier.load(sorted(FIXTURE_IMAGES.rglob("*.jpg"))[0])[None]
    assert classifier.test_time_views == ("identity",)
    views = ("identity", "rot90")
    expected = (
        classifier.predict_pixels(pixels) + classifier.predict_pixels(np.rot90(pixels, axes=(1, 2)))
    ) / 2
    np.testing.assert_allclose(classifier.predict_pixels(pixels, views=views), expected, atol=1e-6)


def test_promote_with_views_scores_the_served_model_and_evaluate_reproduces_it(
    tiny_store, cli, tmp_path
):
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs", store / "runs")  # promote needs the run only
    views = "identity,flip_lr,flip_ud,rot180"
    cli(["promote", "fixture-cnn-32px", "--name", "cnn-tta", "--views", views], store, True)
    card = read_json(store / "models" / "cnn-tta" / "card.json")
    recorded = read_json(store / "runs" / "fixture-cnn-32px" / "metrics.json")
    assert card["test_time_views"] == views.split(",")
    assert card["test_metrics"]["test_time_views"] == views.split(",")
    assert card["test_metrics"]["by_confidence"][0]["threshold"] == pytest.approx(0.6)
    rows = read_csv(store / "models" / "cnn-tta" / "test_predictions.csv")
    assert len(rows) == card["test_metrics"]["num_samples"]
    correct = sum(r["true"] == r["predicted"] for r in rows)
    assert correct / len(rows) == pytest.approx(card["test_metrics"]["accuracy"])
    assert "test_predictions.csv" in card["files_sha256"]
    assert card["single_view_test_metrics"]["accuracy"] == pytest.approx(recorded["accuracy"])
    served = json.loads(
        cli(
            ["evaluate", "--model", "cnn-tta", "--data", str(FIXTURE_IMAGES), "--json"], store, True
        ).stdout
    )
    assert served["scope"] == "the run's test split"
    assert served["test_time_views"] == views.split(",")
    assert served["accuracy"] == pytest.approx(card["test_metrics"]["accuracy"])
    assert served["macro_f1"] == pytest.approx(card["test_metrics"]["macro_f1"])
    refused = cli(
        ["promote", "fixture-cnn-32px", "--name", "x", "--views", "identity,sideways"], store
    )
    assert refused.returncode == 2 and "sideways" in refused.stderr
