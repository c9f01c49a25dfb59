"""Confusion matrices: an installed model's own test matrix or a run's; the images per cell."""

from __future__ import annotations

import streamlit as st

from bcclassify.presentation.confusion import chosen_fold, fold_choices, most_confused
from bcclassify.presentation.pages import run_confusion
from bcclassify.presentation.tables import class_label
from ui import confusion as view
from ui.figures import confusion_figure


def main() -> None:
    st.title("Confusion matrices")
    record = view.source_ui()
    if record is None:
        return
    fold = None
    if record.is_cv:
        choice = st.radio("Folds", fold_choices([f["fold"] for f in record.folds]), horizontal=True)
        fold = chosen_fold(choice)
    normalized = st.toggle("Row-normalised (recall per true class)", key="cm_normalized")
    names = record.class_names
    labels = [class_label(n) for n in names]
    matrix = run_confusion(record, fold)
    event = st.plotly_chart(
        confusion_figure(matrix, names, normalized),
        key="cm_chart",
        on_select="rerun",
        selection_mode="points",
    )
    st.caption(f"{int(matrix.sum())} test images · rows: true class · columns: predicted class")
    view.cell_from_chart(event, labels)
    if "cm_true" not in st.session_state:
        true_index, pred_index = most_confused(matrix)
        st.session_state["cm_true"] = labels[true_index]
        st.session_state["cm_pred"] = labels[pred_index]
    a, b = st.columns(2)
    true = a.selectbox("True class", labels, key="cm_true")
    predicted = b.selectbox("Predicted class", labels, key="cm_pred")
    view.images_ui(record, fold, names[labels.index(true)], names[labels.index(predicted)])


main()
