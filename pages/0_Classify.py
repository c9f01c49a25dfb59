"""Classify: upload cell crops (or pick example cells), see each cell's class, its Grad-CAM maps
and the batch's differential count, and confirm or correct cells as a logged-in reviewer.

The app's default page (``app.py`` registers it). It reads as a table of contents: each region is
a function of ``ui.classify`` or ``ui.review``, every model, image and count operation a call into
the ``bcclassify`` library, and log-in is ``ui.login``'s.
"""

from __future__ import annotations

import streamlit as st

from bcclassify import CLASS_NAMES
from bcclassify.review.report import batch_shift_notice, reviewed_differential
from bcclassify.serving.uploads import UploadLimits
from ui import classify as view
from ui.login import login_ui, signed_in_identity
from ui.review import final_labels, open_review_log, review_log_ui
from ui.session import app_secrets, model_key


def main() -> None:
    st.title("Classify blood cells")
    st.caption(
        "Peripheral blood cell crops into 8 classes, with Grad-CAM maps of the evidence. "
        "A research tool, not a diagnostic device."
    )
    secrets = app_secrets()
    reviewer = login_ui(secrets)
    chosen = view.model_selector_ui()
    if chosen is None:
        return
    model_name, card = chosen
    key = model_key(model_name)
    limits = UploadLimits.from_env()
    items = view.inputs_ui(limits)
    log = open_review_log(secrets, reviewer)
    if reviewer is None:
        st.caption("Not logged in: you can classify and explain; saving decisions needs a log-in.")
    if not items:
        st.info("Upload one or more cell images, or pick example cells, to classify them.")
        review_log_ui(log, signed_in_identity(secrets))
        return
    results = view.classify_inputs(key, items, limits)
    view.refused_ui(items, results)
    cells = [(item, pred, thumb) for item, (pred, thumb) in zip(items, results) if pred.ok]
    if len(items) == 1 and cells:
        view.cell_detail_ui(log, reviewer, chosen, key, *cells[0][:2], limits)
    elif cells:
        reviewed = final_labels(log, model_name)
        st.success(f"{len(cells)} of {len(items)} image(s) classified with {model_name}.")
        notice = batch_shift_notice(len(cells), sum(p.flag == "unidentified" for _, p, _ in cells))
        if notice:
            st.warning(notice)
        view.gallery_ui(cells, reviewed)
        view.differential_ui(reviewed_differential([(i.sha256, p) for i, p, _ in cells], reviewed))
        # Predictions carry the file name as their path, and keep their flags in the export.
        view.export_ui([p for p, _ in results], card.get("class_names") or CLASS_NAMES)
        st.divider()
        view.cell_detail_ui(log, reviewer, chosen, key, *view.cell_picker_ui(cells), limits)
    st.divider()
    review_log_ui(log, signed_in_identity(secrets))


main()
