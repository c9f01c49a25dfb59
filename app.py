"""bcclassify web app: the entry point. Run with ``streamlit run app.py``.

This file only sets the app up: the page configuration, the navigation (every page, Classify
included, is a script in ``pages/``) and the sidebar captions. Pages only present results: every
model, image and metric operation is a call into the ``bcclassify`` library.
"""

from __future__ import annotations

import streamlit as st

from bcclassify import DATASET_CREDIT
from bcclassify.presentation.pages import store_description
from ui.session import preload_default_model

PAGES = [  # (script, title, icon), in sidebar order; the first is the default page
    ("pages/0_Classify.py", "Classify", ":material/biotech:"),
    ("pages/1_Training_runs.py", "Training runs", ":material/timeline:"),
    ("pages/2_Confusion_matrices.py", "Confusion matrices", ":material/grid_on:"),
    ("pages/3_Per-class_metrics.py", "Per-class metrics", ":material/bar_chart:"),
    ("pages/4_Model_comparison.py", "Model comparison", ":material/compare:"),
    ("pages/5_Adapt_to_your_lab.py", "Adapt to your lab", ":material/tune:"),
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
