"""Faithfulness measures: deletion/insertion curves, the centre-cell mask, the table, the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES

from bcclassify.explain import faithfulness as fa


def test_curve_area_is_the_mean_trapezoid_over_evenly_spaced_steps():
    assert fa.curve_area([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert fa.curve_area([1.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert fa.curve_area(np.linspace(1, 0, 11)) == pytest.approx(0.5)


def test_perturbation_removes_the_most_salient_seen_pixels_first():
    image = np.full((20, 20, 3), 200, dtype=np.uint8)
    heatmap = np.zeros((20, 20), dtype=np.float32)
    heatmap[5:10, 5:10] = 1.0  # 25 of the 100 seen pixels (the box 5..15)
    box = fa.seen_box(20, 0.5)
    assert box == (5, 15)
    blurred = np.full_like(image, 50)
    deletion, insertion = fa.perturbation_batches(image, heatmap, box, steps=4, blurred=blurred)
    assert deletion.shape == insertion.shape == (3, 20, 20, 3)
    first = deletion[0, ..., 0] == 0
    assert first.sum() == 25 and first[5:10, 5:10].all()  # a quarter: exactly the hot block
    assert insertion[0, 5:10, 5:10, 0].min() == 200 and (insertion[0, ..., 0] == 200).sum() == 25
    assert (deletion[2, ..., 0] == 0).sum() == 75
    outside = np.ones((20, 20), dtype=bool)
    outside[5:15, 5:15] = False
    assert (deletion[:, outside] == 200).all() and (insertion[:, outside] == 50).all()


def test_ties_are_broken_at_random_not_in_raster_order():
    order = fa.salience_order(np.zeros((10, 10), dtype=np.float32), (0, 10), seed=1)
    assert sorted(order.tolist()) == list(range(100)) and order[:10].tolist() != list(range(10))


def _disc(image, centre, radius, colour):
    rows, cols = np.indices(image.shape[:2])
    image[np.hypot(rows - centre[0], cols - centre[1]) <= radius] = colour


def test_centre_cell_mask_takes_the_stained_nucleus_at_the_centre_and_its_rim():
    image = np.full((100, 100, 3), (249, 228, 197), dtype=np.uint8)  # PBC background
    _disc(image, (15, 15), 8, (201, 157, 159))  # a red cell (as in PBC): not a nucleus
    _disc(image, (85, 85), 8, (110, 40, 150))  # another nucleus, off centre
    _disc(image, (50, 52), 10, (110, 40, 150))  # the centre cell's nucleus
    assert fa.nucleus_mask(image)[50, 52] and not fa.nucleus_mask(image)[15, 15]
    mask = fa.centre_cell_mask(image)
    assert mask[50, 52] and mask[50, 52 + 10 + 5]  # nucleus and a rim of cytoplasm
    assert not mask[85, 85] and not mask[15, 15] and not mask[0, 0]
    assert not fa.centre_cell_mask(np.full((40, 40, 3), 230, dtype=np.uint8)).any()


def _record(path, deletion, insertion, peaks):
    return {
        "path": path,
        "label": 0,
        "target": 0,
        "configs": {
            name: {"method": "gradcam", "layers": ["a"], "deletion": d, "insertion": i, "peaks": p}
            for name, d, i, p in zip(("old", "new"), deletion, insertion, peaks)
        },
    }


def test_summary_and_paired_difference():
    records = [
        _record("x", ([1, 0.5, 0], [1, 0, 0]), ([0, 0.5, 1], [0, 1, 1]), ({"fused": (0, 0)},) * 2),
        _record("y", ([1, 1, 0], [1, 0.5, 0]), ([0, 0, 1], [0, 1, 1]), ({"fused": (9, 9)},) * 2),
    ]
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = True
    assert "pointing" not in fa.summarize(records)["old"]
    table = fa.summarize(records, {"x": mask, "y": mask})
    assert table["old"]["deletion_auc"] == pytest.approx((0.5 + 0.75) / 2)
    assert table["new"]["insertion_auc"] == pytest.approx(0.75)
    assert table["old"]["pointing"] == {"fused": 0.5} and table["old"]["cells"] == 2
    versus = fa.paired_difference(records, "new", "old", "deletion")
    assert versus["mean"] == pytest.approx(-0.25) and versus["cells_favouring"] == 2


def test_measure_checkpoints_each_cell_and_resumes(tiny_store, tmp_path):
    """A real (tiny) model on its own test split: curves start at the cell's probability; a
    rerun reads the checkpoint instead of recomputing."""
    from bcclassify.serving.classifier import load_model

    classifier = load_model("tiny-cnn")
    configs = fa.default_configs(classifier)
    checkpoint = tmp_path / "cells.jsonl"
    records, scope = fa.measure(classifier, FIXTURE_IMAGES, 3, configs, 3, 0, checkpoint)
    assert scope == "the run's test split" and len(records) == 3  # trained on these images
    assert len(checkpoint.read_text().splitlines()) == 3
    for record in records:
        for result in record["configs"].values():
            assert len(result["deletion"]) == len(result["insertion"]) == 4
            assert result["deletion"][0] == pytest.approx(record["probability"])
            assert result["insertion"][-1] == pytest.approx(record["probability"])
    again, _ = fa.measure(classifier, FIXTURE_IMAGES, 3, configs, 3, 0, checkpoint)
    assert again == records and len(checkpoint.read_text().splitlines()) == 3


def test_record_writes_the_table_and_only_the_explain_keys_of_the_card(tmp_path):
    from bcclassify.storage.store import write_json

    card = {"name": "m", "explain_layers": ["old"], "calibration": {"t": 1.2}, "files_sha256": {}}
    write_json(tmp_path / "card.json", card)
    row = {"method": "layercam", "layers": ["a", "b"], "deletion_auc": 0.1, "insertion_auc": 0.9}
    result = {
        "model": "m",
        "data": "d",
        "cells": 200,
        "scope": "the run's test split",
        "seed": 0,
        "steps": 10,
        "table": {"layercam-fine": {**row, "pointing": {"fused": 0.97}}},
    }
    out = fa.record(tmp_path, result, "layercam-fine", tmp_path / "docs")
    assert json.loads(out.read_text())["cells"] == 200
    written = json.loads((tmp_path / "card.json").read_text())
    assert written["explain_layers"] == ["a", "b"] and written["explain_method"] == "layercam"
    assert written["calibration"] == {"t": 1.2} and written["files_sha256"] == {}
    assert written["faithfulness"]["chosen"] == "layercam-fine"
    rows = fa.table_rows(written["faithfulness"])
    assert rows[0]["default"] == "✓" and rows[0]["pointing, fused map"] == "97%"


@pytest.mark.slow
def test_faithfulness_command_prints_the_table_and_saves_it(store_env, tmp_path):
    import subprocess
    import sys

    from helpers import REPO

    # Run from tmp_path so the checkpoints land in tmp_path/cache, not in the repository.
    env = {**store_env, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bcclassify", "faithfulness", "--model", "tiny-cnn"]
    command += ["--data", str(FIXTURE_IMAGES), "--cells", "2", "--steps", "3"]
    result = subprocess.run(
        [*command, "--save", str(tmp_path / "docs")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| gradcam | cnn_block4_relu2 |" in result.stdout and "| layercam |" in result.stdout
    saved = json.loads((tmp_path / "docs" / "faithfulness-tiny-cnn.json").read_text())
    assert saved["cells"] == 2 and set(saved["table"]) == {"gradcam", "layercam"}
    assert len(list((tmp_path / "cache" / "faithfulness").glob("tiny-cnn-*.jsonl"))) == 1
    refused = subprocess.run(
        [*command, "--set-default", "layercam"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "--set-default needs --save" in refused.stderr
