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
    assert explainer.switch.traced  # first explained eagerly, then traced while nobody waited


@pytest.mark.slow  # loads, explains and compiles the tiny CNN
def test_preload_writes_the_compiled_graph_the_next_start_answers_from(cnn_store, monkeypatch):
    from bcclassify.serving.classifier import load_model
    from bcclassify.serving.compiled import has_compiled
    from ui import session

    monkeypatch.setenv(session.PRELOAD_ENV, "1")
    monkeypatch.setenv(session.COMPILE_ENV, "1")
    monkeypatch.setattr(session, "PRELOADER", session.Preloader())
    thread = session.preload_default_model()
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert has_compiled(session.cached_model("tiny-cnn").card)
    assert load_model("tiny-cnn").compiled is not None
    # The next server's cached model answers from the graph; its Keras waits for the maps.
    started = load_model("tiny-cnn")
    assert started.keras_model is None


@pytest.mark.slow  # loads and traces the tiny hybrid
def test_maps_warm_up_waits_while_an_upload_is_being_answered(tiny_store, monkeypatch):
    import threading
    import time

    from ui import session

    requests = session.Requests()
    assert requests.wait_idle(timeout_s=0.01)  # nobody waiting
    monkeypatch.setenv(session.PRELOAD_ENV, "1")
    monkeypatch.setattr(session, "PRELOADER", session.Preloader())
    monkeypatch.setattr(session, "USER_REQUESTS", requests)
    reached, traced = threading.Event(), threading.Event()
    real_wait, real_explainer = requests.wait_idle, session.cached_explainer

    def noting_wait(timeout_s):
        reached.set()
        return real_wait(timeout_s)

    def noting_explainer(name):
        traced.set()
        return real_explainer(name)

    monkeypatch.setattr(requests, "wait_idle", noting_wait)
    monkeypatch.setattr(session, "cached_explainer", noting_explainer)
    with requests.active():  # an upload is being classified
        assert not real_wait(timeout_s=0.01)
        thread = session.preload_default_model()
        assert reached.wait(timeout=600)  # the classification warm-up is done
        time.sleep(0.5)
        assert not traced.is_set() and thread.is_alive()  # the maps wait for the answer
    thread.join(timeout=600)
    assert traced.is_set() and not thread.is_alive()
