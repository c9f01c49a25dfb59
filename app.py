"""bcclassify web app: the entry point and the Classify page.

Run with ``streamlit run app.py``. The other pages live in ``pages/``; this file registers them in
order with human names. Pages only present results: every model, image and metric operation is a
call into the ``bcclassify`` library.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from bcclassify import CLASS_NAMES, DATASET_CREDIT
from bcclassify import app_support as ui
from bcclassify.explain import METHODS, map_title, overlay
from bcclassify.imaging import load_image
from bcclassify.report import differential_count
from bcclassify.reviews import ReviewLog
from bcclassify.serving import Prediction
from bcclassify.store import models_dir

UPLOAD_TYPES = ["jpg", "jpeg", "png", "tif", "tiff", "bmp", "gif", "webp"]
THUMB_PX = 96
GALLERY_COLUMNS = 8
BATCH_SIZE = 16


# ----------------------------------------------------------------------------- Classify regions


def model_selector_ui() -> tuple[str, dict] | None:
    """The model to classify with (default: the store's default); None when none is installed."""
    cards = ui.model_cards()
    if not cards:
        st.warning(
            f"No model is installed under `{models_dir()}`. Train one and install it:\n\n"
            f"```\n{ui.TRAIN_HINT}\n{ui.PROMOTE_HINT}\n```"
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
        a.metric("Test accuracy", ui.percent(metrics.get("accuracy"), 2))
        b.metric("Input size", f"{card.get('image_size')} px")
        c.metric("Architecture", card.get("architecture", "?"))
    return name, card


def inputs_ui() -> list[ui.CellInput]:
    """Uploaded crops plus any chosen example cells, repeats removed."""
    upload_col, example_col = st.columns([3, 2])
    uploaded = upload_col.file_uploader(
        "Upload cell images (JPEG, PNG, TIFF, BMP, GIF, WebP) — one or many",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key="uploads",
    )
    examples = ui.example_images()
    options = [str(p.relative_to(ui.EXAMPLES_DIR)) for p in examples]
    with example_col:
        chosen = st.multiselect(
            "…or pick example cells",
            options,
            key="examples",
            format_func=lambda rel: ui.example_label(ui.EXAMPLES_DIR / rel),
            placeholder="No files at hand? Choose examples",
        )
        st.button(
            f"Use all {len(options)} examples",
            on_click=lambda: st.session_state.update(examples=options),
            disabled=not options,
        )
        with st.expander("Example gallery"):
            thumbs = [load_image(p, THUMB_PX) for p in examples]
            st.image(thumbs, caption=[ui.class_label(p.parent.name) for p in examples], width=64)
            st.caption(ui.EXAMPLE_CREDIT)
    items = [ui.CellInput.from_bytes(f.name, f.getvalue()) for f in uploaded or []]
    items += [ui.CellInput.from_bytes(rel, (ui.EXAMPLES_DIR / rel).read_bytes()) for rel in chosen]
    return ui.unique_inputs(items)


def classify_inputs(model_name: str, items: list[ui.CellInput]) -> list[Prediction]:
    """Predictions in input order; results are cached in the session by (model, sha, name)."""
    cache: dict = st.session_state.setdefault("predictions", {})
    todo = [item for item in items if (model_name, item.sha256, item.name) not in cache]
    if todo:
        classifier = ui.cached_model(model_name)
        bar = st.progress(0.0, text=f"Classifying {len(todo)} image(s)…")
        results = classifier.classify(
            [(item.name, item.data) for item in todo],
            batch_size=BATCH_SIZE,
            progress=lambda done: bar.progress(done / len(todo), text=f"{done}/{len(todo)}"),
        )
        bar.empty()
        for item, result in zip(todo, results):
            cache[(model_name, item.sha256, item.name)] = result
    return [cache[(model_name, item.sha256, item.name)] for item in items]


def explanation_for(
    model_name: str, item: ui.CellInput, method: str, target: str, probabilities: np.ndarray
):
    """Grad-CAM maps at the original image's size, cached in the session."""
    cache: dict = st.session_state.setdefault("explanations", {})
    key = (model_name, item.sha256, method, target)
    if key not in cache:
        classifier = ui.cached_model(model_name)
        explainer = ui.cached_explainer(model_name)
        original = load_image(item.data, name=item.name)
        with st.spinner(f"Computing {METHODS[method]} for {ui.class_label(target)}…"):
            cache[key] = explainer.explain_pixels(
                classifier.load(item.data, name=item.name),
                method=method,
                target=target,
                output_size=original.shape[:2],
                probabilities=probabilities,
            )
    return cache[key]


def review_context() -> tuple[ReviewLog, str]:
    """The review log (folder chosen in the sidebar) and the reviewer's name."""
    with st.sidebar:
        st.subheader("Review")
        reviewer = st.text_input("Reviewer", key="reviewer", placeholder="your initials")
        try:
            secrets = dict(st.secrets) if st.secrets.load_if_toml_exists() else {}
        except Exception:  # noqa: BLE001 - an unreadable secrets file must not stop the app
            secrets = {}
        folder = st.text_input(
            "Review log folder",
            value=str(ui.configured_data_dir(secrets)),
            key="data_dir",
            help="Default: $BCCLASSIFY_DATA_DIR, else the BCCLASSIFY_DATA_DIR secret, "
            "else ~/.bcclassify. Decisions go to reviews.sqlite3 in this folder.",
        )
    return ReviewLog(folder), reviewer


def final_labels(log: ReviewLog, model_name: str) -> dict[str, str]:
    """The reviewer's latest class per image sha for this model."""
    return {
        row["image_sha256"]: row["reviewer_class"]
        for row in log.entries(latest_only=True)
        if row["model"] == model_name
    }


def probabilities_ui(prediction: Prediction) -> None:
    label = ui.class_label(prediction.label)
    st.markdown(f"### {label}")
    st.metric("Confidence", ui.percent(prediction.confidence, 1))
    if prediction.flag == "low_confidence":
        st.warning(
            f"Low confidence (below {ui.percent(prediction.threshold, 0)}): treat as "
            "**unidentified** and review, as an analyser would flag it."
        )
    st.plotly_chart(
        ui.probability_figure(
            prediction.probabilities, prediction.class_names, prediction.threshold
        ),
        key=f"probs-{prediction.path}",
    )


def gradcam_ui(model_name: str, item: ui.CellInput, prediction: Prediction, cell: str) -> None:
    """Method, target class and opacity controls, then one overlay per map."""
    st.subheader("Where the model looked")
    names = list(prediction.class_names)
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Method", list(METHODS), format_func=METHODS.get, key="cam_method")
    target = c2.selectbox(
        "Target class",
        names,
        index=names.index(prediction.label),
        format_func=ui.class_label,
        key=f"cam_target-{cell}",
        help="Default: the predicted class. Pick another to see what argues for it.",
    )
    opacity = c3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
    explanation = explanation_for(model_name, item, method, target, prediction.probabilities)
    original = load_image(item.data, name=item.name)
    trunk_maps = [layer for layer in explanation.maps if layer != "fused"]
    # A one-trunk model's fused map is its only map; show both trunks only for the hybrid.
    shown = [*trunk_maps, "fused"] if len(trunk_maps) > 1 else ["fused"]
    columns = st.columns(len(shown) + 1)
    columns[0].image(original, caption=f"Original · {item.name}", width="stretch")
    for column, layer in zip(columns[1:], shown):
        title = map_title(layer) if len(trunk_maps) > 1 else map_title(trunk_maps[0])
        column.image(
            overlay(original, explanation.maps[layer], opacity),
            caption=f"{METHODS[method]} · {title}",
            width="stretch",
        )
    st.caption(
        f"{METHODS[method]} for {ui.class_label(explanation.target_class)} "
        f"(p = {explanation.probability:.3f}); red marks what raised its score."
    )


def review_ui(
    log: ReviewLog,
    reviewer: str,
    model_name: str,
    item: ui.CellInput,
    prediction: Prediction,
    cell: str,
) -> None:
    """Confirm or correct this cell; the decision is committed to the log on submit."""
    names = list(prediction.class_names)
    earlier = [r for r in log.decisions_for(item.sha256) if r["model"] == model_name]
    current = earlier[-1]["reviewer_class"] if earlier else prediction.label
    with st.form(key=f"review-{cell}"):
        st.markdown("**Reviewer decision**")
        chosen = st.selectbox(
            "Class",
            names,
            index=names.index(current),
            format_func=ui.class_label,
            key=f"review_class-{cell}",
        )
        comment = st.text_input("Comment (optional)", key=f"review_comment-{cell}")
        submitted = st.form_submit_button("Save decision (confirm or correct)", type="primary")
    if submitted:
        log.record(
            item.name,
            item.sha256,
            model_name,
            prediction.label,
            prediction.probabilities,
            chosen,
            comment,
            reviewer,
        )
        verb = "Confirmed" if chosen == prediction.label else "Corrected to"
        # Rerun so the gallery and differential above already count this decision.
        st.session_state["review_saved"] = (
            cell,
            f"{verb} {ui.class_label(chosen)} — saved to `{log.path}`.",
        )
        st.rerun()
    saved = st.session_state.get("review_saved")
    if saved and saved[0] == cell:
        st.success(saved[1])
        del st.session_state["review_saved"]
    elif earlier:
        last = earlier[-1]
        st.caption(
            f"Last decision: {last['decision']} as {ui.class_label(last['reviewer_class'])} "
            f"by {last['reviewer'] or 'anonymous'} at {last['time']}."
        )


def cell_detail_ui(log, reviewer, model_name, item, prediction) -> None:
    cell = item.sha256[:16]
    left, right = st.columns([1, 2])
    with left:
        st.image(load_image(item.data, name=item.name), caption=item.name, width="stretch")
    with right:
        probabilities_ui(prediction)
    gradcam_ui(model_name, item, prediction, cell)
    review_ui(log, reviewer, model_name, item, prediction, cell)


def thumbnail(item: ui.CellInput) -> np.ndarray:
    thumbs: dict = st.session_state.setdefault("thumbnails", {})
    if item.sha256 not in thumbs:
        thumbs[item.sha256] = load_image(item.data, THUMB_PX, name=item.name)
    return thumbs[item.sha256]


def gallery_ui(cells: list[tuple[ui.CellInput, Prediction]], reviewed: dict[str, str]) -> None:
    """Thumbnails grouped by predicted class; low-confidence cells first in each group."""
    st.subheader("Gallery by predicted class")
    for name in CLASS_NAMES:
        group = [(i, p) for i, p in cells if p.label == name]
        if not group:
            continue
        group.sort(key=lambda c: (c[1].flag != "low_confidence", -c[1].confidence))
        low = sum(p.flag == "low_confidence" for _, p in group)
        st.markdown(
            f"**{ui.class_label(name)}** · {len(group)} cell(s)"
            + (f" · {low} low-confidence" if low else "")
        )
        for start in range(0, len(group), GALLERY_COLUMNS):
            columns = st.columns(GALLERY_COLUMNS)
            for column, (item, pred) in zip(columns, group[start : start + GALLERY_COLUMNS]):
                caption = f"{ui.percent(pred.confidence, 0)}"
                if pred.flag == "low_confidence":
                    caption = "⚠ low · " + caption
                if item.sha256 in reviewed:
                    caption += f" · ✓ {ui.class_label(reviewed[item.sha256])}"
                column.image(thumbnail(item), caption=caption, width="stretch")
                column.button(
                    "Inspect",
                    key=f"inspect-{item.sha256[:16]}-{item.name}",
                    on_click=st.session_state.update,
                    kwargs={"selected_cell": f"{item.sha256}|{item.name}"},
                    width="stretch",
                )


def _count_table(rows: list[dict], percent_label: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "class": [ui.class_label(r["class"]) for r in rows],
            "count": [r["count"] for r in rows],
            percent_label: [round(r["percent"], 1) for r in rows],
        }
    )


def differential_ui(labels: list[str]) -> None:
    """Counts per class and the leukocyte differential, as a report gives them."""
    counts = differential_count(labels)
    st.subheader(f"Differential count · {counts['total_cells']} cells")
    all_cells = _count_table(counts["all_cells"], "% of all cells")
    left, right = st.columns([2, 3])
    left.dataframe(all_cells, hide_index=True, key="differential_all")
    right.plotly_chart(ui.count_figure(counts["all_cells"], "All cells"), key="count_all")
    st.markdown(f"**Leukocyte differential** ({counts['leukocytes']} leukocytes)")
    leukocytes = _count_table(counts["leukocyte_differential"], "% of leukocytes")
    left, right = st.columns([2, 3])
    left.dataframe(leukocytes, hide_index=True, key="differential_wbc")
    nrbc = counts["erythroblasts_per_100_leukocytes"]
    with right:
        a, b = st.columns(2)
        a.metric(
            "Erythroblasts per 100 leukocytes",
            ui.MISSING if nrbc is None else f"{nrbc:.1f}",
            help=f"{counts['erythroblasts']} erythroblast(s); reported apart from the differential",
        )
        b.metric("Platelets (counted apart)", counts["platelets"])


def export_ui(predictions: list[Prediction], class_names) -> None:
    st.download_button(
        "Download results (CSV, same columns as `python -m bcclassify predict`)",
        ui.results_csv(predictions, class_names),
        file_name="bcclassify-predictions.csv",
        mime="text/csv",
    )


def review_log_ui(log: ReviewLog) -> None:
    st.subheader("Review log")
    entries = log.entries()
    st.caption(f"{len(entries)} decision(s) in `{log.path}`, newest first; rows are never changed.")
    if entries:
        frame = pd.DataFrame(entries).drop(columns=["probabilities"]).iloc[::-1]
        st.dataframe(frame, hide_index=True, key="review_log")
    st.download_button(
        "Export review log (CSV)",
        log.export_csv(),
        file_name="bcclassify-reviews.csv",
        mime="text/csv",
        disabled=not entries,
    )


# ----------------------------------------------------------------------------- Classify page


def classify_page() -> None:
    st.title("Classify blood cells")
    st.caption(
        "Peripheral blood cell crops into 8 classes, with Grad-CAM maps of the evidence. "
        "A research tool, not a diagnostic device."
    )
    chosen = model_selector_ui()
    if chosen is None:
        return
    model_name, card = chosen
    items = inputs_ui()
    log, reviewer = review_context()
    if not items:
        st.info("Upload one or more cell images, or pick example cells, to classify them.")
        review_log_ui(log)
        return
    predictions = classify_inputs(model_name, items)
    for pred in predictions:
        if not pred.ok:
            st.error(f"Not classified — {pred.error}")
    cells = [(item, pred) for item, pred in zip(items, predictions) if pred.ok]
    if len(items) == 1 and cells:
        cell_detail_ui(log, reviewer, model_name, *cells[0])
    elif cells:
        reviewed = final_labels(log, model_name)
        st.success(f"{len(cells)} of {len(items)} image(s) classified with {model_name}.")
        gallery_ui(cells, reviewed)
        differential_ui([reviewed.get(item.sha256, pred.label) for item, pred in cells])
        export_ui(
            [
                Prediction(i.name, p.probabilities, p.error, p.threshold, p.class_names)
                for i, p in zip(items, predictions)
            ],
            card.get("class_names") or CLASS_NAMES,
        )
        st.divider()
        keys = {f"{item.sha256}|{item.name}": (item, pred) for item, pred in cells}
        if st.session_state.get("selected_cell") not in keys:
            st.session_state["selected_cell"] = next(iter(keys))
        selected = st.selectbox(
            "Cell to inspect",
            list(keys),
            key="selected_cell",
            format_func=lambda k: (
                f"{keys[k][0].name} — {ui.class_label(keys[k][1].label)} "
                f"({ui.percent(keys[k][1].confidence, 0)})"
            ),
        )
        cell_detail_ui(log, reviewer, model_name, *keys[selected])
    st.divider()
    review_log_ui(log)


# ----------------------------------------------------------------------------- navigation


def main() -> None:
    st.set_page_config(
        page_title="bcclassify · blood cell classification", page_icon="🩸", layout="wide"
    )
    pages = [
        st.Page(classify_page, title="Classify", icon=":material/biotech:", default=True),
        st.Page("pages/1_Training_runs.py", title="Training runs", icon=":material/timeline:"),
        st.Page(
            "pages/2_Confusion_matrices.py", title="Confusion matrices", icon=":material/grid_on:"
        ),
        st.Page(
            "pages/3_Per-class_metrics.py", title="Per-class metrics", icon=":material/bar_chart:"
        ),
        st.Page("pages/4_Model_comparison.py", title="Model comparison", icon=":material/compare:"),
    ]
    page = st.navigation(pages)
    with st.sidebar:
        st.caption(ui.store_description())
    page.run()
    with st.sidebar:
        st.divider()
        st.caption(DATASET_CREDIT)


main()
