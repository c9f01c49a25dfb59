"""WiSE-FT weight interpolation of a fine-tuned run with its start, recorded as a run (issue 21)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES

from bcclassify.storage.store import read_csv, read_json
from bcclassify.training.interpolate import interpolate_run, interpolated_weights
from bcclassify.training.runs import TrainConfig, train


def test_interpolated_weights_mix_floats_and_keep_the_rest():
    start = [np.zeros((2, 3), np.float32), np.full(4, 2.0, np.float16), np.array([3], np.int64)]
    tuned = [np.ones((2, 3), np.float32), np.full(4, 4.0, np.float16), np.array([7], np.int64)]
    mixed = interpolated_weights(start, tuned, 0.25)
    np.testing.assert_allclose(mixed[0], 0.25)
    assert mixed[0].dtype == np.float32 and mixed[1].dtype == np.float16
    np.testing.assert_allclose(mixed[1], 2.5)
    assert mixed[2].tolist() == [7]  # a counter is not averaged
    for alpha, end in ((0.0, start), (1.0, tuned)):
        for got, want in zip(interpolated_weights(start, tuned, alpha)[:2], end[:2]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "start, tuned, alpha, message",
    [
        ([np.zeros(2)], [np.zeros(2)], 1.5, "alpha must lie in"),
        ([np.zeros(2)], [np.zeros(2), np.zeros(2)], 0.5, "not the same network"),
        ([np.zeros(2)], [np.zeros(3)], 0.5, "array 0: shape"),
    ],
)
def test_interpolated_weights_refuse_what_cannot_be_mixed(start, tuned, alpha, message):
    with pytest.raises(ValueError, match=message):
        interpolated_weights(start, tuned, alpha)


def test_interpolate_refuses_a_run_that_started_from_nothing(cli):
    result = cli(["interpolate", "fixture-cnn-32px", "--alpha", "0.5"])
    assert result.returncode != 0 and "started from no other weights" in result.stderr
    result = cli(["interpolate", "fixture-cnn-32px", "--alpha", "2"])
    assert result.returncode == 2 and "--alpha must lie between 0 and 1" in result.stderr


@pytest.mark.slow
def test_interpolated_run_holds_the_mixture_and_is_scored(tiny_store, tmp_path, monkeypatch):
    import keras

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs", store / "runs")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    config = TrainConfig(arch="cnn", data=str(FIXTURE_IMAGES), image_size=32, epochs=1, lr=3e-2,
                         batch_size=8, augment=False, init_from="fixture-cnn-32px",
                         cache_dir=str(tmp_path / "cache"), run_id="tuned")  # fmt: skip
    tuned_dir = train(config)

    run_dir = interpolate_run("tuned", 0.25)
    assert run_dir.name == "tuned-wise25"
    run = read_json(run_dir / "run.json")
    assert run["status"] == "finished" and run["interpolated_from"] == "tuned"
    recorded = read_json(run_dir / "config.json")
    assert recorded["interpolation"]["alpha"] == 0.25
    assert recorded["interpolation"]["start"] == "fixture-cnn-32px"
    assert recorded["interpolation"]["val_accuracy"] is None  # the fixture has no validation part
    assert read_csv(run_dir / "history.csv") == read_csv(tuned_dir / "history.csv")
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["best_val_accuracy"] is None
    assert len(read_csv(run_dir / "predictions.csv")) == metrics["split_sizes"]["test"]

    start = keras.models.load_model(store / "runs" / "fixture-cnn-32px" / "model.keras")
    tuned = keras.models.load_model(tuned_dir / "model.keras")
    mixed = keras.models.load_model(run_dir / "model.keras")
    moved = 0
    for a, b, m in zip(start.get_weights(), tuned.get_weights(), mixed.get_weights()):
        np.testing.assert_allclose(m, 0.75 * a + 0.25 * b, rtol=1e-5, atol=1e-6)
        moved += not np.allclose(a, b)
    assert moved  # lr 3e-2: the tuned end differs, so the check above tests the mixture

    with pytest.raises(FileExistsError):
        interpolate_run("tuned", 0.25)

    # A run that records no --init-from (one imported from a GPU) is mixed with a named start.
    named = interpolate_run("fixture-cnn-32px", 0.5, start="tuned")
    assert read_json(named / "config.json")["interpolation"]["start"] == "tuned"
    mixed = keras.models.load_model(named / "model.keras")
    for a, b, m in zip(tuned.get_weights(), start.get_weights(), mixed.get_weights()):
        np.testing.assert_allclose(m, 0.5 * a + 0.5 * b, rtol=1e-5, atol=1e-6)
