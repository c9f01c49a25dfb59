"""Adapt to your lab: fit an installed model to a lab's cells from a few labelled crops (issue 12).

A logged-in lab admin (``bcclassify.access.roles``: installing models changes every reviewer's
app) uploads a zip of class folders, or picks the cells reviewers chose to keep on the Classify
page (``bcclassify.lab.kept``); the library takes at most K cells a class, refits the model's head
(and, for the hybrid, a read-out of mid-level blocks) on them, and scores the source and the
adapted model on the cells it did not take. The admin then installs the adapted model (or
discards it), and can uninstall adapted models. Uploads stay in memory unless the admin opts in
to keeping the cells used; kept cells can all be forgotten here.
"""

from __future__ import annotations

import streamlit as st

from bcclassify.access.roles import allowed
from bcclassify.lab.adapt import AdaptConfig, AdaptError, choose_cells, clean_stale_staging
from bcclassify.presentation.adapt import KEPT, ZIP, split_table, staged_result
from bcclassify.presentation.pages import PROMOTE_HINT, model_cards
from ui import adapt as view
from ui.login import signed_in_identity
from ui.session import app_secrets


def main() -> None:
    st.title("Adapt to your lab")
    st.caption(
        "Another lab's stain, camera and magnification change how cells look. From a few "
        "labelled cells of your lab, this fits the chosen model's final layer to them (for "
        "the hybrid, with a new read-out of a few mid-level layers beside it) and installs the "
        "result as a new model; the layers that compute the features do not change."
    )
    secrets = app_secrets()
    who = signed_in_identity(secrets)  # logged in on the Classify page
    if who is None:
        st.info("Log in on the Classify page (sidebar) to adapt a model.")
        return
    if not allowed(who, "adapt"):
        st.info(
            "Adapting, installing and uninstalling models changes the app for every reviewer, "
            "so it is for lab admins. You are logged in as:"
        )
        st.text(f"{who.name} ({who.role})")
        return
    clean_stale_staging()  # staged adaptations nobody can install any more: ~100 MB each
    view.installed_ui()
    view.uninstall_ui(who)
    if view.RESULT in st.session_state:
        view.result_ui(secrets, who)
        return
    cards = model_cards()
    if not cards:
        st.info(f"No model installed. Install one first:\n\n```\n{PROMOTE_HINT}\n```")
        return
    source, name, per_class, seed = view.settings_ui(cards)
    view.curve_ui(source, cards[source])
    kind = st.radio("Cells to adapt to", [ZIP, KEPT], horizontal=True, key="adapt_cells_from")
    if kind == KEPT:
        cells, label, keep = view.kept_cells_ui(secrets, who), "kept-cells", False
    else:
        cells, label, keep = view.zip_cells_ui() or (None, "", False)
    if cells is None:
        return
    try:
        taken, rest = choose_cells(cells, per_class, seed)
    except AdaptError as exc:
        view.refused_ui("The cells cannot be used:", exc)
        return
    st.dataframe(split_table(cells, taken, rest), hide_index=True, key="adapt_counts")
    if not st.button("Adapt", type="primary", key="adapt_run"):
        return
    config = AdaptConfig(
        source=source,
        cells=label,
        name=name,
        per_class=per_class,
        seed=seed,
        evaluate=True,
        requested_by=who.name,
    )
    done = view.adapt_ui(config, cells, who)
    if done is None:
        return
    st.session_state[view.RESULT] = staged_result(done, source, kind, taken, keep)
    st.rerun()


main()
