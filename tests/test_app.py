"""The Streamlit app under streamlit.testing: every page, with the tiny store and with none.

AppTest runs the real scripts in-process; models load once per process (st.cache_resource), so
the first test that classifies pays for TensorFlow and later ones reuse it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from streamlit.testing.v1 import AppTest

from bcclassify import CLASS_LABELS

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app.py"
PAGES = [
    "pages/1_Training_runs.py",
    "pages/2_Confusion_matrices.py",
    "pages/3_Per-class_metrics.py",
    "pages/4_Model_comparison.py",
]
TIMEOUT = 180  # seconds per script run: TensorFlow start-up on a busy 2-core machine
EXAMPLES = REPO / "tests" / "data" / "pbc"


def _start(monkeypatch, data_dir: Path) -> AppTest:
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data_dir))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _frame(at: AppTest, column: str):
    """The first table shown that has ``column`` (plain dataframes carry no widget key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_every_page_says_what_to_run_with_an_empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    at = _start(monkeypatch, tmp_path / "data")
    _no_exception(at)
    assert "promote" in _texts(at.warning)  # Classify: no model installed
    for page in PAGES:
        at.switch_page(page).run()
        _no_exception(at)
        assert "python -m bcclassify" in _texts(at.info), page


def test_run_pages_show_the_fixture_run(tiny_store, tmp_path, monkeypatch):
    at = _start(monkeypatch, tmp_path / "data")
    _no_exception(at)

    at.switch_page(PAGES[0]).run()
    _no_exception(at)
    runs = at.dataframe[0].value
    assert "fixture-cnn-32px" in list(runs["run id"])
    assert {"architecture", "SMOTE", "status", "test accuracy", "macro-F1"} <= set(runs.columns)
    assert at.multiselect(key="curve_runs").value == ["fixture-cnn-32px"]
    assert at.get("plotly_chart"), "learning curves are drawn"

    at.switch_page(PAGES[1]).run()
    _no_exception(at)
    assert at.get("plotly_chart"), "the confusion heatmap is drawn"
    at.toggle(key="cm_normalized").set_value(True).run()
    at.selectbox(key="cm_true").set_value("Basophil").run()
    _no_exception(at)
    assert "true class Basophil" in _texts(at.markdown)

    at.switch_page(PAGES[2]).run()
    _no_exception(at)
    table = _frame(at, "F1")
    assert len(table) == 8 + 2  # eight classes, then macro and weighted averages
    assert list(table["class"][-2:]) == ["macro average", "weighted average"]


def test_model_comparison_runs_one_image_through_two_models(tiny_store, tmp_path, monkeypatch):
    at = _start(monkeypatch, tmp_path / "data")
    at.switch_page(PAGES[3]).run()
    _no_exception(at)
    board = _frame(at, "latency ms")
    assert {"tiny-hybrid (default)", "tiny-cnn", "fixture-cnn-32px"} <= set(board["name"])
    assert (board[board["name"] == "tiny-cnn"]["latency ms"] == "—").all()  # no bench.json
    reference = _frame(at, "model")
    assert list(reference["test accuracy"]) == ["98.51%", "97.89%", "96.35%"]

    at.selectbox(key="compare_example").set_value("monocyte/MO_104742.jpg").run()
    _no_exception(at)
    headings = _texts(at.markdown)
    assert "#### tiny-hybrid" in headings and "#### tiny-cnn" in headings
    assert sum("fused map" in c for img in at.image for c in img.captions) == 2


def test_classify_one_example_explain_and_review(tiny_store, tmp_path, monkeypatch):
    at = _start(monkeypatch, tmp_path / "data")
    _no_exception(at)
    assert at.selectbox(key="model").value == "tiny-hybrid"  # the default model

    at.multiselect(key="examples").set_value(["basophil/BA_112418.jpg"]).run()
    _no_exception(at)
    labels = {f"### {label}" for label in CLASS_LABELS.values()}
    shown = [m.value for m in at.markdown if m.value in labels]
    assert len(shown) == 1, "one predicted class is named"
    captions = [c for img in at.image for c in img.captions]
    # The hybrid shows both trunks' maps beside the fused one.
    assert any("InceptionV3" in c for c in captions)
    assert any("Xception" in c for c in captions)
    assert any("Grad-CAM · Fused" in c for c in captions)
    assert at.get("plotly_chart"), "probability bar chart"

    target = next(k for k in at.session_state.to_dict() if str(k).startswith("review_class-"))
    comment = target.replace("review_class-", "review_comment-")
    at.selectbox(key=target).set_value("eosinophil")
    at.text_input(key=comment).set_value("granules look eosinophilic")
    at.text_input(key="reviewer").set_value("QA")
    next(b for b in at.button if b.label.startswith("Save decision")).click().run()
    _no_exception(at)
    assert "Eosinophil" in _texts(at.success)

    with sqlite3.connect(tmp_path / "data" / "reviews.sqlite3") as db:
        rows = db.execute(
            "SELECT file_name, model, reviewer_class, comment, reviewer FROM reviews"
        ).fetchall()
    assert rows == [
        ("basophil/BA_112418.jpg", "tiny-hybrid", "eosinophil", "granules look eosinophilic", "QA")
    ]
    assert len(_frame(at, "reviewer_class")) == 1


def test_classify_batch_with_a_bad_file(tiny_store, tmp_path, monkeypatch):
    at = _start(monkeypatch, tmp_path / "data")
    at.selectbox(key="model").set_value("tiny-cnn").run()
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(EXAMPLES.rglob("*.jpg"))]
    files.append(("broken.jpg", b"\xff\xd8\xff\xe0 not a jpeg at all", "image/jpeg"))
    at.file_uploader(key="uploads").set_value(files).run()
    _no_exception(at)

    errors = _texts(at.error)
    assert "broken.jpg" in errors and "damaged" in errors
    assert "16 of 17 image(s) classified" in _texts(at.success)
    differential = _frame(at, "% of all cells")
    assert len(differential) == 8 and differential["count"].sum() == 16
    assert len(_frame(at, "% of leukocytes")) == 6
    assert any(b.label.startswith("Download results") for b in at.get("download_button"))

    # Reruns reuse the session's results rather than classifying again.
    cached = dict(at.session_state["predictions"])
    assert len(cached) == 17
    at.run()
    assert all(at.session_state["predictions"][k] is v for k, v in cached.items())
