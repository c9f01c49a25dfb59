"""Classify: upload cell crops (or pick example cells), see each cell's class, its Grad-CAM maps
and the batch's differential count, and confirm or correct cells as a logged-in reviewer.

The app's default page (``app.py`` registers it). Every model, image and count operation is a call
into the ``bcclassify`` library; the per-session caches are ``ui.session``'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import ui
from bcclassify import CLASS_NAMES
from bcclassify.access import accounts
from bcclassify.data.imaging import IMAGE_TYPES, ImageLoadError, load_image
from bcclassify.explain.maps import (
    COLOUR_BAR_CAPTION,
    METHODS,
    SEEN_CAPTION,
    colour_bar_figure,
    map_caption,
    overlay,
)
from bcclassify.lab.kept import KeptCells, KeptCellsError, cell_bytes
from bcclassify.review.report import batch_shift_notice, needs_review, reviewed_differential
from bcclassify.review.reviews import ReviewLog, ReviewLogUnavailable
from bcclassify.serving.classifier import Prediction
from bcclassify.serving.uploads import UploadLimits
from bcclassify.serving.uploads import classify_uploads as classify_batch

THUMB_PX = 96
GALLERY_COLUMNS = 8
BATCH_SIZE = 16
FLAG_GROUPS = {  # shown ahead of the classes, in this order
    "unidentified": "Unidentified — not like the cells this model was trained on",
    "low_confidence": "Low confidence — needs review",
}
LOGIN_ATTEMPTS = 5  # failed log-ins per session before a pause
LOGIN_PAUSE_S = 30
KEEP_CAPTION = (
    "Off unless you tick it; uploads are otherwise never written to disk. When ticked, saving "
    "stores this image as classified (at most 1024 px a side) with the class you chose, your "
    "user name, the file name, the model and the time, in the kept-cells folder beside the "
    "review log on this server, so that 'Adapt to your lab' can fit a model to your lab's "
    "cells. Untick and save to remove it; 'Adapt to your lab' removes all kept cells."
)


# ----------------------------------------------------------------------------- who is reviewing


def login_ui(secrets: dict) -> str | None:
    """The logged-in reviewer's name (OpenID Connect, else a local account), or None."""
    with st.sidebar:
        st.subheader("Reviewer")
        providers = ui.oidc_providers(secrets)
        if providers is not None:
            name = ui.oidc_reviewer(st.user)
            if name:
                st.text(f"Logged in as {name}")
                st.button("Log out", on_click=st.logout, key="logout")
                return name
            for provider in providers:
                st.button(
                    "Log in" + (f" with {provider}" if provider else ""),
                    key=f"login-{provider or 'default'}",
                    on_click=st.login,
                    args=(provider,) if provider else (),
                )
            st.caption("Log in to save and export review decisions.")
            return None
        return local_login_ui(accounts.accounts_path(secrets))


def local_login_ui(path) -> str | None:
    """A log-in form checked against the local account file (``python -m bcclassify users``)."""
    import time

    name = st.session_state.get("reviewer_login")
    if name and any(u["name"] == name for u in _users(path)):
        st.text(f"Logged in as {name}")
        st.button("Log out", key="logout", on_click=st.session_state.pop, args=("reviewer_login",))
        return name
    st.session_state.pop("reviewer_login", None)  # an account removed meanwhile logs out
    if not accounts.has_accounts(path):
        st.caption(
            "Saving review decisions needs a log-in, and no reviewer accounts are set up. "
            "An administrator adds them with `python -m bcclassify users add NAME`."
        )
        return None
    with st.form("login", clear_on_submit=True):
        user = st.text_input("User name", key="login_user")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        failures, since = st.session_state.get("login_failures", (0, 0.0))
        if failures >= LOGIN_ATTEMPTS and time.monotonic() - since < LOGIN_PAUSE_S:
            st.error(f"Too many failed log-ins: wait {LOGIN_PAUSE_S} s and try again.")
        elif accounts.verify(path, user, password):
            st.session_state["reviewer_login"] = user
            st.session_state.pop("login_failures", None)
            st.rerun()
        else:
            st.session_state["login_failures"] = (failures + 1, time.monotonic())
            st.error("Unknown user name or wrong password.")
    st.caption("Log in to save and export review decisions.")
    return None


def _users(path) -> list[dict]:
    try:
        return accounts.list_users(path)
    except accounts.AccountError:
        return []


def open_review_log(secrets: dict, reviewer: str | None) -> ReviewLog | None:
    """The review log for a logged-in reviewer; a log that cannot be opened is a banner."""
    if reviewer is None:
        return None
    try:
        return ReviewLog(ui.configured_data_dir(secrets))
    except ReviewLogUnavailable as exc:
        st.error(
            "The review log cannot be opened, so decisions cannot be saved; classification goes "
            "on. Tell the administrator:"
        )
        st.text(str(exc))
        return None


# ----------------------------------------------------------------------------- Classify regions


def model_selector_ui() -> tuple[str, dict] | None:
    """The model to classify with (default: the store's default); None when none is installed."""
    cards = ui.model_cards()
    if not cards:
        st.warning(
            f"{ui.empty_store_note('No model is installed')}. Train one and install it:\n\n"
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


def inputs_ui(limits: UploadLimits) -> list[ui.CellInput]:
    """Uploaded crops plus any chosen example cells, repeats removed, at most the file cap."""
    upload_col, example_col = st.columns([3, 2])
    uploaded = upload_col.file_uploader(
        "Upload cell images (JPEG, PNG, TIFF, BMP, GIF, WebP) — one or many, "
        f"up to {limits.max_files} per batch",
        type=list(IMAGE_TYPES),
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
    items = ui.unique_inputs(items)
    if len(items) > limits.max_files:
        st.warning(
            f"{len(items)} images given; this server classifies at most {limits.max_files} per "
            f"batch (BCCLASSIFY_MAX_FILES), so only the first {limits.max_files} are used."
        )
        items = items[: limits.max_files]
    return items


def classify_inputs(
    model_key: tuple[str, str], items: list[ui.CellInput], limits: UploadLimits
) -> list[tuple[Prediction, np.ndarray | None]]:
    """(prediction, thumbnail) in input order, cached in the session per model version."""
    cache = ui.session_lru("predictions", 4 * limits.max_files)
    copies = ui.working_copies()
    todo = [item for item in items if (*model_key, item.sha256, item.name) not in cache]
    if todo:
        classifier = ui.cached_model(model_key[0])
        bar = st.progress(0.0, text=f"Classifying {len(todo)} image(s)…")
        results = classify_batch(
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


def copy_for(item: ui.CellInput, limits: UploadLimits):
    """The image's bounded working copy: decoded once, kept in a small per-session LRU."""
    return ui.cached_working_copy(item.name, item.data, item.sha256, limits)


def explanation_for(model_key, copy, sha: str, method: str, target: str, probabilities):
    """Grad-CAM maps at the working copy's size, a few kept per session."""
    spinner = f"Computing {METHODS[method]} for {ui.class_label(target)}…"
    return ui.cached_explanation(model_key, copy, sha, method, target, probabilities, spinner)


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
    return {r["image_sha256"]: r["reviewer_class"] for r in rows if r["model"] == model_name}


def probabilities_ui(prediction: Prediction) -> None:
    chart = ui.probability_figure(
        prediction.probabilities, prediction.class_names, prediction.threshold
    )
    if prediction.flag == "unidentified":
        st.markdown(f"### {FLAG_GROUPS['unidentified']}")
        if prediction.taken_unlike_training:
            why = (
                "This image was taken unlike the training lab's images: its background colour, "
                "brightness or stained share lies outside the range the model was checked on "
                "(another lab's stain, camera or magnification, or not a smear). If your lab's "
                "cells all look like this, adapt the model to your lab ('Adapt to your lab')."
            )
        else:
            why = (
                "The model's features say this image is unlike the cells it was trained on "
                "(another cell type, an artefact, not a blood cell)."
            )
        st.warning(
            f"{why} Its class is withheld: a reviewer assigns one, and until then the cell is "
            "left out of the differential."
        )
        with st.expander("The model's probabilities anyway (not to be relied on)"):
            st.metric("Top probability", ui.percent(prediction.confidence, 1))
            st.plotly_chart(chart, key=f"probs-{prediction.path}")
        return
    st.markdown(f"### {ui.class_label(prediction.label)}")
    st.metric("Confidence", ui.percent(prediction.confidence, 1))
    if prediction.flag == "low_confidence":
        st.warning(
            f"{FLAG_GROUPS['low_confidence']}: below {ui.percent(prediction.threshold, 0)}, so "
            "it is left out of the differential until a reviewer assigns a class, as an analyser "
            "leaves an unidentified cell."
        )
    st.plotly_chart(chart, key=f"probs-{prediction.path}")


def gradcam_ui(model_key, item: ui.CellInput, copy, prediction: Prediction, cell: str) -> None:
    """Method, target class and opacity controls, then one overlay per map."""
    st.subheader("Where the model looked")
    names = list(prediction.class_names)
    c1, c2, c3 = st.columns(3)
    methods = list(METHODS)
    # The card's method is the one its faithfulness measurement chose (README, Model comparison).
    default = ui.cached_explainer(model_key[0]).default_method
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
        format_func=ui.class_label,
        key=f"cam_target-{cell}",
        help="Default: the predicted class. Pick another to see what argues for it.",
    )
    opacity = c3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
    explanation = explanation_for(
        model_key, copy, item.sha256, method, target, prediction.probabilities
    )
    trunk_maps = [layer for layer in explanation.maps if layer != "fused"]
    # A one-trunk model's fused map is its only map; show both trunks only for the hybrid.
    shown = [*trunk_maps, "fused"] if len(trunk_maps) > 1 else ["fused"]
    columns = st.columns(len(shown) + 1)
    columns[0].image(copy.pixels, caption="Original", width="stretch")
    for column, layer in zip(columns[1:], shown):
        titled = layer if len(trunk_maps) > 1 else trunk_maps[0]
        column.image(
            overlay(copy.pixels, explanation.maps[layer], opacity, explanation.seen_fraction),
            caption=map_caption(explanation, titled, ui.class_label),
            width="stretch",
        )
    bar, note = st.columns([1, 2])
    bar.image(colour_bar_figure(), width="stretch")
    note.caption(
        f"{COLOUR_BAR_CAPTION} Red marks what raised the score of "
        f"{ui.class_label(explanation.target_class)} (p = {explanation.probability:.3f})."
        + (f" {SEEN_CAPTION}" if explanation.seen_fraction else "")
    )


def kept_cell_for(kept: KeptCells, item: ui.CellInput):
    """This upload's kept cell, if the lab kept it (None when kept cells cannot be read)."""
    try:
        return kept.is_kept(item.sha256)
    except KeptCellsError:
        return None


def apply_keep(kept: KeptCells, keep: bool, was_kept, item, copy, chosen, reviewer, model_name):
    """Keep (or move) the cell under ``chosen`` when ticked; forget it when unticked.

    Returns a line for the reviewer, or None when nothing changed on disk."""
    if keep:
        kept.keep(
            cell_bytes(copy),
            chosen,
            reviewer,
            item.name,
            image_sha256=item.sha256,
            model=model_name,
        )
        return f"Kept on this server as {ui.class_label(chosen)} for adapting to this lab."
    if was_kept is not None:
        kept.forget(item.sha256)
        return "No longer kept on this server."
    return None


def review_ui(
    log: ReviewLog | None,
    reviewer: str | None,
    model: tuple[str, dict],
    item: ui.CellInput,
    prediction: Prediction,
    cell: str,
    copy=None,
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
            format_func=ui.class_label,
            key=f"review_class-{cell}",
        )
        comment = st.text_input("Comment (optional)", key=f"review_comment-{cell}")
        kept = KeptCells(log.path.parent, create=False)  # beside the review log; made on use
        was_kept = kept_cell_for(kept, item) if copy is not None else None
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
                model_card_sha256=ui.card_sha256(model_name),
                training_run=str(card.get("training_run") or ""),
            )
        except ReviewLogUnavailable as exc:
            st.error("The decision was not saved: the review log cannot be written.")
            st.text(str(exc))
            return
        verb = "Confirmed" if chosen == prediction.label else "Corrected to"
        message = f"{verb} {ui.class_label(chosen)} — saved."
        if copy is not None:
            try:
                note = apply_keep(kept, keep, was_kept, item, copy, chosen, reviewer, model_name)
            except KeptCellsError as exc:
                st.error("The decision was saved, but the crop was not kept:")
                st.text(str(exc))
                return
            message += f" {note}" if note else ""
        # Rerun so the gallery and differential above already count this decision.
        st.session_state["review_saved"] = (cell, message)
        st.rerun()
    saved = st.session_state.get("review_saved")
    if saved and saved[0] == cell:
        st.success(saved[1])
        del st.session_state["review_saved"]
    elif earlier:
        last = earlier[-1]
        # Plain text: the reviewer's name and the time are data, never Markdown.
        st.text(
            f"Last decision: {last['decision']} as {ui.class_label(last['reviewer_class'])} "
            f"by {last['reviewer'] or 'anonymous'} at {last['time']}."
        )


def cell_detail_ui(log, reviewer, model, model_key, item, prediction, limits) -> None:
    cell = item.sha256[:16]
    try:
        copy = copy_for(item, limits)
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


def gallery_groups(cells) -> list[tuple[str, list]]:
    """Flagged groups first (unidentified, then low confidence), then one group per class."""
    groups = [
        (title, [c for c in cells if c[1].flag == flag]) for flag, title in FLAG_GROUPS.items()
    ]
    other_flags = [c for c in cells if needs_review(c[1]) and c[1].flag not in FLAG_GROUPS]
    groups.append(("Flagged — needs review", other_flags))
    for name in CLASS_NAMES:
        group = [c for c in cells if c[1].label == name and not needs_review(c[1])]
        groups.append((ui.class_label(name), group))
    return [(title, group) for title, group in groups if group]


def gallery_ui(cells, reviewed: dict[str, str]) -> None:
    """Thumbnails: cells awaiting review first, then grouped by predicted class."""
    st.subheader("Gallery")
    for title, group in gallery_groups(cells):
        group.sort(key=lambda c: -c[1].confidence)
        waiting = sum(c[0].sha256 not in reviewed for c in group if needs_review(c[1]))
        st.markdown(
            f"**{title}** · {len(group)} cell(s)"
            + (f" · {waiting} awaiting review" if waiting else "")
        )
        for start in range(0, len(group), GALLERY_COLUMNS):
            columns = st.columns(GALLERY_COLUMNS)
            for column, (item, pred, thumb) in zip(columns, group[start : start + GALLERY_COLUMNS]):
                caption = f"{ui.percent(pred.confidence, 0)}"
                if needs_review(pred):
                    caption = f"{ui.class_label(pred.label)}? · " + caption
                if item.sha256 in reviewed:
                    caption += f" · ✓ {ui.class_label(reviewed[item.sha256])}"
                column.image(thumb, caption=caption, width="stretch")
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


def differential_ui(counts: dict) -> None:
    """Counts per class and the leukocyte differential, as a report gives them."""
    st.subheader(f"Differential count · {counts['total_cells']} cells")
    if counts["awaiting_review"]:
        by_flag = counts["awaiting_by_flag"]
        st.warning(
            f"{counts['awaiting_review']} cell(s) awaiting review are not counted "
            f"({by_flag.get('unidentified', 0)} unidentified, "
            f"{by_flag.get('low_confidence', 0)} low confidence): each counts once a reviewer "
            "assigns its class."
        )
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
        a, b, c = st.columns(3)
        a.metric(
            "Erythroblasts per 100 leukocytes",
            ui.MISSING if nrbc is None else f"{nrbc:.1f}",
            help=f"{counts['erythroblasts']} erythroblast(s); reported apart from the differential",
        )
        b.metric("Platelets (counted apart)", counts["platelets"])
        c.metric("Awaiting review", counts["awaiting_review"], help="Flagged, not yet reviewed")


def export_ui(predictions: list[Prediction], class_names) -> None:
    st.download_button(
        "Download results (CSV, same columns as `python -m bcclassify predict`)",
        ui.results_csv(predictions, class_names),
        file_name="bcclassify-predictions.csv",
        mime="text/csv",
    )


def review_log_ui(log: ReviewLog | None, reviewer: str | None) -> None:
    st.subheader("Review log")
    if reviewer is None:
        st.info("Log in to see, save and export review decisions.")
        return
    if log is None:
        return
    try:
        entries = log.entries()
        exported = log.export_csv()
    except ReviewLogUnavailable as exc:
        st.error("The review log cannot be read.")
        st.text(str(exc))
        return
    st.caption(f"{len(entries)} decision(s), newest first; rows are never changed or deleted.")
    if entries:
        frame = pd.DataFrame(entries).drop(columns=["probabilities"]).iloc[::-1]
        st.dataframe(frame, hide_index=True, key="review_log")
    st.download_button(
        "Export review log (CSV)",
        exported,
        file_name="bcclassify-reviews.csv",
        mime="text/csv",
        disabled=not entries,
    )


# ----------------------------------------------------------------------------- Classify page


def main() -> None:
    st.title("Classify blood cells")
    st.caption(
        "Peripheral blood cell crops into 8 classes, with Grad-CAM maps of the evidence. "
        "A research tool, not a diagnostic device."
    )
    secrets = ui.app_secrets()
    reviewer = login_ui(secrets)
    chosen = model_selector_ui()
    if chosen is None:
        return
    model_name, card = chosen
    model_key = ui.model_key(model_name)
    limits = UploadLimits.from_env()
    items = inputs_ui(limits)
    log = open_review_log(secrets, reviewer)
    if reviewer is None:
        st.caption("Not logged in: you can classify and explain; saving decisions needs a log-in.")
    if not items:
        st.info("Upload one or more cell images, or pick example cells, to classify them.")
        review_log_ui(log, reviewer)
        return
    results = classify_inputs(model_key, items, limits)
    refused = [(item, pred) for item, (pred, _) in zip(items, results) if not pred.ok]
    if refused:
        st.error(f"{len(refused)} file(s) not classified:")
        st.dataframe(
            pd.DataFrame(
                {"file": [i.name for i, _ in refused], "reason": [p.error for _, p in refused]}
            ),
            hide_index=True,
            key="refused",
        )
    cells = [(item, pred, thumb) for item, (pred, thumb) in zip(items, results) if pred.ok]
    model = (model_name, card)
    if len(items) == 1 and cells:
        cell_detail_ui(log, reviewer, model, model_key, *cells[0][:2], limits)
    elif cells:
        reviewed = final_labels(log, model_name)
        st.success(f"{len(cells)} of {len(items)} image(s) classified with {model_name}.")
        notice = batch_shift_notice(len(cells), sum(p.flag == "unidentified" for _, p, _ in cells))
        if notice:
            st.warning(notice)
        gallery_ui(cells, reviewed)
        differential_ui(reviewed_differential([(i.sha256, p) for i, p, _ in cells], reviewed))
        # Predictions carry the file name as their path, and keep their flags in the export.
        export_ui([p for p, _ in results], card.get("class_names") or CLASS_NAMES)
        st.divider()
        keys = {f"{item.sha256}|{item.name}": (item, pred) for item, pred, _ in cells}
        if st.session_state.get("selected_cell") not in keys:
            st.session_state["selected_cell"] = next(iter(keys))
        selected = st.selectbox(
            "Cell to inspect",
            list(keys),
            key="selected_cell",
            format_func=lambda k: (
                f"{keys[k][0].name} — "
                + (
                    "Unidentified"
                    if keys[k][1].flag == "unidentified"
                    else ui.class_label(keys[k][1].label)
                )
                + f" ({ui.percent(keys[k][1].confidence, 0)})"
            ),
        )
        cell_detail_ui(log, reviewer, model, model_key, *keys[selected], limits)
    st.divider()
    review_log_ui(log, reviewer)


main()
