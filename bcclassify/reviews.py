"""The reviewer log: every confirm/correct decision, saved at once to an SQLite file.

Each decision is one committed transaction in WAL mode, so a browser or server that dies loses
nothing already confirmed, and several app sessions (or users) can write at the same time.
Rows are only ever appended: a later decision on the same cell supersedes, never overwrites.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from . import CLASS_NAMES

DATA_DIR_ENV = "BCCLASSIFY_DATA_DIR"
EXPORT_COLUMNS = [
    "file_name",
    "image_sha256",
    "model",
    "predicted_class",
    "probabilities",
    "reviewer_class",
    "decision",
    "comment",
    "reviewer",
    "time",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_name TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    predicted_class TEXT NOT NULL,
    probabilities TEXT NOT NULL,
    reviewer_class TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('confirmed', 'corrected')),
    comment TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_image ON reviews (image_sha256);
"""


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".bcclassify")


class ReviewLog:
    """Append-only review decisions in ``<data_dir>/reviews.sqlite3``."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.path = Path(data_dir or default_data_dir()) / "reviews.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=FULL")  # a confirmed decision survives a power cut
        db.row_factory = sqlite3.Row
        return db

    def record(
        self,
        file_name: str,
        image_sha256: str,
        model: str,
        predicted_class: str,
        probabilities: Mapping[str, float] | list[float],
        reviewer_class: str,
        comment: str = "",
        reviewer: str = "",
    ) -> int:
        """Save one decision (committed before returning); returns its row id."""
        for label, value in (("predicted", predicted_class), ("reviewer", reviewer_class)):
            if value not in CLASS_NAMES:
                raise ValueError(f"{label} class {value!r} is not one of {', '.join(CLASS_NAMES)}")
        if not isinstance(probabilities, Mapping):
            probabilities = dict(zip(CLASS_NAMES, (float(p) for p in probabilities)))
        decision = "confirmed" if reviewer_class == predicted_class else "corrected"
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        db = self._connect()
        try:
            cursor = db.execute(
                "INSERT INTO reviews (file_name, image_sha256, model, predicted_class,"
                " probabilities, reviewer_class, decision, comment, reviewer, time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    file_name,
                    image_sha256,
                    model,
                    predicted_class,
                    json.dumps({k: round(float(v), 6) for k, v in probabilities.items()}),
                    reviewer_class,
                    decision,
                    comment or "",
                    reviewer or "",
                    now,
                ),
            )
            return int(cursor.lastrowid)
        finally:
            db.close()

    def entries(self, latest_only: bool = False) -> list[dict]:
        """All decisions, oldest first; ``latest_only`` keeps the newest per (image, model)."""
        db = self._connect()
        try:
            rows = [dict(r) for r in db.execute("SELECT * FROM reviews ORDER BY id")]
        finally:
            db.close()
        if latest_only:
            newest: dict[tuple[str, str], dict] = {}
            for row in rows:
                newest[(row["image_sha256"], row["model"])] = row
            rows = sorted(newest.values(), key=lambda r: r["id"])
        return rows

    def decisions_for(self, image_sha256: str) -> list[dict]:
        return [r for r in self.entries() if r["image_sha256"] == image_sha256]

    def export_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for row in self.entries():
            writer.writerow([row[c] for c in EXPORT_COLUMNS])
        return buffer.getvalue()
