"""Training runs end to end on the fixture images: records, resume after kill -9, cached mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, REPO

from bcclassify.data.augment import augment_batch
from bcclassify.storage.store import list_runs, read_csv, read_json
from bcclassify.training.feeds import apply_smote
from bcclassify.training.runs import TrainConfig, resume, train


def test_run_record_is_complete(tiny_store):
    run = tiny_store / "runs" / "fixture-cnn-32px"
    config = read_json(run / "config.json")
    assert config["arch"] == "cnn" and config["seed"] == 42 and config["epochs"] == 2
    assert len(config["data_manifest_sha256"]) == 64
    assert config["split_sizes"][0]["test"] == 8
    environment = read_json(run / "environment.json")
    assert environment["packages"]["tensorflow"] and environment["cpu_count"]
    history = read_csv(run / "history.csv")
    assert [int(float(r["epoch"])) for r in history] == [1, 2]
    assert set(history[0]) >= {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "seconds",
    }
    metrics = read_json(run / "metrics.json")
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["num_samples"] == 8
    assert set(metrics["per_class"]["platelet"]) == {"precision", "recall", "f1", "support"}
    predictions = read_csv(run / "predictions.csv")
    assert len(predictions) == 8 and list(predictions[0])[:3] == ["file", "true", "predicted"]
    assert read_json(run / "run.json")["status"] == "finished"
    listed = {r["run_id"]: r for r in list_runs()}["fixture-cnn-32px"]
    assert {
        "run_id",
        "arch",
        "image_size",
        "status",
        "test_accuracy",
        "macro_f1",
        "created",
    } <= set(listed)


def test_list_json_command(cli):
    runs = json.loads(cli(["list", "--json"], check=True).stdout)
    assert any(r["run_id"] == "fixture-cnn-32px" and r["status"] == "finished" for r in runs)


@pytest.mark.slow
def test_resume_after_kill_minus_nine(tmp_path, store_env):
    env = {**store_env, "BCCLASSIFY_STORE": str(tmp_path / "store")}
    run_id = "killed-run"
    args = [
        "--arch",
        "cnn",
        "--data",
        str(FIXTURE_IMAGES),
        "--image-size",
        "32",
        "--epochs",
        "20",
        "--batch-size",
        "4",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--run-id",
        run_id,
    ]
    run_dir = tmp_path / "store" / "runs" / run_id
    process = subprocess.Popen(
        [sys.executable, "-m", "bcclassify", "train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            pointer = read_json(run_dir / "checkpoints" / "latest.json")
            if pointer and pointer["epoch"] >= 1:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint written within 240 s")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    interrupted = read_json(run_dir / "run.json")
    assert interrupted["status"] == "running"  # killed: never got to write anything else
    # the time spent before the kill is on record, and the resumed run adds to it
    killed_after = interrupted["duration_s"]
    assert killed_after > 0
    done_before = len(read_csv(run_dir / "history.csv"))
    assert done_before >= 2
    config_before = read_json(run_dir / "config.json")
    result = subprocess.run(
        [sys.executable, "-m", "bcclassify", "train", "--resume", run_id],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    history = read_csv(run_dir / "history.csv")
    assert [int(float(r["epoch"])) for r in history] == list(range(1, 21))
    finished = read_json(run_dir / "run.json")
    assert finished["status"] == "finished" and finished["duration_s"] > killed_after
    assert read_json(run_dir / "metrics.json")["duration_s"] == finished["duration_s"]
    assert read_json(run_dir / "config.json")["split_sizes"] == config_before["split_sizes"]


@pytest.mark.slow
def test_cached_activation_training_on_the_hybrid(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    config = TrainConfig(
        arch="hybrid",
        data=str(FIXTURE_IMAGES),
        image_size=75,
        epochs=2,
        batch_size=8,
        freeze_until="auto",
        aug_copies=1,
        backbone_weights="none",
        cache_dir=str(tmp_path / "cache"),
        run_id="cached",
    )
    run_dir = train(config)
    record = read_json(run_dir / "run.json")
    assert record["status"] == "finished"
    assert record["boundaries"] == ["mixed5", "block13_sepconv1_act:input"]
    assert (run_dir / "model.keras").is_file()
    chunks = list((tmp_path / "cache" / "activations").rglob("chunk-*.npz"))
    assert len(chunks) == 2  # identity copy of every image + one augmented copy of train


def test_augmentation_is_seeded_bounded_and_changes_pixels():
    import tensorflow as tf

    images = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3)).astype(np.uint8)
    a = augment_batch(images, tf.random.Generator.from_seed(1)).numpy()
    b = augment_batch(images, tf.random.Generator.from_seed(1)).numpy()
    c = augment_batch(images, tf.random.Generator.from_seed(2)).numpy()
    assert a.shape == images.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 255
    assert np.abs(a - images).mean() > 1.0


def test_dihedral_part_keeps_a_uniform_image_uniform():
    import tensorflow as tf

    flat = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    out = augment_batch(flat, tf.random.Generator.from_seed(0)).numpy()
    assert out.std(axis=(1, 2)).max() < 1e-3  # geometry never invents structure


def test_smote_balances_classes_with_plausible_samples():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (40, 6)), rng.normal(5, 1, (10, 6))]).astype(np.float32)
    y = np.array([0] * 40 + [1] * 10)
    xs, ys = apply_smote(x, y, seed=0)
    assert np.bincount(ys).tolist() == [40, 40]
    synthetic = xs[len(x) :]
    assert np.all(synthetic.mean(axis=1) > 2.5)  # interpolated within the minority class


def test_supcon_loss_rewards_class_clusters():
    import tensorflow as tf

    from bcclassify.models.supcon import supervised_contrastive_loss

    labels = tf.constant([0, 0, 1, 1])
    clustered = tf.math.l2_normalize(
        tf.constant([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]]), axis=1
    )
    mixed = tf.gather(clustered, [0, 2, 1, 3])
    assert float(supervised_contrastive_loss(clustered, labels)) < float(
        supervised_contrastive_loss(mixed, labels)
    )


@pytest.mark.slow
def test_supcon_trains_contrastive_then_classifier(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    config = TrainConfig(
        arch="supcon",
        data=str(FIXTURE_IMAGES),
        image_size=32,
        epochs=1,
        head_epochs=1,
        lr=1e-4,
        head_lr=3e-3,
        batch_size=8,
        backbone_weights="none",
        cache_dir=str(tmp_path / "cache"),
        run_id="supcon",
    )
    run_dir = train(config)
    history = read_csv(run_dir / "history.csv")
    assert [row["stage"] for row in history] == ["contrastive", "supervised"]
    # each stage starts its own cosine cycle at its own peak rate
    assert [float(row["learning_rate"]) for row in history] == [1e-4, 3e-3]
    assert read_json(run_dir / "run.json")["status"] == "finished"


def test_training_a_finished_run_again_leaves_its_record_alone(tiny_store, tmp_path, monkeypatch):
    """A queue rerun (scripts/train_zoo.sh) on a machine that has a finished run's record but not
    its weights: nothing is retrained or re-timed, and continuing it says why it cannot."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs" / "fixture-cnn-32px", store / "runs" / "fixture-cnn-32px")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    run_dir = store / "runs" / "fixture-cnn-32px"
    (run_dir / "model.keras").unlink()
    before = {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file()}
    common = dict(arch="cnn", data=str(FIXTURE_IMAGES), image_size=32, epochs=1, batch_size=8,
                  augment=False, cache_dir=str(tmp_path / "cache"))  # fmt: skip

    assert train(TrainConfig(**common, run_id="fixture-cnn-32px")) == run_dir
    assert {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file()} == before
    with pytest.raises(FileNotFoundError, match="git keeps its record only"):
        train(TrainConfig(**common, init_from="fixture-cnn-32px", run_id="continued"))


@pytest.mark.slow
@pytest.mark.parametrize("image_size", [32, 40], ids=["same-size", "larger-input"])
def test_init_from_starts_from_another_runs_weights(tiny_store, tmp_path, monkeypatch, image_size):
    """The fixture run is 32 px; a run may continue it at another input size (progressive
    resizing), since no weight depends on the input size."""
    import shutil

    import keras

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs", store / "runs")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    config = TrainConfig(
        arch="cnn",
        data=str(FIXTURE_IMAGES),
        image_size=image_size,
        epochs=1,
        lr=0.0,
        batch_size=8,
        augment=False,
        init_from="fixture-cnn-32px",
        cache_dir=str(tmp_path / "cache"),
        run_id="continued",
    )
    run_dir = train(config)
    assert read_json(run_dir / "run.json")["init_from"] == "fixture-cnn-32px"
    assert read_json(run_dir / "config.json")["image_size"] == image_size
    source = keras.models.load_model(store / "runs" / "fixture-cnn-32px" / "model.keras")
    continued = keras.models.load_model(run_dir / "model.keras")
    trainable = [w.path for w in continued.trainable_weights]
    for a, b in zip(source.weights, continued.weights):
        if a.path in trainable:  # lr 0: trainable weights unchanged (BN statistics may move)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_freeze_bn_keeps_pretrained_statistics_and_spares_scratch_layers():
    import keras

    from bcclassify.models.registry import build
    from bcclassify.training.runs import freeze_pretrained_batch_norm

    def batch_norms(model):
        return [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]

    scratch = build("cnn", 32, weights="none")
    freeze_pretrained_batch_norm(scratch, {"cnn": "from scratch"})
    assert all(layer.trainable for layer in batch_norms(scratch))

    model = build("mobilenetv2", 32, weights="none")
    freeze_pretrained_batch_norm(model, {"mobilenetv2": "pretrained: mobilenet.weights.h5"})
    norms = batch_norms(model)
    assert norms and not any(layer.trainable for layer in norms)
    before = [np.array(layer.moving_mean) for layer in norms]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.uniform(0, 255, (4, 32, 32, 3)), np.arange(4))
    for layer, mean in zip(norms, before):
        np.testing.assert_array_equal(np.array(layer.moving_mean), mean)


@pytest.mark.slow
def test_centre_crop_run_is_recorded_and_served_with_the_crop(tmp_path, monkeypatch):
    from bcclassify.evaluation.scoring import promote
    from bcclassify.serving.classifier import load_model

    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    config = TrainConfig(
        arch="cnn",
        data=str(FIXTURE_IMAGES),
        image_size=40,
        center_crop=0.8,
        epochs=1,
        batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )
    run_dir = train(config)
    assert run_dir.name.endswith("-cnn-40px-crop80")
    assert read_json(run_dir / "config.json")["center_crop"] == 0.8
    listed = {r["run_id"]: r for r in list_runs()}[run_dir.name]
    assert listed["center_crop"] == 0.8
    from bcclassify.cli.main import markdown_tables

    assert f"| `{run_dir.name}` | cnn | 40 (centre 32) |" in markdown_tables([listed], [])
    promote(run_dir.name, "cropped")
    classifier = load_model("cropped")
    assert classifier.card["center_crop"] == 0.8 and classifier.image_size == 40
    assert classifier.model.get_layer("center_crop").output.shape[1] == 32
    results = classifier.classify([(p.name, p) for p in sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:3]])
    assert all(r.error is None and r.label in classifier.class_names for r in results)


@pytest.mark.slow
def test_supcon_trains_its_stages_on_a_frozen_stems_cached_activations(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    config = TrainConfig(
        arch="supcon",
        data=str(FIXTURE_IMAGES),
        image_size=32,
        epochs=1,
        head_epochs=1,
        batch_size=8,
        freeze_until="block_15_add",
        augment=True,
        aug_copies=1,
        backbone_weights="none",
        cache_dir=str(tmp_path / "cache"),
        run_id="frozen-supcon",
    )
    run_dir = train(config)
    history = read_csv(run_dir / "history.csv")
    assert [row["stage"] for row in history] == ["contrastive", "supervised"]
    record = read_json(run_dir / "run.json")
    assert record["status"] == "finished" and record["boundaries"] == ["block_15_add"]
    assert any((tmp_path / "cache" / "activations").glob("supcon-*/identity/chunk-*.npz"))


def test_supcon_xception_files_its_activations_with_xceptions(tmp_path):
    from bcclassify.data.datasets import scan_dataset
    from bcclassify.training.feeds import activation_cache

    dataset = scan_dataset(FIXTURE_IMAGES)
    caches = {
        arch: activation_cache(
            TrainConfig(arch=arch, data="x", center_crop=0.75, cache_dir=str(tmp_path)),
            dataset,
            213,
            ("block13_sepconv1_act:input",),
            {"xception": "pretrained: xception_imagenet_notop.weights.h5"},
        )
        for arch in ("xception", "supcon-xception", "hybrid")
    }
    assert caches["xception"] == caches["supcon-xception"] != caches["hybrid"]
    assert caches["xception"].name.startswith("xception-")


def test_keep_weights_best_keeps_improvements_and_last_keeps_every_epoch():
    from bcclassify.training.runs import keeps_epoch

    assert keeps_epoch("best", 0.9, 0.8) and not keeps_epoch("best", 0.8, 0.8)
    assert keeps_epoch("last", 0.5, 0.9)
    with pytest.raises(ValueError, match="keep_weights"):
        keeps_epoch("first", 0.9, 0.8)


@pytest.mark.slow
def test_keep_weights_last_is_recorded_and_keeps_the_final_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    config = TrainConfig(
        arch="cnn",
        data=str(FIXTURE_IMAGES),
        image_size=32,
        epochs=2,
        batch_size=8,
        augment_preset="lab",
        keep_weights="last",
        cache_dir=str(tmp_path / "cache"),
        run_id="keep-last",
    )
    run_dir = train(config)
    assert read_json(run_dir / "metrics.json")["best_epoch"] == 2
    saved = read_json(run_dir / "config.json")
    assert saved["keep_weights"] == "last" and saved["augment_preset"] == "lab"


def test_a_run_continued_from_another_records_the_parents_initialisation(tmp_path, monkeypatch):
    from bcclassify.storage.runs import RunRecord
    from bcclassify.storage.store import initialisation_summary
    from bcclassify.training.runs import inherited_initialisation

    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    parent = tmp_path / "store" / "runs" / "parent-run"
    parent.mkdir(parents=True)
    RunRecord(parent).update(
        initialisation={"xception": "pretrained: x.h5", "inceptionv3": "from scratch"}
    )
    built = {"xception": "from scratch (no weights here)", "inceptionv3": "from scratch"}

    # A device run rebuilt here loads no weights; it says where its weights began.
    inherited = inherited_initialisation({"started_from_run": "parent-run"}, built)
    assert inherited == {
        "xception": "pretrained: x.h5 (continued from run parent-run)",
        "inceptionv3": "from scratch (continued from run parent-run)",
    }
    assert initialisation_summary(inherited) == "partly pretrained"
    # An ordinary run records what its build loaded.
    assert inherited_initialisation({}, built) == built


@pytest.mark.slow
def test_group_norm_run_from_a_batch_norm_run_starts_fitted(tiny_store, tmp_path, monkeypatch):
    """``--norm group --init-from`` a batch-norm run: the parent's weights, then each group norm
    fitted to the batch norm it replaces (issue 21), recorded; continuing that run again takes
    its group-norm weights as they are."""
    import shutil

    import keras

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs", store / "runs")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    common = dict(arch="cnn", data=str(FIXTURE_IMAGES), image_size=32, epochs=1, lr=0.0,
                  batch_size=8, augment=False, norm="group", norm_fit_images=4,
                  cache_dir=str(tmp_path / "cache"))  # fmt: skip
    run_dir = train(TrainConfig(**common, init_from="fixture-cnn-32px", run_id="gn"))
    fit = read_json(run_dir / "run.json")["initialisation"]["group_norm_fit"]
    parent = keras.models.load_model(store / "runs" / "fixture-cnn-32px" / "model.keras")
    norms = [la.name for la in parent.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert fit["layers"] == len(norms) > 0
    train_size = read_json(run_dir / "config.json")["split_sizes"][0]["train"]
    assert 0 < fit["images"] <= min(train_size, 4 * parent.output.shape[-1])  # 4 a class at most
    model = keras.models.load_model(run_dir / "model.keras")
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in model.layers)
    # fitted, not the batch norm's scale and offset (lr 0: training changed nothing)
    gamma = model.get_layer(norms[0]).get_weights()[0]
    assert not np.allclose(gamma, parent.get_layer(norms[0]).get_weights()[0])
    # the parent's other weights came along
    np.testing.assert_array_equal(
        model.layers[-1].get_weights()[0], parent.layers[-1].get_weights()[0]
    )

    # interrupted after its checkpoint: resuming needs neither the fit nor the parent's batch
    # norms in a group-norm model, and keeps the record of how the run started
    cut = store / "runs" / "gn-cut"
    shutil.copytree(run_dir, cut)
    for name in ("metrics.json", "model.keras"):
        (cut / name).unlink()
    config = read_json(cut / "config.json")
    (cut / "config.json").write_text(json.dumps({**config, "run_id": "gn-cut", "epochs": 2}))
    run = read_json(cut / "run.json")
    (cut / "run.json").write_text(json.dumps({**run, "run_id": "gn-cut", "status": "running"}))
    assert resume("gn-cut") == cut
    assert read_json(cut / "run.json")["status"] == "finished"
    assert read_json(cut / "run.json")["initialisation"]["group_norm_fit"] == fit

    again = train(TrainConfig(**common, init_from="gn", run_id="gn-again"))
    assert "group_norm_fit" not in read_json(again / "run.json")["initialisation"]
    continued = keras.models.load_model(again / "model.keras")
    np.testing.assert_array_equal(continued.get_layer(norms[0]).get_weights()[0], gamma)


@pytest.mark.slow
def test_init_from_an_installed_model(tiny_store, tmp_path, monkeypatch):
    """``--init-from model:NAME``: the shipped weights are in the repository, so any machine can
    continue them (a run's weights stay where it trained); the record says where it started."""
    import shutil

    import keras

    from bcclassify.serving.classifier import load_model

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    config = TrainConfig(arch="cnn", data=str(FIXTURE_IMAGES), image_size=32, epochs=1, lr=0.0,
                         batch_size=8, augment=False, init_from="model:tiny-cnn",
                         cache_dir=str(tmp_path / "cache"), run_id="from-installed")  # fmt: skip
    run_dir = train(config)
    initialisation = read_json(run_dir / "run.json")["initialisation"]
    assert "then continued from installed model tiny-cnn (card.json sha256" in initialisation["cnn"]

    continued = keras.models.load_model(run_dir / "model.keras")
    installed = load_model("tiny-cnn", fold_batch_norm=False, compiled=False).model
    trainable = {w.path for w in continued.trainable_weights}
    for a, b in zip(installed.weights, continued.weights):
        if a.path in trainable:  # lr 0: as installed
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from bcclassify.serving.classifier import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        train(TrainConfig(**{**config.__dict__, "init_from": "model:absent", "run_id": "x"}))
