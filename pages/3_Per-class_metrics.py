"""Per-class metrics of an installed model (its own figures) or a run; compared class by class."""

from __future__ import annotations

import streamlit as st

from bcclassify.presentation.pages import (
    TRAIN_HINT,
    figure_sources,
    figures_caption,
    load_figures,
    model_cards,
    per_class_table,
)
from ui.figures import per_class_comparison_figure
from ui.metrics import calibration_ui


def main() -> None:
    st.title("Per-class metrics")
    sources = figure_sources()
    if not sources:
        st.info(
            "No evaluated runs yet: per-class metrics appear once a training run has finished. "
            f"Start one with\n\n```\n{TRAIN_HINT}\n```"
        )
        return
    record = load_figures(st.selectbox("Model or run", sources, key="metrics_run"))
    st.caption(figures_caption(record))
    table = per_class_table(record)
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

    if record.kind == "model":
        calibration_ui(model_cards().get(record.run_id) or {})

    st.subheader("Compare models and runs class by class")
    compared = st.multiselect(
        "Models and runs", sources, default=sources[:2], key="metrics_compare"
    )
    metric = st.radio("Metric", ["F1", "precision", "recall"], horizontal=True, key="metric")
    if compared:
        tables = {s: per_class_table(load_figures(s)) for s in compared}
        st.plotly_chart(per_class_comparison_figure(tables, metric), key="per_class_chart")


main()
