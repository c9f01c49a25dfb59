"""Model comparison: a leaderboard, and one image through several models side by side."""

from __future__ import annotations

import streamlit as st

import ui
from bcclassify.data.imaging import IMAGE_TYPES, ImageLoadError
from bcclassify.explain.faithfulness import table_rows
from bcclassify.explain.maps import (
    COLOUR_BAR_CAPTION,
    DEFAULT_METHOD,
    METHODS,
    SEEN_CAPTION,
    colour_bar_figure,
    overlay,
)
from bcclassify.serving.classifier import Prediction
from bcclassify.serving.uploads import UploadLimits, WorkingCopy

PREDICTIONS_KEPT = 32  # per session: (model, card, image) -> prediction


def leaderboard_ui() -> None:
    st.subheader("Leaderboard (measured in this project)")
    board = ui.leaderboard()
    if board.empty:
        st.info(
            f"Nothing measured yet. Train and install a model:\n\n```\n{ui.TRAIN_HINT}\n"
            f"{ui.PROMOTE_HINT}\n```"
        )
    else:
        st.dataframe(
            board, hide_index=True, key="leaderboard", height=ui.table_height(len(board)),
            column_config={column: st.column_config.Column(width="small") for column in (
                "kind", "input px", "size MB", "latency ms", "maps ms",
            )},
        )  # fmt: skip
        st.caption("Best test accuracy first.")
        st.caption(
            f"Latency: median single-image prediction from the model's `bench.json`, written by "
            f"`{ui.BENCH_HINT}`."
        )
    st.subheader("Reference results (published, not measured here)")
    st.dataframe(ui.reference_table(), hide_index=True, key="reference")
    st.caption(
        "Test accuracies reported by the reference work on the PBC dataset, for context only."
    )


def faithfulness_ui(cards: dict[str, dict]) -> None:
    st.subheader("Saliency maps: how faithful (measured in this project)")
    measured = {n: card["faithfulness"] for n, card in cards.items() if "faithfulness" in card}
    if not measured:
        st.info(
            "No saliency method measured yet. Measure one with\n\n```\npython -m bcclassify "
            "faithfulness --model NAME --data DATA --save docs --set-default CONFIG\n```"
        )
        return
    for name, summary in measured.items():
        st.markdown(f"**{name}**")
        st.dataframe(table_rows(summary), hide_index=True, key=f"faithfulness-{name}")
        st.caption(
            f"{summary['cells']} cells from {summary['scope']} (all classes, seed "
            f"{summary['seed']}, one view each). Deletion/insertion: the class probability as "
            f"the most salient pixels are blacked out / restored into a blurred copy, "
            f"{summary['steps']} steps, area under the curve. Pointing: share of maps whose peak "
            "lies on the centre white cell. ✓: the default, chosen by this measurement. "
            f"Rerun: `{summary['command']}`."
        )


def image_ui() -> ui.CellInput | None:
    a, b = st.columns(2)
    upload = a.file_uploader(
        "Upload one cell image",
        type=list(IMAGE_TYPES),
        key="compare_upload",
    )
    examples = ui.example_images()
    options = ["", *[str(p.relative_to(ui.EXAMPLES_DIR)) for p in examples]]
    example = b.selectbox(
        "…or an example cell",
        options,
        key="compare_example",
        format_func=lambda r: "—" if not r else ui.example_label(ui.EXAMPLES_DIR / r),
    )
    if upload is not None:
        return ui.CellInput.from_bytes(upload.name, upload.getvalue())
    if example:
        return ui.CellInput.from_bytes(example, (ui.EXAMPLES_DIR / example).read_bytes())
    return None


def prediction_for(model_key: tuple[str, str], copy: WorkingCopy, sha256: str) -> Prediction:
    """One model's prediction for the image, kept per session: an opacity change reruns the
    page without classifying again."""
    cache = ui.session_lru("compare_predictions", PREDICTIONS_KEPT)
    key = (*model_key, sha256)
    if key not in cache:
        # Through classify, so each model's flags (low confidence, unidentified) apply here too.
        cache[key] = ui.cached_model(model_key[0]).classify([(copy.name, copy.source)])[0]
    return cache[key]


def side_by_side_ui(
    copy: WorkingCopy, sha256: str, names: list[str], method: str, opacity: float
) -> None:
    columns = st.columns(len(names))
    for column, name in zip(columns, names):
        with column:
            model_key = ui.model_key(name)
            prediction = prediction_for(model_key, copy, sha256)
            if not prediction.ok:
                st.error(f"{name}: not classified")
                st.text(prediction.error)
                continue
            probs = prediction.probabilities
            st.markdown(f"#### {name}")
            if prediction.flag == "unidentified":
                st.markdown("**Unidentified** — not like the cells this model was trained on")
            else:
                top = ui.class_label(prediction.label)
                st.markdown(f"**{top}** · {ui.percent(prediction.confidence, 1)}")
            if prediction.flag == "low_confidence":
                st.warning("Low confidence — needs review")
            # The predicted class's maps, cached as Classify caches them (shared with it).
            explanation = ui.cached_explanation(
                model_key,
                copy,
                sha256,
                method,
                prediction.label,
                probs,
                spinner=f"{METHODS[method]} for {name}…",
            )
            st.image(
                overlay(copy.pixels, explanation.fused, opacity, explanation.seen_fraction),
                caption=f"{METHODS[method]} · fused map — for "
                f"{ui.class_label(explanation.target_class)}, p = {explanation.probability:.3f}",
                width="stretch",
            )
            if explanation.seen_fraction:
                st.caption(SEEN_CAPTION)
            st.plotly_chart(
                ui.probability_figure(probs, prediction.class_names, prediction.threshold),
                key=f"compare-probs-{name}",
            )


def main() -> None:
    st.title("Model comparison")
    leaderboard_ui()
    cards = ui.model_cards()
    faithfulness_ui(cards)
    st.subheader("One image, several models")
    if len(cards) < 1:
        st.info(f"No model installed. Install one with\n\n```\n{ui.PROMOTE_HINT}\n```")
        return
    names = st.multiselect(
        "Models",
        list(cards),
        default=list(cards)[:2],
        key="compare_models",
        help="Pick two or more to compare.",
    )
    a, b = st.columns(2)
    methods = list(METHODS)
    default = next(iter(cards.values())).get("explain_method", DEFAULT_METHOD)  # default model's
    method = a.selectbox(
        "Method",
        methods,
        index=methods.index(default if default in METHODS else DEFAULT_METHOD),
        format_func=METHODS.get,
        key="compare_method",
    )
    opacity = b.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="compare_opacity")
    item = image_ui()
    if item is None or not names:
        st.info("Choose an image and at least one model (two or more to compare).")
        return
    try:
        # Decoded once, within the upload caps; a bad file is a message, not a crash.
        copy = ui.cached_working_copy(item.name, item.data, item.sha256, UploadLimits.from_env())
    except ImageLoadError as exc:
        st.error("This image cannot be used.")
        st.text(str(exc))  # names the file: plain text
        return
    st.image(copy.pixels, width=200)
    st.text(item.name)
    side_by_side_ui(copy, item.sha256, names, method, opacity)
    bar, note = st.columns([1, 2])
    bar.image(colour_bar_figure(), width="stretch")
    note.caption(COLOUR_BAR_CAPTION)


main()
