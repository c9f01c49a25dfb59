"""The compiled graph (ONNX Runtime): same answers as Keras, written and checked by ``compile``,
never used when it does not match its record, and a start-up without TensorFlow (issue 24)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES

from bcclassify import REPO_ROOT
from bcclassify.serving.classifier import ModelIntegrityError, load_model
from bcclassify.serving.compiled import (
    compile_classifier,
    compiled_dir,
    compiled_paths,
    has_compiled,
)
from bcclassify.storage.cards import load_card

CELLS = sorted(FIXTURE_IMAGES.rglob("*.jpg"))


@pytest.fixture()
def store(cnn_store, tmp_path):
    """A private store (and so a private compiled cache beside it) with a copy of tiny-cnn."""
    assert compiled_dir() == tmp_path / "cache" / "compiled"
    return cnn_store


def _answers(classifier):
    rows = classifier.classify([(p.name, p) for p in CELLS])
    return np.stack([r.probabilities for r in rows]), [r.flag for r in rows]


def test_compiled_answers_match_keras_and_keras_waits_until_needed(store):
    keras_served = load_model("tiny-cnn")
    assert keras_served.compiled is None  # nothing compiled yet: Keras answers
    expected, expected_flags = _answers(keras_served)

    (written,) = compile_classifier(keras_served)
    record = json.loads(compiled_paths(keras_served.card)[1].read_text())
    assert written.is_file() and record["max_probability_difference"] <= 1e-4
    assert compile_classifier(keras_served) == []  # already there: nothing rewritten

    served = load_model("tiny-cnn")
    assert served.compiled is not None and served.keras_model is None
    probabilities, flags = _answers(served)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert flags == expected_flags
    features, _ = served.feature_forward()(served.load(CELLS[0])[None])
    keras_features, _ = keras_served.feature_forward()(keras_served.load(CELLS[0])[None])
    np.testing.assert_allclose(features, np.asarray(keras_features), atol=1e-4)

    assert served.model.count_params() == keras_served.model.count_params()  # built on demand


def test_a_keras_model_first_asked_for_inside_a_trace_has_its_weights(store):
    """Built lazily inside a tf.function (faithfulness traces its forward pass around
    ``classifier.model``), the model must still be built eagerly with its weights; built in the
    trace's graph it answered a uniform 1/8 for every cell."""
    import tensorflow as tf

    keras_served = load_model("tiny-cnn")
    pixels = np.stack([keras_served.load(p) for p in CELLS]).astype(np.float32)
    expected = np.asarray(keras_served.model(pixels, training=False))
    compile_classifier(keras_served)
    served = load_model("tiny-cnn")
    assert served.compiled is not None and served.keras_model is None
    forward = tf.function(lambda x: served.model(x, training=False))
    np.testing.assert_allclose(forward(tf.constant(pixels)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(served.model(pixels, training=False)), expected, atol=1e-5
    )


def test_the_keras_model_is_built_for_serving_only(store):
    served = load_model("tiny-cnn")
    assert not served.model.compiled  # its saved compile config (an optimizer) is not built
    imported = []
    rebuilt = served.build_keras(on_keras_import=lambda: imported.append(True))
    assert imported == [True] and rebuilt.count_params() == served.model.count_params()


def test_a_damaged_compiled_graph_is_never_used(store):
    compile_classifier(load_model("tiny-cnn"))
    card = load_card(store / "models" / "tiny-cnn")
    graph, _ = compiled_paths(card)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    assert not has_compiled(card)
    served = load_model("tiny-cnn")
    assert served.compiled is None and served.keras_model is not None  # Keras answers instead
    assert _answers(served)[0].shape == (len(CELLS), 8)


def test_damaged_weights_are_refused_when_keras_is_built(store):
    compile_classifier(load_model("tiny-cnn"))
    shard = store / "models" / "tiny-cnn" / "weights-000.npz"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    served = load_model("tiny-cnn")  # answers come from the graph checked against its record
    assert served.compiled is not None
    with pytest.raises(ModelIntegrityError, match="weights-000.npz: sha256"):
        _ = served.model
    with pytest.raises(ModelIntegrityError, match="weights-000.npz: sha256"):
        load_model("tiny-cnn", compiled=False)


def test_compile_command_then_a_fresh_process_answers_without_tensorflow(
    store, cli, tmp_path, monkeypatch
):
    # From another directory: the converting child process must still find the package.
    monkeypatch.chdir(tmp_path)
    result = cli(["compile", "--model", "tiny-cnn"], store=store, check=True)
    assert "wrote" in result.stderr and "cache/compiled" in result.stderr
    assert "already compiled" in cli(["compile"], store=store, check=True).stderr
    code = (
        "import sys, json\n"
        "from bcclassify.serving.classifier import load_model\n"
        "c = load_model('tiny-cnn')\n"
        f"rows = c.classify([('cell', {str(CELLS[0])!r})])\n"
        "print(json.dumps([c.compiled is not None, rows[0].label,"
        " 'tensorflow' in sys.modules, 'keras' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"BCCLASSIFY_STORE": str(store), "PATH": "/usr/bin:/bin"},
    )
    compiled, label, tensorflow, keras = json.loads(out.stdout.strip().splitlines()[-1])
    assert compiled and label in load_card(store / "models" / "tiny-cnn")["class_names"]
    assert not tensorflow and not keras


def test_a_failed_conversion_is_refused_and_writes_nothing(store, monkeypatch):
    """The converting child process failing (here: it cannot start Python) is a CompileError
    naming its exit status, and leaves neither graph nor record behind."""
    from bcclassify.serving.compiled import CompileError

    served = load_model("tiny-cnn")
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(CompileError, match="ONNX conversion failed"):
        compile_classifier(served)
    graph_path, record_path = compiled_paths(served.card)
    assert not graph_path.exists() and not record_path.exists()
