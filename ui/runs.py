"""Training runs' regions: filters, the runs table, a running run's progress, one run's details
and the learning curves."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bcclassify.presentation.pages import (
    RunView,
    fold_table,
    learning_curves,
    load_run,
    run_progress,
    without_machine_paths,
)
from bcclassify.presentation.runs import RUN_OPTIONS, curve_defaults, filter_runs, for_viewer
from ui.figures import learning_curve_figure
from ui.session import table_height


def filters_ui(table: pd.DataFrame) -> pd.DataFrame:
    """Architecture, status, option and text filters; returns the filtered table."""
    a, b, c, d = st.columns([2, 2, 2, 3])
    archs = a.multiselect("Architecture", sorted(table["architecture"].dropna().unique()))
    statuses = b.multiselect("Status", sorted(table["status"].dropna().unique()))
    options = c.multiselect("Options on", RUN_OPTIONS)
    text = d.text_input("Run id or note contains")
    return filter_runs(table, archs, statuses, options, text)


def runs_table_ui(table: pd.DataFrame) -> None:
    st.dataframe(
        table,
        hide_index=True,
        key="runs_table",
        height=table_height(len(table)),
        column_config={
            "test accuracy": st.column_config.NumberColumn(format="percent"),
            "macro-F1": st.column_config.NumberColumn(format="percent"),
        },
    )
    st.caption("Best test accuracy first; click a column header to sort by another.")


def progress_ui(record: RunView) -> None:
    fraction, text = run_progress(record)
    st.progress(fraction, text=f"{record.run_id} is running: {text}")


def details_ui(record: RunView, signed_in: bool) -> None:
    """Configuration, environment and (cross-validation) folds of one run; what names people or
    files only for a logged-in user."""
    run = for_viewer(record.run, signed_in)
    if run.get("status") == "failed":
        st.error("This run failed:")
        st.text(str(run.get("error", "no error recorded")))  # plain text: it quotes file names
    if record.is_cv:
        st.markdown("**Cross-validation folds**")
        st.dataframe(fold_table(record), hide_index=True, key=f"folds-{record.run_id}")
    config_tab, env_tab, run_tab = st.tabs(["Configuration", "Environment", "Run record"])
    # The records as written, without the training machine's folders.
    config_tab.json(without_machine_paths(for_viewer(record.config, signed_in)), expanded=1)
    env_tab.json(without_machine_paths(record.environment), expanded=1)
    run_tab.json(without_machine_paths(run), expanded=1)


def learning_curves_ui(ids: list[str], running: list[str], signed_in: bool) -> None:
    """Overlaid learning curves of the chosen runs, then each one's details."""
    st.subheader("Learning curves")
    default = curve_defaults(ids, running)
    selected = st.multiselect("Runs to overlay", ids, default=default, key="curve_runs")
    records = [load_run(run_id) for run_id in selected]
    curves = learning_curves(records)
    if curves:
        st.plotly_chart(learning_curve_figure(curves), key="curves")
        st.caption(
            "Solid: training; dashed: validation (absent when a run had no validation part)."
        )
    elif selected:
        st.info("No epochs recorded yet for the selected run(s).")
    for record in records:
        with st.expander(f"{record.run_id} · details", expanded=len(records) == 1):
            details_ui(record, signed_in)
