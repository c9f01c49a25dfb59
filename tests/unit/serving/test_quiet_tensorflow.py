"""Importing TensorFlow with stderr muted leaves stderr working afterwards, also when the app's
threads (the preload's Keras import and a model load) ask for it at the same moment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bcclassify import REPO_ROOT

CONCURRENT_IMPORTS = """
import os, threading
from bcclassify.serving.quiet_tensorflow import import_tensorflow_quietly
start = threading.Barrier(4)
def imports():
    start.wait()
    import_tensorflow_quietly()
threads = [threading.Thread(target=imports) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
import tensorflow
os.write(2, b"stderr-still-heard")
"""


@pytest.mark.slow  # a fresh process imports TensorFlow
def test_concurrent_quiet_imports_leave_stderr_open():
    done = subprocess.run(
        [sys.executable, "-c", CONCURRENT_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert done.stderr.endswith("stderr-still-heard")
    assert "cuda" not in done.stderr.lower()  # the import itself stayed muted
