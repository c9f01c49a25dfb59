"""evaluate, promote, list and bench through the command line (in this process), against the
tiny store."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import FIXTURE_IMAGES

from bcclassify.storage.store import read_json


def test_evaluate_run_reproduces_the_recorded_test_metrics(tiny_store, cli):
    result = cli(
        ["evaluate", "--run", "fixture-cnn-32px", "--data", str(FIXTURE_IMAGES), "--json"],
        check=True,
    )
    metrics = json.loads(result.stdout)
    recorded = read_json(tiny_store / "runs" / "fixture-cnn-32px" / "metrics.json")
    assert metrics["scope"] == "the run's test split"
    assert metrics["confusion_matrix"] == recorded["confusion_matrix"]
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"])


def test_evaluate_model_on_another_folder_scores_every_image(cli, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(FIXTURE_IMAGES / "platelet", folder / "platelet")
    result = cli(["evaluate", "--model", "tiny-cnn", "--data", str(folder)], check=True)
    assert "every image in the folder (2 images)" in result.stdout
    assert "confusion matrix" in result.stdout
    assert re.search(r"< 0\.60: \d+ flagged \(\d+\.\d%\)", result.stdout)


def test_evaluate_record_writes_the_figures_into_a_sealed_card(tiny_store, cli, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    folder = tmp_path / "other"
    shutil.copytree(FIXTURE_IMAGES / "platelet", folder / "platelet")
    args = ["evaluate", "--model", "tiny-cnn", "--data", str(folder), "--json", "--record"]
    metrics = json.loads(cli(args, store, True).stdout)
    card = read_json(store / "models" / "tiny-cnn" / "card.json")
    entry = card["evaluations"]["other"]
    assert entry["accuracy"] == pytest.approx(metrics["accuracy"])
    assert entry["num_samples"] == 2 and entry["scope"] == "every image in the folder"
    assert len(entry["data_manifest_sha256"]) == 64
    assert entry["command"].endswith(f"--data {folder} --record")
    # The card is resealed, so the model still loads; --record needs a model as served.
    assert cli(["predict", "--model", "tiny-cnn", str(folder)], store).returncode == 0
    refused = cli(["evaluate", "--run", "fixture-cnn-32px", "--data", str(folder), "--record"])
    assert refused.returncode == 2 and "--record takes --model" in refused.stderr


def test_promote_writes_a_verified_card_and_can_set_the_default(tiny_store, cli, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    promoted = cli(["promote", "fixture-cnn-32px", "--name", "cnn-b", "--default"], store, True)
    summary = json.loads(promoted.stdout)
    assert summary["architecture"] == "cnn" and summary["image_size"] == 32
    card = read_json(store / "models" / "cnn-b" / "card.json")
    assert card["class_names"][3] == "ig" and card["training_run"] == "fixture-cnn-32px"
    assert set(card["files_sha256"]) >= {"model.json", "weights-000.npz"}
    assert card["test_metrics"]["accuracy"] is not None and card["low_confidence_threshold"] == 0.6
    assert read_json(store / "default.json") == {"default": "cnn-b"}
    listing = cli(["list"], store, True).stdout
    assert "cnn-b (default)" in listing and "fixture-cnn-32px" in listing
    tables = cli(["list", "--markdown"], store, True).stdout.split("\n\n")
    models_table, runs_table = (t.strip().splitlines() for t in tables)
    assert models_table[0].startswith("| model | architecture | input px | test accuracy")
    assert any(row.startswith("| **cnn-b** (default) | cnn | 32 |") for row in models_table[2:])
    [run_row] = [row for row in runs_table[2:] if "`fixture-cnn-32px`" in row]
    assert "| cnn | 32 | from scratch | 2 | 70/30 |" in run_row
    refused = cli(["promote", "no-such-run", "--name", "x"], store)
    assert refused.returncode == 2 and "no run" in refused.stderr


@pytest.mark.slow  # times 20+ predictions and a model load in a fresh process
def test_bench_reports_every_field(cli):
    result = cli(["bench", "--model", "tiny-cnn", "--json"], check=True)
    line = result.stdout.strip().splitlines()
    assert len(line) == 1
    bench = json.loads(line[0])
    for key in (
        "model",
        "image_size",
        "load_s",
        "load_keras_s",
        "runtime",
        "predict_single_s",
        "predict_batch_img_per_s",
        "explain_single_s",
        "flops_per_image",
        "cpu",
        "threads",
    ):
        assert key in bench
    assert bench["image_size"] == 32 and bench["flops_per_image"] > 1e6
    assert bench["predict_single_s"] > 0 and bench["predict_batch_img_per_s"] > 0
    assert bench["served_examples_img_per_s"] > 0  # the bundled cells, every flag on
    assert bench["runtime"] == "tensorflow"  # the tiny store has no compiled graph


def test_bench_run_saves_what_the_architecture_costs(cli, tiny_store, tmp_path):
    """A run keeps no model in the repository: its cost is the registry's build of its
    architecture at its input size, saved in the run folder for the comparison page."""
    import shutil

    from bcclassify.models.registry import build
    from bcclassify.serving.bench import forward_flops

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs" / "fixture-cnn-32px", store / "runs" / "fixture-cnn-32px")
    result = cli(["bench", "--run", "all", "--json", "--repeats", "5"], store=store, check=True)
    (line,) = result.stdout.strip().splitlines()
    cost = json.loads(line)
    network = build("cnn", 32, 8, "none")
    assert cost["run_id"] == "fixture-cnn-32px" and cost["parameters"] == network.count_params()
    assert cost["flops_per_image"] == forward_flops(network) and cost["forward_single_s"] > 0
    saved = json.loads((store / "runs" / "fixture-cnn-32px" / "cost.json").read_text())
    assert saved["parameters"] == cost["parameters"] and saved["repeats"] == 5
    listed = json.loads(cli(["list", "--json"], store=store, check=True).stdout)
    assert listed[0]["parameters"] == cost["parameters"]
    # 'all' is every finished run not measured yet: nothing left
    assert cli(["bench", "--run", "all"], store=store, check=True).stdout.strip() == ""
    for wrong in ("no-such-run", "../runs"):
        refused = cli(["bench", "--run", wrong], store=store)
        assert refused.returncode == 2 and repr(wrong) in refused.stderr


def test_every_command_has_help(cli):
    commands = ("train", "evaluate", "promote", "list", "predict", "explain", "bench")
    for command in (*commands, "faithfulness", "users", "reviews", "calibrate", "seal", "adapt"):
        out = cli([command, "--help"])
        assert out.returncode == 0 and "usage:" in out.stdout


def test_evaluate_held_out_scores_only_cells_outside_the_training_split(tiny_store, cli, tmp_path):
    from bcclassify.data.datasets import scan_dataset, train_val_test_split

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    card = read_json(store / "models" / "tiny-cnn" / "card.json")
    dataset = scan_dataset(FIXTURE_IMAGES)
    split = train_val_test_split(
        dataset.labels, dataset.hashes, card["training_config"].get("seed", 42)
    )
    args = ["evaluate", "--model", "tiny-cnn", "--data", FIXTURE_IMAGES, "--held-out", "--json"]
    metrics = json.loads(cli([*args, "--record"], store, True).stdout)
    assert metrics["scope"].startswith("the images in the folder outside the model's training")
    assert metrics["num_samples"] == len(split.val) + len(split.test) < len(dataset)
    entry = read_json(store / "models" / "tiny-cnn" / "card.json")["evaluations"]["pbc (held out)"]
    assert entry["num_samples"] == metrics["num_samples"]
    assert entry["command"].endswith(f"--data {FIXTURE_IMAGES} --held-out --record")

    # A folder holding only training-split cells (another name, the same content) has none left.
    trained = tmp_path / "trained"
    for i in split.train[:2]:
        target = trained / dataset.class_names[dataset.labels[i]] / f"copy-{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dataset.paths[i], target)
    refused = cli(["evaluate", "--model", "tiny-cnn", "--data", trained, "--held-out"], store)
    assert (
        refused.returncode == 2 and "every image is in the model's training split" in refused.stderr
    )
    no_model = cli(["evaluate", "--run", "fixture-cnn-32px", "--data", trained, "--held-out"])
    assert no_model.returncode == 2 and "--held-out takes --model" in no_model.stderr
