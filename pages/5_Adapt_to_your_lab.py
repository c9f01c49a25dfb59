"""Adapt to your lab: fit an installed model to a lab's cells from a few labelled crops (issue 12).

A logged-in reviewer uploads a zip of class folders, or picks the cells reviewers chose to keep on
the Classify page (``bcclassify.lab.kept``); the library takes at most K cells a class, refits the
model's head on them, and scores the source and the adapted model on the cells it did not take.
The reviewer then installs the adapted model (or discards it). Uploads stay in memory unless the
reviewer opts in to keeping the cells used; kept cells can all be forgotten here.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

import ui
from bcclassify.access import accounts
from bcclassify.lab.adapt import (
    DEFAULT_PER_CLASS,
    MAX_ZIP_BYTES,
    AdaptConfig,
    AdaptError,
    adapt,
    choose_cells,
    discard_staged,
    install_staged,
    keep_cells,
    read_zip_cells,
)
from bcclassify.lab.kept import KeptCells, KeptCellsError

RESULT = "adapt_result"  # session key: the staged adaptation awaiting install or discard
ZIP, KEPT = "Upload a zip", "Cells reviewed and kept here"
CONFIRM_FORGET = "adapt_confirm_forget"  # session key: the forget-all confirmation is showing


def reviewer(secrets: dict) -> str | None:
    """The reviewer logged in on the Classify page (OpenID Connect or a local account)."""
    if ui.oidc_providers(secrets) is not None:
        return ui.oidc_reviewer(st.user)
    name = st.session_state.get("reviewer_login")
    try:
        users = accounts.list_users(accounts.accounts_path(secrets))
    except accounts.AccountError:
        return None
    return name if name and any(u["name"] == name for u in users) else None


def figures_table(figures: dict) -> pd.DataFrame:
    rows = [
        ("accuracy", "Accuracy"),
        ("flagged_fraction", "Flagged for review (unidentified or low confidence)"),
        ("unidentified_fraction", "Unidentified"),
        ("wrong_and_unflagged_fraction", "Wrong and not flagged"),
    ]
    return pd.DataFrame(
        {
            "": [label for _, label in rows],
            "source model": [ui.percent(figures["before"].get(k)) for k, _ in rows],
            "adapted model": [ui.percent(figures["after"].get(k)) for k, _ in rows],
        }
    )


def result_ui(secrets: dict) -> None:
    result = st.session_state[RESULT]
    figures = result["figures"]
    st.subheader(f"{result['name']}: adapted from {result['source']}")
    st.write(
        f"Fitted on {result['taken']} cells; scored on the {result['held_back']} cells of "
        f"{result.get('from', 'your upload')} it did not take."
    )
    if figures:
        st.dataframe(figures_table(figures), hide_index=True, key="adapt_figures")
    else:
        st.info("Every uploaded cell was used for fitting: nothing was held back to score.")
    install, discard = st.columns(2)
    if install.button("Install this model", type="primary", key="adapt_install"):
        try:
            install_staged(result["name"])
        except AdaptError as exc:
            st.error(str(exc))
            return
        if result["keep"] is not None:
            kept = keep_cells(
                result["keep"], ui.configured_data_dir(secrets) / "lab-cells" / result["name"]
            )
            st.session_state["adapt_kept"] = kept
        st.session_state.pop(RESULT)
        st.session_state["adapt_installed"] = result["name"]
        st.rerun()
    if discard.button("Discard", key="adapt_discard"):
        discard_staged(result["name"])
        st.session_state.pop(RESULT)
        st.rerun()


def main() -> None:
    st.title("Adapt to your lab")
    st.caption(
        "Another lab's stain, camera and magnification change how cells look. From a few "
        "labelled cells of your lab, this fits the chosen model's final layer to them and "
        "installs the result as a new model; nothing else of the model changes."
    )
    secrets = ui.app_secrets()
    who = reviewer(secrets)
    if who is None:
        st.info("Log in on the Classify page (sidebar) to adapt a model.")
        return
    installed = st.session_state.pop("adapt_installed", None)
    if installed:
        st.success(f"Installed {installed}: choose it in the model selector on Classify.")
        kept = st.session_state.pop("adapt_kept", None)
        if kept:
            st.caption(f"{kept} cells kept, as you chose, under the data folder's lab-cells/.")
    if RESULT in st.session_state:
        result_ui(secrets)
        return
    cards = ui.model_cards()
    if not cards:
        st.info(f"No model installed. Install one first:\n\n```\n{ui.PROMOTE_HINT}\n```")
        return
    left, right = st.columns(2)
    source = left.selectbox("Model to adapt", list(cards), key="adapt_source")
    name = right.text_input("Name of the adapted model", value=f"{source}-lab", key="adapt_name")
    per_class = left.number_input(
        "Cells a class to fit on", 1, 50, DEFAULT_PER_CLASS, key="adapt_per_class"
    )
    seed = right.number_input("Seed (which cells are taken)", 0, 10**6, 0, key="adapt_seed")
    kind = st.radio("Cells to adapt to", [ZIP, KEPT], horizontal=True, key="adapt_cells_from")
    if kind == KEPT:
        got = kept_cells_ui(secrets)
        if got is None:
            return
        cells, label, keep = got, "kept-cells", None
    else:
        got = zip_cells_ui()
        if got is None:
            return
        cells, label, keep = got
    try:
        taken, rest = choose_cells(cells, int(per_class), int(seed))
    except AdaptError as exc:
        st.error(str(exc))
        return
    counts = pd.DataFrame(
        {
            "class": list(cells),
            "cells": [len(v) for v in cells.values()],
            "to fit on": [sum(c == k for _, c in taken) for k in cells],
            "held back to score": [sum(c == k for _, c in rest) for k in cells],
        }
    )
    st.dataframe(counts, hide_index=True, key="adapt_counts")
    if not st.button("Adapt", type="primary", key="adapt_run"):
        return
    bar = st.progress(0.0, text="Starting…")

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"{stage}: {done} of {total}")

    from bcclassify.cli.quiet_tensorflow import import_tensorflow_quietly

    import_tensorflow_quietly()
    config = AdaptConfig(
        source=source,
        cells=label,
        name=name.strip(),
        per_class=int(per_class),
        seed=int(seed),
        evaluate=True,
        requested_by=who,
    )
    try:
        done = adapt(config, cells=cells, progress=progress, install=False)
    except AdaptError as exc:
        st.error(str(exc))
        return
    st.session_state[RESULT] = {
        "name": done.name,
        "source": source,
        "taken": done.taken,
        "held_back": done.held_back,
        "figures": done.figures,
        "from": "the kept cells" if kind == KEPT else "your upload",
        "keep": [item for item, _ in taken] if keep else None,
    }
    st.rerun()


def zip_cells_ui() -> tuple[dict, str, bool] | None:
    """The uploaded zip's cells, the run's label for them and whether to keep the cells used."""
    upload = st.file_uploader(
        f"Labelled cells: a zip of class folders (basophil/, neutrophil/, …; at most "
        f"{MAX_ZIP_BYTES // 2**20} MB)",
        type=["zip"],
        key="adapt_zip",
    )
    st.caption(
        "Your upload is read in memory and is not written to disk. The adapted model's card "
        "records only the sha256 of each cell used."
    )
    keep = st.checkbox(
        "Keep the cells used for fitting with the model (written under the review data folder)",
        value=False,
        key="adapt_keep",
    )
    if upload is None:
        return None
    try:
        cells = read_zip_cells(upload.getvalue())
    except AdaptError as exc:
        st.error(str(exc))
        return None
    return cells, f"upload:{upload.name}", keep


def kept_cells_ui(secrets: dict) -> dict | None:
    """Counts of the cells reviewers kept on the Classify page, a forget-all button (with a
    confirmation step), and those cells as ``adapt``'s mapping; None when there are none."""
    store = KeptCells(ui.configured_data_dir(secrets), create=False)
    forgotten = st.session_state.pop("adapt_forgotten", None)
    if forgotten is not None:
        st.success(f"Forgot {forgotten} kept cell(s): their files and records are deleted.")
    try:
        counts = store.counts()
    except KeptCellsError as exc:
        st.error("The kept cells cannot be read:")
        st.text(str(exc))
        return None
    st.caption(
        "Cells a reviewer chose to keep when saving a decision on the Classify page (an opt-in "
        "box, off by default), each under the class of its latest decision, in the kept-cells "
        "folder beside the review log."
    )
    if not counts:
        st.info(
            "No cells are kept. On the Classify page, tick 'Keep this crop on the server' when "
            "saving a reviewer decision to keep a cell for adapting."
        )
        return None
    st.dataframe(
        pd.DataFrame({"class": list(counts), "kept cells": list(counts.values())}),
        hide_index=True,
        key="adapt_kept_counts",
    )
    total = sum(counts.values())
    if not st.session_state.get(CONFIRM_FORGET):
        st.button(
            "Forget all kept cells…",
            key="adapt_forget",
            on_click=st.session_state.update,
            kwargs={CONFIRM_FORGET: True},
        )
    else:
        st.warning(
            f"Delete all {total} kept cells from this server? Installed models are not changed."
        )
        yes, no = st.columns(2)
        if yes.button(f"Delete {total} kept cells", type="primary", key="adapt_forget_yes"):
            st.session_state.pop(CONFIRM_FORGET, None)
            try:
                st.session_state["adapt_forgotten"] = store.forget_all()
            except KeptCellsError as exc:
                st.error("Not all kept cells could be deleted:")
                st.text(str(exc))
                return None
            st.rerun()
        no.button(
            "Cancel",
            key="adapt_forget_no",
            on_click=st.session_state.pop,
            args=(CONFIRM_FORGET, None),
        )
        return None
    try:
        return store.cells()
    except KeptCellsError as exc:
        st.error("The kept cells cannot be read:")
        st.text(str(exc))
        return None


main()
