"""Adapt to your lab's regions: the settings, the cells (a zip or the kept cells, with forget-all),
the run with its progress bar, and the staged result with Install and Discard; what they show is
shaped in ``bcclassify.presentation.adapt``."""

from __future__ import annotations

import streamlit as st

from bcclassify.access.roles import AccessDenied, Identity, allowed
from bcclassify.lab.adapt import (
    DEFAULT_PER_CLASS,
    MAX_ADAPTED_MODELS,
    MAX_ZIP_BYTES,
    AdaptConfig,
    Adapted,
    AdaptError,
    adapt,
    adapted_models,
    discard_staged,
    install_staged,
    keep_cells,
    read_zip_cells,
    uninstall_adapted,
)
from bcclassify.lab.curve import curve_rows
from bcclassify.lab.kept import KeptCells, KeptCellsError
from bcclassify.presentation.adapt import (
    curve_table,
    figures_table,
    installed_line,
    kept_counts_table,
    result_summary,
)
from bcclassify.presentation.pages import model_cards
from bcclassify.review.reviews import default_data_dir as configured_data_dir  # one resolver
from bcclassify.serving.quiet_tensorflow import import_tensorflow_quietly
from ui.figures import adaptation_curve_figure

RESULT = "adapt_result"  # session key: the staged adaptation awaiting install or discard
CONFIRM_FORGET = "adapt_confirm_forget"  # session key: the forget-all confirmation is showing
INSTALLED, KEPT_COUNT = "adapt_installed", "adapt_kept"  # session keys: the last install's notes
FORGOTTEN = "adapt_forgotten"  # session key: how many kept cells the last forget-all deleted
# Session key: (upload's file_id, its cells, or why it was refused): the zip is parsed once, not
# again on every rerun of the page (each setting changed, the Adapt click).
ZIP_READ = "adapt_zip_read"
UNINSTALLED = "adapt_uninstalled"  # session key: the model the last Uninstall took away


def settings_ui(cards: dict[str, dict]) -> tuple[str, str, int, int]:
    """The model to adapt, the adapted model's name, cells a class and the seed."""
    left, right = st.columns(2)
    source = left.selectbox("Model to adapt", list(cards), key="adapt_source")
    name = right.text_input("Name of the adapted model", value=f"{source}-lab", key="adapt_name")
    per_class = left.number_input(
        "Cells a class to fit on", 1, 50, DEFAULT_PER_CLASS, key="adapt_per_class"
    )
    seed = right.number_input("Seed (which cells are taken)", 0, 10**6, 0, key="adapt_seed")
    return source, name.strip(), int(per_class), int(seed)


def curve_ui(source: str, card) -> None:
    """What adapting ``source`` bought on other labs' cells, when its card has a learning curve."""
    curves = curve_rows(card)
    if not curves:
        return
    with st.expander(f"What adapting {source} bought elsewhere (learning curve)"):
        for lab, rows in curves.items():
            st.caption(
                f"{lab}: each draw fits on K cells a class and is scored on the lab's other "
                "cells; the worst draw is what your lab may get."
            )
            st.dataframe(curve_table(rows), hide_index=True, key=f"adapt_curve_{lab}")
            st.plotly_chart(adaptation_curve_figure(rows, lab), key=f"adapt_curve_fig_{lab}")


def refused_ui(what: str, exc: Exception) -> None:
    """A refusal: what was refused, then the reason as plain text (it quotes file names from the
    upload, which Markdown would render)."""
    st.error(what)
    st.text(str(exc))


def installed_ui() -> None:
    """After an install (the run before this one): what was installed and what was kept."""
    installed = st.session_state.pop(INSTALLED, None)
    if installed:
        st.success(f"Installed {installed}: choose it in the model selector on Classify.")
        kept = st.session_state.pop(KEPT_COUNT, None)
        if kept:
            st.caption(f"{kept} cells kept, as you chose, under the data folder's lab-cells/.")


def uninstall_ui(identity: Identity) -> None:
    """The adapted models installed here, who installed each and when, each with Uninstall
    (admins only; the library checks the role again)."""
    gone = st.session_state.pop(UNINSTALLED, None)
    if gone:
        st.success(f"Uninstalled {gone[0]}; its files are kept under {gone[1]}.")
    names = adapted_models()
    if not names or not allowed(identity, "uninstall_model"):
        return
    cards = model_cards()
    with st.expander(f"Adapted models installed: {len(names)} of at most {MAX_ADAPTED_MODELS}"):
        for name in names:
            left, right = st.columns([3, 1])
            left.text(installed_line(name, cards.get(name, {})))
            if right.button("Uninstall", key=f"adapt_uninstall-{name}"):
                try:
                    moved = uninstall_adapted(name, identity)
                except (AdaptError, AccessDenied) as exc:
                    st.error("Not uninstalled:")
                    st.text(str(exc))
                    return
                st.session_state[UNINSTALLED] = (name, moved.parent.name + "/" + moved.name)
                st.rerun()


def result_ui(secrets: dict, identity: Identity) -> None:
    """The staged adaptation's figures, then Install (keeping the cells if asked) or Discard."""
    result = st.session_state[RESULT]
    figures = result["figures"]
    st.subheader(f"{result['name']}: adapted from {result['source']}")
    st.write(result_summary(result))
    if figures:
        st.dataframe(figures_table(figures), hide_index=True, key="adapt_figures")
    else:
        st.info("Every uploaded cell was used for fitting: nothing was held back to score.")
    install, discard = st.columns(2)
    if install.button("Install this model", type="primary", key="adapt_install"):
        try:
            install_staged(result["run_id"], result["name"], identity)
        except (AdaptError, AccessDenied) as exc:
            refused_ui("Not installed:", exc)
            return
        if result["keep"] is not None:
            folder = configured_data_dir(secrets) / "lab-cells" / result["name"]
            st.session_state[KEPT_COUNT] = keep_cells(result["keep"], folder)
        st.session_state.pop(RESULT)
        st.session_state[INSTALLED] = result["name"]
        st.rerun()
    if discard.button("Discard", key="adapt_discard"):
        discard_staged(result["run_id"])
        st.session_state.pop(RESULT)
        st.rerun()


def adapt_ui(config: AdaptConfig, cells: dict, identity: Identity) -> Adapted | None:
    """Run the adaptation (staged, not installed) under a progress bar; None on a refusal."""
    bar = st.progress(0.0, text="Starting…")

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"{stage}: {done} of {total}")

    import_tensorflow_quietly()  # TensorFlow only now: the page opens without it
    try:
        return adapt(config, cells=cells, progress=progress, install=False, identity=identity)
    except (AdaptError, AccessDenied) as exc:
        refused_ui("The adaptation was refused:", exc)
        return None


def zip_cells_ui() -> tuple[dict, str, bool] | None:
    """The uploaded zip's cells, the run's label for them and whether to keep the cells used."""
    upload = st.file_uploader(
        f"Labelled cells: a zip of class folders (basophil/, neutrophil/, …; at most "
        f"{MAX_ZIP_BYTES // 2**20} MB)",
        type=["zip"],
        key="adapt_zip",
        max_upload_size=MAX_ZIP_BYTES // 2**20,  # the browser's check; read_zip_cells checks again
    )
    st.caption(
        "Your upload is read in memory and is not written to disk. The adapted model's card "
        "records only the sha256 of each cell used."
    )
    keep = st.checkbox(
        "Keep the cells used for fitting with the model (written under the review data folder)",
        value=False,
        key="adapt_keep",
    )
    if upload is None:
        st.session_state.pop(ZIP_READ, None)
        return None
    read = st.session_state.get(ZIP_READ)
    if read is None or read[0] != upload.file_id:
        try:
            read = (upload.file_id, read_zip_cells(upload.getvalue()), None)
        except AdaptError as exc:
            read = (upload.file_id, None, exc)
        st.session_state[ZIP_READ] = read
    _, cells, problem = read
    if problem is not None:
        refused_ui("The zip cannot be used:", problem)
        return None
    return cells, f"upload:{upload.name}", keep


def kept_cells_ui(secrets: dict, identity: Identity) -> dict | None:
    """Counts of the cells reviewers kept on the Classify page, a forget-all button (with a
    confirmation step), and those cells as ``adapt``'s mapping; None when there are none."""
    store = KeptCells(configured_data_dir(secrets), create=False)
    forgotten = st.session_state.pop(FORGOTTEN, None)
    if forgotten is not None:
        st.success(f"Forgot {forgotten} kept cell(s): their files and records are deleted.")
    try:
        counts = store.counts()
    except KeptCellsError as exc:
        st.error("The kept cells cannot be read:")
        st.text(str(exc))
        return None
    st.caption(
        "Cells a reviewer chose to keep when saving a decision on the Classify page (an opt-in "
        "box, off by default), each under the class of its latest decision, in the kept-cells "
        "folder beside the review log."
    )
    if not counts:
        st.info(
            "No cells are kept. On the Classify page, tick 'Keep this crop on the server' when "
            "saving a reviewer decision to keep a cell for adapting."
        )
        return None
    st.dataframe(kept_counts_table(counts), hide_index=True, key="adapt_kept_counts")
    if st.session_state.get(CONFIRM_FORGET):
        forget_all_ui(store, sum(counts.values()), identity)
        return None
    if allowed(identity, "forget_cells"):
        st.button(
            "Forget all kept cells…",
            key="adapt_forget",
            on_click=st.session_state.update,
            kwargs={CONFIRM_FORGET: True},
        )
    try:
        return store.cells()
    except KeptCellsError as exc:
        st.error("The kept cells cannot be read:")
        st.text(str(exc))
        return None


def forget_all_ui(store: KeptCells, total: int, identity: Identity) -> None:
    """The forget-all confirmation: delete every kept cell (and the cells kept with installed
    adaptations), recorded as done by ``identity``; or cancel."""
    st.warning(
        f"Delete all {total} kept cells from this server, and the cells kept with installed "
        "adaptations (lab-cells/)? Installed models are not changed; the kept-cells log records "
        "who did it."
    )
    yes, no = st.columns(2)
    if yes.button(f"Delete {total} kept cells", type="primary", key="adapt_forget_yes"):
        st.session_state.pop(CONFIRM_FORGET, None)
        try:
            st.session_state[FORGOTTEN] = store.forget_all(identity)
        except (KeptCellsError, AccessDenied) as exc:
            st.error("Not all kept cells could be deleted:")
            st.text(str(exc))
            return
        st.rerun()
    no.button(
        "Cancel", key="adapt_forget_no", on_click=st.session_state.pop, args=(CONFIRM_FORGET, None)
    )
