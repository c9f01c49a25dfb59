"""Per-class metrics of an installed model (its own figures) or a run; compared class by class."""

from __future__ import annotations

import streamlit as st

from bcclassify import app_support as ui


def main() -> None:
    st.title("Per-class metrics")
    sources = ui.figure_sources()
    if not sources:
        st.info(
            "No evaluated runs yet: per-class metrics appear once a training run has finished. "
            f"Start one with\n\n```\n{ui.TRAIN_HINT}\n```"
        )
        return
    record = ui.load_figures(st.selectbox("Model or run", sources, key="metrics_run"))
    st.caption(ui.figures_caption(record))
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

    st.subheader("Compare models and runs class by class")
    compared = st.multiselect(
        "Models and runs", sources, default=sources[:2], key="metrics_compare"
    )
    metric = st.radio("Metric", ["F1", "precision", "recall"], horizontal=True, key="metric")
    if compared:
        tables = {s: ui.per_class_table(ui.load_figures(s)) for s in compared}
        st.plotly_chart(ui.per_class_comparison_figure(tables, metric), key="per_class_chart")


main()
