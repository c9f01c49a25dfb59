"""bcclassify web app: the entry point. Run with ``python app.py`` (or ``streamlit run app.py``).

``python app.py [streamlit flags]`` starts loading the default model in the background and then
serves the app from the same process, so the model is ready by the first upload; with
``streamlit run app.py`` the load starts only when the first browser session opens (Streamlit
runs no app code before that).

This file only sets the app up: the page configuration, the navigation (every page, Classify
included, is a script in ``pages/``) and the sidebar captions. Pages only present results: every
model, image and metric operation is a call into the ``bcclassify`` library.
"""

from __future__ import annotations

import sys

import streamlit as st

from bcclassify import DATASET_CREDIT
from bcclassify.presentation.pages import store_description
from ui.session import preload_default_model

if __name__ == "__main__" and not st.runtime.exists():
    # Launched as `python app.py`: warm the model while the server starts, then serve this file.
    import logging
    import os

    from streamlit.web import cli as streamlit_cli

    # BCCLASSIFY_LOG_LEVEL=INFO: the log says when the preload finished each step.
    logging.basicConfig(level=os.environ.get("BCCLASSIFY_LOG_LEVEL", "WARNING").upper())
    preload_default_model()
    sys.argv = ["streamlit", "run", __file__, *sys.argv[1:]]
    sys.exit(streamlit_cli.main())

PAGES = [  # (script, title, icon), in sidebar order; the first is the default page
    ("pages/0_Classify.py", "Classify", ":material/biotech:"),
    ("pages/1_Training_runs.py", "Training runs", ":material/timeline:"),
    ("pages/2_Confusion_matrices.py", "Confusion matrices", ":material/grid_on:"),
    ("pages/3_Per-class_metrics.py", "Per-class metrics", ":material/bar_chart:"),
    ("pages/4_Model_comparison.py", "Model comparison", ":material/compare:"),
    ("pages/5_Adapt_to_your_lab.py", "Adapt to your lab", ":material/tune:"),
    ("pages/6_Cases.py", "Cases and reports", ":material/assignment:"),
    ("pages/7_Method_verification.py", "Method verification", ":material/fact_check:"),
]

st.set_page_config(
    page_title="bcclassify · blood cell classification", page_icon="🩸", layout="wide"
)
page = st.navigation(
    [
        st.Page(script, title=title, icon=icon, default=index == 0)
        for index, (script, title, icon) in enumerate(PAGES)
    ]
)
preload_default_model()  # in the background: ready by the first upload
with st.sidebar:
    st.caption(store_description())
page.run()
with st.sidebar:
    st.divider()
    st.caption(DATASET_CREDIT)
