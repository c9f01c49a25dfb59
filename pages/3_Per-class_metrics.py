"""Per-class metrics: precision, recall, F1 and support of a run; runs compared class by class."""

from __future__ import annotations

import streamlit as st

from bcclassify import app_support as ui


def main() -> None:
    st.title("Per-class metrics")
    runs = [r["run_id"] for r in ui.evaluated_runs()]
    if not runs:
        st.info(
            "No evaluated runs yet: per-class metrics appear once a training run has finished. "
            f"Start one with\n\n```\n{ui.TRAIN_HINT}\n```"
        )
        return
    run_id = st.selectbox("Run", runs, key="metrics_run")
    record = ui.load_run(run_id)
    table = ui.per_class_table(record)
    if record.is_cv:
        st.caption("Cross-validation run: scores from the confusion matrix pooled over its folds.")
    st.dataframe(
        table,
        hide_index=True,
        key="per_class_table",
        column_config={
            m: st.column_config.NumberColumn(format="%.3f") for m in ("precision", "recall", "F1")
        },
    )

    st.subheader("Compare runs class by class")
    compared = st.multiselect("Runs", runs, default=runs[:2], key="metrics_compare")
    metric = st.radio("Metric", ["F1", "precision", "recall"], horizontal=True, key="metric")
    if compared:
        tables = {r: ui.per_class_table(ui.load_run(r)) for r in compared}
        st.plotly_chart(ui.per_class_comparison_figure(tables, metric), key="per_class_chart")


main()
