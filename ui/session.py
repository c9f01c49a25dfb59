"""What needs Streamlit itself: the app's secrets, per-process model caches, table sizing."""

from __future__ import annotations

import streamlit as st

from bcclassify.app_support import card_sha256
from bcclassify.store import store_root


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


@st.cache_resource(show_spinner="Loading TensorFlow and the model (first use only)…", max_entries=4)
def _cached_model(name: str, store: str, card_sha256: str):
    from bcclassify._tf import import_tensorflow_quietly
    from bcclassify.serving import load_model

    import_tensorflow_quietly()
    return load_model(name)


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_explainer(name: str, store: str, card_sha256: str):
    from bcclassify.explain import Explainer

    return Explainer(_cached_model(name, store, card_sha256))


def cached_model(name: str):
    """The installed model ``name`` from the current store, loaded once per card version."""
    return _cached_model(name, str(store_root()), card_sha256(name))


def cached_explainer(name: str):
    """The Grad-CAM explainer of ``name``, built once per card version."""
    return _cached_explainer(name, str(store_root()), card_sha256(name))
