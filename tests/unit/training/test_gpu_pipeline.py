"""scripts/gpu: the lab preset's keras.ops port, the weight encoding, and pack -> train -> import.

The GPU run itself (Keras on JAX) is not reproduced here; the same script runs under TensorFlow,
which is what these tests use. scripts/gpu/README.md gives the JAX checks.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, REPO

tf = pytest.importorskip("tensorflow")

GPU_SCRIPTS = REPO / "scripts" / "gpu"
sys.path.insert(0, str(GPU_SCRIPTS))

import ops_parity  # noqa: E402
import train_lab  # noqa: E402

from bcclassify.data import augment_ops as lab_ops  # noqa: E402
from bcclassify.data.augment import PRESETS  # noqa: E402
from bcclassify.storage.cards import write_card  # noqa: E402
from bcclassify.storage.runs import RunRecord  # noqa: E402
from bcclassify.training.runs import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    return ops_parity.example_images().astype(np.float32)  # 8 cells, 213 px


def test_port_uses_the_library_lab_preset():
    assert lab_ops.LabConfig().to_dict() == dataclasses.asdict(PRESETS["lab"])


def test_port_takes_the_colour_out_of_the_grey_share_as_the_original_does(cells):
    import keras

    config = lab_ops.LabConfig.from_dict(dataclasses.asdict(PRESETS["defocus-grey"]))
    assert config.grey == 0.3
    batch = np.concatenate([cells] * 8)  # 64 images
    params = lab_ops.draw_params(batch, config, keras.random.SeedGenerator(3))
    saturation = np.asarray(params["saturation"]).ravel()
    assert 0.1 < (saturation == 0).mean() < 0.5
    assert (saturation[saturation > 0] >= 1 - config.saturation).all()
    # the colour op turns a saturation factor of 0 into equal channels
    zero = np.zeros((len(cells), 1, 1), np.float32)
    out = np.asarray(lab_ops.colour(cells, zero, zero, np.ones((len(cells), 1, 1, 1)), 0.0))
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-3)


def test_each_op_matches_the_tensorflow_original_on_the_same_numbers(cells):
    saved = {"images": cells, **ops_parity.original_ops(cells)}
    for quality in ops_parity.JPEG_QUALITIES:
        saved[f"jpeg{quality}"] = ops_parity.pillow_jpeg(cells, quality)
    rows = ops_parity.differences(saved, ops_parity.port_ops(cells, saved))
    for name in ("dihedral", "scale_shift", "stain_wb", "colour", "camera5", "camera6"):
        assert rows[name]["max"] < 0.02, (name, rows[name])  # float rounding, 0-255 scale
    for quality in ops_parity.JPEG_QUALITIES:
        row = rows[f"jpeg{quality}"]
        # a simulation: within a level of libjpeg on average, while the codec moves pixels more
        assert row["mean"] < 1.0, row
        assert row["mean"] < 0.6 * row["codec_mean_change"], row


def test_jpeg_simulation_degrades_like_the_codec(cells):
    for quality in (40, 95):
        simulated = np.asarray(lab_ops.jpeg(cells, np.full(len(cells), quality, np.float32)))
        real = ops_parity.pillow_jpeg(cells, quality)
        change, real_change = np.abs(simulated - cells).mean(), np.abs(real - cells).mean()
        assert 0.6 * real_change < change < 1.4 * real_change
        assert simulated.min() >= 0 and simulated.max() <= 255
        np.testing.assert_array_equal(simulated, np.round(simulated))  # 8-bit levels


def test_resolution_matrix_is_the_resize_pair():
    images = np.random.default_rng(0).uniform(0, 255, (2, 50, 50, 3)).astype(np.float32)
    for factor in (0.4, 0.73, 1.0):
        small = int(50 * np.float32(factor))
        expected = tf.image.resize(
            tf.image.resize(images, (small, small), antialias=True), (50, 50)
        )
        got = np.asarray(lab_ops.resolution(images, np.float32(factor)))
        np.testing.assert_allclose(got, expected.numpy(), atol=0.02)


def test_stain_and_white_balance_keep_white_white_and_its_brightest_channel():
    white = np.full((4, 32, 32, 3), 255.0, np.float32)
    mixing = np.eye(3, dtype=np.float32) + np.random.default_rng(1).normal(0, 0.3, (4, 3, 3))
    out = np.asarray(lab_ops.stain_and_white_balance(white, mixing.astype(np.float32)))
    np.testing.assert_allclose(out, 255.0, atol=1e-3)  # zero optical density stays zero
    gain = np.asarray([[[[1.2, 0.9, 1.0]]]] * 4, np.float32)
    grey = np.asarray(lab_ops.stain_and_white_balance(white * 0.8, None, gain))
    np.testing.assert_allclose(grey[..., 0], 204.0, atol=1e-3)  # the brightest gain keeps it
    assert (grey[..., 1] < grey[..., 2]).all()


def test_layer_draws_fresh_parameters_every_step_and_is_seeded(cells):
    layer_class = lab_ops.make_layer_class()
    layer = layer_class(lab_ops.LabConfig().to_dict(), seed=7)
    first = np.asarray(layer(cells.astype(np.uint8), training=True))
    second = np.asarray(layer(cells.astype(np.uint8), training=True))
    assert first.shape == cells.shape and first.dtype == np.float32
    assert 0 <= first.min() and first.max() <= 255
    assert np.abs(first - second).mean() > 5  # a new draw each call
    again = layer_class(lab_ops.LabConfig().to_dict(), seed=7)
    np.testing.assert_allclose(np.asarray(again(cells.astype(np.uint8), training=True)), first)
    np.testing.assert_array_equal(np.asarray(layer(cells.astype(np.uint8))), cells)  # inference
    clean = layer_class(lab_ops.LabConfig().to_dict(), clean_fraction=1.0, seed=7)
    flipped = np.asarray(clean(cells, training=True))  # only the dihedral view
    assert sorted(np.round(flipped.mean(axis=(1, 2, 3)), 3)) == sorted(
        np.round(cells.mean(axis=(1, 2, 3)), 3)
    )


def test_weight_encoding_is_lossless_and_smaller():
    rng = np.random.default_rng(0)
    start = [
        rng.normal(0, 0.05, (64, 64, 8)).astype(np.float16),
        rng.normal(0, 1, (16,)).astype(np.float32),
        np.arange(3, dtype=np.int64),
    ]
    trained = [(a * (1 + rng.normal(0, 0.02, a.shape))).astype(a.dtype) for a in start[:2]]
    trained[0][0, 0, :4] = [0.0, -0.0, np.inf, -start[0][0, 0, 3]]  # signs and specials
    trained.append(np.zeros((2, 2), np.float32))  # another shape: stored as it is
    members = train_lab.encode_weights(trained, start[:2] + [np.zeros(3, np.float32)])
    assert sorted(members) == ["w00002", "z00000", "z00001"]
    decoded = train_lab.decode_weights(members, start[:2] + [np.zeros(3, np.float32)])
    for got, want in zip(decoded, trained):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    assert members["z00000"].nbytes < 0.8 * trained[0].nbytes


def test_weights_trained_from_scratch_come_back_exactly_against_zeros():
    """Nothing is packed to start from, so both sides code against zeros of the same shapes."""
    rng = np.random.default_rng(1)
    trained = [
        rng.normal(0, 0.05, (32, 32, 8)).astype(np.float16),
        rng.normal(0, 1, (8,)).astype(np.float32),
    ]
    zeros = [np.zeros_like(a) for a in trained]
    decoded = train_lab.decode_weights(train_lab.encode_weights(trained, zeros), zeros)
    for got, want in zip(decoded, trained):
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_a_from_scratch_pack_is_read_as_the_chosen_architecture_only():
    models = {
        "cnn": {"architecture": "cnn", "from_scratch": True},
        "unet": {"architecture": "unet"},
    }
    files = [
        {"path": "model/cnn/model.json", "kind": "model", "arch": "cnn"},
        {"path": "model/unet/model.json", "kind": "model", "arch": "unet"},
        {"path": "data/train-000.npz", "kind": "train"},
    ]
    manifest = {"model": models["cnn"], "models": models, "files": files}
    picked = train_lab.select_model(manifest, "unet")
    assert picked["model"] == models["unet"] and not train_lab.from_scratch(picked)
    assert [e["path"] for e in picked["files"]] == ["model/unet/model.json", "data/train-000.npz"]
    assert train_lab.model_entry(picked)["arch"] == "unet"
    with pytest.raises(ValueError, match="choose one with --arch"):
        train_lab.select_model(manifest, None)
    with pytest.raises(ValueError, match="not vgg16"):
        train_lab.select_model(manifest, "vgg16")
    # A fine-tune's pack has one model: read as it is, and only under its own name.
    fine_tune = {"model": {"architecture": "hybrid"}, "files": files[2:]}
    assert train_lab.select_model(fine_tune, None) is fine_tune
    assert train_lab.select_model(fine_tune, "hybrid") is fine_tune
    with pytest.raises(ValueError, match="not cnn"):
        train_lab.select_model(fine_tune, "cnn")


def test_delivery_keeps_within_what_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(train_lab, "OUT_TOTAL_BYTES", 3000)
    monkeypatch.setattr(train_lab, "LOG_RESERVE_BYTES", 500)
    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    files = []
    for n in range(4):
        (staging / f"w{n}.npz").write_bytes(b"x" * 1000)
        files.append({"file": f"w{n}.npz", "bytes": 1000})
    sent, pending = train_lab.deliver(files, staging, out)
    assert [e["file"] for e in sent] == ["w0.npz", "w1.npz"]
    assert [e["file"] for e in pending] == ["w2.npz", "w3.npz"]
    assert sorted(p.name for p in out.iterdir()) == ["w0.npz", "w1.npz"]


def test_time_limit_stops_fit_mid_epoch():
    class Clock:
        left_seconds = 100.0

        def left(self):
            return self.left_seconds

    clock = Clock()
    limit = train_lab.time_limit_callback(clock, reserve=30.0)
    model = type("Model", (), {"stop_training": False})()
    limit.set_model(model)
    limit.on_train_batch_end(0, {"loss": 1.0})
    assert not model.stop_training and not limit.stopped
    clock.left_seconds = 29.0
    limit.on_train_batch_end(1, {"loss": 1.0})
    assert model.stop_training and limit.stopped and limit.steps == 2


def _cells_with_a_validation_split(root: Path) -> Path:
    """48 distinct 224 px JPEG cells (the examples, flipped and turned): enough per class for
    the library's split to hold validation cells (the 16 examples alone leave it empty)."""
    from PIL import Image

    views = (lambda a: a, lambda a: a[:, ::-1], lambda a: np.rot90(a))
    for path in sorted(FIXTURE_IMAGES.glob("*/*.jpg")):
        target = root / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(path).convert("RGB"))
        for n, view in enumerate(views):
            image = Image.fromarray(np.ascontiguousarray(view(pixels)))
            image.save(target / f"{path.stem}-{n}.jpg", quality=90)
    return root


def _install_for(tiny_store: Path, store: Path, data: Path) -> None:
    """The tiny CNN installed in ``store`` with a card saying it was trained on ``data``."""
    import shutil

    from bcclassify.data.datasets import scan_dataset, train_val_test_split

    shutil.copytree(tiny_store / "models" / "tiny-cnn", store / "models" / "tiny-cnn")
    card_path = store / "models" / "tiny-cnn" / "card.json"
    card = json.loads(card_path.read_text())
    dataset = scan_dataset(data)
    split = train_val_test_split(dataset.labels, dataset.hashes, card["training_config"]["seed"])
    card["training_run"] = "not-in-this-store"
    card["training_data"] = {
        "path": str(data),
        "manifest_sha256": dataset.manifest_hash(),
        "num_images": len(dataset),
        "split_sizes": [split.sizes()],
    }
    write_card(card_path.parent, card)  # the one card writer: card.sha256 follows the card


def test_model_split_of_a_model_continued_on_a_thinned_training_split(
    tiny_store, tmp_path, monkeypatch
):
    """A model continued with --train-per-class records a thinned training split in its card:
    its split is still rebuilt (validation and test checked, the full training split returned,
    what a GPU run packed from it trains on), and a validation split that differs is refused."""
    import pack

    data = _cells_with_a_validation_split(tmp_path / "cells")
    store = tmp_path / "store"
    (store / "runs" / "thinned").mkdir(parents=True)
    _install_for(tiny_store, store, data)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    card = json.loads((store / "models" / "tiny-cnn" / "card.json").read_text())
    full = dict(card["training_data"]["split_sizes"][0])
    card["training_run"] = "thinned"
    card["training_data"]["split_sizes"] = [{**full, "train": 8}]
    (store / "runs" / "thinned" / "config.json").write_text(
        json.dumps({"seed": card["training_config"]["seed"], "train_per_class": 1})
    )

    _, split, *_ = pack.model_split(card, None)
    assert split.sizes() == full

    card["training_data"]["split_sizes"] = [{**full, "train": 8, "val": full["val"] + 1}]
    with pytest.raises(ValueError, match="differs from the card"):
        pack.model_split(card, None)


@pytest.mark.slow
def test_pack_train_import_evaluate_promote(tiny_store, tmp_path, monkeypatch, cli):
    """The whole route on the tiny CNN: pack its own training and validation split, one training
    step under TensorFlow through the library's loop into a library run folder, the weights back
    as that run's checkpoint, finished by resume, then evaluate and promote."""
    import import_run
    import pack

    data = _cells_with_a_validation_split(tmp_path / "cells")
    store = tmp_path / "store"
    (store / "runs").mkdir(parents=True)
    _install_for(tiny_store, store, data)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))

    packed = tmp_path / "pack"
    command = ["--model", "tiny-cnn", "--out", str(packed), "--reference", "4", "--preset", "wide"]
    assert pack.main(command) == 0
    manifest = json.loads((packed / "all" / "manifest.json").read_text())
    # the preset's name and the library's numbers for it travel in the manifest
    assert manifest["augmentation_preset"] == "wide"
    assert manifest["augmentation"]["hue"] == PRESETS["wide"].hue
    sizes = manifest["data"]["split_sizes"]
    assert sizes["val"] > 0 and len(manifest["reference"]["files"]) == 4
    packed_files = {
        str(f)
        for e in manifest["files"]
        if e["kind"] in ("train", "val")
        for f in np.load(packed / "all" / e["path"])["files"]
    }
    assert len(packed_files) == sizes["train"] + sizes["val"]  # and no test cell
    assert all((packed / f"call{c['call']}" / "manifest.json").is_file() for c in manifest["calls"])

    out, work = tmp_path / "out", tmp_path / "work"
    status = train_lab.main(
        [
            "--pack", str(packed / "all"), "--work", str(work), "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "1", "--eval-batch-size",
            "4", "--warmup-steps", "0", "--max-seconds", "300", "--workers", "1",
        ]
    )  # fmt: skip
    assert status == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["epochs_done"] == 1 and log["epoch_details"][0]["steps"] == 1
    assert log["reference_check"]["images"] == 4 and log["reference_check"]["max_abs_diff"] < 1e-4
    assert log["exported"]["pending"] == [] and log["versions"]["backend"] == "tensorflow"
    assert len(log["probe"]["files"]) == sizes["val"]
    seeds = log["augment_seed_state"]
    assert seeds["start"] != seeds["end"]  # the step drew fresh augmentation parameters
    assert len(list(out.iterdir())) <= train_lab.OUT_MAX_FILES

    # On the device: the library's run folder, config and checkpoints (bcclassify.training.loop).
    device_run = work / "runs" / log["run_id"]
    stored = json.loads((device_run / "config.json").read_text())
    config = TrainConfig(
        **{k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__}
    )
    assert config.augment_preset == "wide" and config.epochs == 1 and config.batch_size == 4
    ckpt = device_run / "checkpoints"
    assert json.loads((ckpt / "latest.json").read_text()) == {"folder": "epoch-0000", "epoch": 0}
    assert (ckpt / "epoch-0000" / "model.weights.h5").is_file()
    assert (ckpt / "epoch-0000" / "optimizer.npz").is_file() and (
        ckpt / "best.weights.h5"
    ).is_file()
    assert RunRecord(device_run).history()[0]["epoch"] == 1
    assert set(log["run_files"]) == set(train_lab.RUN_FILES)

    # Out of time before the first epoch: nothing trained, the starting weights still come back.
    late = tmp_path / "late"
    args = ["--pack", str(packed / "all"), "--work", str(tmp_path / "w2"), "--out", str(late)]
    args += ["--batch-size", "4", "--eval-batch-size", "4", "--workers", "1"]
    assert train_lab.main([*args, "--max-seconds", "0.001", "--reserve-seconds", "0"]) == 0
    late_log = json.loads((late / "train_log.json").read_text())
    assert late_log["stop_reason"] == "max-seconds before an epoch"
    assert late_log["epochs_done"] == 0
    start = train_lab.read_stored_weights(packed / "all", manifest)
    names = [f["file"] for f in late_log["exported"]["files"]]
    for got, want in zip(train_lab.read_export([late], names, start), start):
        np.testing.assert_array_equal(got, want)

    # Back here: the weights into the run folder, finished by train's own last step (resume).
    assert import_run.main([str(out), "--pack", str(packed), "--run-id", "gpu-lab"]) == 0
    run_dir = store / "runs" / "gpu-lab"
    run = json.loads((run_dir / "run.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert run["status"] == "finished" and (run_dir / "model.keras").is_file()
    assert config["augment_preset"] == "wide" and config["freeze_until"] is None
    assert config["data_manifest_sha256"] == manifest["data"]["manifest_sha256"]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "history.csv").is_file()
    assert (run_dir / "checkpoints" / "best.weights.h5").is_file()

    # Unscored, it is an ordinary interrupted run: train --resume finishes it.
    assert (
        import_run.main([str(out), "--pack", str(packed), "--run-id", "gpu-lab-2", "--no-score"])
        == 0
    )
    assert not (store / "runs" / "gpu-lab-2" / "metrics.json").is_file()
    cli(["train", "--resume", "gpu-lab-2"], store=store, check=True)
    resumed = json.loads((store / "runs" / "gpu-lab-2" / "metrics.json").read_text())
    scored_first = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["accuracy"] == pytest.approx(scored_first["accuracy"])

    listed = cli(["list", "--json"], store=store, check=True)
    assert "gpu-lab" in listed.stdout
    scored = cli(
        ["evaluate", "--run", "gpu-lab", "--data", str(data), "--json"], store=store, check=True
    )
    metrics = json.loads(scored.stdout)
    assert metrics["scope"] == "the run's test split" and metrics["num_samples"] == sizes["test"]
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"])
    cli(["promote", "gpu-lab", "--name", "lab-gpu"], store=store, check=True)
    installed = json.loads((store / "models" / "lab-gpu" / "card.json").read_text())
    assert installed["training_run"] == "gpu-lab"


@pytest.mark.slow
def test_from_scratch_pack_trains_one_of_its_architectures_and_imports(tmp_path, monkeypatch):
    """Issue 25's route: one data pack, several architectures' model.json and no weights; the
    device initialises the chosen one from the seed, its weights come back coded against zeros,
    and the import is an ordinary run of that architecture, scored on the test split."""
    import import_run
    import pack

    data = _cells_with_a_validation_split(tmp_path / "cells")
    store = tmp_path / "store"
    (store / "runs").mkdir(parents=True)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    packed = tmp_path / "pack"
    command = ["--arch", "cnn,unet", "--data", str(data), "--image-size", "43"]
    assert pack.main([*command, "--center-crop", "0.75", "--out", str(packed)]) == 0
    manifest = json.loads((packed / "all" / "manifest.json").read_text())
    assert set(manifest["models"]) == {"cnn", "unet"} and manifest["reference"] == {}
    assert not [e for e in manifest["files"] if e["kind"] == "weights"]
    assert manifest["augmentation_preset"] == "lab"  # the default preset, as for a fine-tune

    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--pack", str(packed / "all"), "--work", str(work), "--out", str(out)]
    args += ["--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "2"]
    args += ["--eval-batch-size", "4", "--warmup-steps", "0", "--workers", "1", "--lr", "1e-3"]
    with pytest.raises(ValueError, match="choose one with --arch"):
        train_lab.main(args)
    assert train_lab.main([*args, "--arch", "unet"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["arch"] == "unet" and log["epochs_done"] == 1
    assert log["run_files"]["config.json"]["gpu"]["initialised_from"] == {
        "from_scratch": True,
        "seed": 42,
    }
    assert "from scratch" in log["run_files"]["config.json"]["note"]

    assert import_run.main([str(out), "--pack", str(packed), "--run-id", "scratch-unet"]) == 0
    run_dir = store / "runs" / "scratch-unet"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "unet" and config["center_crop"] == 0.75
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == manifest["data"]["split_sizes"]["test"]
    # The run holds exactly what the device trained: its probe probabilities, recomputed here.
    import keras

    model = keras.models.load_model(run_dir / "model.keras", safe_mode=True)
    probe = log["probe"]
    pixels = np.stack([train_lab.decode_image((data / f).read_bytes(), 43) for f in probe["files"]])
    here = model.predict(pixels.astype(np.float32), verbose=0)
    np.testing.assert_allclose(here, probe["probabilities"], atol=2e-3)


@pytest.mark.slow
def test_an_installed_model_packed_with_group_norm_fine_tunes_and_imports_as_such(
    tiny_store, tmp_path, monkeypatch
):
    """Issue 21's GPU route: the installed model converted at packing (every batch norm to group
    norm, fitted to it), fine-tuned, and imported as a run the registry rebuilds with
    ``norm="group"`` (import_run checks that it computes what the device trained)."""
    import import_run
    import keras
    import pack

    data = _cells_with_a_validation_split(tmp_path / "cells")
    store = tmp_path / "store"
    (store / "runs").mkdir(parents=True)
    _install_for(tiny_store, store, data)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    packed = tmp_path / "pack"
    args = ["--model", "tiny-cnn", "--norm", "group", "--out", str(packed), "--reference", "4"]
    assert pack.main(args) == 0
    manifest = json.loads((packed / "all" / "manifest.json").read_text())
    assert manifest["model"]["norm"] == "group"
    # each group norm fitted to the batch norm it replaced (models.norm_transfer)
    assert manifest["model"]["group_norm_fit"]["layers"] > 0
    model = train_lab.build_model(packed / "all", manifest)
    assert not [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert [x for x in model.layers if isinstance(x, keras.layers.GroupNormalization)]

    out, work = tmp_path / "out", tmp_path / "work"
    command = ["--pack", str(packed / "all"), "--work", str(work), "--out", str(out)]
    command += ["--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "1"]
    command += ["--eval-batch-size", "4", "--warmup-steps", "0", "--workers", "1"]
    assert train_lab.main(command) == 0
    log = json.loads((out / "train_log.json").read_text())
    # the device starts from what was packed: the converted model, as computed here
    assert log["reference_check"]["images"] == 4 and log["reference_check"]["max_abs_diff"] < 1e-4
    assert log["run_id"].endswith("-gn-lab")
    assert import_run.main([str(out), "--pack", str(packed), "--run-id", "gn-run"]) == 0
    config = json.loads((store / "runs" / "gn-run" / "config.json").read_text())
    assert config["norm"] == "group"
    assert json.loads((store / "runs" / "gn-run" / "run.json").read_text())["status"] == "finished"
