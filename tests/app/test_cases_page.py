"""The Cases page under streamlit.testing: a case from accession number to final sign-off, by two
people logged in with their roles, on a real review-log file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import REPO
from streamlit.testing.v1 import AppTest

from bcclassify.access import accounts
from bcclassify.access.roles import Role
from bcclassify.review.cases import CaseStore, report_fhir

APP = REPO / "app.py"
PAGE = "pages/6_Cases.py"
PASSWORD = "a long test password"
TIMEOUT = 120


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _log_in(at: AppTest, name: str) -> AppTest:
    at.text_input(key="login_user").set_value(name)
    next(t for t in at.text_input if t.label == "Password").set_value(PASSWORD)
    return _ok(next(b for b in at.button if b.label == "Log in").click().run())


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label.startswith(label))


def _start(monkeypatch, tmp_path: Path) -> AppTest:
    data = tmp_path / "data"
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))  # no model: none needed
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    monkeypatch.delenv("BCCLASSIFY_REPORT_LIMITS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    return _ok(at.switch_page(PAGE).run())


def test_a_case_from_accession_to_final_sign_off(tmp_path, monkeypatch):
    at = _start(monkeypatch, tmp_path)
    assert "Log in" in _texts(at.info)
    assert not any(t.key == "accession" for t in at.text_input)

    data = tmp_path / "data"
    accounts.add_user(data / "accounts.json", "ann", PASSWORD)
    accounts.add_user(data / "accounts.json", "dr.bob", PASSWORD, role=Role.PATHOLOGIST)
    at = _log_in(at.run(), "ann")
    assert "No cases yet" in _texts(at.info)

    at.text_input(key="accession").set_value("H26 **bold**")
    at = _ok(_button(at, "Create case").click().run())
    assert "3 to 32 characters" in _texts(at.text)
    assert not CaseStore(data / "reviews.sqlite3").list()

    at.text_input(key="accession").set_value(" h26-0042 ")
    at.text_input(key="wbc").set_value("7,4")
    at = _ok(_button(at, "Create case").click().run())
    assert "Case created." in _texts(at.success)
    assert "for accession H26-0042" in _texts(at.text)
    assert "Accession: H26-0042" in _texts(at.text)
    (case,) = CaseStore(data / "reviews.sqlite3").list()

    # Cells as the classifier gives them (the page's upload path is the Classify page's own).
    cells = [
        {"file": "n.jpg", "label": "neutrophil", "confidence": 0.95, "flag": "", "error": None},
        {"file": "m.jpg", "label": "monocyte", "confidence": 0.5, "flag": "low_confidence"},
    ]
    CaseStore(data / "reviews.sqlite3").add_cells(case.case_id, cells, "e" * 64, model="m")
    at = _ok(at.run())
    assert "awaiting review 1" in _texts(at.text)
    at = _ok(_button(at, "Sign as reviewer").click().run())
    assert "await review" in _texts(at.text)

    assert at.selectbox(key="review_cell").value == "m.jpg"  # the flagged cell first
    at.selectbox(key="review_class").set_value("lymphocyte")
    at = _ok(_button(at, "Save decision").click().run())
    assert "Decision saved." in _texts(at.success)
    assert "m.jpg: Lymphocyte" in _texts(at.text)  # a file name: plain text
    assert "Monocyte -> Lymphocyte: 1" in _texts(at.text)
    at = _ok(_button(at, "Sign as reviewer").click().run())
    assert "awaits the final sign-off" in _texts(at.success)
    assert "Awaiting the final sign-off" in _texts(at.info)  # ann is a reviewer: no step 2

    at = _ok(_button(at, "Log out").click().run())
    at = _log_in(at, "dr.bob")
    at = _ok(_button(at, "Sign off final").click().run())
    assert "the report is final" in _texts(at.success)
    signoffs = CaseStore(data / "reviews.sqlite3").signoffs(case.case_id)
    assert [(s["step"], s["signer"], s["model_card_sha256"]) for s in signoffs] == [
        ("review", "ann", "e" * 64),
        ("final", "dr.bob", "e" * 64),
    ]
    downloads = {b.label: b for b in at.get("download_button")}
    assert {"PDF report", "FHIR R4 DiagnosticReport (JSON)", "Report (JSON)"} <= set(downloads)
    with sqlite3.connect(data / "reviews.sqlite3") as db:
        (case_id,) = db.execute("SELECT case_id FROM reviews").fetchone()
    assert case_id == case.case_id
    # What the FHIR button serves: the library's resource for this case, now final.
    resource = report_fhir(CaseStore(data / "reviews.sqlite3"), case.case_id)
    assert json.loads(json.dumps(resource))["status"] == "final"


@pytest.mark.slow
def test_cells_classified_on_the_page_join_the_case_all_or_nothing(
    tiny_store, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    accounts.add_user(data / "accounts.json", "ann", PASSWORD)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at = _log_in(_ok(at.switch_page(PAGE).run()), "ann")
    at.text_input(key="accession").set_value("H26-0043")
    at = _ok(_button(at, "Create case").click().run())
    examples = ["basophil/BA_112418.jpg", "ig/IG_132866.jpg"]
    at.multiselect(key="examples").set_value(examples).run()
    at = _ok(_button(at, "Classify and add 2 image(s)").click().run())
    assert "2 cell(s) added." in _texts(at.success)
    assert "Classified with tiny-hybrid." in _texts(at.text)
    store = CaseStore(data / "reviews.sqlite3")
    (case,) = store.list()
    cells = store.cells(case.case_id)
    assert [c["file_name"] for c in cells] == examples
    assert {c["model"] for c in cells} == {"tiny-hybrid"}
    assert all(len(c["model_card_sha256"]) == 64 and len(c["image_sha256"]) == 64 for c in cells)
    # The same files again: refused by name, nothing added.
    at = _ok(_button(at, "Classify and add 2 image(s)").click().run())
    assert "already in case" in _texts(at.text)
    assert len(store.cells(case.case_id)) == 2
