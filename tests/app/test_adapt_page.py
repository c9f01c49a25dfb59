"""The "Adapt to your lab" page under streamlit.testing: log-in required, a zip of class folders
(or the cells reviewers kept) in, before/after figures on the held-back cells, install (or
discard); uploads not kept; kept cells can all be forgotten."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import pytest
from streamlit.testing.v1 import AppTest
from test_app import (
    APP,
    CLASSIFY,
    EXAMPLES,
    PASSWORD,
    TIMEOUT,
    _log_in,
    _no_exception,
    _texts,
)

from bcclassify.access import accounts
from bcclassify.access.roles import Role
from bcclassify.lab.kept import KeptCells

PAGE = "pages/5_Adapt_to_your_lab.py"


def _zip(classes: tuple[str, ...]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in classes:
            for path in sorted((EXAMPLES / name).glob("*.jpg")):
                archive.write(path, f"mylab/{name}/{path.name}")  # a zipped folder
    return buffer.getvalue()


@pytest.mark.slow
def test_adapt_page_needs_a_log_in_then_adapts_and_installs(tiny_store, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", store / "models" / "tiny-cnn")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    data = tmp_path / "data"
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    accounts.add_user(data / "accounts.json", "qa.lead", PASSWORD, role=Role.ADMIN)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(PAGE).run()
    _no_exception(at)
    assert "Log in" in _texts(at.info) and not at.get("file_uploader")

    at.switch_page(CLASSIFY).run()
    at = _log_in(at, "qa.lead")
    at.switch_page(PAGE).run()
    _no_exception(at)
    assert "not written to disk" in _texts(at.caption)
    assert at.checkbox(key="adapt_keep").value is False  # keeping cells is opt-in
    at.text_input(key="adapt_name").set_value("tiny-lab")
    at.number_input(key="adapt_per_class").set_value(1)
    at.file_uploader(key="adapt_zip").set_value(
        ("lab.zip", _zip(("lymphocyte", "neutrophil")), "application/zip")
    ).run()
    _no_exception(at)
    counts = next(d.value for d in at.dataframe if "to fit on" in d.value.columns)
    assert list(counts["to fit on"]) == [1, 1] and list(counts["held back to score"]) == [1, 1]

    next(b for b in at.button if b.label == "Adapt").click().run()
    _no_exception(at)
    figures = next(d.value for d in at.dataframe if "adapted model" in d.value.columns)
    assert "Accuracy" in list(figures[""])
    assert "tiny-lab" not in [p.name for p in (store / "models").iterdir()]  # not yet installed

    next(b for b in at.button if b.label == "Install this model").click().run()
    _no_exception(at)
    assert "Installed tiny-lab" in _texts(at.success)
    assert (store / "models" / "tiny-lab" / "card.json").is_file()
    assert not (data / "lab-cells").exists()  # uploads were not kept
    installed = json.loads((store / "models" / "tiny-lab" / "card.json").read_text())["installed"]
    assert installed["by"] == "qa.lead" and "-adapt-tiny-lab-" in installed["from_run"]
    at.switch_page(CLASSIFY).run()
    assert "tiny-lab" in at.selectbox(key="model").options

    at.switch_page(PAGE).run()  # the admin can take it out of service again
    assert "installed by qa.lead" in _texts(at.text)
    at.button(key="adapt_uninstall-tiny-lab").click().run()
    _no_exception(at)
    assert "Uninstalled tiny-lab" in _texts(at.success)
    assert not (store / "models" / "tiny-lab").exists()
    assert list((store / "models" / ".uninstalled").glob("tiny-lab-*/card.json"))


def test_adapt_page_is_for_admins_only(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))  # no model: a fast page
    data = tmp_path / "data"
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    accounts.add_user(data / "accounts.json", "qa", PASSWORD)  # a reviewer
    accounts.add_user(data / "accounts.json", "dr.p", PASSWORD, role=Role.PATHOLOGIST)
    for name in ("qa", "dr.p"):
        at = _log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), name)
        at.switch_page(PAGE).run()
        _no_exception(at)
        assert "for lab admins" in _texts(at.info), name
        assert not at.get("file_uploader") and not any(b.label == "Adapt" for b in at.button)


def test_adapt_page_refuses_a_zip_without_class_folders(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    accounts.add_user(tmp_path / "data" / "accounts.json", "qa", PASSWORD, role=Role.ADMIN)
    at = _log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), "qa")
    at.switch_page(PAGE).run()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cells/**granulocyte**/a.jpg", b"x")
    at.file_uploader(key="adapt_zip").set_value(
        ("lab.zip", buffer.getvalue(), "application/zip")
    ).run()
    _no_exception(at)
    assert "cannot be used" in _texts(at.error)
    # The reason quotes the upload's names: plain text, never Markdown (issue #22).
    assert "unknown class folder '**granulocyte**'" in _texts(at.text)
    assert "granulocyte" not in _texts(at.error) + _texts(at.markdown)
    assert not any(b.label == "Adapt" for b in at.button)


@pytest.mark.slow
def test_adapt_page_adapts_from_kept_cells_and_forgets_them(tiny_store, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", store / "models" / "tiny-cnn")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    data = tmp_path / "data"
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    accounts.add_user(data / "accounts.json", "qa.lead", PASSWORD, role=Role.ADMIN)
    at = _log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), "qa.lead")
    at.switch_page(PAGE).run()
    at.radio(key="adapt_cells_from").set_value("Cells reviewed and kept here").run()
    _no_exception(at)
    assert "No cells are kept" in _texts(at.info) and not any(b.label == "Adapt" for b in at.button)
    assert not (data / "kept-cells").exists()  # looking creates nothing

    kept = KeptCells(data)  # as the Classify page keeps them when the box is ticked
    for name in ("lymphocyte", "neutrophil"):
        for path in sorted((EXAMPLES / name).glob("*.jpg")):
            kept.keep(path.read_bytes(), name, "qa.lead", path.name, model="tiny-cnn")
    at.text_input(key="adapt_name").set_value("tiny-kept")
    at.number_input(key="adapt_per_class").set_value(1).run()
    _no_exception(at)
    shown = next(d.value for d in at.dataframe if "kept cells" in d.value.columns)
    assert dict(zip(shown["class"], shown["kept cells"])) == {"lymphocyte": 2, "neutrophil": 2}
    counts = next(d.value for d in at.dataframe if "to fit on" in d.value.columns)
    assert list(counts["to fit on"]) == [1, 1] and list(counts["held back to score"]) == [1, 1]

    next(b for b in at.button if b.label == "Adapt").click().run()
    _no_exception(at)
    figures = next(d.value for d in at.dataframe if "adapted model" in d.value.columns)
    assert "Accuracy" in list(figures[""])
    assert "the kept cells" in _texts(at.markdown)
    next(b for b in at.button if b.label == "Install this model").click().run()
    _no_exception(at)
    assert "Installed tiny-kept" in _texts(at.success)
    assert (store / "models" / "tiny-kept" / "card.json").is_file()

    at.radio(key="adapt_cells_from").set_value("Cells reviewed and kept here").run()
    next(b for b in at.button if b.label.startswith("Forget all kept cells")).click().run()
    _no_exception(at)
    assert "Delete all 4 kept cells" in _texts(at.warning)
    assert not any(b.label == "Adapt" for b in at.button)
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert kept.counts() == {"lymphocyte": 2, "neutrophil": 2}  # cancelled: nothing deleted
    next(b for b in at.button if b.label.startswith("Forget all kept cells")).click().run()
    next(b for b in at.button if b.label == "Delete 4 kept cells").click().run()
    _no_exception(at)
    assert "Forgot 4 kept cell(s)" in _texts(at.success)
    assert "No cells are kept" in _texts(at.info)
    assert not (data / "kept-cells").exists()
    assert (store / "models" / "tiny-kept" / "card.json").is_file()  # models are not touched


def test_adapt_page_shows_the_source_models_learning_curve(tiny_store, tmp_path, monkeypatch):
    from bcclassify.lab.curve import record_curve, summarise_curve

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", store / "models" / "tiny-cnn")
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    accounts.add_user(tmp_path / "data" / "accounts.json", "qa", PASSWORD, role=Role.ADMIN)
    after = {"accuracy": 0.9, "flagged_fraction": 0.5, "unidentified_fraction": 0.3}
    draws = [
        {"per_class": k, "seed": 0, "taken": 5 * k, "held_back": 100, "before": {"accuracy": 0.3},
         "after": {**after, "wrong_and_unflagged_fraction": 0.01 * k}}
        for k in (5, 10)
    ]  # fmt: skip
    record_curve(
        store / "models" / "tiny-cnn", summarise_curve(draws), "lab-x", "x.json", "python x.py"
    )
    at = _log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), "qa")
    at.switch_page(PAGE).run()
    _no_exception(at)
    assert any("learning curve" in e.label for e in at.expander)
    (table,) = [d.value for d in at.dataframe if "cells a class" in d.value.columns]
    assert list(table["cells a class"]) == [5, 10]
    assert list(table["wrong and not flagged (worst draw)"]) == ["5.0%", "10.0%"]
