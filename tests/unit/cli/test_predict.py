"""The predict contract: `python -m bcclassify predict` in a fresh process (its stderr holds
nothing but refusals, TensorFlow's start-up included), the other cases in this process."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from helpers import ACCEPTED, FIXTURE_IMAGES, REFUSED, run_cli

from bcclassify import CLASS_NAMES

HEADER = (
    "path,label,confidence,flag,error,basophil,eosinophil,erythroblast,ig,lymphocyte,"
    "monocyte,neutrophil,platelet"
)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Good cells in every accepted kind, one file of every refused kind, hidden files."""
    root = tmp_path_factory.mktemp("inputs")
    shutil.copytree(FIXTURE_IMAGES, root / "cells")
    for kind, make in ACCEPTED.items():
        (root / "kinds" / f"{kind}.bin").parent.mkdir(parents=True, exist_ok=True)
        (root / "kinds" / f"{kind}.bin").write_bytes(make())  # extension does not matter
    for kind, (data, _) in REFUSED.items():
        (root / "bad").mkdir(exist_ok=True)
        (root / "bad" / f"{kind}.jpg").write_bytes(data)
    (root / ".hidden.png").write_bytes(ACCEPTED["png"]())
    (root / "cells" / ".DS_Store").write_bytes(b"junk")
    return root


@pytest.fixture(scope="module")
def mixed_result(mixed_folder, tiny_store):
    env = {"BCCLASSIFY_STORE": str(tiny_store), "TF_CPP_MIN_LOG_LEVEL": "0"}
    import os

    args = ["predict", "--model", "tiny-cnn", "--batch-size", "5", str(mixed_folder)]
    return run_cli(args, {**os.environ, **env})


def test_csv_header_rows_and_order(mixed_result, mixed_folder):
    lines = mixed_result.stdout.splitlines()
    assert lines[0] == HEADER
    rows = list(csv.DictReader(io.StringIO(mixed_result.stdout)))
    paths = [r["path"] for r in rows]
    assert paths == sorted(paths)
    assert len(rows) == 16 + len(ACCEPTED) + len(REFUSED)  # hidden files skipped
    assert not any("/." in p for p in paths)


def test_classified_rows_are_complete_probabilities(mixed_result):
    rows = [r for r in csv.DictReader(io.StringIO(mixed_result.stdout)) if r["flag"] != "error"]
    assert len(rows) == 16 + len(ACCEPTED)
    for row in rows:
        probs = np.array([float(row[c]) for c in CLASS_NAMES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        # The label is the most probable class (ties possible: a barely trained test model).
        assert probs[CLASS_NAMES.index(row["label"])] == pytest.approx(probs.max(), abs=1e-6)
        assert float(row["confidence"]) == pytest.approx(probs.max(), abs=1e-6)
        assert row["error"] == ""
        assert row["flag"] in ("", "low_confidence")


def test_refused_rows_exit_status_and_stderr(mixed_result):
    assert mixed_result.returncode == 1
    bad = [r for r in csv.DictReader(io.StringIO(mixed_result.stdout)) if r["flag"] == "error"]
    assert {r["path"].rsplit("/", 1)[-1] for r in bad} == {f"{k}.jpg" for k in REFUSED}
    for row in bad:
        assert row["label"] == row["confidence"] == ""
        assert all(row[c] == "" for c in CLASS_NAMES)
        assert row["path"] in row["error"] and "accepted:" in row["error"]
    stderr = mixed_result.stderr.strip().splitlines()
    assert len(stderr) == len(REFUSED)  # one line per refused file, nothing else
    assert "Traceback" not in mixed_result.stderr


def test_exit_zero_and_json_format(cli):
    files = [str(p) for p in sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:3]]
    result = cli(["predict", "--format", "json", "--model", "tiny-cnn", *files])
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [item["path"] for item in payload] == sorted(files)
    for item in payload:
        assert set(item["probabilities"]) == set(CLASS_NAMES)
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict"], "no inputs"),
        (["predict", "--model", "no-such-model", str(FIXTURE_IMAGES)], "unknown model"),
        (["predict", "EMPTY_DIR"], "no files found"),
    ],
)
def test_usage_errors_exit_two(args, message, cli, tmp_path):
    args = [str(tmp_path) if a == "EMPTY_DIR" else a for a in args]
    result = cli(args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_damaged_model_file_is_refused_clearly(tiny_store, cli, tmp_path):
    damaged = tmp_path / "store"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", damaged / "models" / "tiny-cnn")
    weights = sorted((damaged / "models" / "tiny-cnn").glob("weights-*.npz"))[0]
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    result = cli(["predict", "--model", "tiny-cnn", str(FIXTURE_IMAGES)], store=damaged)
    assert result.returncode == 2
    assert "does not match the card" in result.stderr
