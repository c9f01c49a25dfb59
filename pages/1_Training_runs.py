"""Training runs: every run in the store, filterable; learning curves, configuration, CV folds."""

from __future__ import annotations

import streamlit as st

import ui
from bcclassify.storage.store import can_resume, list_runs


def filters_ui(table):
    """Architecture, status, option and text filters; returns the filtered table."""
    a, b, c, d = st.columns([2, 2, 2, 3])
    archs = a.multiselect("Architecture", sorted(table["architecture"].dropna().unique()))
    statuses = b.multiselect("Status", sorted(table["status"].dropna().unique()))
    options = c.multiselect("Options on", ["SMOTE", "augmentation", "shuffle"])
    text = d.text_input("Run id or note contains")
    if archs:
        table = table[table["architecture"].isin(archs)]
    if statuses:
        table = table[table["status"].isin(statuses)]
    for option in options:
        table = table[table[option]]
    if text:
        mask = table["run id"].str.contains(text, case=False, regex=False)
        table = table[mask | table["note"].str.contains(text, case=False, regex=False)]
    return table


def runs_table_ui(table) -> None:
    st.dataframe(
        table,
        hide_index=True,
        key="runs_table",
        height=ui.table_height(len(table)),
        column_config={
            "test accuracy": st.column_config.NumberColumn(format="percent"),
            "macro-F1": st.column_config.NumberColumn(format="percent"),
        },
    )
    st.caption("Best test accuracy first; click a column header to sort by another.")


def progress_ui(record: ui.RunView) -> None:
    fraction, text = ui.run_progress(record)
    st.progress(fraction, text=f"{record.run_id} is running: {text}")


def details_ui(record: ui.RunView) -> None:
    """Configuration, environment and (cross-validation) folds of one run."""
    run = record.run
    if run.get("status") == "failed":
        st.error(f"{record.run_id} failed: {run.get('error', 'no error recorded')}")
    if record.is_cv:
        st.markdown("**Cross-validation folds**")
        st.dataframe(ui.fold_table(record), hide_index=True, key=f"folds-{record.run_id}")
    config_tab, env_tab, run_tab = st.tabs(["Configuration", "Environment", "Run record"])
    # The records as written, without the training machine's folders.
    config_tab.json(ui.without_machine_paths(record.config), expanded=1)
    env_tab.json(ui.without_machine_paths(record.environment), expanded=1)
    run_tab.json(ui.without_machine_paths(record.run), expanded=1)


def main() -> None:
    st.title("Training runs")
    runs = list_runs()
    if not runs:
        st.info(
            f"{ui.empty_store_note('No training runs')} yet. Start one with\n\n"
            f"```\n{ui.TRAIN_HINT}\n```"
        )
        return
    table = ui.runs_table(runs)
    shown = filters_ui(table)
    runs_table_ui(shown)
    running = [r["run_id"] for r in runs if r.get("status") == "running"]
    for run in runs:
        if can_resume(run):
            st.warning(
                f"{run['run_id']} stopped before finishing (its process is gone). Continue it "
                f"with `python -m bcclassify train --resume {run['run_id']}`."
            )
        elif run.get("interrupted"):
            st.warning(
                f"{run['run_id']} stopped before finishing (its process is gone); resuming it "
                f"needs its training data, `{ui.without_machine_paths(run.get('data'))}`, "
                "on this machine."
            )
        elif run.get("status") == "running":
            progress_ui(ui.load_run(run["run_id"]))

    st.subheader("Learning curves")
    ids = list(shown["run id"])
    default = [r for r in ids if r not in running][:1] or ids[:1]
    selected = st.multiselect("Runs to overlay", ids, default=default, key="curve_runs")
    records = [ui.load_run(run_id) for run_id in selected]
    curves = ui.learning_curves(records)
    if curves:
        st.plotly_chart(ui.learning_curve_figure(curves), key="curves")
        st.caption(
            "Solid: training; dashed: validation (absent when a run had no validation part)."
        )
    elif selected:
        st.info("No epochs recorded yet for the selected run(s).")
    for record in records:
        with st.expander(f"{record.run_id} · details", expanded=len(records) == 1):
            details_ui(record)


main()
