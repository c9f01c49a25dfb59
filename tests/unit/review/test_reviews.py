"""The review log is a real SQLite file: decisions persist, append only, and survive concurrency."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import sqlite3

import pytest

from bcclassify import CLASS_NAMES
from bcclassify.access.roles import AccessDenied, Identity, Role
from bcclassify.review.reviews import (
    EXPORT_COLUMNS,
    ChainReport,
    ReviewLog,
    ReviewLogUnavailable,
    verify_chain,
)

PROBS = [0.05, 0.05, 0.05, 0.05, 0.6, 0.1, 0.05, 0.05]
ADMIN = Identity("lab.admin", Role.ADMIN)


def test_decisions_persist_and_export(tmp_path):
    log = ReviewLog(tmp_path)
    log.record("a.jpg", "sha-a", "hybrid", "lymphocyte", PROBS, "lymphocyte", reviewer="qa")
    log.record(
        "b.jpg",
        "sha-b",
        "hybrid",
        "lymphocyte",
        PROBS,
        "monocyte",
        comment="kidney nucleus",
        reviewer="qa",
        model_card_sha256="c" * 64,
        training_run="run-7",
    )
    reopened = ReviewLog(tmp_path)  # a new process would see the same file
    rows = reopened.entries()
    assert [r["decision"] for r in rows] == ["confirmed", "corrected"]
    assert rows[1]["comment"] == "kidney nucleus"
    exported = list(csv.DictReader(io.StringIO(reopened.export_csv(Identity("qa")))))
    assert list(exported[0]) == EXPORT_COLUMNS
    assert exported[1]["reviewer_class"] == "monocyte"
    assert '"lymphocyte": 0.6' in exported[1]["probabilities"]
    assert exported[1]["model_card_sha256"] == "c" * 64
    assert exported[1]["training_run"] == "run-7"


def test_later_decision_supersedes_without_erasing(tmp_path):
    log = ReviewLog(tmp_path)
    log.record("a.jpg", "sha-a", "hybrid", "ig", PROBS, "ig", reviewer="qa")
    log.record("a.jpg", "sha-a", "hybrid", "ig", PROBS, "neutrophil", reviewer="qa")
    assert len(log.entries()) == 2
    latest = log.entries(latest_only=True)
    assert len(latest) == 1 and latest[0]["reviewer_class"] == "neutrophil"


def test_unknown_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        ReviewLog(tmp_path).record("a.jpg", "s", "m", "blast", PROBS, "ig", reviewer="qa")


def test_a_decision_needs_its_reviewer(tmp_path):
    with pytest.raises(ValueError, match="reviewer"):
        ReviewLog(tmp_path).record("a.jpg", "s", "m", "ig", PROBS, "ig", reviewer="  ")


def _writer(folder, worker, count):
    log = ReviewLog(folder)
    for i in range(count):
        log.record(
            f"{worker}-{i}.jpg",
            f"{worker}-{i}",
            "hybrid",
            CLASS_NAMES[i % 8],
            PROBS,
            CLASS_NAMES[(i + worker) % 8],
            reviewer=f"worker-{worker}",
        )


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path):
    ReviewLog(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(tmp_path, w, 40)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    rows = ReviewLog(tmp_path).entries()
    assert len(rows) == 160
    assert verify_chain(tmp_path / "reviews.sqlite3").intact  # no two writers chained alike
    with sqlite3.connect(tmp_path / "reviews.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_cannot_be_changed_or_deleted(tmp_path):
    log = ReviewLog(tmp_path)
    log.record("a.jpg", "sha-a", "hybrid", "ig", PROBS, "ig", reviewer="qa")
    with sqlite3.connect(log.path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE reviews SET reviewer_class = 'basophil'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM reviews")
    assert [r["reviewer_class"] for r in log.entries()] == ["ig"]


OLD_SCHEMA = """
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, file_name TEXT NOT NULL, image_sha256 TEXT NOT NULL,
    model TEXT NOT NULL, predicted_class TEXT NOT NULL, probabilities TEXT NOT NULL,
    reviewer_class TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('confirmed', 'corrected')),
    comment TEXT NOT NULL DEFAULT '', reviewer TEXT NOT NULL DEFAULT '', time TEXT NOT NULL
);
INSERT INTO reviews VALUES (1, 'old.jpg', 'sha-old', 'hybrid', 'ig', '{}', 'monocyte',
    'corrected', 'kept', 'QA', '2026-01-01T00:00:00.000+00:00');
"""


def test_an_older_log_gains_the_model_columns_and_keeps_its_rows(tmp_path):
    with sqlite3.connect(tmp_path / "reviews.sqlite3") as db:
        db.executescript(OLD_SCHEMA)
    log = ReviewLog(tmp_path)
    log.record(
        "new.jpg", "sha-new", "hybrid", "ig", PROBS, "ig", reviewer="qa", training_run="run-8"
    )
    old, new = log.entries()
    assert (old["file_name"], old["comment"], old["reviewer_class"]) == (
        "old.jpg",
        "kept",
        "monocyte",
    )
    assert old["model_card_sha256"] == "" and old["training_run"] == ""
    assert new["training_run"] == "run-8"
    assert len(ReviewLog(tmp_path).entries()) == 2  # reopening migrates nothing twice


def test_log_files_are_private(tmp_path):
    folder = tmp_path / "fresh" / "data"
    log = ReviewLog(folder)
    log.record("a.jpg", "sha-a", "hybrid", "ig", PROBS, "ig", reviewer="qa")
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in folder.iterdir():  # the database and its -wal/-shm companions
        assert path.stat().st_mode & 0o077 == 0, path.name


def test_a_damaged_or_unwritable_log_is_reported_in_one_line(tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "reviews.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(ReviewLogUnavailable, match="damaged"):
        ReviewLog(damaged)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(ReviewLogUnavailable, match="cannot be created"):
        ReviewLog(not_a_folder)
    if os.getuid() != 0:  # root writes through read-only modes
        readonly = tmp_path / "readonly"
        ReviewLog(readonly)
        os.chmod(readonly / "reviews.sqlite3", 0o400)
        os.chmod(readonly, 0o500)
        try:
            with pytest.raises(ReviewLogUnavailable):
                ReviewLog(readonly).record("a.jpg", "s", "m", "ig", PROBS, "ig", reviewer="qa")
        finally:
            os.chmod(readonly, 0o700)


def test_export_escapes_spreadsheet_formulas(tmp_path):
    log = ReviewLog(tmp_path)
    hostile = ['=HYPERLINK("http://x")', "+SUM(1,1)", "-1+2", "@cmd", "\tx", "\rx"]
    for i, text in enumerate(hostile):
        log.record(text, f"sha-{i}", "hybrid", "ig", PROBS, "ig", comment=text, reviewer=text)
    rows = list(csv.DictReader(io.StringIO(log.export_csv(ADMIN), newline="")))
    for row, text in zip(rows, hostile):
        for column in ("file_name", "comment", "reviewer"):
            if column != "reviewer" or text == text.strip():  # a name is saved stripped
                assert row[column] == "'" + text, (column, row[column])
    assert rows[0]["probabilities"].startswith("{")  # ordinary cells are left alone


def test_a_reviewer_reads_and_exports_only_their_own_decisions_an_admin_every_one(tmp_path):
    log = ReviewLog(tmp_path)
    log.record("a.jpg", "sha-a", "hybrid", "ig", PROBS, "ig", reviewer="ana")
    log.record("b.jpg", "sha-b", "hybrid", "ig", PROBS, "monocyte", reviewer="ben")
    log.record("c.jpg", "sha-c", "hybrid", "ig", PROBS, "ig", reviewer="ana")

    def exported(who) -> list[str]:
        return [r["file_name"] for r in csv.DictReader(io.StringIO(log.export_csv(who)))]

    assert exported(Identity("ana")) == ["a.jpg", "c.jpg"]
    assert exported(Identity("ben", Role.PATHOLOGIST)) == ["b.jpg"]
    assert exported(ADMIN) == ["a.jpg", "b.jpg", "c.jpg"]
    assert [r["reviewer"] for r in log.visible_entries(Identity("ben"))] == ["ben"]
    with pytest.raises(AccessDenied):
        log.export_csv(None)


# ----------------------------------------------------------------------------- the hash chain


def _three_rows(tmp_path) -> ReviewLog:
    log = ReviewLog(tmp_path)
    for i, name in enumerate(("ig", "monocyte", "basophil")):
        log.record(f"{i}.jpg", f"sha-{i}", "hybrid", "ig", PROBS, name, reviewer="qa")
    return log


def verify_cli(capsys, path) -> tuple[int, str, str]:
    """``python -m bcclassify reviews verify --db PATH`` in this process."""
    from bcclassify.cli.main import main

    capsys.readouterr()
    status = main(["reviews", "verify", "--db", str(path)])
    out, err = capsys.readouterr()
    return status, out, err


def _past_the_triggers(path, *statements: str) -> None:
    """Edit the file as someone with write access could, triggers dropped first."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER reviews_no_update")
        db.execute("DROP TRIGGER reviews_no_delete")
        for statement in statements:
            db.execute(statement)


def test_insert_or_replace_cannot_rewrite_a_row(tmp_path):
    log = _three_rows(tmp_path)
    with sqlite3.connect(log.path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(
                "INSERT OR REPLACE INTO reviews (id, file_name, image_sha256, model, "
                "predicted_class, probabilities, reviewer_class, decision, time) VALUES "
                "(2, 'x.jpg', 'x', 'hybrid', 'ig', '{}', 'ig', 'confirmed', 'now')"
            )
    assert [r["reviewer_class"] for r in log.entries()] == ["ig", "monocyte", "basophil"]
    assert verify_chain(log.path).intact


def test_an_intact_chain_verifies(tmp_path, capsys):
    log = _three_rows(tmp_path)
    report = verify_chain(log.path)
    assert (report.rows, report.intact) == (3, True)
    status, out, _ = verify_cli(capsys, log.path)
    assert status == 0 and "3 row(s), hash chain intact" in out


@pytest.mark.parametrize(
    "statements, broken",
    [
        (["UPDATE reviews SET reviewer_class = 'neutrophil' WHERE id = 2"], 2),
        (["DELETE FROM reviews WHERE id = 2"], 3),  # the next row no longer follows
        (["DELETE FROM reviews WHERE id = 1"], 2),
        (["UPDATE reviews SET comment = 'x', chain_sha256 = '' WHERE id = 3"], 3),
    ],
)
def test_verify_names_the_first_broken_row(tmp_path, capsys, statements, broken):
    log = _three_rows(tmp_path)
    _past_the_triggers(log.path, *statements)
    assert verify_chain(log.path).broken_id == broken
    status, out, _ = verify_cli(capsys, log.path)
    assert status == 1 and f"hash chain broken at row id {broken}" in out


def test_verify_refuses_what_is_not_a_review_log(tmp_path, capsys):
    status, _, err = verify_cli(capsys, tmp_path / "missing.sqlite3")
    assert status == 2 and "no such review log" in err


def test_an_older_log_is_chained_on_first_open_without_losing_rows(tmp_path):
    with sqlite3.connect(tmp_path / "reviews.sqlite3") as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO reviews VALUES (2, 'old2.jpg', 'sha-old2', 'hybrid', 'ig', '{}', 'ig', "
            "'confirmed', '', 'QA', '2026-01-02T00:00:00.000+00:00')"
        )
    assert not verify_chain(tmp_path / "reviews.sqlite3").intact  # not chained yet
    log = ReviewLog(tmp_path)
    log.record("new.jpg", "sha-new", "hybrid", "ig", PROBS, "ig", reviewer="qa")
    assert [r["file_name"] for r in log.entries()] == ["old.jpg", "old2.jpg", "new.jpg"]
    assert verify_chain(log.path) == ChainReport(rows=3)
    with sqlite3.connect(log.path) as db:  # the UPDATE trigger is back after the migration
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE reviews SET comment = 'x'")
