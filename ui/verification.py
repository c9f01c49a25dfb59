"""Method verification's regions: who may look, which model, the summary, the matrix, the table."""

from __future__ import annotations

import math

import streamlit as st

from bcclassify import CLASS_NAMES
from bcclassify.access.roles import Identity, allowed
from bcclassify.evaluation.agreement import (
    AgreementReport,
    agreement_matrix,
    agreement_report,
    log_models,
    reviewed_pairs,
)
from bcclassify.presentation.tables import MISSING
from bcclassify.presentation.verification import (
    MIN_CELLS_PER_CLASS,
    agreement_rows,
    interval_text,
    model_choice,
    percent,
)
from bcclassify.review.reviews import ReviewLog, ReviewLogUnavailable
from bcclassify.review.reviews import default_data_dir as configured_data_dir  # one resolver
from ui.figures import confusion_figure
from ui.session import table_height

PROMPT = "Log in to see how the model agrees with this lab's reviewers."


def may_view(identity: Identity | None) -> bool:
    """Anonymous visitors see nothing here; every logged-in role sees aggregate agreement."""
    if allowed(identity, "view_agreement"):
        return True
    st.info(PROMPT)
    return False


def log_entries(secrets: dict) -> list[dict] | None:
    """Every decision in the review log; a log that cannot be read is a banner."""
    try:
        return ReviewLog(configured_data_dir(secrets)).entries()
    except ReviewLogUnavailable as exc:
        st.error("The review log cannot be read. Tell the administrator:")
        st.text(str(exc))
        return None


def model_ui(entries: list[dict]) -> tuple[str, str] | None:
    """The (model, card sha256) to verify, among those with reviewed cells."""
    models = log_models(entries)
    if not models:
        st.info(
            "No reviewed cells yet: agreement appears once reviewers have confirmed or corrected "
            "cells on the Classify page."
        )
        return None
    labels = [model_choice(*m) for m in models]
    index = labels.index(st.selectbox("Model (name and card)", labels, key="verify_model"))
    model, card, _ = models[index]
    return model, card


def report_for(entries: list[dict], model: str, card: str) -> AgreementReport:
    reviewer, predicted = reviewed_pairs(entries, model, card)
    return agreement_report(agreement_matrix(reviewer, predicted, CLASS_NAMES), CLASS_NAMES)


def summary_ui(report: AgreementReport) -> None:
    reviewed, overall, kappa = st.columns(3)
    reviewed.metric("Reviewed cells", report.total)
    overall.metric("Overall agreement", percent(report.percent_agreement))
    overall.caption(f"95% CI {interval_text(report.percent_agreement_ci)} (Wilson)")
    no_kappa = math.isnan(report.kappa)  # no cells, or one class only on both sides
    kappa.metric("Cohen's kappa", MISSING if no_kappa else f"{report.kappa:.3f}")
    kappa.caption(f"95% CI {interval_text(report.kappa_ci, as_percent=False)}")
    st.caption(
        "Each reviewed cell counts once, with its newest decision. The reviewer's class is the "
        "reference. Kappa corrects the agreement for what chance alone would give."
    )


def matrix_ui(report: AgreementReport) -> None:
    st.subheader("Model against reviewer")
    st.plotly_chart(
        confusion_figure(
            report.matrix,
            CLASS_NAMES,
            rows="reviewer's class",
            columns="model's class",
            unit="cells",
        ),  # fmt: skip
        key="verify_matrix",
    )


def per_class_ui(report: AgreementReport) -> None:
    st.subheader("Per class")
    rows = agreement_rows(report)
    st.dataframe(rows, hide_index=True, key="verify_table", height=table_height(len(rows)))
    st.caption(
        "PPA (positive percent agreement): of the cells a reviewer put in the class, the share "
        "the model put there too. NPA: of the cells a reviewer put elsewhere, the share the model "
        f"put elsewhere too. Intervals are Wilson 95%. Under {MIN_CELLS_PER_CLASS} reviewer cells "
        "a class's interval is too wide to decide on: review more cells of it."
    )
