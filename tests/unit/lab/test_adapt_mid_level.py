"""`adapt` on a hybrid: the mid-level blocks' read-out (issue 21) is installed, served and
explained exactly as it was fitted, and the novelty detector keeps reading the head's features."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, assert_fine_maps_equal_plain

from bcclassify.access.roles import Identity, Role
from bcclassify.lab.adapt import AdaptConfig, AdaptError, adapt
from bcclassify.lab.mid_level import MID_LOGITS_LAYER, feature_forward_with_mid
from bcclassify.models.registry import get_architecture
from bcclassify.serving.classifier import VIEW_TRANSFORMS, load_model

ADMIN = Identity("lab.admin", Role.ADMIN)
LAB_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
CELLS = [sorted((FIXTURE_IMAGES / c).glob("*.jpg"))[0] for c in LAB_CLASSES]


@pytest.fixture(scope="module")
def adapted_store(tiny_store, tmp_path_factory):
    """A store with a copy of the tiny hybrid and its adaptation ``hybrid-lab`` (1 cell a class)."""
    root = tmp_path_factory.mktemp("mid-store")
    shutil.copytree(tiny_store / "models" / "tiny-hybrid", root / "models" / "tiny-hybrid")
    lab = root.parent / f"{root.name}-lab"
    for name in LAB_CLASSES:
        shutil.copytree(FIXTURE_IMAGES / name, lab / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BCCLASSIFY_STORE", str(root))
        config = AdaptConfig(
            source="tiny-hybrid",
            cells=str(lab),
            name="hybrid-lab",
            per_class=1,
            augmented_views=1,
            evaluate=True,
        )
        done = adapt(config, identity=ADMIN)
        yield root, done


def test_the_installed_model_serves_the_fitted_head_and_read_out(adapted_store, monkeypatch):
    root, done = adapted_store
    monkeypatch.setenv("BCCLASSIFY_STORE", str(root))
    blocks = get_architecture("hybrid").adapt_layers
    section = done.card["adaptation"]
    assert section["mid_layers"] == list(blocks) and section["mid_weight"] == 5.0
    assert len(section["mid_scales"]) == len(blocks) and min(section["mid_scales"]) > 0
    assert done.figures["after"]["accuracy"] is not None

    adapted = load_model("hybrid-lab")  # as served: batch normalisation folded
    source = load_model("tiny-hybrid", fold_batch_norm=False)
    kernel = adapted.model.get_layer(MID_LOGITS_LAYER).get_weights()[0]
    w_head, b = adapted.model.get_layer("predictions").get_weights()
    assert np.abs(kernel).max() > 0  # the fit moved the read-out from its zero start
    weights = np.concatenate([w_head, kernel]).astype(np.float64)

    # The probabilities the fit's arithmetic gives (source features, fitted weights, the card's
    # views and temperature) are the ones the installed model serves.
    pixels = np.stack([adapted.load(p) for p in CELLS]).astype(np.float32)
    forward = feature_forward_with_mid(source.model, blocks)
    per_view = []
    for view in adapted.test_time_views:
        features = np.asarray(forward(VIEW_TRANSFORMS[view](pixels))[0], dtype=np.float64)
        logits = features @ weights + b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        per_view.append(e / e.sum(axis=1, keepdims=True))
    expected = np.mean(per_view, axis=0)
    tempered = np.exp(np.log(expected) / adapted.temperature)
    tempered /= tempered.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(adapted.predict_pixels(pixels), tempered, atol=2e-4)

    # The novelty detector's space is still the head's pooled features, as in the source.
    head_dim = source.model.get_layer("predictions").input.shape[-1]
    assert adapted.feature_forward()(pixels)[0].shape == (len(CELLS), head_dim)


def test_a_model_adapted_with_blocks_is_not_adapted_again_without_them(
    adapted_store, monkeypatch, tmp_path
):
    root, _ = adapted_store
    monkeypatch.setenv("BCCLASSIFY_STORE", str(root))
    config = AdaptConfig(
        source="hybrid-lab", cells=str(FIXTURE_IMAGES), name="again", mid_weight=0.0
    )
    with pytest.raises(AdaptError, match="adapted with mid-level blocks"):
        adapt(config, identity=ADMIN)
    assert not (root / "models" / "again").exists()


@pytest.mark.slow
def test_grad_cam_of_the_adapted_model_is_exact_through_the_read_out(adapted_store, monkeypatch):
    """Some blocks lie above the explained maps (mixed8 above mixed7): the fast view must carry
    the read-out's gradient too, and equal plain tf-keras-vis on the whole adapted model."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    from bcclassify.explain import maps as explain

    root, _ = adapted_store
    monkeypatch.setenv("BCCLASSIFY_STORE", str(root))
    monkeypatch.setattr(explain, "normalize_map", lambda heatmap: heatmap.astype(np.float32))
    adapted = load_model("hybrid-lab")
    # One cell a class moves the read-out little; enlarged, its share of the gradient is plain.
    read_out = adapted.model.get_layer(MID_LOGITS_LAYER)
    read_out.set_weights([read_out.get_weights()[0] * 100])
    layers = ["mixed7", "block13_sepconv2_act"]
    pixels = adapted.load(CELLS[0])
    explainer = explain.Explainer(adapted, layers)
    plain = Gradcam(adapted.model, model_modifier=ReplaceToLinear(), clone=True)
    targets = range(len(adapted.class_names))  # some are empty maps: try them all
    assert_fine_maps_equal_plain(explainer, plain, pixels, layers, "gradcam", targets)


@pytest.mark.slow
def test_the_compiled_graph_of_the_adapted_model_answers_as_keras(adapted_store, monkeypatch):
    """The served path without TensorFlow (ONNX) carries the read-out too; its features are
    still the head's, for the novelty detector."""
    from bcclassify.serving.compiled import compile_classifier

    root, _ = adapted_store
    monkeypatch.setenv("BCCLASSIFY_STORE", str(root))
    keras_served = load_model("hybrid-lab")
    pixels = np.stack([keras_served.load(p) for p in CELLS]).astype(np.float32)
    expected = keras_served.predict_pixels(pixels)
    compile_classifier(keras_served)  # refuses to write a graph that disagrees with Keras
    served = load_model("hybrid-lab")
    assert served.compiled is not None
    np.testing.assert_allclose(served.predict_pixels(pixels), expected, atol=1e-5)
    features, _ = served.feature_forward()(pixels)
    keras_features, _ = keras_served.feature_forward()(pixels)
    np.testing.assert_allclose(features, np.asarray(keras_features), atol=1e-4)
