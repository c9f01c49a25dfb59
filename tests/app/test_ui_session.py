"""The app's process-wide set-up in ``ui.session``."""

from __future__ import annotations

import keras
import pytest

from ui.session import keep_compiled_kernels


def test_streamlit_clear_session_keeps_compiled_state():
    # Streamlit calls keras.backend.clear_session() after every script run; in the app that
    # must not reset anything (it would drop TensorFlow's compiled kernels), here shown by
    # Keras's layer-name counter, which the real clear_session resets. Another test in this
    # process may already have loaded a model through the app's cache, and so patched it.
    from keras.src.backend.common.global_state import clear_session as real_clear_session

    before = keras.backend.clear_session
    try:
        keep_compiled_kernels()
        patched = keras.backend.clear_session
        keep_compiled_kernels()  # idempotent: one replacement, never a wrapper of a wrapper
        assert patched is not real_clear_session and keras.backend.clear_session is patched
        first = keras.layers.Dense(1).name
        keras.backend.clear_session()
        second = keras.layers.Dense(1).name
        assert first != second  # the counter went on: nothing was cleared
    finally:
        keras.backend.clear_session = before
    real_clear_session()
    assert keras.layers.Dense(1).name == "dense"  # the real one does reset


def test_preload_is_off_when_asked(monkeypatch):
    from ui import session

    monkeypatch.setenv(session.PRELOAD_ENV, "0")
    assert session.preload_default_model() is None


@pytest.mark.slow
def test_preload_loads_and_traces_the_default_in_the_background(tiny_store, monkeypatch):
    from ui import session

    monkeypatch.setenv(session.PRELOAD_ENV, "1")
    monkeypatch.setattr(session, "PRELOADER", session.Preloader())
    thread = session.preload_default_model()
    assert thread is not None and thread.daemon
    assert session.preload_default_model() is thread  # once per process
    thread.join(timeout=600)
    assert not thread.is_alive()
    explainer = session.cached_explainer("tiny-hybrid")
    # The warm-up explained with the card's default method, so that visualizer is built.
    assert explainer.default_method in explainer.visualizers
