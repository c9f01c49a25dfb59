"""The review log is a real SQLite file: decisions persist, append, and survive concurrency."""

from __future__ import annotations

import csv
import io
import multiprocessing
import sqlite3

import pytest

from bcclassify import CLASS_NAMES
from bcclassify.reviews import EXPORT_COLUMNS, ReviewLog

PROBS = [0.05, 0.05, 0.05, 0.05, 0.6, 0.1, 0.05, 0.05]


def test_decisions_persist_and_export(tmp_path):
    log = ReviewLog(tmp_path)
    log.record("a.jpg", "sha-a", "hybrid", "lymphocyte", PROBS, "lymphocyte")
    log.record(
        "b.jpg", "sha-b", "hybrid", "lymphocyte", PROBS, "monocyte", comment="kidney nucleus"
    )
    reopened = ReviewLog(tmp_path)  # a new process would see the same file
    rows = reopened.entries()
    assert [r["decision"] for r in rows] == ["confirmed", "corrected"]
    assert rows[1]["comment"] == "kidney nucleus"
    exported = list(csv.DictReader(io.StringIO(reopened.export_csv())))
    assert list(exported[0]) == EXPORT_COLUMNS
    assert exported[1]["reviewer_class"] == "monocyte"
    assert '"lymphocyte": 0.6' in exported[1]["probabilities"]


def test_later_decision_supersedes_without_erasing(tmp_path):
    log = ReviewLog(tmp_path)
    log.record("a.jpg", "sha-a", "hybrid", "ig", PROBS, "ig")
    log.record("a.jpg", "sha-a", "hybrid", "ig", PROBS, "neutrophil")
    assert len(log.entries()) == 2
    latest = log.entries(latest_only=True)
    assert len(latest) == 1 and latest[0]["reviewer_class"] == "neutrophil"


def test_unknown_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        ReviewLog(tmp_path).record("a.jpg", "s", "m", "blast", PROBS, "ig")


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
        )


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
    with sqlite3.connect(tmp_path / "reviews.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
