"""Classify's regions: each draws its widgets and returns the user's choices (the model, the
inputs, the cell to inspect); what they show is shaped in ``bcclassify.presentation.classify``."""

from __future__ import annotations

import numpy as np
import streamlit as st

from bcclassify.data.imaging import IMAGE_TYPES, DecoderBusyError, ImageLoadError, load_image
from bcclassify.explain.maps import (
    COLOUR_BAR_CAPTION,
    METHODS,
    SEEN_CAPTION,
    colour_bar_figure,
    map_caption,
    overlay,
)
from bcclassify.presentation.classify import (
    FLAG_GROUPS,
    Cell,
    awaiting_note,
    cell_choice_label,
    cell_key,
    count_table,
    disputed_note,
    gallery_groups,
    group_heading,
    guess_note,
    low_confidence_note,
    not_read_table,
    refused_table,
    shown_maps,
    thumbnail_caption,
    unidentified_note,
)
from bcclassify.presentation.pages import (
    EXAMPLE_CREDIT,
    EXAMPLES_DIR,
    PROMOTE_HINT,
    TRAIN_HINT,
    CellInput,
    empty_store_note,
    example_images,
    example_label,
    model_cards,
    results_csv,
    unique_inputs,
)
from bcclassify.presentation.tables import MISSING, class_label, percent
from bcclassify.review.reviews import ReviewLog
from bcclassify.serving.classifier import Prediction
from bcclassify.serving.uploads import (
    UploadLimits,
    WorkingCopy,
    admit_uploads,
    classify_uploads,
)
from ui.figures import count_figure, probability_figure
from ui.review import review_ui
from ui.session import (
    USER_REQUESTS,
    cached_explainer,
    cached_explanation,
    cached_model,
    cached_working_copy,
    session_lru,
    stop_when_busy,
    working_copies,
)

THUMB_PX = 96
GALLERY_COLUMNS = 8
BATCH_SIZE = 16
SELECTED = "selected_cell"  # session key (and widget key): the batch's cell to inspect


def model_selector_ui() -> tuple[str, dict] | None:
    """The model to classify with (default: the store's default); None when none is installed."""
    cards = model_cards()
    if not cards:
        st.warning(
            f"{empty_store_note('No model is installed')}. Train one and install it:\n\n"
            f"```\n{TRAIN_HINT}\n{PROMOTE_HINT}\n```"
        )
        return None
    left, right = st.columns([2, 3])
    name = left.selectbox(
        "Model",
        list(cards),
        key="model",
        format_func=lambda n: n + (" (default)" if cards[n].get("default") else ""),
    )
    card = cards[name]
    metrics = card.get("test_metrics") or {}
    with right:
        a, b, c = st.columns(3)
        a.metric("Test accuracy", percent(metrics.get("accuracy"), 2))
        b.metric("Input size", f"{card.get('image_size')} px")
        c.metric("Architecture", card.get("architecture", "?"))
    return name, card


def inputs_ui(limits: UploadLimits) -> list[CellInput]:
    """Uploaded crops plus any chosen example cells, repeats removed, at most the file cap."""
    upload_col, example_col = st.columns([3, 2])
    uploaded = upload_col.file_uploader(
        "Upload cell images (JPEG, PNG, TIFF, BMP, GIF, WebP) — one or many, "
        f"up to {limits.max_files} per batch",
        type=list(IMAGE_TYPES),
        accept_multiple_files=True,
        key="uploads",
        max_upload_size=limits.max_file_mb,  # the browser's check; admit_uploads checks again
    )
    examples = example_images()
    options = [str(p.relative_to(EXAMPLES_DIR)) for p in examples]
    with example_col:
        chosen = st.multiselect(
            "…or pick example cells",
            options,
            key="examples",
            format_func=lambda rel: example_label(EXAMPLES_DIR / rel),
            placeholder="No files at hand? Choose examples",
        )
        st.button(
            f"Use all {len(options)} examples",
            on_click=lambda: st.session_state.update(examples=options),
            disabled=not options,
        )
        with st.expander("Example gallery"):
            try:
                thumbs = [load_image(p, THUMB_PX) for p in examples]
            except DecoderBusyError:  # other sessions' uploads hold every decode slot
                st.caption("The gallery is not shown while the server is busy; reopen it soon.")
            else:
                st.image(thumbs, caption=[class_label(p.parent.name) for p in examples], width=64)
            st.caption(EXAMPLE_CREDIT)
    # The caps are applied from names and sizes before any file is read or hashed.
    admitted, beyond, refused = admit_uploads(uploaded or [], limits)
    examples_taken = chosen[: limits.max_files - len(admitted)]
    if refused:
        st.error(f"{len(refused)} file(s) not read:")
        st.dataframe(not_read_table(refused), hide_index=True, key="not_read")
    skipped = len(beyond) + len(chosen) - len(examples_taken)
    if skipped:
        st.warning(
            f"{len(admitted) + len(examples_taken) + skipped} images given; this server "
            f"classifies at most {limits.max_files} per batch (BCCLASSIFY_MAX_FILES), so only "
            f"the first {limits.max_files} are read; {skipped} were left unread."
        )
    items = [CellInput.from_bytes(f.name, f.getvalue()) for f in admitted]
    items += [
        CellInput.from_bytes(rel, (EXAMPLES_DIR / rel).read_bytes()) for rel in examples_taken
    ]
    return unique_inputs(items)


def classify_inputs(
    model_key: tuple[str, str], items: list[CellInput], limits: UploadLimits
) -> list[tuple[Prediction, np.ndarray | None]]:
    """(prediction, thumbnail) in input order, cached in the session per model version."""
    cache = session_lru("predictions", 4 * limits.max_files)
    copies = working_copies()
    todo = [item for item in items if (*model_key, item.sha256, item.name) not in cache]
    if todo:
        bar = st.progress(0.0, text=f"Classifying {len(todo)} image(s)…")
        with USER_REQUESTS.active(), stop_when_busy():
            classifier = cached_model(model_key[0])
            results = classify_uploads(
                classifier,
                todo,
                limits,
                batch_size=BATCH_SIZE,
                progress=lambda done: bar.progress(done / len(todo), text=f"{done}/{len(todo)}"),
                keep=copies,
            )
        bar.empty()
        for item, result in zip(todo, results):
            cache[(*model_key, item.sha256, item.name)] = result
    return [cache[(*model_key, item.sha256, item.name)] for item in items]


def refused_ui(items: list[CellInput], results: list[tuple[Prediction, object]]) -> None:
    """The files that were not classified, each with the reason."""
    refused = [(item, pred) for item, (pred, _) in zip(items, results) if not pred.ok]
    if refused:
        st.error(f"{len(refused)} file(s) not classified:")
        st.dataframe(refused_table(refused), hide_index=True, key="refused")


def probabilities_ui(prediction: Prediction) -> None:
    """The class and confidence with all probabilities; a flagged cell says why."""
    chart = probability_figure(
        prediction.probabilities, prediction.class_names, prediction.threshold
    )
    if prediction.flag == "unidentified":
        st.markdown(f"### {FLAG_GROUPS['unidentified']}")
        st.warning(unidentified_note(prediction))
        with st.expander("The model's guess anyway (not to be relied on)"):
            st.caption(guess_note(prediction))
            st.metric("Top probability", percent(prediction.confidence, 1))
            st.plotly_chart(chart, key=f"probs-{prediction.path}")
        return
    st.markdown(f"### {class_label(prediction.label)}")
    st.metric("Confidence", percent(prediction.confidence, 1))
    if prediction.flag == "disputed":
        st.warning(disputed_note(prediction))
    if prediction.flag == "low_confidence":
        st.warning(low_confidence_note(prediction))
    st.plotly_chart(chart, key=f"probs-{prediction.path}")


def gradcam_ui(
    model_key: tuple[str, str],
    item: CellInput,
    copy: WorkingCopy,
    prediction: Prediction,
    cell: str,
) -> None:
    """Method, target class and opacity controls, then one overlay per map."""
    st.subheader("Where the model looked")
    names = list(prediction.class_names)
    c1, c2, c3 = st.columns(3)
    methods = list(METHODS)
    # The card's method is the one its faithfulness measurement chose (README, Model comparison).
    default = cached_explainer(model_key[0]).default_method
    method = c1.selectbox(
        "Method",
        methods,
        index=methods.index(default),
        format_func=lambda m: f"{METHODS[m]} (measured default)" if m == default else METHODS[m],
        key="cam_method",
    )
    target = c2.selectbox(
        "Target class",
        names,
        index=names.index(prediction.label),
        format_func=class_label,
        key=f"cam_target-{cell}",
        help="Default: the predicted class. Pick another to see what argues for it.",
    )
    opacity = c3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
    spinner = f"Computing {METHODS[method]} for {class_label(target)}…"
    explanation = cached_explanation(
        model_key, copy, item.sha256, method, target, prediction.probabilities, spinner
    )
    shown = shown_maps(explanation.maps)
    columns = st.columns(len(shown) + 1)
    columns[0].image(copy.pixels, caption="Original", width="stretch")
    for column, (layer, title) in zip(columns[1:], shown):
        column.image(
            overlay(copy.pixels, explanation.maps[layer], opacity, explanation.seen_fraction),
            caption=map_caption(explanation, title, class_label),
            width="stretch",
        )
    bar, note = st.columns([1, 2])
    bar.image(colour_bar_figure(), width="stretch")
    note.caption(
        f"{COLOUR_BAR_CAPTION} Red marks what raised the score of "
        f"{class_label(explanation.target_class)} (p = {explanation.probability:.3f})."
        + (f" {SEEN_CAPTION}" if explanation.seen_fraction else "")
    )


def cell_detail_ui(
    log: ReviewLog | None,
    reviewer: str | None,
    model: tuple[str, dict],
    model_key: tuple[str, str],
    item: CellInput,
    prediction: Prediction,
    limits: UploadLimits,
) -> None:
    """One cell: the image, its class and probabilities, its maps and the reviewer's form."""
    cell = item.sha256[:16]
    try:
        # Decoded once, kept in a small per-session LRU.
        copy = cached_working_copy(item.name, item.data, item.sha256, limits)
    except ImageLoadError as exc:
        st.error("This image cannot be shown.")
        st.text(str(exc))
        return
    left, right = st.columns([1, 2])
    with left:
        st.image(copy.pixels, width="stretch")
        st.text(item.name)  # a file name from the browser: plain text
    with right:
        probabilities_ui(prediction)
    gradcam_ui(model_key, item, copy, prediction, cell)
    review_ui(log, reviewer, model, item, prediction, cell, copy)


def gallery_ui(cells: list[Cell], reviewed: dict[str, str]) -> None:
    """Thumbnails: cells awaiting review first, then grouped by predicted class."""
    st.subheader("Gallery")
    for title, group in gallery_groups(cells):
        st.markdown(group_heading(title, group, reviewed))
        for start in range(0, len(group), GALLERY_COLUMNS):
            columns = st.columns(GALLERY_COLUMNS)
            for column, (item, pred, thumb) in zip(columns, group[start : start + GALLERY_COLUMNS]):
                column.image(
                    thumb, caption=thumbnail_caption(item.sha256, pred, reviewed), width="stretch"
                )
                column.button(
                    "Inspect",
                    key=f"inspect-{item.sha256[:16]}-{item.name}",
                    on_click=st.session_state.update,
                    kwargs={SELECTED: cell_key(item)},
                    width="stretch",
                )


def differential_ui(counts: dict) -> None:
    """Counts per class and the leukocyte differential, as a report gives them."""
    st.subheader(f"Differential count · {counts['total_cells']} cells")
    if counts["awaiting_review"]:
        st.warning(awaiting_note(counts))
    left, right = st.columns([2, 3])
    all_cells = count_table(counts["all_cells"], "% of all cells")
    left.dataframe(all_cells, hide_index=True, key="differential_all")
    right.plotly_chart(count_figure(counts["all_cells"], "All cells"), key="count_all")
    st.markdown(f"**Leukocyte differential** ({counts['leukocytes']} leukocytes)")
    leukocytes = count_table(counts["leukocyte_differential"], "% of leukocytes")
    left, right = st.columns([2, 3])
    left.dataframe(leukocytes, hide_index=True, key="differential_wbc")
    nrbc = counts["erythroblasts_per_100_leukocytes"]
    with right:
        a, b, c = st.columns(3)
        a.metric(
            "Erythroblasts per 100 leukocytes",
            MISSING if nrbc is None else f"{nrbc:.1f}",
            help=f"{counts['erythroblasts']} erythroblast(s); reported apart from the differential",
        )
        b.metric("Platelets (counted apart)", counts["platelets"])
        c.metric("Awaiting review", counts["awaiting_review"], help="Flagged, not yet reviewed")


def export_ui(predictions: list[Prediction], class_names) -> None:
    st.download_button(
        "Download results (CSV, same columns as `python -m bcclassify predict`)",
        results_csv(predictions, class_names),
        file_name="bcclassify-predictions.csv",
        mime="text/csv",
    )


def cell_picker_ui(cells: list[Cell]) -> tuple[CellInput, Prediction]:
    """The batch's cell to inspect (the gallery's Inspect buttons set it too)."""
    keys = {cell_key(item): (item, pred) for item, pred, _ in cells}
    if st.session_state.get(SELECTED) not in keys:
        st.session_state[SELECTED] = next(iter(keys))
    selected = st.selectbox(
        "Cell to inspect",
        list(keys),
        key=SELECTED,
        format_func=lambda k: cell_choice_label(*keys[k]),
    )
    return keys[selected]
