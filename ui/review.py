"""Classify's reviewer regions: open the review log, the confirm/correct form of one cell (with
the opt-in to keep its crop) and the log itself with its export."""

from __future__ import annotations

import streamlit as st

from bcclassify.access.roles import Identity, allowed
from bcclassify.lab.kept import KeptCells, KeptCellsError
from bcclassify.presentation.classify import (
    KEEP_CAPTION,
    apply_keep,
    kept_cell_for,
    last_decision_line,
    latest_classes,
    review_log_frame,
    saved_message,
)
from bcclassify.presentation.pages import CellInput, card_sha256
from bcclassify.presentation.tables import class_label
from bcclassify.review.reviews import ReviewLog, ReviewLogUnavailable
from bcclassify.review.reviews import default_data_dir as configured_data_dir  # one resolver
from bcclassify.serving.classifier import Prediction
from bcclassify.serving.uploads import WorkingCopy

SAVED = "review_saved"  # session key: (cell, message) of the decision just saved


def open_review_log(secrets: dict, reviewer: str | None) -> ReviewLog | None:
    """The review log for a logged-in reviewer; a log that cannot be opened is a banner."""
    if reviewer is None:
        return None
    try:
        return ReviewLog(configured_data_dir(secrets))
    except ReviewLogUnavailable as exc:
        st.error(
            "The review log cannot be opened, so decisions cannot be saved; classification goes "
            "on. Tell the administrator:"
        )
        st.text(str(exc))
        return None


def final_labels(log: ReviewLog | None, model_name: str) -> dict[str, str]:
    """The reviewer's latest class per image sha for this model ({} without a log)."""
    if log is None:
        return {}
    try:
        rows = log.entries(latest_only=True)
    except ReviewLogUnavailable as exc:
        st.error("The review log cannot be read; decisions are not shown.")
        st.text(str(exc))
        return {}
    return latest_classes(rows, model_name)


def review_ui(
    log: ReviewLog | None,
    reviewer: str | None,
    model: tuple[str, dict],
    item: CellInput,
    prediction: Prediction,
    cell: str,
    copy: WorkingCopy | None = None,
) -> None:
    """Confirm or correct this cell as the logged-in reviewer; committed to the log on submit.

    With ``copy`` (the cell's bounded working copy), the form also offers to keep the crop on
    the server for adapting a model to this lab: opt-in, off unless this cell is kept already."""
    if reviewer is None:
        st.info("Log in (sidebar) to confirm or correct this cell: decisions are saved by name.")
        return
    if log is None:
        return  # the banner above says why
    model_name, card = model
    names = list(prediction.class_names)
    try:
        earlier = [r for r in log.decisions_for(item.sha256) if r["model"] == model_name]
    except ReviewLogUnavailable:
        earlier = []
    current = earlier[-1]["reviewer_class"] if earlier else prediction.label
    with st.form(key=f"review-{cell}"):
        st.markdown("**Reviewer decision**")
        chosen = st.selectbox(
            "Class",
            names,
            index=names.index(current),
            format_func=class_label,
            key=f"review_class-{cell}",
        )
        comment = st.text_input("Comment (optional)", key=f"review_comment-{cell}")
        kept = KeptCells(log.path.parent, create=False)  # beside the review log; made on use
        was_kept = kept_cell_for(kept, item.sha256) if copy is not None else None
        keep = False
        if copy is not None:
            keep = st.checkbox(
                "Keep this crop on the server for adapting the model to this lab",
                value=was_kept is not None,
                key=f"review_keep-{cell}",
            )
            st.caption(KEEP_CAPTION)
        submitted = st.form_submit_button("Save decision (confirm or correct)", type="primary")
    if submitted:
        try:
            log.record(
                item.name,
                item.sha256,
                model_name,
                prediction.label,
                prediction.probabilities,
                chosen,
                comment,
                reviewer,
                model_card_sha256=card_sha256(model_name),
                training_run=str(card.get("training_run") or ""),
            )
        except ReviewLogUnavailable as exc:
            st.error("The decision was not saved: the review log cannot be written.")
            st.text(str(exc))
            return
        message = saved_message(chosen, prediction.label)
        if copy is not None:
            try:
                note = apply_keep(kept, keep, was_kept, item, copy, chosen, reviewer, model_name)
            except KeptCellsError as exc:
                st.error("The decision was saved, but the crop was not kept:")
                st.text(str(exc))
                return
            message += f" {note}" if note else ""
        # Rerun so the gallery and differential above already count this decision.
        st.session_state[SAVED] = (cell, message)
        st.rerun()
    saved = st.session_state.get(SAVED)
    if saved and saved[0] == cell:
        st.success(saved[1])
        del st.session_state[SAVED]
    elif earlier:
        st.text(last_decision_line(earlier[-1]))  # plain text: names and times are data


def review_log_ui(log: ReviewLog | None, identity: Identity | None) -> None:
    """The decisions the logged-in user may see, newest first, and their CSV export: every
    reviewer's for an admin, their own for anyone else (``ReviewLog.visible_entries``)."""
    st.subheader("Review log")
    if identity is None:
        st.info("Log in to see, save and export review decisions.")
        return
    if log is None:
        return
    try:
        entries = log.visible_entries(identity)
        exported = log.export_csv(identity)
    except ReviewLogUnavailable as exc:
        st.error("The review log cannot be read.")
        st.text(str(exc))
        return
    whose = "every reviewer's" if allowed(identity, "export_all_decisions") else "yours only"
    st.caption(
        f"{len(entries)} decision(s) ({whose}), newest first; rows are never changed or deleted."
    )
    if entries:
        st.dataframe(review_log_frame(entries), hide_index=True, key="review_log")
    st.download_button(
        "Export review log (CSV)",
        exported,
        file_name="bcclassify-reviews.csv",
        mime="text/csv",
        disabled=not entries,
    )
