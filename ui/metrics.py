"""Per-class metrics' regions: an installed model's calibration and flag figures."""

from __future__ import annotations

import streamlit as st

from bcclassify.presentation.pages import trust_summary
from ui.figures import reliability_figure


def calibration_ui(card: dict) -> None:
    """The model's confidence calibration and its flags, as recorded in its card."""
    figure = reliability_figure(card)
    summary = trust_summary(card)
    if figure is None or summary is None:
        st.caption("This model has no calibration record (`python -m bcclassify calibrate`).")
        return
    st.subheader("Calibration and flags")
    st.caption(
        "The confidence the app shows is calibrated (temperature scaling fitted on the "
        "validation split). Flagged cells are held out of the differential until reviewed. "
        "The split rows are from calibration; the rows marked 'as served now' (from "
        "`evaluate`) are the model as it answers today, every flag on. 'ECE by chance alone' is "
        "the ECE a perfectly calibrated model would show on that many cells: an ECE near it is "
        "no sign of miscalibration."
    )
    st.plotly_chart(figure, key="reliability_chart")
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(
        summary,
        hide_index=True,
        key="trust_table",
        column_config={c: percent for c in summary.columns if c not in ("set", "cells")},
    )
