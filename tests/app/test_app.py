"""The Streamlit app under streamlit.testing: every page, with the tiny store and with none.

AppTest runs the real scripts in-process; models load once per process (st.cache_resource), so
the first test that classifies pays for TensorFlow and later ones reuse it.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image
from streamlit.testing.v1 import AppTest

import bcclassify
from bcclassify import CLASS_LABELS
from bcclassify.access import accounts
from bcclassify.data.imaging import IMAGE_TYPES
from bcclassify.presentation.pages import EXAMPLES_DIR, example_images
from bcclassify.serving.acquisition import fit_range, summaries
from bcclassify.serving.classifier import Prediction
from bcclassify.storage.cards import write_card

APP = REPO / "app.py"
CLASSIFY = "pages/0_Classify.py"  # the default page
PAGES = [
    "pages/1_Training_runs.py",
    "pages/2_Confusion_matrices.py",
    "pages/3_Per-class_metrics.py",
    "pages/4_Model_comparison.py",
]
TIMEOUT = 180  # seconds per script run: TensorFlow start-up on a busy 2-core machine
EXAMPLES = REPO / "bcclassify" / "examples" / "pbc"


PASSWORD = "a long test password"


def _start(monkeypatch, data_dir: Path, secrets: dict | None = None, user=None) -> AppTest:
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data_dir))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    if user is not None:
        at.user = user
    return at.run()


def _log_in(at: AppTest, name: str, password: str = PASSWORD) -> AppTest:
    at.text_input(key="login_user").set_value(name)
    next(t for t in at.text_input if t.label == "Password").set_value(password)
    return next(b for b in at.button if b.label == "Log in").click().run()


def _save_buttons(at: AppTest) -> list:
    return [b for b in at.button if b.label.startswith("Save decision")]


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _frame(at: AppTest, column: str):
    """The first table shown that has ``column`` (plain dataframes carry no widget key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_app_py_only_sets_up_and_registers_every_page():
    tree = ast.parse(APP.read_text(encoding="utf-8"))
    defined = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert not defined, "page logic belongs in pages/"
    registered = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and str(node.value).startswith("pages/")
    ]
    assert registered[0] == CLASSIFY
    assert sorted(registered) == sorted(
        p.relative_to(REPO).as_posix() for p in (REPO / "pages").glob("*.py")
    )
    assert all((REPO / page).is_file() for page in registered)


PAGE_LINES = 200  # a page reads as a table of contents; its regions live in ui/


def test_pages_only_present_each_in_at_most_200_lines():
    scripts = [APP, *sorted((REPO / "pages").glob("*.py"))]
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in scripts
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > PAGE_LINES
    }
    assert not long, f"over {PAGE_LINES} lines: {long}"


def test_example_cells_ship_with_the_library_and_their_credit():
    package = Path(bcclassify.__file__).parent
    examples = example_images()
    assert [p.parent.name for p in examples] == [n for n in CLASS_LABELS for _ in range(2)]
    assert all(p.is_relative_to(package / "examples") for p in examples)
    assert "CC BY 4.0" in (EXAMPLES_DIR.parent / "README.md").read_text(encoding="utf-8")
    assert {p.suffix[1:] for p in examples} <= set(IMAGE_TYPES)


def test_every_page_says_what_to_run_with_an_empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))
    at = _start(monkeypatch, tmp_path / "data")
    _no_exception(at)
    assert "promote" in _texts(at.warning)  # Classify: no model installed
    assert "`…/store`" in _texts(at.warning) and str(tmp_path) not in _texts(at.warning)
    for page in PAGES:
        at.switch_page(page).run()
        _no_exception(at)
        assert "python -m bcclassify" in _texts(at.info), page
        assert str(tmp_path) not in _texts(at.info) + _texts(at.markdown), page
    at.switch_page(PAGES[0]).run()
    assert "No training runs in the model store `…/store`" in _texts(at.info)


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


@pytest.mark.slow
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

    # An opacity change redraws the overlays from the session's predictions and maps.
    def cached() -> tuple[set[int], set[int]]:
        state = at.session_state
        return (
            {id(v) for v in state["compare_predictions"].values()},
            {id(v) for v in state["explanations"].values()},
        )

    before = cached()
    assert len(before[0]) == 2 and len(before[1]) == 2
    at.slider(key="compare_opacity").set_value(0.8).run()
    _no_exception(at)
    assert cached() == before


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
    assert any(" — for " in c and "p = " in c for c in captions)  # target and probability
    assert "blue (low) to red (highest)" in _texts(at.caption)  # beside the colour bar
    assert at.get("plotly_chart"), "probability bar chart"

    # Anonymous: classified and explained, but nothing to save or export, and it says so.
    assert not _save_buttons(at)
    assert "Log in" in _texts(at.info)
    assert not any(b.label.startswith("Export review") for b in at.get("download_button"))
    assert not any(t.key in ("reviewer", "data_dir") for t in at.text_input)  # no typed names
    assert not (tmp_path / "data" / "reviews.sqlite3").exists()

    accounts.add_user(tmp_path / "data" / "accounts.json", "qa.lead", PASSWORD)
    at = _log_in(at.run(), "qa.lead", "wrong password!")
    assert "wrong password" in _texts(at.error) and not _save_buttons(at)
    at = _log_in(at, "qa.lead")
    _no_exception(at)
    assert "Logged in as qa.lead" in _texts(at.text)

    target = next(k for k in at.session_state.to_dict() if str(k).startswith("review_class-"))
    comment = target.replace("review_class-", "review_comment-")
    keep = target.replace("review_class-", "review_keep-")
    assert at.checkbox(key=keep).value is False  # keeping the crop is opt-in
    at.selectbox(key=target).set_value("eosinophil")
    at.text_input(key=comment).set_value('=HYPERLINK("http://x")')
    _save_buttons(at)[0].click().run()
    _no_exception(at)
    assert "Eosinophil" in _texts(at.success)
    assert not (tmp_path / "data" / "kept-cells").exists()  # nothing of the upload is written

    with sqlite3.connect(tmp_path / "data" / "reviews.sqlite3") as db:
        rows = db.execute(
            "SELECT file_name, model, reviewer_class, reviewer, model_card_sha256, training_run"
            " FROM reviews"
        ).fetchall()
    card_sha = rows[0][4]
    assert len(card_sha) == 64
    assert rows == [
        (
            "basophil/BA_112418.jpg",
            "tiny-hybrid",
            "eosinophil",
            "qa.lead",
            card_sha,
            "fixture-cnn-32px",
        )
    ]
    assert len(_frame(at, "reviewer_class")) == 1
    at.run()  # the next run shows the last decision, its reviewer as plain text
    assert "by qa.lead" in _texts(at.text) and "qa.lead" not in _texts(at.caption)
    exported = next(b for b in at.get("download_button") if b.label.startswith("Export review"))
    assert exported.proto.disabled is False

    next(b for b in at.button if b.label == "Log out").click().run()
    assert not _save_buttons(at)


def _kept_files(data: Path) -> list[str]:
    root = data / "kept-cells"
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.parent != root  # the crops, not the index
    )


def test_a_reviewer_can_keep_a_reviewed_crop_and_withdraw_it(tiny_store, tmp_path, monkeypatch):
    data = tmp_path / "data"
    accounts.add_user(data / "accounts.json", "qa.lead", PASSWORD)
    at = _log_in(_start(monkeypatch, data), "qa.lead")
    example = "neutrophil/BNE_104344.jpg"
    crop = (EXAMPLES / example).read_bytes()
    at.multiselect(key="examples").set_value([example]).run()
    _no_exception(at)
    target = next(k for k in at.session_state.to_dict() if str(k).startswith("review_class-"))
    keep = target.replace("review_class-", "review_keep-")
    assert "never written to disk" in _texts(at.caption)  # the box says what it stores

    at.selectbox(key=target).set_value("neutrophil")
    at.checkbox(key=keep).check()
    _save_buttons(at)[0].click().run()
    _no_exception(at)
    assert "Kept on this server as Neutrophil" in _texts(at.success)
    sha = hashlib.sha256(crop).hexdigest()
    assert _kept_files(data) == [f"neutrophil/{sha}.jpg"]  # the crop as classified, one entry
    kept = data / "kept-cells" / "neutrophil" / f"{sha}.jpg"
    assert kept.read_bytes() == crop and kept.stat().st_mode & 0o777 == 0o600

    at.selectbox(key=target).set_value("monocyte")  # a correction moves the kept cell
    _save_buttons(at)[0].click().run()
    _no_exception(at)
    assert _kept_files(data) == [f"monocyte/{sha}.jpg"]
    assert at.checkbox(key=keep).value is True

    at.checkbox(key=keep).uncheck()  # withdrawn: unticked and saved again
    _save_buttons(at)[0].click().run()
    _no_exception(at)
    assert "No longer kept" in _texts(at.success)
    assert _kept_files(data) == []
    with sqlite3.connect(data / "reviews.sqlite3") as db:  # every decision is still logged
        assert db.execute("SELECT COUNT(*) FROM reviews").fetchone() == (3,)


def test_oidc_login_when_an_auth_section_is_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))  # no model: a fast page
    auth = {
        "redirect_uri": "https://cells.example.org/oauth2callback",
        "cookie_secret": "x" * 32,
        "client_id": "bcclassify",
        "client_secret": "s",
        "server_metadata_url": "https://id.example.org/.well-known/openid-configuration",
    }
    at = _start(monkeypatch, tmp_path / "data", {"auth": auth}, {"is_logged_in": False})
    _no_exception(at)
    assert any(b.label == "Log in" for b in at.button)
    assert not any(t.key == "login_user" for t in at.text_input)  # no local form beside OIDC
    listed = {"auth": auth, "bcclassify": {"sso_users": {"dr.ana@lab.example.org": "admin"}}}
    claims = {"iss": "https://id.example.org", "sub": "4711", "email_verified": True}
    at = _start(
        monkeypatch,
        tmp_path / "data",
        listed,
        {"is_logged_in": True, "email": "dr.ana@lab.example.org", **claims},
    )
    _no_exception(at)
    assert "Logged in as dr.ana@lab.example.org (admin)" in _texts(at.text)
    # Anyone else at the provider, or an address it did not verify, is not let in.
    for user in (
        {"is_logged_in": True, "email": "someone@gmail.com", **claims},
        {"is_logged_in": True, "email": "dr.ana@lab.example.org", **claims, "email_verified": 0},
        {"is_logged_in": True, "name": "dr.ana@lab.example.org", "iss": "x", "sub": "1"},
    ):
        at = _start(monkeypatch, tmp_path / "data", listed, user)
        _no_exception(at)
        assert "not let in" in _texts(at.error) and "Logged in as" not in _texts(at.text)
        assert any(b.label == "Log out" for b in at.button)


def test_a_damaged_review_log_is_a_banner_and_classification_goes_on(
    tiny_store, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    data.mkdir()
    (data / "reviews.sqlite3").write_bytes(b"not a database " * 200)
    accounts.add_user(data / "accounts.json", "qa", PASSWORD)
    at = _log_in(_start(monkeypatch, data), "qa")
    _no_exception(at)
    assert "cannot be opened" in _texts(at.error)
    at.multiselect(key="examples").set_value(["monocyte/MO_104742.jpg"]).run()
    _no_exception(at)
    assert at.get("plotly_chart"), "classified despite the log"
    assert not _save_buttons(at)


def _big_png(side: int = 6000) -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(ramp, (side, side)).copy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_batch_with_bad_and_oversized_files(tiny_store, tmp_path, monkeypatch):
    at = _start(monkeypatch, tmp_path / "data")
    at.selectbox(key="model").set_value("tiny-cnn").run()
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(EXAMPLES.rglob("*.jpg"))]
    files.append(("broken.jpg", b"\xff\xd8\xff\xe0 not a jpeg at all", "image/jpeg"))
    files.append(("=field.png", _big_png(), "image/png"))  # 36 MP: over the 25 MP cap
    at.file_uploader(key="uploads").set_value(files).run()
    _no_exception(at)

    refused = _frame(at, "reason")
    assert list(refused["file"]) == ["broken.jpg", "=field.png"]
    assert "damaged" in refused["reason"][0] and "25 million" in refused["reason"][1]
    assert "16 of 18 image(s) classified" in _texts(at.success)
    differential = _frame(at, "% of all cells")
    awaiting = next(m.value for m in at.metric if m.label == "Awaiting review")
    assert len(differential) == 8 and differential["count"].sum() + int(awaiting) == 16
    assert len(_frame(at, "% of leukocytes")) == 6
    assert any(b.label.startswith("Download results") for b in at.get("download_button"))

    # Reruns reuse the session's results rather than classifying again.
    cache = at.session_state["predictions"]
    assert len(cache) == 18
    before = list(cache.values())
    at.run()
    assert all(a is b for a, b in zip(at.session_state["predictions"].values(), before))
    assert len(at.session_state["working_copies"]) <= 8  # a bounded per-session cache


def test_flagged_cells_are_grouped_first_and_left_out_of_the_count(
    tiny_store, tmp_path, monkeypatch
):
    # Stand in for the novelty detector: basophils come back unidentified, eosinophils
    # low-confidence, the rest unflagged.
    def flag(self):
        if self.error:
            return "error"
        if "BA_" in self.path:
            return "unidentified"
        return "low_confidence" if "EO_" in self.path else ""

    monkeypatch.setattr(Prediction, "flag", property(flag))
    at = _start(monkeypatch, tmp_path / "data")
    at.selectbox(key="model").set_value("tiny-cnn").run()
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(EXAMPLES.rglob("*.jpg"))]
    at.file_uploader(key="uploads").set_value(files).run()
    _no_exception(at)

    groups = [m.value for m in at.markdown if m.value.startswith("**") and "cell(s)" in m.value]
    assert groups[0].startswith("**Unidentified — not like the cells this model was trained on**")
    assert "2 awaiting review" in groups[0]
    assert groups[1].startswith("**Low confidence — needs review**")
    differential = _frame(at, "% of all cells")
    assert differential["count"].sum() == 12
    assert "4 cell(s) awaiting review" in _texts(at.warning)

    basophil = sorted(EXAMPLES.glob("basophil/*.jpg"))[0]
    sha = hashlib.sha256(basophil.read_bytes()).hexdigest()
    at.selectbox(key="selected_cell").set_value(f"{sha}|{basophil.name}").run()
    _no_exception(at)
    assert "### Unidentified — not like the cells this model was trained on" in _texts(at.markdown)
    assert at.expander, "the probabilities are collapsed"


def test_model_comparison_reports_a_bad_upload(tiny_store, tmp_path, monkeypatch):
    at = _start(monkeypatch, tmp_path / "data")
    at.switch_page(PAGES[3]).run()
    at.file_uploader(key="compare_upload").set_value(
        ("broken.png", b"\x89PNG\r\n\x1a\n not a png", "image/png")
    ).run()
    _no_exception(at)
    assert "broken.png" in _texts(at.error) + _texts(at.text)


def test_a_batch_mostly_unlike_the_training_cells_gets_the_other_lab_warning(
    tiny_store, tmp_path, monkeypatch
):
    """Another lab's look (yellowed backgrounds) is outside the model's acquisition range: every
    cell is unidentified and the batch gets a warning pointing to adaptation."""
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    card_path = store / "models" / "tiny-cnn" / "card.json"
    card = json.loads(card_path.read_text())
    own = [
        np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in EXAMPLES.rglob("*.jpg")
    ]
    card["acquisition"] = fit_range(summaries(np.stack(own)), "example cells").to_card()
    write_card(card_path.parent, card)  # the one card writer: card.sha256 too
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    files = []
    for path in sorted(EXAMPLES.rglob("*.jpg"))[:6]:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        yellowed = np.clip(pixels * [1.08, 1.02, 0.80], 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(yellowed).save(buffer, format="PNG")
        files.append((f"{path.stem}.png", buffer.getvalue(), "image/png"))

    at = _start(monkeypatch, tmp_path / "data")
    at.selectbox(key="model").set_value("tiny-cnn").run()
    at.file_uploader(key="uploads").set_value(files).run()
    _no_exception(at)
    assert "6 of 6 cells (100%) look unlike" in _texts(at.warning)
    assert "taken unlike the training lab's images" in _texts(at.warning)  # the inspected cell
    # the same cells as the training lab took them: no warning
    plain = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(EXAMPLES.rglob("*.jpg"))[:6]]
    at.file_uploader(key="uploads").set_value(plain).run()
    _no_exception(at)
    assert "look unlike" not in _texts(at.warning)


def test_training_runs_hide_who_adapted_and_which_files_from_visitors(
    tiny_store, tmp_path, monkeypatch
):
    """An adaptation's run record names its requester and the uploaded files; a visitor who is
    not logged in sees neither, and error text quoting file names is plain text (issue #22)."""
    from bcclassify.storage.runs import RunRecord

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "runs", store / "runs")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    run_id = "20260101-000000-adapt-lab"
    record = RunRecord(store / "runs" / run_id)
    record.write_config(
        {
            "kind": "adaptation",
            "requested_by": "alice@lab.example",
            "cells": "upload:alice-ward-7.zip",
            "cells_sha256": {"neutrophil/**patient-42**.png": "0" * 64},
            "command": "python -m bcclassify adapt --cells /srv/alice-ward-7",
        }
    )
    record.create(run_id=run_id, kind="adaptation", status="failed", created="2099-01-01")
    record.update(error="unreadable image: neutrophil/**patient-42**.png")
    data = tmp_path / "data"
    accounts.add_user(data / "accounts.json", "qa.lead", PASSWORD)

    def shown(at: AppTest) -> str:
        return "\n".join(str(e.proto) for e in at.get("json")) + _texts(at.text)

    at = _start(monkeypatch, data)
    at.switch_page(PAGES[0]).run()
    at.multiselect(key="curve_runs").set_value([run_id]).run()
    _no_exception(at)
    assert "This run failed" in _texts(at.error)
    everything = shown(at) + _texts(at.error) + _texts(at.markdown)
    for private in ("alice", "patient-42", "ward-7"):
        assert private not in everything
    assert "hidden: log in to see" in _texts(at.text)

    at.switch_page(CLASSIFY).run()
    at = _log_in(at, "qa.lead")
    at.switch_page(PAGES[0]).run()
    at.multiselect(key="curve_runs").set_value([run_id]).run()
    _no_exception(at)
    assert "alice@lab.example" in shown(at)
    # the error is plain text, not Markdown (which would turn **patient-42** into bold)
    assert "unreadable image: neutrophil/**patient-42**.png" in _texts(at.text)
    assert "patient-42" not in _texts(at.error) + _texts(at.markdown)
