"""Cases in a real SQLite review log: validation, persistence, all-or-nothing writes, the two-step
sign-off and amendments as new rows."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest

from bcclassify.access.roles import Identity, Role
from bcclassify.review.cases import Case, CaseError, CaseNotFound, CaseStore
from bcclassify.review.reviews import ReviewLog

CARD = "c" * 64
REVIEWER = Identity("ann")
PATHOLOGIST = Identity("dr.bob", Role.PATHOLOGIST)


def result(name: str, label: str = "neutrophil", flag: str = "", error: str | None = None):
    """One cell as the classifier's JSON gives it (``predict --format json``), with its file."""
    return {
        "file": name,
        "label": None if error else label,
        "confidence": None if error else 0.9,
        "flag": "error" if error else flag,
        "error": error,
        "probabilities": None if error else {label: 0.9, "ig": 0.1},
    }


@pytest.fixture()
def store(tmp_path) -> CaseStore:
    return CaseStore(tmp_path / "reviews.sqlite3")


def open_case(store: CaseStore, cells=None) -> Case:
    case = store.create("H26-0001", 7.4, "ann")
    store.add_cells(case.case_id, cells or [result("a.jpg"), result("b.jpg", "lymphocyte")], CARD)
    return case


@pytest.mark.parametrize("accession", ["", "ab", "H26 0042", "=HYPERLINK(1)", "A" * 33, "é12"])
def test_bad_accession_numbers_are_refused_by_name(store, accession):
    with pytest.raises(CaseError, match="accession number .* 3 to 32 characters"):
        store.create(accession, None, "ann")
    assert store.list() == []


def test_a_scanned_accession_is_trimmed_and_upper_cased(store):
    case = store.create("  h26-004211\r\n", "7,4", "ann")
    assert (case.accession, case.wbc_count, case.status) == ("H26-004211", 7.4, "open")
    assert store.find("H26-004211 ") == case


@pytest.mark.parametrize("wbc", ["abc", -1, 0, 0.05, 600, float("nan"), float("inf"), True])
def test_a_wbc_count_out_of_range_is_refused(store, wbc):
    with pytest.raises(CaseError, match="WBC count .* from 0.1 to 500"):
        store.create("H26-0001", wbc, "ann")


def test_an_accession_has_one_case(store):
    first = store.create("H26-0001", None, "ann")
    with pytest.raises(CaseError, match=f"already has case {first.case_id}"):
        store.create("h26-0001", 5, "bob")


def test_an_unknown_case_is_a_key_error_and_a_case_error(store):
    with pytest.raises(KeyError):
        store.get("case-nope")
    with pytest.raises(CaseNotFound, match="does not exist"):
        store.add_cells("case-nope", [result("a.jpg")], CARD)


def test_cases_and_decisions_persist_across_sessions(tmp_path):
    first = CaseStore(tmp_path / "reviews.sqlite3")
    case = open_case(first)
    first.record_decision(case.case_id, "b.jpg", "monocyte", "ann", "kidney nucleus")
    later = CaseStore(tmp_path / "reviews.sqlite3")  # another session, another process
    assert later.list() == [later.get(case.case_id)]
    cells = {c["file_name"]: c for c in later.cells(case.case_id)}
    assert cells["b.jpg"]["reviewer_class"] == "monocyte"
    assert cells["a.jpg"]["reviewer_class"] is None
    # The decision is a review-log row with the case's id, so the log and its export show it.
    (row,) = ReviewLog(tmp_path).entries()
    assert (row["case_id"], row["file_name"], row["decision"]) == (
        case.case_id,
        "b.jpg",
        "corrected",
    )
    assert row["model_card_sha256"] == CARD
    assert case.case_id in ReviewLog(tmp_path).export_csv(Identity("lab.admin", Role.ADMIN))


def test_a_bad_result_midway_saves_none_of_the_batch(store):
    case = store.create("H26-0001", None, "ann")
    batch = [result("a.jpg"), result("b.jpg"), {"file": "c.jpg", "label": "blast"}]
    with pytest.raises(CaseError, match="c.jpg: label 'blast' is not one of"):
        store.add_cells(case.case_id, batch, CARD)
    assert store.cells(case.case_id) == []
    store.add_cells(case.case_id, [result("a.jpg")], CARD)
    with pytest.raises(CaseError, match="a.jpg: this file name is already in case"):
        store.add_cells(case.case_id, [result("z.jpg"), result("a.jpg")], CARD)
    assert [c["file_name"] for c in store.cells(case.case_id)] == ["a.jpg"]


def _killed_while_adding(path: str, case_id: str) -> None:
    import os

    def results():
        yield result("a.jpg")
        yield result("b.jpg")
        os._exit(9)  # the process dies inside the transaction, two rows already inserted

    CaseStore(path).add_cells(case_id, results(), CARD)


def test_a_process_killed_midway_leaves_the_case_as_it_was(tmp_path):
    path = tmp_path / "reviews.sqlite3"
    case = open_case(CaseStore(path), [result("first.jpg")])
    worker = multiprocessing.get_context("spawn").Process(
        target=_killed_while_adding, args=(str(path), case.case_id)
    )
    worker.start()
    worker.join(60)
    assert worker.exitcode == 9
    reopened = CaseStore(path)
    assert [c["file_name"] for c in reopened.cells(case.case_id)] == ["first.jpg"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_case_rows_are_append_only(store):
    case = open_case(store)
    store.sign_off(case.case_id, REVIEWER, "review")  # triggers fire per row: have one of each
    with sqlite3.connect(store.path) as db:
        for sql in (
            "UPDATE cases SET accession = 'X'",
            "DELETE FROM case_cells",
            "UPDATE case_signoffs SET signer = 'x'",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
    assert store.get(case.case_id).accession == "H26-0001"


OLD_LOG = """
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, file_name TEXT NOT NULL, image_sha256 TEXT NOT NULL,
    model TEXT NOT NULL, predicted_class TEXT NOT NULL, probabilities TEXT NOT NULL,
    reviewer_class TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('confirmed', 'corrected')),
    comment TEXT NOT NULL DEFAULT '', reviewer TEXT NOT NULL DEFAULT '', time TEXT NOT NULL,
    model_card_sha256 TEXT NOT NULL DEFAULT '', training_run TEXT NOT NULL DEFAULT ''
);
INSERT INTO reviews (file_name, image_sha256, model, predicted_class, probabilities,
    reviewer_class, decision, comment, reviewer, time)
VALUES ('old.jpg', 'sha-old', 'hybrid', 'ig', '{}', 'monocyte', 'corrected', 'kept', 'QA',
    '2026-01-01T00:00:00.000+00:00');
"""


def test_a_log_from_before_cases_keeps_its_rows(tmp_path):
    with sqlite3.connect(tmp_path / "reviews.sqlite3") as db:
        db.executescript(OLD_LOG)
    store = CaseStore(tmp_path / "reviews.sqlite3")
    case = open_case(store)
    store.record_decision(case.case_id, "a.jpg", "ig", "ann")
    old, new = ReviewLog(tmp_path).entries()
    assert (old["file_name"], old["comment"], old["case_id"]) == ("old.jpg", "kept", "")
    assert new["case_id"] == case.case_id
    assert len(ReviewLog(tmp_path).entries(latest_only=True)) == 2


def test_two_step_sign_off_by_two_people(store):
    case = open_case(store, [result("a.jpg"), result("b.jpg", "monocyte", "low_confidence")])
    with pytest.raises(CaseError, match="1 flagged cell.* await review"):
        store.sign_off(case.case_id, REVIEWER, "review")
    with pytest.raises(CaseError, match="needs a case that is reviewed"):
        store.sign_off(case.case_id, PATHOLOGIST, "final")
    store.record_decision(case.case_id, "b.jpg", "lymphocyte", "ann")
    review = store.sign_off(case.case_id, REVIEWER, "review")
    assert store.get(case.case_id).status == "reviewed"
    assert (review["signer"], review["signer_role"], review["model_card_sha256"]) == (
        "ann",
        "reviewer",
        CARD,
    )
    # No more changes once reviewed.
    with pytest.raises(CaseError, match="is reviewed"):
        store.record_decision(case.case_id, "a.jpg", "ig", "ann")
    with pytest.raises(CaseError, match="is reviewed"):
        store.add_cells(case.case_id, [result("c.jpg")], CARD)
    # A reviewer may not sign the final step, nor may the person who reviewed.
    with pytest.raises(CaseError, match="pathologist or admin must"):
        store.sign_off(case.case_id, Identity("carl"), "final")
    with pytest.raises(CaseError, match="needs a second person"):
        store.sign_off(case.case_id, Identity("ann", Role.PATHOLOGIST), "final")
    final = store.sign_off(case.case_id, PATHOLOGIST, "final")
    assert store.get(case.case_id).status == "final"
    assert final["results_sha256"] == review["results_sha256"]  # nothing changed in between
    with pytest.raises(CaseError, match="is final"):
        store.sign_off(case.case_id, REVIEWER, "review")


def test_nobody_signs_without_a_login(store):
    case = open_case(store)
    with pytest.raises(CaseError, match="log in"):
        store.sign_off(case.case_id, None, "review")
    with pytest.raises(CaseError, match="not one of review, final"):
        store.sign_off(case.case_id, REVIEWER, "approve")


def test_a_pathologist_can_send_a_reviewed_case_back(store):
    case = open_case(store)
    store.sign_off(case.case_id, REVIEWER, "review")
    with pytest.raises(CaseError, match="may not reopen"):
        store.reopen(case.case_id, REVIEWER, "recount")
    row = store.reopen(case.case_id, PATHOLOGIST, "check the monocytes")
    assert store.get(case.case_id).status == "open"
    assert row["amends"] is not None
    store.record_decision(case.case_id, "a.jpg", "ig", "ann")  # open again: changes allowed


def test_an_amendment_is_a_new_row_pointing_at_what_it_amends(store):
    case = open_case(store)
    store.sign_off(case.case_id, REVIEWER, "review")
    final = store.sign_off(case.case_id, PATHOLOGIST, "final")
    with pytest.raises(CaseError, match="may not amend"):
        store.amend(case.case_id, REVIEWER, "typo", {"a.jpg": "ig"})
    with pytest.raises(CaseError, match="reason"):
        store.amend(case.case_id, PATHOLOGIST, " ", {"a.jpg": "ig"})
    with pytest.raises(CaseError, match="'z.jpg' is not in case"):
        store.amend(case.case_id, PATHOLOGIST, "typo", {"a.jpg": "ig", "z.jpg": "ig"})
    assert len(store.signoffs(case.case_id)) == 2  # the refused amendment saved nothing
    amendment = store.amend(case.case_id, PATHOLOGIST, "band forms", {"a.jpg": "ig"})
    assert amendment["amends"] == final["id"] and amendment["reason"] == "band forms"
    assert amendment["results_sha256"] != final["results_sha256"]
    assert store.get(case.case_id).status == "amended"
    review_row, final_row, _ = store.signoffs(case.case_id)
    assert final_row == {k: final[k] for k in final_row}  # the signed row itself is unchanged
    again = store.amend(case.case_id, PATHOLOGIST, "back", {"a.jpg": "neutrophil"})
    assert again["amends"] == amendment["id"]
    decisions = [r for r in ReviewLog(store.path.parent).entries() if r["file_name"] == "a.jpg"]
    assert [d["reviewer_class"] for d in decisions] == ["ig", "neutrophil"]
    assert json.loads(decisions[0]["probabilities"])["neutrophil"] == 0.9
