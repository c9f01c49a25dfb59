"""The served forward pass as an ONNX graph, answered by ONNX Runtime without TensorFlow.

Why: importing TensorFlow and Keras and building the hybrid's graph takes 6-8 s on the 2-core
machines, most of a server's start-up, while ONNX Runtime imports in 0.1 s and opens the same
graph in under a second. The answer (class probabilities, and the pooled features the novelty
detector reads) comes from the compiled graph; Grad-CAM, ``adapt`` and training still use the
Keras model, built on first use (``ClassifierModel.model``).

The compiled file is derived, never shipped: ``model_store/`` keeps one copy of the weights (the
hybrid's float32 graph is 170 MB, over the per-file limit). It lives in
``<store>/../cache/compiled/`` under the model's weights id and this module's format, beside a
record of its sha256, the largest difference from Keras measured when it was written, and the
tool versions. A file that does not match its record is ignored (the Keras path answers), so a
damaged cache costs speed, never a wrong answer. ``python -m bcclassify compile`` writes it; the
app writes it in the background after its first start.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcclassify.serving.onnx_export import ExportError, function_to_onnx
from bcclassify.storage.cards import ModelCard, weights_id
from bcclassify.storage.store import atomic_write_bytes, sha256_bytes, sha256_file, store_root

__all__ = [
    "COMPILED_FORMAT",
    "MAX_DIFFERENCE",
    "CompiledForward",
    "CompileError",
    "compile_classifier",
    "compiled_dir",
    "compiled_paths",
    "has_compiled",
    "load_compiled",
    "write_compiled",
]

log = logging.getLogger(__name__)

# Part of the cache key: a change in what the graph computes or how it is exported is a new file.
COMPILED_FORMAT = "onnx-opset17-features-probabilities-v1"
OPSET = 17
INPUT_NAME = "pixels"
# Refuse to write a graph whose probabilities differ from Keras's by more than this on the
# parity batch (measured on the hybrid: 3e-7 for probabilities, 2e-6 for features).
MAX_DIFFERENCE = 1e-4


class CompileError(RuntimeError):
    """The compiled graph could not be written, or disagrees with the Keras model."""


def compiled_dir() -> Path:
    """Where compiled graphs are cached: beside the store, as the other derived caches are."""
    return store_root().resolve().parent / "cache" / "compiled"


def compiled_paths(card: ModelCard) -> tuple[Path, Path]:
    """The graph file and its record for the weights ``card`` describes."""
    stem = f"{weights_id(card)}-{sha256_bytes(COMPILED_FORMAT.encode())[:8]}"
    return compiled_dir() / f"{stem}.onnx", compiled_dir() / f"{stem}.json"


@dataclass
class CompiledForward:
    """pixels ``(N, S, S, 3)`` float32 -> (pooled head features, class probabilities)."""

    session: object  # onnxruntime.InferenceSession
    record: dict

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        features, probabilities = self.session.run(None, {INPUT_NAME: batch})
        return features, probabilities


def load_compiled(card: ModelCard) -> CompiledForward | None:
    """The compiled graph of these weights, or None when there is none or it fails its record
    (the caller then builds the Keras model; a bad file is logged, never used)."""
    graph_path, record_path = compiled_paths(card)
    if not graph_path.is_file() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        data = graph_path.read_bytes()
        if sha256_bytes(data) != record.get("sha256"):
            log.warning("%s does not match its record %s; not used", graph_path, record_path)
            return None
        import onnxruntime  # lazy: only servers with a compiled graph need it

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its start-up notices are not ours to show
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        log.warning("compiled graph %s unusable (%s); the Keras model answers", graph_path, exc)
        return None
    return CompiledForward(session, record)


def has_compiled(card: ModelCard) -> bool:
    """Whether the cache holds a graph for these weights that matches its record."""
    graph_path, record_path = compiled_paths(card)
    try:
        record = json.loads(record_path.read_text())
        return sha256_file(graph_path) == record.get("sha256")
    except (OSError, ValueError):
        return False


def compile_classifier(classifier, force: bool = False) -> list[Path]:
    """Write the compiled graphs of a loaded model and of its second opinion (where missing, or
    all with ``force``); returns the files written.

    ``classifier`` is a :class:`~bcclassify.serving.classifier.ClassifierModel` loaded with its
    batch normalisation folded, as served.
    """
    written = []
    second = classifier.second_opinion.model if classifier.second_opinion is not None else None
    for model in (classifier, second):
        if model is None or (not force and has_compiled(model.card)):
            continue
        written.append(write_compiled(model.model, model.card, model.image_size))
    return written


def write_compiled(keras_model, card: ModelCard, image_size: int) -> Path:
    """Export ``keras_model`` (pixels -> features, probabilities) to the cache, check it against
    Keras on a fixed batch, and record it; returns the graph's path.

    Written to temporary names and renamed, the record last, so a stopped export leaves no file
    that :func:`load_compiled` would open.
    """
    import tensorflow as tf
    import tf2onnx

    from bcclassify.serving.trust import features_model

    both = features_model(keras_model)
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)
    function = tf.function(lambda x: both(x, training=False), input_signature=[spec])
    try:  # in a child process: tf2onnx in this one would hold ~10 GB for the hybrid
        data = function_to_onnx(function, [spec], OPSET)
    except ExportError as exc:
        raise CompileError(str(exc)) from exc

    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    compiled = CompiledForward(session, {})
    batch = _parity_batch(image_size)
    keras_features, keras_probabilities = (np.asarray(t) for t in function(batch))
    features, probabilities = compiled(batch)
    difference = float(np.abs(probabilities - keras_probabilities).max())
    feature_difference = float(np.abs(features - keras_features).max())
    if not difference <= MAX_DIFFERENCE:
        raise CompileError(
            f"the compiled graph's probabilities differ from Keras's by {difference:.2e} "
            f"(allowed {MAX_DIFFERENCE:.0e}); not written"
        )
    graph_path, record_path = compiled_paths(card)
    record = {
        "format": COMPILED_FORMAT,
        "weights_id": weights_id(card),
        "image_size": image_size,
        "sha256": sha256_bytes(data),
        "bytes": len(data),
        "max_probability_difference": difference,
        "max_feature_difference": feature_difference,
        "parity_batch": len(batch),
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.unlink(missing_ok=True)  # old record first: never a record without its graph
    atomic_write_bytes(graph_path, data)
    atomic_write_bytes(record_path, (json.dumps(record, indent=1) + "\n").encode())
    log.info("compiled %s (%d MB)", graph_path, len(data) // 2**20)
    return graph_path


def _parity_batch(image_size: int) -> np.ndarray:
    """Noise, a flat grey field and a smooth gradient: inputs that reach every layer."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, image_size, image_size, 3)).astype(np.float32)
    grey = np.full((1, image_size, image_size, 3), 230.0, np.float32)
    ramp = np.linspace(0, 255, image_size, dtype=np.float32)
    gradient = np.broadcast_to(ramp[None, :, None, None], (1, image_size, image_size, 3)).copy()
    return np.concatenate([noise, grey, gradient.transpose(0, 2, 1, 3)])
