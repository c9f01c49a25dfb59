"""Training runs: every run in the store, filterable; learning curves, configuration, CV folds."""

from __future__ import annotations

import streamlit as st

from bcclassify.presentation.pages import TRAIN_HINT, empty_store_note, load_run
from bcclassify.presentation.runs import stopped_note
from bcclassify.presentation.tables import runs_table
from bcclassify.storage.store import list_runs
from ui import runs as view
from ui.login import signed_in_identity
from ui.session import app_secrets


def main() -> None:
    st.title("Training runs")
    runs = list_runs()
    if not runs:
        st.info(
            f"{empty_store_note('No training runs')} yet. Start one with\n\n```\n{TRAIN_HINT}\n```"
        )
        return
    shown = view.filters_ui(runs_table(runs))
    view.runs_table_ui(shown)
    running = [r["run_id"] for r in runs if r.get("status") == "running"]
    for run in runs:
        note = stopped_note(run)
        if note:
            st.warning(note)
        elif run.get("status") == "running":
            view.progress_ui(load_run(run["run_id"]))
    signed_in = signed_in_identity(app_secrets()) is not None  # who asked, which files
    view.learning_curves_ui(list(shown["run id"]), running, signed_in)


main()
