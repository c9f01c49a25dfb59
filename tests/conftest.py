"""Shared fixtures: the example cells shipped with the library and a small, real model store.

``tiny_store`` is built once per test session in a temporary folder: a real (very short) training
run of the compact CNN on the fixture images, promoted as ``tiny-cnn``, and an untrained hybrid
at 107 px (2x2 mixed10 maps) installed as ``tiny-hybrid`` (the default), so predict, explain and
the app run against real models without the bundled weights.

The hybrid stays the default because the explain tests check the default's per-trunk maps; every
test that does not need a hybrid names ``tiny-cnn``, which loads in a fraction of the time.
``cli`` runs the command line in this process (TensorFlow is imported once per session); a
subprocess is kept only where a test needs a fresh process (start-up output, kill -9).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import FIXTURE_IMAGES, CliResult

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# In-process app tests load models only when a page needs them: the app's background preload
# (ui.session.preload_default_model) would compete with the tests for the 2 cores. The browser
# test turns it back on for the server it starts.
os.environ.setdefault("BCCLASSIFY_PRELOAD", "0")
# Nor do test servers write compiled graphs after warming up (a minute of CPU); the preload test
# turns it on for its own store.
os.environ.setdefault("BCCLASSIFY_COMPILE", "0")


@pytest.fixture(scope="session")
def fixture_images() -> Path:
    return FIXTURE_IMAGES


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A model store with a finished tiny run and two installed models; sets BCCLASSIFY_STORE."""
    from bcclassify import CLASS_NAMES
    from bcclassify.evaluation.scoring import card_for_run, promote
    from bcclassify.models.registry import build
    from bcclassify.serving.classifier import export_model
    from bcclassify.storage.store import set_default_model
    from bcclassify.training.runs import TrainConfig, train

    root = tmp_path_factory.mktemp("store")
    previous = os.environ.get("BCCLASSIFY_STORE")
    os.environ["BCCLASSIFY_STORE"] = str(root)
    config = TrainConfig(
        arch="cnn",
        data=str(FIXTURE_IMAGES),
        image_size=32,
        epochs=2,
        batch_size=8,
        cache_dir=str(root / "cache"),
        run_id="fixture-cnn-32px",
        note="test fixture",
    )
    run_dir = train(config)
    promote(run_dir.name, "tiny-cnn")
    hybrid = build("hybrid", 107, len(CLASS_NAMES), weights="none")
    card = card_for_run(run_dir, "tiny-hybrid")
    card.update(
        architecture="hybrid", image_size=107, explain_layers=["mixed10", "block14_sepconv2_act"]
    )
    card["description"] = "untrained hybrid for tests"
    export_model(hybrid, root / "models" / "tiny-hybrid", card)
    set_default_model("tiny-hybrid")
    shutil.rmtree(root / "cache", ignore_errors=True)
    yield root
    if previous is None:
        os.environ.pop("BCCLASSIFY_STORE", None)
    else:
        os.environ["BCCLASSIFY_STORE"] = previous


@pytest.fixture()
def cnn_store(tiny_store, tmp_path, monkeypatch) -> Path:
    """A private store (BCCLASSIFY_STORE, for this test) holding a copy of ``tiny-cnn`` only, as
    the default; its derived caches (``tmp_path/cache``) are private too."""
    root = tmp_path / "store"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", root / "models" / "tiny-cnn")
    (root / "default.json").write_text(json.dumps({"default": "tiny-cnn"}))
    monkeypatch.setenv("BCCLASSIFY_STORE", str(root))
    return root


@pytest.fixture()
def store_env(tiny_store) -> dict:
    """Environment for subprocesses that must see the tiny store."""
    return {**os.environ, "BCCLASSIFY_STORE": str(tiny_store), "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture()
def cli(tiny_store, capsys, monkeypatch):
    """``cli(args, store=None, check=False)``: ``bcclassify.cli.main.main`` in this process.

    Returns the exit status and what the command wrote, like ``run_cli``; ``store`` points
    BCCLASSIFY_STORE elsewhere for this test (default: the tiny store).
    """
    from bcclassify.cli import main as command_line

    def run(args: list[str], store: Path | None = None, check: bool = False) -> CliResult:
        monkeypatch.setenv("BCCLASSIFY_STORE", str(store or tiny_store))
        capsys.readouterr()
        try:
            status = command_line.main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help (0) and rejected arguments (2)
            status = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        if check:
            assert status == 0, err[-2000:]
        return CliResult(status, out, err)

    return run
