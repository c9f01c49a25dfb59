"""Cases: a batch of cells that belongs to one sample, reviewed, signed off twice, reported.

A case is a sample's accession number (typed or scanned), the analyser's WBC count if known, the
cells classified for it, the reviewer decisions on those cells and its sign-offs. Everything
lives in the review log's SQLite file (``reviews.sqlite3``), in the log's own way: WAL, every
write one committed transaction with ``synchronous=FULL``, and rows only ever appended (SQLite
triggers abort any UPDATE or DELETE). Decisions on a case's cells are ordinary review-log rows
carrying the case's id, so they also appear in the log and its export.

The life of a case, as its status:

- ``open``: cells are added and reviewed, across as many sessions as needed;
- ``reviewed``: a reviewer (any role) signed the first step; no more changes to cells;
- ``final``: a pathologist or admin, not the same person, signed it off; the report is final;
- ``amended``: after the final sign-off, a pathologist or admin changed decisions: the change
  and its reason are a new sign-off row pointing to the row it amends, never an edit.

A pathologist or admin may also reopen a ``reviewed`` case (a row too) to send it back.
Each sign-off row records who (name, stable key, role), when, the sha256 of the card.json of
the model(s) that classified the cells, and the sha256 of the results it signed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets as random_ids
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from bcclassify import CLASS_NAMES
from bcclassify.access.roles import Identity, allowed
from bcclassify.review.differential import (
    CaseCell,
    ReportLimits,
    build_differential,
    load_limits,
)
from bcclassify.review.reviews import (
    LOG_NAME,
    ReviewLog,
    ReviewLogUnavailable,
    decision_values,
    insert_decision,
    sql_statements,
    utc_now,
)

__all__ = [
    "ACCESSION_RULE",
    "STATUSES",
    "WBC_RANGE",
    "Case",
    "CaseError",
    "CaseNotFound",
    "CaseStore",
    "normalise_accession",
    "parse_wbc",
    "report_fhir",
    "report_json",
    "report_pdf",
]

# Accession numbers: what lab systems print on tube labels. Letters are upper-cased (a scanner
# and a keyboard must give the same case); surrounding blanks, as scanners append, are dropped.
ACCESSION_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9./-]{2,31}")
ACCESSION_RULE = (
    "3 to 32 characters: letters A-Z, digits, '-', '/' or '.', starting with a letter or digit "
    "(e.g. H26-004211)"
)
WBC_RANGE = (0.1, 500.0)  # x10^9/L: analysers' reportable range, with room for leukaemias
STATUSES = ("open", "reviewed", "final", "amended")
STEPS = ("review", "reopen", "final", "amendment")
STATUS_AFTER = {"review": "reviewed", "reopen": "open", "final": "final", "amendment": "amended"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    accession TEXT NOT NULL UNIQUE,
    wbc_count REAL,
    created TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS case_cells (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL REFERENCES cases (case_id),
    file_name TEXT NOT NULL,
    image_sha256 TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    model_card_sha256 TEXT NOT NULL DEFAULT '',
    predicted_class TEXT,
    confidence REAL,
    flag TEXT NOT NULL DEFAULT '',
    error TEXT,
    probabilities TEXT NOT NULL DEFAULT '{}',
    added TEXT NOT NULL,
    UNIQUE (case_id, file_name)
);
CREATE TABLE IF NOT EXISTS case_signoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL REFERENCES cases (case_id),
    step TEXT NOT NULL CHECK (step IN ('review', 'reopen', 'final', 'amendment')),
    signer TEXT NOT NULL,
    signer_key TEXT NOT NULL,
    signer_role TEXT NOT NULL,
    time TEXT NOT NULL,
    model_card_sha256 TEXT NOT NULL,
    results_sha256 TEXT NOT NULL,
    amends INTEGER REFERENCES case_signoffs (id),
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS reviews_case ON reviews (case_id);
CREATE INDEX IF NOT EXISTS case_cells_case ON case_cells (case_id);
CREATE INDEX IF NOT EXISTS case_signoffs_case ON case_signoffs (case_id);
"""
_APPEND_ONLY = "\n".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table}\n"
    f"BEGIN SELECT RAISE(ABORT, 'cases are append-only: {table} rows are never "
    f"{'changed' if verb == 'UPDATE' else 'deleted'}'); END;"
    for table in ("cases", "case_cells", "case_signoffs")
    for verb in ("UPDATE", "DELETE")
)


class CaseError(ValueError):
    """Input refused or an action not allowed now; the message names the field and the rule."""


class CaseNotFound(CaseError, KeyError):
    """No case has this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "case not found"


@dataclass(frozen=True)
class Case:
    case_id: str
    accession: str
    wbc_count: float | None
    created: str
    status: str  # "open" | "reviewed" | "final" | "amended"
    created_by: str = ""


def normalise_accession(value: object) -> str:
    """The accession number as stored, or CaseError naming the rule."""
    text = str(value or "").strip().upper()
    if not ACCESSION_PATTERN.fullmatch(text):
        shown = str(value or "")[:40]
        raise CaseError(f"accession number {shown!r} is not valid: {ACCESSION_RULE}")
    return text


def parse_wbc(value: object) -> float | None:
    """The WBC count in x10^9/L (None when not given), or CaseError naming the range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(str(value).strip().replace(",", ".")) if isinstance(value, str) else value
        number = float(number)
    except (TypeError, ValueError):
        number = math.nan
    low, high = WBC_RANGE
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise CaseError(
            f"WBC count {str(value)[:20]!r} is not valid: a number of x10^9/L cells from "
            f"{low:g} to {high:g}, or empty when the analyser's count is not known"
        )
    return round(number, 2)


def _signer(identity: Identity | None) -> Identity:
    if identity is None or not str(identity.name or "").strip():
        raise CaseError("signer: log in to sign off a case")
    return identity


def _cell_row(case_id: str, result: Mapping, card_sha: str, model: str, now: str) -> tuple:
    """One classifier result (``prediction_json`` with ``file``) as a case_cells row."""
    if not isinstance(result, Mapping):
        raise CaseError(f"cell result {str(result)[:40]!r} is not a mapping")
    name = str(result.get("file") or result.get("path") or "").strip()
    if not name:
        raise CaseError("cell result: 'file' (the image's file name) is missing")
    error = result.get("error") or None
    label = None if error else result.get("label")
    if not error and label not in CLASS_NAMES:
        raise CaseError(f"{name}: label {label!r} is not one of {', '.join(CLASS_NAMES)}")
    probabilities = result.get("probabilities") or {}
    if not isinstance(probabilities, Mapping):
        probabilities = dict(zip(CLASS_NAMES, probabilities))
    try:
        probabilities = {str(k): round(float(v), 6) for k, v in probabilities.items()}
        confidence = (
            None if error else float(result.get("confidence") or max(probabilities.values()))
        )
    except (TypeError, ValueError):
        raise CaseError(f"{name}: probabilities and confidence must be numbers") from None
    flag = "error" if error else str(result.get("flag") or "")
    return (
        case_id,
        name,
        str(result.get("image_sha256") or result.get("sha256") or ""),
        str(result.get("model") or model or ""),
        str(result.get("model_card_sha256") or card_sha or ""),
        label,
        confidence,
        flag,
        str(error) if error else None,
        json.dumps(probabilities),
        now,
    )


class CaseStore:
    """Cases in the review log's SQLite file (created and migrated on first use)."""

    def __init__(self, db_path: Path) -> None:
        db_path = Path(db_path)
        if db_path.suffix == "" and db_path.name != LOG_NAME and db_path.is_dir():
            db_path = db_path / LOG_NAME  # a data folder given: its log
        # The review log creates the file (0600, WAL) and brings its own table up to date first:
        # case decisions are rows of its table.
        self.log = ReviewLog(db_path.parent, file_name=db_path.name)
        self.path = self.log.path
        try:
            with closing(self.log.connect()) as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in sql_statements(_SCHEMA + "\n" + _APPEND_ONLY):
                        db.execute(statement)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise ReviewLogUnavailable(f"{self.path}: {exc}") from None

    # ------------------------------------------------------------------ plumbing

    def _read(self, sql: str, args: tuple = ()) -> list[dict]:
        try:
            with closing(self.log.connect()) as db:
                return [dict(r) for r in db.execute(sql, args)]
        except sqlite3.Error as exc:
            raise ReviewLogUnavailable(f"{self.path}: {exc}") from None

    def _write(self, work) -> object:
        """Run ``work(db)`` in one IMMEDIATE transaction: all of it is saved, or none."""
        try:
            with closing(self.log.connect()) as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = work(db)
                    db.execute("COMMIT")
                    return out
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.IntegrityError as exc:
            raise CaseError(f"not saved: {exc}") from None
        except sqlite3.Error as exc:
            raise ReviewLogUnavailable(f"{self.path}: not saved - {exc}") from None

    @staticmethod
    def _status(signoffs: list[dict]) -> str:
        return STATUS_AFTER[signoffs[-1]["step"]] if signoffs else "open"

    def _case(self, row: Mapping, signoffs: list[dict]) -> Case:
        return Case(
            case_id=row["case_id"],
            accession=row["accession"],
            wbc_count=row["wbc_count"],
            created=row["created"],
            status=self._status(signoffs),
            created_by=row["created_by"],
        )

    def _require_status(self, db: sqlite3.Connection, case_id: str, *wanted: str) -> list[dict]:
        if not db.execute("SELECT 1 FROM cases WHERE case_id = ?", (case_id,)).fetchone():
            raise CaseNotFound(f"case {case_id!r} does not exist")
        rows = [
            dict(r)
            for r in db.execute(
                "SELECT * FROM case_signoffs WHERE case_id = ? ORDER BY id", (case_id,)
            )
        ]
        status = self._status(rows)
        if status not in wanted:
            raise CaseError(
                f"case {case_id} is {status}: this needs a case that is {' or '.join(wanted)}"
            )
        return rows

    # ------------------------------------------------------------------ cases

    def create(self, accession: str, wbc_count: float | None, created_by: str) -> Case:
        """A new open case; the accession must be new (reopen the existing case instead)."""
        accession = normalise_accession(accession)
        wbc = parse_wbc(wbc_count)
        if not str(created_by or "").strip():
            raise CaseError("created_by: log in to create a case")
        case_id = "case-" + random_ids.token_hex(6)
        now = utc_now()

        def work(db: sqlite3.Connection) -> None:
            existing = db.execute(
                "SELECT case_id FROM cases WHERE accession = ?", (accession,)
            ).fetchone()
            if existing:
                raise CaseError(
                    f"accession number {accession} already has case {existing[0]}: open that case"
                )
            db.execute(
                "INSERT INTO cases (case_id, accession, wbc_count, created, created_by) "
                "VALUES (?, ?, ?, ?, ?)",
                (case_id, accession, wbc, now, str(created_by).strip()),
            )

        self._write(work)
        return Case(case_id, accession, wbc, now, "open", str(created_by).strip())

    def get(self, case_id: str) -> Case:
        rows = self._read("SELECT * FROM cases WHERE case_id = ?", (str(case_id),))
        if not rows:
            raise CaseNotFound(f"case {case_id!r} does not exist")
        return self._case(rows[0], self.signoffs(case_id))

    def find(self, accession: str) -> Case | None:
        """The case of this accession number (as typed or scanned), or None."""
        rows = self._read(
            "SELECT case_id FROM cases WHERE accession = ?", (normalise_accession(accession),)
        )
        return self.get(rows[0]["case_id"]) if rows else None

    def list(self) -> list[Case]:
        """Every case, newest first."""
        signoffs: dict[str, list[dict]] = {}
        for row in self._read("SELECT * FROM case_signoffs ORDER BY id"):
            signoffs.setdefault(row["case_id"], []).append(row)
        rows = self._read("SELECT * FROM cases ORDER BY created DESC, case_id")
        return [self._case(r, signoffs.get(r["case_id"], [])) for r in rows]

    # ------------------------------------------------------------------ cells and decisions

    def add_cells(
        self,
        case_id: str,
        results: Iterable[Mapping],
        model_card_sha256: str,
        *,
        model: str = "",
    ) -> None:
        """Add classified cells (``prediction_json`` dicts with ``file``) to an open case.

        All or nothing: a bad result, or a file name already in the case, saves none of them.
        """
        now = utc_now()

        def work(db: sqlite3.Connection) -> None:
            self._require_status(db, case_id, "open")
            seen: set[str] = set()
            for result in results:  # streamed: a failure midway rolls back what came before
                row = _cell_row(case_id, result, model_card_sha256, model, now)
                if (
                    row[1] in seen
                    or db.execute(
                        "SELECT 1 FROM case_cells WHERE case_id = ? AND file_name = ?", row[:2]
                    ).fetchone()
                ):
                    raise CaseError(
                        f"{row[1]}: this file name is already in case {case_id}; "
                        "file names must be unique within a case"
                    )
                seen.add(row[1])
                db.execute(
                    "INSERT INTO case_cells (case_id, file_name, image_sha256, model, "
                    "model_card_sha256, predicted_class, confidence, flag, error, probabilities, "
                    "added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )

        self._write(work)

    def cells(self, case_id: str) -> list[dict]:
        """The case's cells in the order added, each with its latest decision (or None)."""
        self.get(case_id)
        cells = self._read("SELECT * FROM case_cells WHERE case_id = ? ORDER BY id", (case_id,))
        latest: dict[str, dict] = {}
        for row in self._read("SELECT * FROM reviews WHERE case_id = ? ORDER BY id", (case_id,)):
            latest[row["file_name"]] = row
        for cell in cells:
            decision = latest.get(cell["file_name"])
            cell["probabilities"] = json.loads(cell["probabilities"] or "{}")
            cell["reviewer_class"] = decision["reviewer_class"] if decision else None
            cell["reviewer"] = decision["reviewer"] if decision else None
            cell["decided"] = decision["time"] if decision else None
        return cells

    def _decision(self, db, case_id: str, file_name: str, chosen: str, who: str, comment: str):
        cell = db.execute(
            "SELECT * FROM case_cells WHERE case_id = ? AND file_name = ?", (case_id, file_name)
        ).fetchone()
        if cell is None:
            raise CaseError(f"cell {file_name!r} is not in case {case_id}")
        if cell["predicted_class"] is None:
            raise CaseError(
                f"{file_name}: the file was refused ({cell['error']}); nothing to review"
            )
        try:
            values = decision_values(
                file_name,
                cell["image_sha256"],
                cell["model"],
                cell["predicted_class"],
                json.loads(cell["probabilities"] or "{}"),
                chosen,
                comment,
                who,
                model_card_sha256=cell["model_card_sha256"],
                case_id=case_id,
            )
        except ValueError as exc:
            raise CaseError(f"{file_name}: {exc}") from None
        return insert_decision(db, values)

    def record_decision(
        self, case_id: str, file_name: str, reviewer_class: str, reviewer: str, comment: str = ""
    ) -> int:
        """Confirm or correct one cell of an open case (a review-log row with the case's id)."""
        return self._write(
            lambda db: (
                self._require_status(db, case_id, "open"),
                self._decision(db, case_id, file_name, reviewer_class, reviewer, comment),
            )[1]
        )

    # ------------------------------------------------------------------ sign-off

    def signoffs(self, case_id: str) -> list[dict]:
        return self._read(
            "SELECT * FROM case_signoffs WHERE case_id = ? ORDER BY id", (str(case_id),)
        )

    def _results(self, db: sqlite3.Connection, case_id: str) -> tuple[dict, str]:
        """The results being signed and the model card hash(es) that produced them."""
        case = db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        self_cells = _case_cells(db, case_id)
        results = build_differential(self_cells, case["wbc_count"], ReportLimits())
        cards = sorted(
            {
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT model_card_sha256 FROM case_cells WHERE case_id = ?",
                    (case_id,),
                )
                if r[0]
            }
        )
        return results, ",".join(cards)

    def _sign(self, db, case_id: str, who: Identity, step: str, amends=None, reason="") -> dict:
        results, cards = self._results(db, case_id)
        # What is signed: the counts, not the flags (their limits are the lab's, set elsewhere).
        signed = {k: v for k, v in results.items() if k != "flags"}
        digest = hashlib.sha256(json.dumps(signed, sort_keys=True).encode()).hexdigest()
        row = {
            "case_id": case_id,
            "step": step,
            "signer": who.name.strip(),
            "signer_key": who.key,
            "signer_role": str(who.role),
            "time": utc_now(),
            "model_card_sha256": cards,
            "results_sha256": digest,
            "amends": amends,
            "reason": reason,
        }
        cursor = db.execute(
            f"INSERT INTO case_signoffs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            tuple(row.values()),
        )
        return {"id": int(cursor.lastrowid), **row}

    def sign_off(self, case_id: str, identity: Identity | None, step: str) -> dict:
        """Sign ``step`` ("review", then "final") as ``identity`` (from the log-in, never typed).

        review: any role, the case open, at least one cell, no flagged cell awaiting review.
        final: a pathologist or admin who did not sign the review step, the case reviewed.
        """
        who = _signer(identity)
        if step == "review":
            if not allowed(who, "sign_off_review"):
                raise CaseError(f"{who.name} ({who.role}) may not sign the review step")

            def work(db):
                self._require_status(db, case_id, "open")
                results, _ = self._results(db, case_id)
                if not results["cells_total"]:
                    raise CaseError(f"case {case_id} has no cells yet: add cells, then review")
                waiting = results["reported_apart"]["awaiting_review"]
                if waiting:
                    raise CaseError(
                        f"{waiting} flagged cell(s) await review: confirm or correct them first"
                    )
                return self._sign(db, case_id, who, "review")

            return self._write(work)
        if step == "final":
            if not allowed(who, "sign_off_final"):
                raise CaseError(
                    f"{who.name} ({who.role}) may not sign off a case: a pathologist or admin must"
                )

            def work(db):
                rows = self._require_status(db, case_id, "reviewed")
                reviewer = rows[-1]
                if reviewer["signer_key"] == who.key:
                    raise CaseError(
                        f"{who.name} signed the review step; the final sign-off needs a second "
                        "person"
                    )
                return self._sign(db, case_id, who, "final")

            return self._write(work)
        raise CaseError(f"sign-off step {step!r} is not one of review, final")

    def reopen(self, case_id: str, identity: Identity | None, reason: str) -> dict:
        """Send a reviewed (not yet final) case back to review (pathologist or admin)."""
        who = _signer(identity)
        if not allowed(who, "sign_off_final"):
            raise CaseError(f"{who.name} ({who.role}) may not reopen a case")
        if not str(reason or "").strip():
            raise CaseError("reason: say why the case goes back to review")

        def work(db):
            rows = self._require_status(db, case_id, "reviewed")
            return self._sign(db, case_id, who, "reopen", rows[-1]["id"], reason.strip())

        return self._write(work)

    def amend(
        self,
        case_id: str,
        identity: Identity | None,
        reason: str,
        corrections: Mapping[str, str],
    ) -> dict:
        """Change decisions after the final sign-off: new decision rows and an amendment row
        pointing to the sign-off it amends, in one transaction (pathologist or admin)."""
        who = _signer(identity)
        if not allowed(who, "sign_off_final"):
            raise CaseError(f"{who.name} ({who.role}) may not amend a signed-off case")
        if not str(reason or "").strip():
            raise CaseError("reason: an amendment needs its reason")
        if not corrections:
            raise CaseError("corrections: name at least one cell and its new class")

        def work(db):
            rows = self._require_status(db, case_id, "final", "amended")
            for file_name, chosen in corrections.items():
                self._decision(db, case_id, file_name, chosen, who.name, f"amendment: {reason}")
            return self._sign(db, case_id, who, "amendment", rows[-1]["id"], reason.strip())

        return self._write(work)


def _case_cells(db: sqlite3.Connection, case_id: str) -> list[CaseCell]:
    latest: dict[str, str] = {}
    for row in db.execute(
        "SELECT file_name, reviewer_class FROM reviews WHERE case_id = ? ORDER BY id", (case_id,)
    ):
        latest[row[0]] = row[1]
    return [
        CaseCell(file=r[0], predicted=r[1], flag=r[2], reviewed=latest.get(r[0]), error=r[3])
        for r in db.execute(
            "SELECT file_name, predicted_class, flag, error FROM case_cells WHERE case_id = ? "
            "ORDER BY id",
            (case_id,),
        )
    ]


# ---------------------------------------------------------------------- reports

DISCLAIMER = (
    "Research software, not a medical device: an image-based differential suggested by a model "
    "and checked by the reviewers named here."
)


def report_json(store: CaseStore, case_id: str, limits: ReportLimits | None = None) -> dict:
    """The case's differential report as plain JSON (what the PDF and FHIR outputs show)."""
    case = store.get(case_id)
    limits = limits or load_limits()
    cells = store.cells(case_id)
    case_cells = [
        CaseCell(
            file=c["file_name"],
            predicted=c["predicted_class"],
            flag=c["flag"],
            reviewed=c["reviewer_class"],
            error=c["error"],
        )
        for c in cells
    ]
    models = sorted({c["model"] for c in cells if c["model"]})
    cards = sorted({c["model_card_sha256"] for c in cells if c["model_card_sha256"]})
    return {
        "report": "bcclassify differential",
        "case": asdict(case),
        "model": {"names": models, "card_sha256": cards},
        "results": build_differential(case_cells, case.wbc_count, limits),
        "limits": limits.as_dict(),
        "signoffs": store.signoffs(case_id),
        "generated": utc_now(),
        "disclaimer": DISCLAIMER,
    }


def report_fhir(store: CaseStore, case_id: str, limits: ReportLimits | None = None) -> dict:
    """The report as a FHIR R4 DiagnosticReport with contained Observations (JSON-ready)."""
    from bcclassify.review.fhir import diagnostic_report

    return diagnostic_report(report_json(store, case_id, limits))


def report_pdf(store: CaseStore, case_id: str, limits: ReportLimits | None = None) -> bytes:
    """The report as a one-page PDF (fpdf2)."""
    from bcclassify.review.pdf import report_pdf_bytes

    return report_pdf_bytes(report_json(store, case_id, limits))
