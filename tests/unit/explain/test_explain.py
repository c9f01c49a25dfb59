"""Saliency maps through tf-keras-vis: shapes, per-trunk maps, class dependence, the figure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, REPO, assert_fine_maps_equal_plain
from PIL import Image

from bcclassify.data.imaging import load_image
from bcclassify.explain.maps import METHODS, Explainer, overlay
from bcclassify.serving.classifier import load_model
from bcclassify.storage.cards import ModelCard

CELL = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[3]


@pytest.fixture(scope="module")
def hybrid(tiny_store):
    return load_model("tiny-hybrid")


@pytest.fixture(scope="module")
def cnn(tiny_store):
    return load_model("tiny-cnn")


@pytest.mark.slow
def test_hybrid_gives_one_map_per_trunk_and_a_fused_map(hybrid):
    original = load_image(CELL)
    explanation = Explainer(hybrid).explain_pixels(
        hybrid.load(CELL), "gradcam", output_size=original.shape[:2]
    )
    assert list(explanation.maps) == ["mixed10", "block14_sepconv2_act", "fused"]
    for heatmap in explanation.maps.values():
        assert heatmap.shape == original.shape[:2]
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0 + 1e-6
    assert explanation.target_class == hybrid.class_names[explanation.target_index]


@pytest.mark.slow
def test_explaining_never_changes_the_serving_model(hybrid):
    pixels = hybrid.load(CELL)
    before = hybrid.predict_pixels(pixels[None])
    assert hybrid.model.layers[-1].activation.__name__ == "softmax"
    Explainer(hybrid).explain_pixels(pixels, "gradcam")
    assert hybrid.model.layers[-1].activation.__name__ == "softmax"
    np.testing.assert_allclose(hybrid.predict_pixels(pixels[None]), before, rtol=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_maps_differ_between_target_classes(cnn, method):
    explainer = Explainer(cnn)
    pixels = cnn.load(CELL)
    maps = [explainer.explain_pixels(pixels, method, target=t).fused for t in ("ig", "platelet")]
    assert maps[0].shape == (cnn.image_size, cnn.image_size)
    assert np.abs(maps[0] - maps[1]).max() > 1e-3


def test_given_probabilities_pick_the_target_and_leave_the_maps_alone(cnn):
    explainer = Explainer(cnn)
    pixels = cnn.load(CELL)
    computed = explainer.explain_pixels(pixels)
    given = np.full(len(cnn.class_names), 0.02)
    given[cnn.class_names.index("monocyte")] = 0.86  # as if averaged views had chosen monocyte
    reused = explainer.explain_pixels(pixels, probabilities=given)
    assert reused.target_class == "monocyte" and reused.probability == pytest.approx(0.86)
    same_target = explainer.explain_pixels(
        pixels, target=computed.target_index, probabilities=given
    )
    np.testing.assert_allclose(same_target.fused, computed.fused, atol=1e-6)


def test_unknown_target_is_refused(cnn):
    with pytest.raises(ValueError, match="unknown class"):
        Explainer(cnn).explain_pixels(cnn.load(CELL), target="blast")


def test_overlay_blends_in_image_coordinates():
    image = np.full((50, 70, 3), 200, dtype=np.uint8)
    heatmap = np.zeros((5, 7), dtype=np.float32)
    heatmap[0, 0] = 1.0
    out = overlay(image, heatmap, opacity=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[-1, -1])


@pytest.mark.slow
def test_explain_command_writes_a_labelled_figure(store_env, tmp_path):
    out = tmp_path / "cam.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bcclassify",
            "explain",
            str(CELL),
            "--target",
            "monocyte",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=store_env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["class"] == "monocyte" and summary["maps"][-1] == "fused"
    with Image.open(out) as figure:
        assert figure.width == 4 * 256  # input + two trunk maps + fused


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_fast_explain_view_gives_the_same_maps_as_tf_keras_vis_on_the_full_model(hybrid, method):
    pixels = hybrid.load(CELL)
    fast = Explainer(hybrid)
    reference = Explainer(hybrid)
    reference.uses_joint_view = lambda _method: False  # plain tf-keras-vis, one layer at a time
    a = fast.explain_pixels(pixels, method, target="neutrophil")
    b = reference.explain_pixels(pixels, method, target="neutrophil")
    assert fast.joint_channels == [2048, 2048]  # the fast path was taken
    for layer in b.maps:
        np.testing.assert_allclose(a.maps[layer], b.maps[layer], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_fast_hybrid_maps_equal_plain_tf_keras_vis(hybrid, method):
    """The one-pass explain view must give exactly what tf-keras-vis gives layer by layer."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    pixels = hybrid.load(CELL)
    batch = np.asarray(pixels, dtype=np.float32)[None]
    explainer = Explainer(hybrid)
    cls = Gradcam if method == "gradcam" else GradcamPlusPlus
    plain = cls(hybrid.model, model_modifier=ReplaceToLinear(), clone=True)
    compared = {"mixed10": 0, "block14_sepconv2_act": 0}
    # The tiny hybrid is untrained: for some classes a trunk's map is empty (all weights
    # negative), so compare several targets and require real maps among them.
    for target in range(len(hybrid.class_names)):
        fast = explainer.explain_pixels(pixels, method, target=target)
        for layer in compared:
            cam = plain(
                CategoricalScore([target]),
                batch,
                penultimate_layer=layer,
                seek_penultimate_conv_layer=False,
            )[0]
            np.testing.assert_allclose(fast.maps[layer], cam, atol=2e-3)
            compared[layer] += bool(cam.max() > 0.5)
    assert all(compared.values()), compared


def test_centre_cropping_model_maps_cover_only_the_centre(tmp_path):
    """Maps of a centre-cropping model sit on the square it saw, zero around it."""
    from bcclassify.models.registry import build
    from bcclassify.serving.classifier import ClassifierModel

    model = build("cnn", 64, weights="none", center_crop=0.5)
    classifier = ClassifierModel(
        "crop", tmp_path, ModelCard.from_json({"image_size": 64, "architecture": "cnn"}), model
    )
    pixels = np.asarray(Image.open(CELL).convert("RGB").resize((64, 64)))
    for method in ("gradcam", "scorecam"):
        explanation = Explainer(classifier).explain_pixels(pixels, method)
        for heatmap in explanation.maps.values():
            assert heatmap.shape == (64, 64)
            inside, outside = heatmap[16:48, 16:48], heatmap.copy()
            outside[16:48, 16:48] = 0.0
            assert np.all(outside == 0.0)
            assert inside.max() > 0.5  # the normalised map peaks inside the seen square


@pytest.mark.slow
def test_fast_view_handles_grids_that_are_not_multiples_of_each_other(tiny_store):
    """At 139 px (like the default's 160) InceptionV3 gives 3x3 maps and Xception 5x5."""
    from bcclassify import CLASS_NAMES
    from bcclassify.models.registry import build
    from bcclassify.serving.classifier import ClassifierModel

    model = build("hybrid", 139, len(CLASS_NAMES), weights="none")
    card = {
        "architecture": "hybrid",
        "image_size": 139,
        "explain_layers": ["mixed10", "block14_sepconv2_act"],
    }
    classifier = ClassifierModel("grid-3-5", REPO, ModelCard.from_json(card), model)
    pixels = classifier.load(CELL)
    fast = Explainer(classifier)
    reference = Explainer(classifier)
    reference.uses_joint_view = lambda _method: False
    a = fast.explain_pixels(pixels, "gradcam", target="ig")
    b = reference.explain_pixels(pixels, "gradcam", target="ig")
    assert fast.joint_channels == [2048, 2048]  # the joint view (15x15 grid) was used
    for layer in b.maps:
        np.testing.assert_allclose(a.maps[layer], b.maps[layer], atol=1e-4)


FINE = ["mixed7", "block13_sepconv2_act"]  # 5x5 and 7x7 at the tiny hybrid's 107 px


def test_cut_reads_xception_residual_above_the_finer_layers(hybrid):
    """Above block13_sepconv2_act, block 13 adds its input back: the cut must carry it."""
    from bcclassify.explain.maps import cut_tensors

    model = hybrid.model
    head = model.get_layer("predictions").input
    coarse = cut_tensors(model, ["mixed10", "block14_sepconv2_act"], head)
    fine = cut_tensors(model, FINE, head)
    assert len(coarse) == 2  # the maps themselves feed the pooled head
    assert len(fine) == 3 and [tuple(t.shape[1:3]) for t in fine[:2]] == [(5, 5), (7, 7)]
    assert cut_tensors(model, ["mixed7", "mixed10"], head) is None  # one below the other: no split


@pytest.mark.parametrize(
    "method",
    # About 20 s each on 2 cores: the default's method always runs, the others with -m slow.
    [
        pytest.param("gradcam", marks=pytest.mark.slow),
        pytest.param("gradcam++", marks=pytest.mark.slow),
        pytest.param("layercam", marks=pytest.mark.slow),
    ],
)
def test_fine_layer_maps_equal_plain_tf_keras_vis(hybrid, method, monkeypatch):
    """Layers inside the trunks (not the last maps) stay on the fast path, and exact.

    The untrained Xception's block-13 maps are tiny (about 1e-10), which tf-keras-vis's
    normalisation flattens to zero, so the maps are compared before normalisation.
    """
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    from bcclassify.explain import maps as explain

    monkeypatch.setattr(explain, "normalize_map", lambda heatmap: heatmap.astype(np.float32))
    pixels = hybrid.load(CELL)
    explainer = Explainer(hybrid, FINE)
    cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}[method]
    plain = cls(hybrid.model, model_modifier=ReplaceToLinear(), clone=True)
    assert_fine_maps_equal_plain(explainer, plain, pixels, FINE, method, range(3))


@pytest.mark.slow
def test_card_names_the_default_method(hybrid):
    """explain_method in the card is what an explanation without a method uses."""
    from bcclassify.serving.classifier import ClassifierModel

    card = hybrid.card.updated(explain_method="layercam", explain_layers=FINE)
    classifier = ClassifierModel("layercam-card", hybrid.folder, card, hybrid.model)
    explainer = Explainer(classifier)
    assert explainer.default_method == "layercam" and explainer.layers == FINE
    explanation = explainer.explain_pixels(hybrid.load(CELL), target=0)
    assert explanation.method == "layercam"
    odd = card.updated(explain_method="x")
    unknown = ClassifierModel("odd", hybrid.folder, odd, hybrid.model)
    assert Explainer(unknown).default_method == "gradcam"


def test_overlay_leaves_the_unseen_border_uncoloured_and_outlines_the_square():
    from bcclassify.explain.maps import colour_bar, seen_square

    image = np.full((100, 100, 3), 120, dtype=np.uint8)
    heatmap = np.zeros((100, 100), dtype=np.float32)  # zero everywhere: cold blue if painted
    out = overlay(image, heatmap, opacity=0.5, seen_fraction=0.6)
    top, left, bottom, right = seen_square((100, 100), 0.6)
    assert (top, left, bottom, right) == (20, 20, 80, 80)
    corner = out[5, 5].astype(int)
    assert corner[0] == corner[1] == corner[2] > 120  # faded grey, no hue
    inside = out[50, 50].astype(int)
    assert inside[2] > inside[0]  # the map's own colour (blue at zero) inside the square
    assert out[19, 50].min() >= 240  # the outline just outside the square
    bar = colour_bar(64, 4)
    assert bar.shape == (4, 64, 3) and bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]


def test_pooled_heads_and_map_titles_come_from_the_registry():
    from bcclassify.explain.maps import POOLED_HEAD_ARCHITECTURES, map_title
    from bcclassify.models.registry import REGISTRY

    assert POOLED_HEAD_ARCHITECTURES == set(REGISTRY) - {"unet", "supcon", "supcon-xception"}
    assert map_title("mixed7") == "InceptionV3 (mixed7)"
    assert map_title("block14_sepconv2_act") == "Xception (block14_sepconv2_act)"
    assert map_title("fused") == "Fused" and map_title("out_relu") == "out_relu"


@pytest.mark.slow
def test_eager_maps_until_traced_equal_the_traced_maps(hybrid):
    """The app's first maps run the explain view eagerly; its trace must change nothing."""
    pixels = hybrid.load(CELL)
    explainer = Explainer(hybrid, eager_until_traced=True)
    assert not explainer.switch.traced
    eager = explainer.explain_pixels(pixels, "layercam", target="neutrophil")
    assert not explainer.switch.traced  # explaining alone never traces
    explainer.trace(pixels)
    assert explainer.switch.traced
    explainer.trace(pixels)  # a second call has nothing to do
    traced = explainer.explain_pixels(pixels, "layercam", target="neutrophil")
    assert list(eager.maps) == list(traced.maps) == ["mixed10", "block14_sepconv2_act", "fused"]
    for layer in eager.maps:
        np.testing.assert_allclose(eager.maps[layer], traced.maps[layer], atol=1e-5)
    assert Explainer(hybrid).switch.traced  # the library's default: traced from the start
