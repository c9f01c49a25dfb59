"""The app's process-wide set-up in ``ui.session``."""

from __future__ import annotations

import keras

from ui.session import keep_compiled_kernels


def test_streamlit_clear_session_keeps_compiled_state():
    # Streamlit calls keras.backend.clear_session() after every script run; in the app that
    # must not reset anything (it would drop TensorFlow's compiled kernels), here shown by
    # Keras's layer-name counter, which a real clear_session resets.
    original = keras.backend.clear_session
    try:
        keep_compiled_kernels()
        patched = keras.backend.clear_session
        keep_compiled_kernels()  # idempotent: one replacement, never a wrapper of a wrapper
        assert patched is not original and keras.backend.clear_session is patched
        first = keras.layers.Dense(1).name
        keras.backend.clear_session()
        second = keras.layers.Dense(1).name
        assert first != second  # the counter went on: nothing was cleared
    finally:
        keras.backend.clear_session = original
    keras.backend.clear_session()
    assert keras.layers.Dense(1).name == "dense"  # the real one, restored, does reset
