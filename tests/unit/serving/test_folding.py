"""Batch normalisation folded into convolutions at load (serving.folding): same function, fewer
layers; what cannot be folded stays, and what is written back out keeps the trained graph."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from helpers import REPO, SHARED

from bcclassify.serving.classifier import load_model, zero_initialisers
from bcclassify.serving.folding import fold_batch_norm, layer_weights


def _model_with_trained_statistics() -> keras.Model:
    """Every foldable pattern, plus a conv read twice and a named layer to keep."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="plain")(inputs)
    x = keras.layers.BatchNormalization(scale=False, name="plain_bn")(x)  # InceptionV3's kind
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="same", name="separable")(x)
    x = keras.layers.BatchNormalization(name="separable_bn")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="depthwise_bn")(x)
    shared = keras.layers.Conv2D(4, 1, name="shared")(x)
    y = keras.layers.BatchNormalization(name="shared_bn")(shared)  # its conv is also read below
    z = keras.layers.Add()([y, shared])
    z = keras.layers.Conv2D(4, 1, use_bias=False, name="kept")(z)
    z = keras.layers.BatchNormalization(name="kept_bn")(z)
    z = keras.layers.GlobalAveragePooling2D()(z)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(z)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:  # statistics a trained network would have, not the initial 0/1
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, w.shape)
                    if "variance" in w.path
                    else rng.normal(0, 1, w.shape)
                    for w in layer.weights
                ]
            )
    return model


def _rebuilt(config: dict, weights: dict[str, list[np.ndarray]]) -> keras.Model:
    model = keras.models.model_from_json(json.dumps(zero_initialisers(config)))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(weights.pop(layer.name))
    assert not weights, f"weights left over for {sorted(weights)}"
    return model


def test_folding_keeps_the_function_and_drops_the_foldable_batch_norms():
    model = _model_with_trained_statistics()
    config, arrays = json.loads(model.to_json()), model.get_weights()
    folded_config, weights = fold_batch_norm(config, arrays, keep=["kept"])
    names = {layer["name"] for layer in folded_config["config"]["layers"]}
    assert not names & {"plain_bn", "separable_bn", "depthwise_bn"}
    assert {"shared_bn", "kept_bn", "kept", "shared", "predictions"} <= names
    folded = _rebuilt(folded_config, weights)
    pixels = np.random.default_rng(1).uniform(0, 255, (5, 12, 12, 3)).astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    got = folded.predict(pixels, verbose=0)
    assert np.abs(expected - got).max() < 1e-5
    # The arguments are left as they were (the installed files' config and arrays).
    assert config == json.loads(model.to_json())
    assert all(np.array_equal(a, b) for a, b in zip(arrays, model.get_weights(), strict=True))


def test_unknown_layers_or_miscounted_weights_leave_the_model_unfolded():
    model = _model_with_trained_statistics()
    config, arrays = json.loads(model.to_json()), model.get_weights()
    assert fold_batch_norm(config, arrays[:-1]) is None  # the arrays do not fit the layers
    odd = json.loads(json.dumps(config))
    odd["config"]["layers"][1]["class_name"] = "LayerNobodyKnows"
    assert layer_weights(odd, arrays) is None
    assert fold_batch_norm(odd, arrays) is None


@pytest.mark.slow  # two hybrid builds: about 7 s on 2 cores
def test_served_model_is_folded_and_answers_as_the_trained_graph(tiny_store, fixture_images):
    served = load_model("tiny-hybrid")
    trained = load_model("tiny-hybrid", fold_batch_norm=False)
    kinds = [type(layer).__name__ for layer in served.model.layers]
    assert "BatchNormalization" not in kinds
    assert "BatchNormalization" in [type(layer).__name__ for layer in trained.model.layers]
    files = sorted(fixture_images.rglob("*.jpg"))[:4]
    pixels = np.stack([served.load(p) for p in files])
    assert np.abs(served.predict_pixels(pixels) - trained.predict_pixels(pixels)).max() < 1e-4


@pytest.mark.slow
def test_bundled_hybrid_folds_to_the_same_answers(monkeypatch):
    if not (REPO / "model_store" / "models" / "hybrid").is_dir():
        pytest.skip("the bundled hybrid is not installed")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(REPO / "model_store"))
    served = load_model("hybrid")
    trained = load_model("hybrid", fold_batch_norm=False)
    assert len(served.model.layers) == len(trained.model.layers) - 134
    originals = sorted((SHARED / "data" / "pbc-originals").rglob("*.jpg"))[::100]
    if not originals:
        pytest.skip("../shared/data/pbc-originals not present")
    pixels = np.stack([served.load(p) for p in originals])
    a, b = served.predict_pixels(pixels), trained.predict_pixels(pixels)
    assert np.abs(a - b).max() < 1e-4
    assert np.array_equal(a.argmax(axis=1), b.argmax(axis=1))
