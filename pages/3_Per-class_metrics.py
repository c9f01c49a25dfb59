"""Per-class metrics of an installed model (its own figures) or a run; compared class by class."""

from __future__ import annotations

import streamlit as st

import ui


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

    if record.kind == "model":
        calibration_ui(ui.model_cards().get(record.run_id) or {})

    st.subheader("Compare models and runs class by class")
    compared = st.multiselect(
        "Models and runs", sources, default=sources[:2], key="metrics_compare"
    )
    metric = st.radio("Metric", ["F1", "precision", "recall"], horizontal=True, key="metric")
    if compared:
        tables = {s: ui.per_class_table(ui.load_figures(s)) for s in compared}
        st.plotly_chart(ui.per_class_comparison_figure(tables, metric), key="per_class_chart")


def calibration_ui(card: dict) -> None:
    """The model's confidence calibration and its flags, as recorded in its card."""
    figure = ui.reliability_figure(card)
    summary = ui.trust_summary(card)
    if figure is None or summary is None:
        st.caption("This model has no calibration record (`python -m bcclassify calibrate`).")
        return
    st.subheader("Calibration and flags")
    st.caption(
        "The confidence the app shows is calibrated (temperature scaling fitted on the "
        "validation split). Flagged cells are held out of the differential until reviewed."
    )
    st.plotly_chart(figure, key="reliability_chart")
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(
        summary,
        hide_index=True,
        key="trust_table",
        column_config={c: percent for c in summary.columns if c not in ("set", "cells")},
    )


main()
