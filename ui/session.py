"""What needs Streamlit itself: the app's secrets, per-process model caches, per-session caches
of decoded images, predictions and maps, and table sizing."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from bcclassify.data.imaging import DecoderBusyError
from bcclassify.presentation.pages import card_sha256
from bcclassify.serving.compiled import compile_classifier
from bcclassify.serving.uploads import LRU, UploadLimits, WorkingCopy, explain_copy, working_copy
from bcclassify.storage.store import default_model_name, store_root

# Per-session caches hold a fixed number of entries, whatever a session uploads.
WORKING_COPIES_KEPT = 8  # decoded images (each at most 1024 px a side)
EXPLANATIONS_KEPT = 8  # Grad-CAM map sets, at working-copy size


def app_secrets() -> dict:
    """The app's secrets (``.streamlit/secrets.toml``), or none when there is no such file."""
    try:
        return dict(st.secrets) if st.secrets.load_if_toml_exists() else {}
    except Exception:  # noqa: BLE001 - an unreadable secrets file must not stop the app
        return {}


def table_height(rows: int) -> int:
    """Pixels for st.dataframe to show ``rows`` rows and the header without scrolling."""
    return 35 * (rows + 1) + 3


# The caches live here, not in the pages, so every page shares one loaded copy per server process.
# ``store`` and the card's sha256 are part of each key: the same name in another store, or
# re-promoted with new weights, is another model, so a re-promote is loaded afresh.


def keep_compiled_kernels() -> None:
    """Stop Streamlit from clearing TensorFlow's compiled kernels after every script run.

    Streamlit calls ``keras.backend.clear_session()`` when each run ends (``script_runner``'s
    ``_clean_problem_modules``), which empties TensorFlow's kernel cache. The models held in
    ``st.cache_resource`` then re-optimise their graphs on the next run: measured on 2 cores,
    about 1 s more to classify one image and 2.5 s more to explain it, on every upload. The
    app builds its models once per process, so there is no per-run Keras state to clear.
    """
    import keras

    if getattr(keras.backend.clear_session, "_keeps_kernels", False):
        return

    def clear_session(*args, **kwargs) -> None:
        return None

    clear_session._keeps_kernels = True
    keras.backend.clear_session = clear_session


@st.cache_resource(show_spinner="Loading the model (first use only)…", max_entries=4)
def _cached_model(name: str, store: str, card_sha256: str):
    from bcclassify.serving.classifier import load_model

    classifier = load_model(name)
    if classifier.compiled is None:  # Keras was imported to answer
        keep_compiled_kernels()
    else:  # Keras comes later, for the maps: patch it before anything is built with it
        classifier.build_keras = functools.partial(
            classifier.build_keras, on_keras_import=keep_compiled_kernels
        )
    return classifier


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_explainer(name: str, store: str, card_sha256: str):
    from bcclassify.explain.maps import Explainer

    # The first maps run eagerly (1.0 s against 2.8 s to trace); the preload traces when idle.
    return Explainer(_cached_model(name, store, card_sha256), eager_until_traced=True)


def cached_model(name: str):
    """The installed model ``name`` from the current store, loaded once per card version."""
    return _cached_model(name, str(store_root()), card_sha256(name))


def cached_explainer(name: str):
    """The Grad-CAM explainer of ``name``, built once per card version."""
    return _cached_explainer(name, str(store_root()), card_sha256(name))


class Requests:
    """How many page requests are waiting on a model now, so that background warm-up waits.

    On 2 cores, tracing the maps in the background while an upload is being classified delays
    the upload's answer by seconds; the preload traces them once nobody is waiting.
    """

    def __init__(self) -> None:
        self._waiting = 0
        self._changed = threading.Condition()

    @contextmanager
    def active(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
        try:
            yield
        finally:
            with self._changed:
                self._waiting -= 1
                self._changed.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no request is active (True), or ``timeout_s`` has passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting == 0, timeout_s)


USER_REQUESTS = Requests()
PRELOAD_ENV = "BCCLASSIFY_PRELOAD"  # "0": load models only when a page first needs them
# "0": the preload does not write the compiled graph (serving.compiled) that later starts use.
COMPILE_ENV = "BCCLASSIFY_COMPILE"


class Preloader:
    """Starts the default model's background load once (per instance; the app uses one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread | None:
        if os.environ.get(PRELOAD_ENV, "1") == "0":
            return None
        with self._lock:
            if self.thread is None:
                name = default_model_name()
                if name is None:
                    return None
                self.thread = threading.Thread(
                    target=_warm, args=(name,), name="bcclassify-preload", daemon=True
                )
                self.thread.start()
        return self.thread


PRELOADER = Preloader()


def preload_default_model() -> threading.Thread | None:
    """Load, trace and explain-trace the default model in the background, once per process;
    then, if it has none yet, write its compiled graph, from which later starts answer.

    Called by ``app.py`` when the first browser session opens (Streamlit runs no app code
    before that), so the model is ready while the user picks files instead of loading after
    the first upload. A page that needs the model meanwhile waits on the same cache entry.
    Returns the loading thread (None when disabled or when there is no default model).
    """
    return PRELOADER.start()


def _warm(name: str) -> None:
    import numpy as np

    log = logging.getLogger(__name__)
    started = time.monotonic()

    def done(step: str) -> None:  # the server log says where a slow start-up went
        log.info("preload %s: %s after %.1f s", name, step, time.monotonic() - started)

    try:
        classifier = cached_model(name)
        done("model loaded")
        blank = np.full((classifier.image_size, classifier.image_size, 3), 230, np.uint8)
        # Traces what serving runs, the second opinion included, then the default maps.
        (served,) = classifier.classify_pixels(blank[None], ["warm-up"])
        done("classification traced")
        # Importing Keras beside the model's load (tried) made the server and the page come up
        # a second later and the maps no sooner: it waits until the answer path is warm.
        USER_REQUESTS.wait_idle(timeout_s=120)  # an upload waiting for its answer goes first
        explainer = cached_explainer(name)
        explainer.explain_pixels(blank, probabilities=served.probabilities)
        done("maps ready (eager)")
        USER_REQUESTS.wait_idle(timeout_s=600)  # the trace makes maps asked meanwhile wait
        explainer.trace(blank, probabilities=served.probabilities)
        done("maps traced")
        if classifier.compiled is None and os.environ.get(COMPILE_ENV, "1") != "0":
            USER_REQUESTS.wait_idle(timeout_s=600)
            written = compile_classifier(classifier)
            done(f"compiled for the next start ({len(written)} graphs)")
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first upload loads it
        log.exception("preloading model %s failed", name)


# ----------------------------------------------------------------------------- per-session caches
# Shared by the pages: a session that explains a cell on Classify and compares models on the same
# cell computes each map once. Keys carry the model's name and card sha256, as the model caches do.


def model_key(name: str) -> tuple[str, str]:
    """What the session caches key a model by: its name and its card's sha256 (a re-promote
    under the same name is another model)."""
    return name, card_sha256(name)


def session_lru(key: str, size: int) -> LRU:
    """The session's LRU cache under ``st.session_state[key]``, made on first use."""
    cache = st.session_state.get(key)
    if not isinstance(cache, LRU):
        cache = st.session_state[key] = LRU(size)
    return cache


def working_copies() -> LRU:
    """The session's decoded images by sha256 (what ``classify_uploads`` fills as it goes)."""
    return session_lru("working_copies", WORKING_COPIES_KEPT)


@contextmanager
def stop_when_busy() -> Iterator[None]:
    """Every decode slot of the server stayed taken (``imaging.decode_slot``): say so, cache
    nothing, and end this run of the page; the user's next click retries."""
    try:
        yield
    except DecoderBusyError as exc:
        st.warning("The server is busy decoding other users' images. Try again in a minute.")
        st.text(str(exc))
        st.stop()


def cached_working_copy(name: str, data: bytes, sha256: str, limits: UploadLimits) -> WorkingCopy:
    """The image's bounded working copy, decoded once; a refused image raises ImageLoadError."""
    copies = working_copies()
    copy = copies.get(sha256)
    if copy is None:
        copy = copies[sha256] = working_copy(name, data, limits)
    return copy


def cached_explanation(
    model_key: tuple[str, str],
    copy: WorkingCopy,
    sha256: str,
    method: str,
    target: str,
    probabilities,
    spinner: str = "Computing the maps…",
):
    """Grad-CAM maps of ``copy`` for ``target`` at the working copy's size, a few kept per
    session under (model, card sha256, image sha256, method, target)."""
    cache = session_lru("explanations", EXPLANATIONS_KEPT)
    key = (*model_key, sha256, method, target)
    if key not in cache:
        name = model_key[0]
        with st.spinner(spinner), USER_REQUESTS.active(), stop_when_busy():
            cache[key] = explain_copy(
                cached_model(name), cached_explainer(name), copy, method, target, probabilities
            )
    return cache[key]
