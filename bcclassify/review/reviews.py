"""The reviewer log: every confirm/correct decision, saved at once to an SQLite file.

Each decision is one committed transaction in WAL mode, so a browser or server that dies loses
nothing already confirmed, and several app sessions (or users) can write at the same time.
Rows are only ever appended, and SQLite itself enforces it: triggers abort any UPDATE or DELETE.
A later decision on the same cell supersedes, never overwrites. Each row records the model by
name, by the sha256 of its card.json and by its training run, since a name can be re-promoted.
The log's folder is created 0700 and its files 0600: the log holds file names and comments.

An insert that names an existing id is refused too (``INSERT OR REPLACE`` would otherwise delete
and rewrite a row without firing the DELETE trigger). And the rows form a **hash chain**: each
row's ``chain_sha256`` is the sha256 of its content and of the previous row's ``chain_sha256``,
so a row changed, removed or inserted by editing the file directly (past the triggers) breaks the
chain from there on; :func:`verify_chain` (``python -m bcclassify reviews verify``) finds the
first broken row. A log written before the chain existed is chained when first opened, in the
migration's transaction; rows an older version appends later are chained on the next open.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from bcclassify import CLASS_NAMES
from bcclassify.access.roles import Identity, allowed, require
from bcclassify.review.report import spreadsheet_safe

__all__ = [
    "DATA_DIR_ENV",
    "EXPORT_COLUMNS",
    "LOG_NAME",
    "ReviewLog",
    "ReviewLogUnavailable",
    "ChainReport",
    "verify_chain",
    "create_private_file",
    "decision_values",
    "default_data_dir",
    "insert_decision",
    "make_private_dir",
    "sql_statements",
    "utc_now",
]

DATA_DIR_ENV = "BCCLASSIFY_DATA_DIR"
LOG_NAME = "reviews.sqlite3"
EXPORT_COLUMNS = [
    "file_name",
    "image_sha256",
    "model",
    "model_card_sha256",
    "training_run",
    "predicted_class",
    "probabilities",
    "reviewer_class",
    "decision",
    "comment",
    "reviewer",
    "time",
    "case_id",
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
    time TEXT NOT NULL,
    model_card_sha256 TEXT NOT NULL DEFAULT '',
    training_run TEXT NOT NULL DEFAULT '',
    case_id TEXT NOT NULL DEFAULT '',
    chain_sha256 TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS reviews_image ON reviews (image_sha256);
"""
# Columns added since the first release; older logs gain them (empty) when first opened.
_ADDED_COLUMNS = {
    "model_card_sha256": "TEXT NOT NULL DEFAULT ''",
    "training_run": "TEXT NOT NULL DEFAULT ''",
    # The case (bcclassify.review.cases) a decision belongs to; '' for the Classify page's.
    "case_id": "TEXT NOT NULL DEFAULT ''",
    "chain_sha256": "TEXT NOT NULL DEFAULT ''",
}
_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS reviews_no_update BEFORE UPDATE ON reviews
BEGIN SELECT RAISE(ABORT, 'review decisions are append-only: rows are never changed'); END;
CREATE TRIGGER IF NOT EXISTS reviews_no_delete BEFORE DELETE ON reviews
BEGIN SELECT RAISE(ABORT, 'review decisions are append-only: rows are never deleted'); END;
CREATE TRIGGER IF NOT EXISTS reviews_no_replace BEFORE INSERT ON reviews
WHEN EXISTS (SELECT 1 FROM reviews WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'review decisions are append-only: an existing id is never reused'); END;
"""
# What a row's chain hash covers, in this order (the id included: rows cannot be reordered).
CHAINED_COLUMNS = ["id", *EXPORT_COLUMNS]


class ReviewLogUnavailable(RuntimeError):
    """The log cannot be opened or written (damaged, read-only, not a folder): one clear line."""


def default_data_dir(secrets: Mapping | None = None) -> Path:
    """Where the app keeps its data (review log, accounts, kept cells): $BCCLASSIFY_DATA_DIR,
    else the app secret of that name, else ~/.bcclassify."""
    value = os.environ.get(DATA_DIR_ENV) or (secrets or {}).get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".bcclassify"


def make_private_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) readable by its owner only; an existing one is kept."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists; tighten one we own that is open."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        stat = path.stat()
        if stat.st_uid == os.getuid() and stat.st_mode & 0o077:
            os.chmod(path, 0o600)  # a log written by an older version was world-readable


def sql_statements(script: str) -> list[str]:
    """Split a script of simple statements; trigger bodies end in ``END;``."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current)
        if text.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            current = []
    return out


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table, add missing columns, chain unchained rows and add the append-only
    triggers, in one transaction.

    ``ALTER TABLE ... ADD COLUMN`` and the chain hashes of rows that have none are all that
    touches an existing table: no row's content is rewritten and none is lost.
    ``BEGIN IMMEDIATE`` makes a second opener wait, so two sessions never add a column twice.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in sql_statements(_SCHEMA):
            db.execute(statement)
        present = {row[1] for row in db.execute("PRAGMA table_info(reviews)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                db.execute(f"ALTER TABLE reviews ADD COLUMN {column} {kind}")
        _chain_unchained(db)
        for statement in sql_statements(_APPEND_ONLY):
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def chain_hash(previous: str, row: Mapping) -> str:
    """The chain hash of ``row``: sha256 of the previous row's chain hash and this row's
    ``CHAINED_COLUMNS``, as canonical JSON (so no value can be shifted into another column)."""
    content = [previous, *(row[c] for c in CHAINED_COLUMNS)]
    data = json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _chain_unchained(db: sqlite3.Connection) -> int:
    """Give the rows after the last chained one their chain hashes; returns how many.

    Only the tail: a log from before the chain, or rows an older version appended since. The
    UPDATE trigger is lifted for this and put back by the caller, inside the same transaction.
    """
    last = db.execute(
        "SELECT id, chain_sha256 FROM reviews WHERE chain_sha256 != '' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    start, previous = (0, "") if last is None else (last["id"], last["chain_sha256"])
    rows = db.execute("SELECT * FROM reviews WHERE id > ? ORDER BY id", (start,)).fetchall()
    if not rows:
        return 0
    db.execute("DROP TRIGGER IF EXISTS reviews_no_update")
    for row in rows:
        previous = chain_hash(previous, row)
        db.execute("UPDATE reviews SET chain_sha256 = ? WHERE id = ?", (previous, row["id"]))
    return len(rows)


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found: how many rows, and the first broken one (if any)."""

    rows: int
    broken_id: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_id is None


def verify_chain(path: str | Path) -> ChainReport:
    """Recompute the review log's hash chain, read-only; the first row whose hash does not
    follow from its content and the row before it is reported (nothing is changed).

    Raises :class:`ReviewLogUnavailable` when the file cannot be read as a review log."""
    path = Path(path)
    if not path.is_file():
        raise ReviewLogUnavailable(f"{path}: no such review log")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        with closing(db):
            db.row_factory = sqlite3.Row
            present = {row[1] for row in db.execute("PRAGMA table_info(reviews)")}
            if not present:
                raise ReviewLogUnavailable(f"{path}: not a review log (no reviews table)")
            rows = db.execute("SELECT * FROM reviews ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        raise ReviewLogUnavailable(f"{path}: {_reason(exc)}") from None
    previous = ""
    for count, row in enumerate(rows):
        stored = row["chain_sha256"] if "chain_sha256" in present else ""
        if not stored:
            return ChainReport(
                len(rows),
                row["id"],
                "no chain hash (written before the chain, or past it: open the log with this "
                "version to chain rows written by an older one)",
            )
        if stored != chain_hash(previous, row):
            reason = "its content or the row before it was changed, removed or inserted"
            if count == 0 and row["id"] != 1:
                reason = "earlier rows were removed"
            return ChainReport(len(rows), row["id"], reason)
        previous = stored
    return ChainReport(len(rows))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"cannot be created or opened ({exc.strerror or exc})"
    text = str(exc) or type(exc).__name__
    if "not a database" in text or "malformed" in text:
        return f"the file is damaged ({text})"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"the file or its folder is not writable ({text})"
    return text


def decision_values(
    file_name: str,
    image_sha256: str,
    model: str,
    predicted_class: str,
    probabilities: Mapping[str, float] | list[float],
    reviewer_class: str,
    comment: str = "",
    reviewer: str = "",
    *,
    model_card_sha256: str = "",
    training_run: str = "",
    case_id: str = "",
) -> dict:
    """One decision's row, validated (classes known, reviewer named), stamped with UTC time."""
    for label, value in (("predicted", predicted_class), ("reviewer", reviewer_class)):
        if value not in CLASS_NAMES:
            raise ValueError(f"{label} class {value!r} is not one of {', '.join(CLASS_NAMES)}")
    if not (reviewer or "").strip():
        raise ValueError("a decision needs its reviewer: log in to save decisions")
    if not isinstance(probabilities, Mapping):
        probabilities = dict(zip(CLASS_NAMES, (float(p) for p in probabilities)))
    decision = "confirmed" if reviewer_class == predicted_class else "corrected"
    return {
        "file_name": file_name,
        "image_sha256": image_sha256,
        "model": model,
        "model_card_sha256": model_card_sha256 or "",
        "training_run": training_run or "",
        "predicted_class": predicted_class,
        "probabilities": json.dumps({k: round(float(v), 6) for k, v in probabilities.items()}),
        "reviewer_class": reviewer_class,
        "decision": decision,
        "comment": comment or "",
        "reviewer": reviewer.strip(),
        "time": utc_now(),
        "case_id": case_id or "",
    }


def insert_decision(db: sqlite3.Connection, values: Mapping[str, object]) -> int:
    """Append one row made by :func:`decision_values` on ``db``, chained to the row before it
    (:func:`chain_hash`). The caller holds the write transaction (``BEGIN IMMEDIATE``), so no
    other writer can chain onto the same row."""
    last = db.execute("SELECT id, chain_sha256 FROM reviews ORDER BY id DESC LIMIT 1").fetchone()
    row = dict(values)
    row["id"] = 1 if last is None else int(last["id"]) + 1
    row["chain_sha256"] = chain_hash("" if last is None else last["chain_sha256"], row)
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    db.execute(f"INSERT INTO reviews ({columns}) VALUES ({marks})", tuple(row.values()))
    return int(row["id"])


def utc_now() -> str:
    """The time stamp every row of the log carries: UTC, ISO 8601, milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class ReviewLog:
    """Append-only review decisions in ``<data_dir>/reviews.sqlite3``."""

    def __init__(self, data_dir: str | Path | None = None, *, file_name: str = LOG_NAME) -> None:
        folder = Path(data_dir or default_data_dir())
        self.path = folder / file_name
        try:
            make_private_dir(folder)
            # SQLite gives the -wal and -shm files the database file's own permissions.
            create_private_file(self.path)
            with closing(self.connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                _migrate(db)
        except (sqlite3.Error, OSError) as exc:
            raise ReviewLogUnavailable(f"{self.path}: {_reason(exc)}") from None

    def connect(self) -> sqlite3.Connection:
        """A connection with the log's settings (busy timeout, synchronous=FULL, Row rows)."""
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
        *,
        model_card_sha256: str = "",
        training_run: str = "",
        case_id: str = "",
    ) -> int:
        """Save one decision (committed before returning); returns its row id.

        ``reviewer`` is who made the decision (the app passes the logged-in user); it is required.
        """
        values = decision_values(
            file_name,
            image_sha256,
            model,
            predicted_class,
            probabilities,
            reviewer_class,
            comment,
            reviewer,
            model_card_sha256=model_card_sha256,
            training_run=training_run,
            case_id=case_id,
        )
        try:
            with closing(self.connect()) as db:
                # One writer at a time: the previous row's hash is read and this row written in
                # one transaction, so two sessions never chain onto the same row.
                db.execute("BEGIN IMMEDIATE")
                try:
                    row_id = insert_decision(db, values)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                return row_id
        except sqlite3.Error as exc:
            raise ReviewLogUnavailable(f"{self.path}: not saved - {_reason(exc)}") from None

    def _rows(self, where: str = "", args: tuple = ()) -> list[dict]:
        try:
            with closing(self.connect()) as db:
                return [
                    dict(r) for r in db.execute(f"SELECT * FROM reviews {where} ORDER BY id", args)
                ]
        except sqlite3.Error as exc:
            raise ReviewLogUnavailable(f"{self.path}: {_reason(exc)}") from None

    def entries(self, latest_only: bool = False) -> list[dict]:
        """All decisions, oldest first; ``latest_only`` keeps the newest per (image, model)."""
        rows = self._rows()
        if latest_only:
            newest: dict[tuple[str, str], dict] = {}
            for row in rows:
                # A case's cell may come without an image sha256: its file name in its case is
                # then the key (file names are unique within a case).
                image = row["image_sha256"] or f"{row['case_id']}/{row['file_name']}"
                newest[(image, row["model"])] = row
            rows = sorted(newest.values(), key=lambda r: r["id"])
        return rows

    def decisions_for(self, image_sha256: str) -> list[dict]:
        return self._rows("WHERE image_sha256 = ?", (image_sha256,))

    def visible_entries(self, identity: Identity | None) -> list[dict]:
        """The decisions ``identity`` may read and export, oldest first: every reviewer's for an
        admin, their own (recorded under their name) for anyone else; ``AccessDenied`` when
        nobody is logged in."""
        if allowed(identity, "export_all_decisions"):
            return self.entries()
        require(identity, "export_own_decisions")
        return self._rows("WHERE reviewer = ?", (identity.name,))  # type: ignore[union-attr]

    def export_csv(self, identity: Identity | None) -> str:
        """The decisions ``identity`` may export (:meth:`visible_entries`) as CSV; cells a
        spreadsheet would run as formulas are escaped."""
        buffer = io.StringIO()
        # CRLF rows (RFC 4180): the csv module then quotes any cell holding a CR or LF.
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(EXPORT_COLUMNS)
        for row in self.visible_entries(identity):
            writer.writerow([spreadsheet_safe(row[c]) for c in EXPORT_COLUMNS])
        return buffer.getvalue()
