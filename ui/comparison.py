"""Model comparison's regions: the leaderboard and reference rows, each model's saliency
faithfulness, the image to compare on, and that image through several models side by side."""

from __future__ import annotations

import streamlit as st

from bcclassify.data.imaging import IMAGE_TYPES
from bcclassify.explain.faithfulness import table_rows
from bcclassify.explain.maps import DEFAULT_METHOD, METHODS, SEEN_CAPTION, overlay
from bcclassify.presentation.pages import (
    BENCH_HINT,
    BENCH_RUNS_HINT,
    EXAMPLES_DIR,
    PROMOTE_HINT,
    TRAIN_HINT,
    CellInput,
    example_images,
    example_label,
)
from bcclassify.presentation.tables import class_label, leaderboard, percent, reference_table
from bcclassify.serving.classifier import Prediction
from bcclassify.serving.uploads import UploadLimits, WorkingCopy, admit_uploads
from ui.figures import probability_figure
from ui.session import (
    cached_explanation,
    cached_model,
    model_key,
    session_lru,
    stop_when_busy,
    table_height,
)

PREDICTIONS_KEPT = 32  # per session: (model, card, image) -> prediction


def leaderboard_ui() -> None:
    st.subheader("Leaderboard (measured in this project)")
    board = leaderboard()
    if board.empty:
        st.info(
            f"Nothing measured yet. Train and install a model:\n\n```\n{TRAIN_HINT}\n"
            f"{PROMOTE_HINT}\n```"
        )
    else:
        st.dataframe(
            board, hide_index=True, key="leaderboard", height=table_height(len(board)),
            column_config={column: st.column_config.Column(width="small") for column in (
                "kind", "input px", "size MB", "latency ms", "maps ms",
            )},
        )  # fmt: skip
        st.caption("Best test accuracy first.")
        st.caption(
            f"Latency of a model: median single-image prediction as served (every test-time "
            f"view, calibration, novelty score), from its `bench.json` (`{BENCH_HINT}`). Of a "
            f"run: one forward pass of its architecture at its input size, one view "
            f"(`{BENCH_RUNS_HINT}`). Training time: wall time on the machine that trained it "
            f"(the runs' environment says which), with that of any run it continued "
            f"(`--init-from`, e.g. both stages of progressive resizing)."
        )
    st.subheader("Reference results (published, not measured here)")
    st.dataframe(reference_table(), hide_index=True, key="reference")
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


def settings_ui(cards: dict[str, dict]) -> tuple[list[str], str, float]:
    """The models to compare, the saliency method (the default model's) and the opacity."""
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
    return names, method, opacity


def image_ui(limits: UploadLimits) -> CellInput | None:
    """The uploaded cell (refused by name when over the file size cap), else the example."""
    a, b = st.columns(2)
    upload = a.file_uploader(
        "Upload one cell image",
        type=list(IMAGE_TYPES),
        key="compare_upload",
        max_upload_size=limits.max_file_mb,
    )
    examples = example_images()
    options = ["", *[str(p.relative_to(EXAMPLES_DIR)) for p in examples]]
    example = b.selectbox(
        "…or an example cell",
        options,
        key="compare_example",
        format_func=lambda r: "—" if not r else example_label(EXAMPLES_DIR / r),
    )
    if upload is not None:
        admitted, _, refused = admit_uploads([upload], limits)
        for name, reason in refused:
            st.error("This image cannot be used.")
            st.text(f"{name}: {reason}")  # a file name from the browser: plain text
        return CellInput.from_bytes(upload.name, upload.getvalue()) if admitted else None
    if example:
        return CellInput.from_bytes(example, (EXAMPLES_DIR / example).read_bytes())
    return None


def prediction_for(model: tuple[str, str], copy: WorkingCopy, sha256: str) -> Prediction:
    """One model's prediction for the image, kept per session: an opacity change reruns the
    page without classifying again."""
    cache = session_lru("compare_predictions", PREDICTIONS_KEPT)
    key = (*model, sha256)
    if key not in cache:
        # Through classify, so each model's flags (low confidence, unidentified) apply here too.
        with stop_when_busy():
            cache[key] = cached_model(model[0]).classify([(copy.name, copy.source)])[0]
    return cache[key]


def side_by_side_ui(
    copy: WorkingCopy, sha256: str, names: list[str], method: str, opacity: float
) -> None:
    """One column per model: its class, the fused map for it and all probabilities."""
    columns = st.columns(len(names))
    for column, name in zip(columns, names):
        with column:
            model = model_key(name)
            prediction = prediction_for(model, copy, sha256)
            if not prediction.ok:
                st.error(f"{name}: not classified")
                st.text(prediction.error)
                continue
            probs = prediction.probabilities
            st.markdown(f"#### {name}")
            if prediction.flag == "unidentified":
                st.markdown("**Unidentified** — not like the cells this model was trained on")
            else:
                top = class_label(prediction.label)
                st.markdown(f"**{top}** · {percent(prediction.confidence, 1)}")
            if prediction.flag == "low_confidence":
                st.warning("Low confidence — needs review")
            # The predicted class's maps, cached as Classify caches them (shared with it).
            explanation = cached_explanation(
                model,
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
                f"{class_label(explanation.target_class)}, p = {explanation.probability:.3f}",
                width="stretch",
            )
            if explanation.seen_fraction:
                st.caption(SEEN_CAPTION)
            st.plotly_chart(
                probability_figure(probs, prediction.class_names, prediction.threshold),
                key=f"compare-probs-{name}",
            )
