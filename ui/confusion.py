"""Confusion matrices' regions: the model or run shown, a click on the heatmap picking a cell,
and the test images of one cell."""

from __future__ import annotations

import streamlit as st

from bcclassify.data.imaging import ImageLoadError, load_image
from bcclassify.presentation.pages import (
    TRAIN_HINT,
    RunView,
    figure_sources,
    figures_caption,
    load_figures,
    run_predictions,
    without_machine_paths,
)
from bcclassify.presentation.tables import class_label

MAX_THUMBNAILS = 48
LAST_CLICK = "cm_last_click"  # session key: the heatmap cell last clicked


def source_ui() -> RunView | None:
    """An installed model (its own figures, as served) or a run."""
    options = figure_sources()
    if not options:
        st.info(
            "No evaluated runs yet: a confusion matrix appears once a training run has finished. "
            f"Start one with\n\n```\n{TRAIN_HINT}\n```"
        )
        return None
    record = load_figures(st.selectbox("Model or run", options, key="cm_source"))
    st.caption(figures_caption(record))
    return record


def cell_from_chart(event, labels: list[str]) -> None:
    """A click on the heatmap picks the true/predicted pair (when plotly reports one)."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if not points:
        return
    point = points[0]
    pair = (point.get("y"), point.get("x"))
    if pair != st.session_state.get(LAST_CLICK) and all(p in labels for p in pair):
        st.session_state[LAST_CLICK] = pair
        st.session_state["cm_true"], st.session_state["cm_pred"] = pair


def images_ui(record: RunView, fold: int | None, true: str, predicted: str) -> None:
    """The test images of true class ``true`` predicted as ``predicted``, and their table."""
    frame = run_predictions(record, fold)
    cell = frame[(frame["true"] == true) & (frame["predicted"] == predicted)]
    st.markdown(
        f"**{len(cell)} test image(s)** of true class {class_label(true)} "
        f"predicted as {class_label(predicted)}"
    )
    if cell.empty:
        return
    local = cell[cell["image"] != ""]
    if local.empty:
        st.caption(
            f"The images are not available on this machine (looked in "
            f"`{without_machine_paths(record.config.get('data'))}`); probabilities only."
        )
    else:
        columns = st.columns(8)
        for i, (_, row) in enumerate(local.head(MAX_THUMBNAILS).iterrows()):
            try:
                thumb = load_image(row["image"], 96)
            except ImageLoadError:
                continue
            columns[i % 8].image(
                thumb,
                caption=f"p(pred) {row[predicted]:.2f} · p(true) {row[true]:.2f}",
                width="stretch",
            )
        if len(local) > MAX_THUMBNAILS:
            st.caption(f"First {MAX_THUMBNAILS} of {len(local)} shown; all are in the table.")
    names = record.class_names
    table = cell[["file", *names]].rename(columns={n: class_label(n) for n in names})
    st.dataframe(table, hide_index=True, key="cm_images")
