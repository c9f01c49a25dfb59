"""Method verification: how the model agrees with this lab's reviewers (logged-in users only)."""

from __future__ import annotations

import streamlit as st

from ui.login import login_ui, signed_in_identity
from ui.session import app_secrets
from ui.verification import (
    log_entries,
    matrix_ui,
    may_view,
    model_ui,
    per_class_ui,
    report_for,
    summary_ui,
)


def main() -> None:
    st.title("Method verification")
    st.caption(
        "The model compared with this lab's reviewers, decision by decision, as a lab verifies "
        "a method before trusting it (in the way of CLSI H20-A2): agreement, Cohen's kappa and "
        "per-class agreement, each with a 95% confidence interval."
    )
    secrets = app_secrets()
    login_ui(secrets)
    if not may_view(signed_in_identity(secrets)):
        return
    entries = log_entries(secrets)
    if entries is None:
        return
    chosen = model_ui(entries)
    if chosen is None:
        return
    report = report_for(entries, *chosen)
    summary_ui(report)
    matrix_ui(report)
    per_class_ui(report)


main()
