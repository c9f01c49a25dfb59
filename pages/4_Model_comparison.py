"""Model comparison: a leaderboard, and one image through several models side by side."""

from __future__ import annotations

import streamlit as st

from bcclassify.data.imaging import ImageLoadError
from bcclassify.explain.maps import COLOUR_BAR_CAPTION, colour_bar_figure
from bcclassify.presentation.pages import PROMOTE_HINT, model_cards
from bcclassify.serving.uploads import UploadLimits
from ui import comparison as view
from ui.session import cached_working_copy


def main() -> None:
    st.title("Model comparison")
    view.leaderboard_ui()
    cards = model_cards()
    view.faithfulness_ui(cards)
    st.subheader("One image, several models")
    if len(cards) < 1:
        st.info(f"No model installed. Install one with\n\n```\n{PROMOTE_HINT}\n```")
        return
    names, method, opacity = view.settings_ui(cards)
    limits = UploadLimits.from_env()
    item = view.image_ui(limits)
    if item is None or not names:
        st.info("Choose an image and at least one model (two or more to compare).")
        return
    try:
        # Decoded once, within the upload caps; a bad file is a message, not a crash.
        copy = cached_working_copy(item.name, item.data, item.sha256, limits)
    except ImageLoadError as exc:
        st.error("This image cannot be used.")
        st.text(str(exc))  # names the file: plain text
        return
    st.image(copy.pixels, width=200)
    st.text(item.name)
    view.side_by_side_ui(copy, item.sha256, names, method, opacity)
    bar, note = st.columns([1, 2])
    bar.image(colour_bar_figure(), width="stretch")
    note.caption(COLOUR_BAR_CAPTION)


main()
