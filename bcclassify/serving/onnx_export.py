"""TensorFlow graph -> ONNX bytes, converted in a child process that uses protobuf's pure-Python
implementation.

Why a child: tf2onnx rewrites every node's protobuf after each of its optimiser passes, and
under protobuf's default (upb) implementation a message's replaced fields stay in the message's
arena until the message is freed. For the hybrid (170 MB of weights, about 40 passes) that held
10-11 GB at the peak (measured 2026-12-07: 12.8 GB resident converting the adapted tiny hybrid in
the test suite, which sank CI's runners). The pure-Python implementation frees what it replaces
(4.1 GB peak for the same graph, 18 s), but has to be chosen before protobuf is first imported,
which TensorFlow has already done in the parent. So the parent freezes the function (TensorFlow,
as tf2onnx's own ``from_function`` does) and the child converts the frozen graph; the parent then
checks the result against Keras as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["ExportError", "function_to_onnx"]

_JOB = "job.json"
_GRAPH = "frozen.pb"
_ONNX = "model.onnx"
# How much of a failed child's stderr the error keeps.
_STDERR_TAIL = 4000


class ExportError(RuntimeError):
    """The child process could not convert the graph."""


def function_to_onnx(function, input_signature: list, opset: int) -> bytes:
    """The ONNX model (serialised) of a ``tf.function`` with one input signature; inputs and
    outputs named as ``tf2onnx.convert.from_function`` names them."""
    import tensorflow as tf
    from tf2onnx import tf_loader
    from tf2onnx.convert import tensor_names_from_structed

    concrete = function.get_concrete_function(*input_signature)
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
    output_names = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    job = {
        "name": concrete.name.decode() if isinstance(concrete.name, bytes) else str(concrete.name),
        "input_names": input_names,
        "output_names": output_names,
        "tensors_to_rename": tensor_names_from_structed(concrete, input_names, output_names),
        "opset": opset,
    }
    with tempfile.TemporaryDirectory(prefix="bcclassify-onnx-") as tmp:
        folder = Path(tmp)
        with tf.device("/cpu:0"):
            frozen = tf_loader.from_function(concrete, input_names, output_names)
        (folder / _GRAPH).write_bytes(frozen.SerializeToString())
        del frozen
        (folder / _JOB).write_text(json.dumps(job))
        # The package is not installed, only importable from its checkout: name that for the
        # child, whatever directory the server was started from.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = {
            **os.environ,
            "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
            "PYTHONPATH": path,
        }
        done = subprocess.run(
            [sys.executable, "-m", "bcclassify.serving.onnx_export", str(folder)],
            env=env,
            capture_output=True,
            text=True,
        )
        result = folder / _ONNX
        if done.returncode != 0 or not result.is_file():
            raise ExportError(
                f"ONNX conversion failed (exit {done.returncode}): {done.stderr[-_STDERR_TAIL:]}"
            )
        return result.read_bytes()


def _convert(folder: Path) -> None:
    """The child's side: the frozen graph in ``folder`` to ``folder/model.onnx``."""
    from bcclassify.serving.quiet_tensorflow import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf
    import tf2onnx

    job = json.loads((folder / _JOB).read_text())
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString((folder / _GRAPH).read_bytes())
    proto, _ = tf2onnx.convert.from_graph_def(
        graph,
        name=job["name"],
        input_names=job["input_names"],
        output_names=job["output_names"],
        opset=job["opset"],
        tensors_to_rename=job["tensors_to_rename"],
    )
    # A private temporary folder, read only after a clean exit: no partial-file dance needed.
    (folder / _ONNX).write_bytes(proto.SerializeToString())


if __name__ == "__main__":
    _convert(Path(sys.argv[1]))
