"""Confusion matrices: an installed model's own test matrix or a run's; the images per cell."""

from __future__ import annotations

import numpy as np
import streamlit as st

import ui
from bcclassify.data.imaging import ImageLoadError, load_image

MAX_THUMBNAILS = 48


def source_ui() -> ui.RunView | None:
    """An installed model (its own figures, as served) or a run."""
    options = ui.figure_sources()
    if not options:
        st.info(
            "No evaluated runs yet: a confusion matrix appears once a training run has finished. "
            f"Start one with\n\n```\n{ui.TRAIN_HINT}\n```"
        )
        return None
    record = ui.load_figures(st.selectbox("Model or run", options, key="cm_source"))
    st.caption(ui.figures_caption(record))
    return record


def cell_from_chart(event, labels: list[str]) -> None:
    """A click on the heatmap picks the true/predicted pair (when plotly reports one)."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if not points:
        return
    point = points[0]
    pair = (point.get("y"), point.get("x"))
    if pair != st.session_state.get("cm_last_click") and all(p in labels for p in pair):
        st.session_state["cm_last_click"] = pair
        st.session_state["cm_true"], st.session_state["cm_pred"] = pair


def images_ui(record: ui.RunView, fold: int | None, true: str, predicted: str) -> None:
    frame = ui.run_predictions(record, fold)
    cell = frame[(frame["true"] == true) & (frame["predicted"] == predicted)]
    st.markdown(
        f"**{len(cell)} test image(s)** of true class {ui.class_label(true)} "
        f"predicted as {ui.class_label(predicted)}"
    )
    if cell.empty:
        return
    local = cell[cell["image"] != ""]
    if local.empty:
        st.caption(
            f"The images are not available on this machine (looked in "
            f"`{ui.without_machine_paths(record.config.get('data'))}`); probabilities only."
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
    table = cell[["file", *names]].rename(columns={n: ui.class_label(n) for n in names})
    st.dataframe(table, hide_index=True, key="cm_images")


def main() -> None:
    st.title("Confusion matrices")
    record = source_ui()
    if record is None:
        return
    fold = None
    if record.is_cv:
        folds = [f["fold"] for f in record.folds]
        choice = st.radio(
            "Folds", ["all folds (summed)", *[f"fold {k}" for k in folds]], horizontal=True
        )
        fold = None if choice.startswith("all") else int(choice.split()[-1])
    normalized = st.toggle("Row-normalised (recall per true class)", key="cm_normalized")
    names = record.class_names
    labels = [ui.class_label(n) for n in names]
    matrix = ui.run_confusion(record, fold)
    event = st.plotly_chart(
        ui.confusion_figure(matrix, names, normalized),
        key="cm_chart",
        on_select="rerun",
        selection_mode="points",
    )
    st.caption(f"{int(matrix.sum())} test images · rows: true class · columns: predicted class")
    cell_from_chart(event, labels)
    if "cm_true" not in st.session_state:
        # Open on the most frequent confusion: usually the first cell a reader wants to see.
        off_diagonal = matrix - np.diag(np.diag(matrix))
        true_index, pred_index = np.unravel_index(np.argmax(off_diagonal), matrix.shape)
        st.session_state["cm_true"] = labels[int(true_index)]
        st.session_state["cm_pred"] = labels[int(pred_index)]
    a, b = st.columns(2)
    true = a.selectbox("True class", labels, key="cm_true")
    predicted = b.selectbox("Predicted class", labels, key="cm_pred")
    images_ui(record, fold, names[labels.index(true)], names[labels.index(predicted)])


main()
