"""Import TensorFlow without its native start-up chatter on stderr.

The predict contract promises one stderr line per refused file; TensorFlow's C++ runtime prints
CUDA probing and absl notices while it loads, so that import runs with stderr muted.
"""

from __future__ import annotations

import os
import sys
import threading

_IMPORTING = threading.Lock()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 muted; safe from several threads at once (the
    lock keeps a second caller from saving the muted descriptor as the one to restore)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _IMPORTING:
        if "tensorflow" in sys.modules:
            return
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
