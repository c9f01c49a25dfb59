"""Every architecture builds, trains a step, and saves to a self-contained .keras file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from bcclassify import ARCHITECTURES, CLASS_NAMES
from bcclassify.models.registry import REGISTRY, build, get_architecture, split_model

SMALL = {"inceptionv3": 75, "xception": 71, "hybrid": 75, "supcon-xception": 71}


@pytest.mark.parametrize(
    "name",
    # Over 5 s each on 2 cores: slow (CI runs them); the hybrid is also built by the tiny store.
    [
        pytest.param(n, marks=pytest.mark.slow) if n in ("densenet201", "hybrid") else n
        for n in ARCHITECTURES
    ],
)
def test_every_architecture_builds_and_takes_a_training_step(name):
    import keras

    size = SMALL.get(name, 32)
    model = build(name, size, weights="none")
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, len(CLASS_NAMES))
    # Scaling lives inside the graph as real layers, never Lambda.
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)
    # Eager: tracing and compiling a 700-layer train step would cost minutes for one step.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, size, size, 3)).astype("float32")
    y = np.arange(4)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert any(changed)
    probs = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_hybrid_is_one_flat_graph_with_both_trunks_on_one_input():
    import keras

    model = build("hybrid", 75, weights="none")
    assert len(model.inputs) == 1
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat, no nesting
    names = {layer.name for layer in model.layers}
    assert {"mixed10", "block14_sepconv2_act", "hybrid_features"} <= names
    scales = {layer.name: layer for layer in model.layers if layer.name.endswith("_scale")}
    assert scales["inceptionv3_scale"].scale == pytest.approx(1 / 255)  # these weights want [0, 1]
    assert scales["xception_scale"].offset == pytest.approx(-1.0)


def test_pretrained_weights_load_when_available(tmp_path):
    from bcclassify.models.registry import resolve_weights_dir

    record = {}
    folder = resolve_weights_dir(None)
    if folder is None:
        pytest.skip("no backbone weights folder (../shared/weights) here")
    build("xception", 71, init_record=record)
    assert record["xception"].startswith("pretrained")
    record = {}
    build("xception", 71, weights=tmp_path, init_record=record)  # empty folder: from scratch
    assert "from scratch" in record["xception"]


def test_unknown_architecture_and_too_small_input_are_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        build("alexnet")
    with pytest.raises(ValueError, match="at least 75 px"):
        build("hybrid", 64, weights="none")


@pytest.mark.slow
def test_split_model_cuts_at_the_registry_boundaries():
    model = build("hybrid", 75, weights="none")
    stem, top = split_model(model, get_architecture("hybrid").finetune_boundaries)
    x = np.random.default_rng(1).uniform(0, 255, (2, 75, 75, 3)).astype("float32")
    np.testing.assert_allclose(
        top.predict(stem.predict(x, verbose=0), verbose=0),
        model.predict(x, verbose=0),
        rtol=1e-4,
        atol=1e-6,
    )
    shared = {id(layer) for layer in model.layers}
    assert all(id(layer) in shared for layer in top.layers if layer.weights)


@pytest.mark.slow
def test_keras_round_trip_is_identical_in_a_fresh_process(tmp_path):
    model = build("cnn", 32, weights="none")
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, keras; "
        "m = keras.models.load_model(sys.argv[1] + '/model.keras', safe_mode=True); "
        "np.save(sys.argv[1] + '/y.npy', m.predict(np.load(sys.argv[1] + '/x.npy'), verbose=0))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_registry_lists_every_reference_architecture():
    assert ARCHITECTURES == tuple(REGISTRY)
    assert set(ARCHITECTURES) == {
        "cnn",
        "unet",
        "resnet50",
        "densenet201",
        "vgg16",
        "mobilenetv2",
        "inceptionv3",
        "xception",
        "hybrid",
        "supcon",
        "supcon-xception",
    }


def test_the_registry_is_read_without_starting_tensorflow():
    code = (
        "import sys; from bcclassify import ARCHITECTURES; import bcclassify.models.registry; "
        "assert len(ARCHITECTURES) == 11; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_supplies_its_training_stages(name):
    from bcclassify.models.registry import Stage
    from bcclassify.training.runs import TrainConfig

    config = TrainConfig(arch=name, data="x", epochs=7, lr=2e-3, head_epochs=4, head_lr=5e-2)
    stages = get_architecture(name).stages(config)
    assert stages and all(isinstance(stage, Stage) for stage in stages)
    assert stages[-1].validated  # every run ends by fitting the classifier it saves
    if name.startswith("supcon"):
        assert [(s.name, s.epochs, s.lr, s.loss) for s in stages] == [
            ("contrastive", 7, 2e-3, "supcon"),
            ("classifier", 4, 5e-2, "crossentropy"),
        ]
        assert [s.history_label for s in stages] == ["contrastive", "supervised"]
        assert not stages[0].validated
    else:
        assert stages == (Stage("classifier", 7, 2e-3),)


def test_supcon_classifier_stage_takes_the_encoder_rate_without_head_lr():
    from bcclassify.training.runs import TrainConfig

    config = TrainConfig(arch="supcon", data="x", epochs=2, lr=1e-4, head_epochs=3)
    assert [s.lr for s in get_architecture("supcon").stages(config)] == [1e-4, 1e-4]


def test_centre_crop_model_sees_only_the_centre_of_its_input():
    cropping = build("cnn", 48, weights="none", center_crop=0.75)
    assert cropping.input_shape == (None, 48, 48, 3)  # serving feeds whole 48 px images
    plain = build("cnn", 36, weights="none")
    plain.set_weights(cropping.get_weights())
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (3, 48, 48, 3)).astype("float32")
    centre = x[:, 6:42, 6:42]  # (48 - 36) // 2 = 6 on each side
    np.testing.assert_allclose(
        np.asarray(cropping(x, training=False)),
        np.asarray(plain(centre, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    border_changed = x.copy()
    border_changed[:, :6] = 0.0
    border_changed[:, :, 42:] = 255.0
    np.testing.assert_allclose(
        np.asarray(cropping(border_changed, training=False)),
        np.asarray(cropping(x, training=False)),
        rtol=1e-6,
    )


def test_centre_crop_is_checked():
    with pytest.raises(ValueError, match="center_crop"):
        build("cnn", 48, weights="none", center_crop=1.5)
    with pytest.raises(ValueError, match=r"0.75 of 80 px"):
        build("xception", 80, weights="none", center_crop=0.75)  # sees 60 px < 71


def test_group_counts_divide_the_channels():
    from bcclassify.models.registry import group_count

    assert [group_count(c) for c in (16, 32, 96, 144, 1280, 7)] == [16, 32, 32, 24, 32, 7]


def test_group_norm_replaces_every_batch_norm_and_keeps_what_was_learnt(tmp_path):
    """``norm="group"``: per-image statistics, none carried from the training lab (issue 21)."""
    import keras

    from bcclassify.training.config import TrainConfig, new_run_id

    source = build("mobilenetv2", 32, weights="none")
    record: dict = {}
    keras.utils.set_random_seed(0)
    model = build("mobilenetv2", 32, weights="none", init_record=record, norm="group")
    batch_norms = [
        layer for layer in source.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    groups = {
        layer.name: layer
        for layer in model.layers
        if isinstance(layer, keras.layers.GroupNormalization)
    }
    assert batch_norms and len(groups) == len(batch_norms)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert record["normalisation"] == f"group norm in place of {len(batch_norms)} batch norms"
    # the running statistics are dropped: two arrays fewer per norm layer
    assert model.count_params() == source.count_params() - 2 * sum(
        int(layer.moving_mean.shape[0]) for layer in batch_norms
    )
    # the scale and offset are the batch norm's (the same seed built both)
    keras.utils.set_random_seed(0)
    again = build("mobilenetv2", 32, weights="none")
    for layer in batch_norms[:3]:
        gamma, beta = again.get_layer(layer.name).get_weights()[:2]
        np.testing.assert_array_equal(groups[layer.name].get_weights()[0], gamma)
        np.testing.assert_array_equal(groups[layer.name].get_weights()[1], beta)
    # an image is normalised by its own statistics: even in training, whatever the batch
    last = keras.Model(model.input, model.get_layer(batch_norms[-1].name).output)
    pixels = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.float32)
    alone = last(pixels[:1], training=True).numpy()
    np.testing.assert_allclose(last(pixels, training=True).numpy()[:1], alone, atol=1e-4)
    # (batch norm in training takes the batch's statistics: the same image comes out otherwise)
    before = keras.Model(source.input, source.get_layer(batch_norms[-1].name).output)
    shift = before(pixels, training=True).numpy()[:1] - before(pixels[:1], training=True).numpy()
    assert np.abs(shift).max() > 0.1
    restored = keras.models.model_from_json(model.to_json())
    assert sum(isinstance(x, keras.layers.GroupNormalization) for x in restored.layers) == len(
        groups
    )
    config = TrainConfig(arch="mobilenetv2", data="d", norm="group", center_crop=0.75)
    assert new_run_id(config, 171).endswith("-mobilenetv2-171px-crop75-gn")
    with pytest.raises(ValueError, match="norm must be one of"):
        build("cnn", 32, weights="none", norm="layer")
