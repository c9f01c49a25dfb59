"""Kept cells: reviewed crops a lab chose to keep on the server, to adapt a model to it (issue 12).

Keeping is opt-in, one cell at a time (a box in the Classify page's reviewer decision, off by
default); without it an upload is never written to disk. A kept cell is the image as classified,
the bounded working copy (at most ``MAX_SIDE`` px a side, at most ``MAX_CELL_BYTES``), never the
upload at full size. Layout, beside the review log in the app's data folder::

    <data_dir>/kept-cells/<class>/<sha256>.<ext>   the crop; its name is the sha256 of its bytes
    <data_dir>/kept-cells/index.sqlite3            one row per cell: file name, sha256, the
                                                   upload's sha256, class, reviewer, time, model

A cell is one row keyed by the sha256 of its bytes; the latest reviewer class wins (a correction
moves the file to the new class folder). Each crop is written atomically (a temporary file in the
same folder, fsync, ``os.replace``, fsync of the folder) before its row is committed, so a process
that dies at any moment leaves the previous state whole: at worst a file no row names, which
listing ignores and forgetting removes. Folders are 0700 and files 0600, as the review log's.
:meth:`KeptCells.forget` and :meth:`KeptCells.forget_all` delete kept cells (a lab withdraws its
consent); forget-all also deletes ``<data_dir>/lab-cells/``, the cells kept with installed
adaptations (``adapt.keep_cells``). Who kept, forgot (unticked) or forgot all, what and when is
appended to ``<data_dir>/kept-cells-log.sqlite3`` (0600, append-only like the review log, and
outside ``kept-cells/`` so that forgetting all keeps the record of it);
:meth:`KeptCells.history` reads it. :meth:`KeptCells.cells` gives the ``class -> [(name, bytes)]``
mapping that :func:`bcclassify.lab.adapt.adapt` takes as ``cells``.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from bcclassify import CLASS_NAMES
from bcclassify.access.roles import Identity, require
from bcclassify.review.reviews import create_private_file, default_data_dir, make_private_dir
from bcclassify.storage.store import atomic_write_bytes, sha256_bytes

__all__ = [
    "EXTENSIONS",
    "HISTORY_NAME",
    "INDEX_NAME",
    "LAB_CELLS_DIR",
    "KEPT_DIR",
    "KeptCell",
    "KeptCells",
    "KeptCellsError",
    "MAX_CELL_BYTES",
    "MAX_KEPT_CELLS",
    "MAX_SIDE",
    "cell_bytes",
    "image_format",
    "kept_dir",
    "write_private_bytes",
]

KEPT_DIR = "kept-cells"
INDEX_NAME = "index.sqlite3"
LAB_CELLS_DIR = "lab-cells"  # cells kept with an installed adaptation (adapt.keep_cells)
HISTORY_NAME = "kept-cells-log.sqlite3"  # beside kept-cells/, so forget-all keeps it
MAX_SIDE = 1024  # as uploads.WORKING_PX: the working copy the app classifies and explains
MAX_CELL_BYTES = 4 * 2**20  # a 1024 x 1024 RGB PNG is at most about 3 MB
MAX_KEPT_CELLS = 10_000  # per data folder: what a lab adapts from is tens a class
# Formats kept as they are; anything else is kept as a PNG of its pixels.
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "BMP": "bmp", "WEBP": "webp"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kept_cells (
    sha256 TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    reviewer_class TEXT NOT NULL,
    file_name TEXT NOT NULL,
    image_sha256 TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL,
    time TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT ''
)
"""


_HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS kept_cells_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL CHECK (action IN ('keep', 'forget', 'forget_all')),
    sha256 TEXT NOT NULL DEFAULT '',
    reviewer_class TEXT NOT NULL DEFAULT '',
    file_name TEXT NOT NULL DEFAULT '',
    cells INTEGER NOT NULL DEFAULT 0,
    by TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS kept_cells_log_no_update BEFORE UPDATE ON kept_cells_log
BEGIN SELECT RAISE(ABORT, 'the kept-cells log is append-only: rows are never changed'); END;
CREATE TRIGGER IF NOT EXISTS kept_cells_log_no_delete BEFORE DELETE ON kept_cells_log
BEGIN SELECT RAISE(ABORT, 'the kept-cells log is append-only: rows are never deleted'); END;
CREATE TRIGGER IF NOT EXISTS kept_cells_log_no_replace BEFORE INSERT ON kept_cells_log
WHEN EXISTS (SELECT 1 FROM kept_cells_log WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'the kept-cells log is append-only: an id is never reused'); END;
"""


class KeptCellsError(RuntimeError):
    """Kept cells cannot be read or written, or a cell is refused: one clear line."""


@dataclass(frozen=True)
class KeptCell:
    """One kept cell as its index row records it."""

    sha256: str  # of the kept bytes; the file is <class>/<sha256>.<ext>
    file: str  # relative to the kept-cells folder
    reviewer_class: str
    file_name: str  # as uploaded (from the browser: plain text when shown)
    image_sha256: str  # of the upload, as the review log records it
    reviewer: str
    time: str
    model: str


def kept_dir(data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / KEPT_DIR


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) atomically (see ``store.atomic_write_bytes``)."""
    atomic_write_bytes(path, data, mode=0o600)


def image_format(data: bytes) -> tuple[str, tuple[int, int]]:
    """(PIL format, (width, height)) of ``data`` read from its header; refuses a non-image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format or ""), img.size
    except Exception as exc:  # noqa: BLE001 - any decoder complaint means "not an image"
        raise KeptCellsError(f"not an image ({type(exc).__name__})") from None


def cell_bytes(copy) -> bytes:
    """The bytes to keep for a working copy (``bcclassify.serving.uploads.WorkingCopy``): its
    source when that is a bounded image in a kept format, else a lossless PNG of its pixels."""
    source = copy.source
    try:
        fmt, size = image_format(source)
    except KeptCellsError:
        fmt, size = "", (0, 0)
    if fmt in EXTENSIONS and max(size) <= MAX_SIDE and len(source) <= MAX_CELL_BYTES:
        return source
    buffer = io.BytesIO()
    Image.fromarray(copy.pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class KeptCells:
    """The kept cells of one data folder (the review log's): ``<data_dir>/kept-cells``."""

    def __init__(self, data_dir: str | Path | None = None, create: bool = True) -> None:
        self.root = kept_dir(data_dir)
        self.index = self.root / INDEX_NAME
        self.lab_cells = self.root.parent / LAB_CELLS_DIR
        self.history_path = self.root.parent / HISTORY_NAME
        self._ready = False
        if create:
            self._open()

    # ------------------------------------------------------------------ storage

    def _open(self) -> None:
        if self._ready:
            return
        try:
            make_private_dir(self.root.parent)
            make_private_dir(self.root)
            create_private_file(self.index)
            with closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise KeptCellsError(f"{self.root}: cannot be opened ({exc})") from None
        self._ready = True

    def _connect(self, path: Path | None = None) -> sqlite3.Connection:
        db = sqlite3.connect(path or self.index, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=FULL")
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._open()
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time: two sessions never race
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _rows(self) -> list[KeptCell]:
        if not self.index.is_file():
            return []  # nothing was ever kept here (and opening must not create the folder)
        try:
            with closing(self._connect()) as db:
                rows = db.execute("SELECT * FROM kept_cells ORDER BY file").fetchall()
        except sqlite3.Error as exc:
            raise KeptCellsError(f"{self.index}: cannot be read ({exc})") from None
        return [KeptCell(**dict(r)) for r in rows]

    # ------------------------------------------------------------------ who did what

    def _log(self, action: str, by: str, cell: KeptCell | None = None, cells: int = 1) -> None:
        """Append one action to the kept-cells log (committed before returning)."""
        try:
            make_private_dir(self.history_path.parent)
            create_private_file(self.history_path)
            with closing(self._connect(self.history_path)) as db:
                db.executescript(_HISTORY_SCHEMA)
                db.execute(
                    "INSERT INTO kept_cells_log (action, sha256, reviewer_class, file_name, "
                    "cells, by, time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        action,
                        cell.sha256 if cell else "",
                        cell.reviewer_class if cell else "",
                        cell.file_name if cell else "",
                        cells,
                        by,
                        dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    ),
                )
        except (sqlite3.Error, OSError) as exc:
            raise KeptCellsError(f"{self.history_path}: cannot be written ({exc})") from None

    def history(self) -> list[dict]:
        """Who kept, forgot or forgot all what, and when; oldest first."""
        if not self.history_path.is_file():
            return []
        try:
            with closing(self._connect(self.history_path)) as db:
                rows = db.execute("SELECT * FROM kept_cells_log ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise KeptCellsError(f"{self.history_path}: cannot be read ({exc})") from None
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ keeping

    def keep(
        self,
        data: bytes,
        reviewer_class: str,
        reviewer: str,
        file_name: str = "",
        image_sha256: str = "",
        model: str = "",
    ) -> KeptCell:
        """Keep one crop under ``reviewer_class``, committed before returning.

        ``data``: the bounded working copy's bytes (see :func:`cell_bytes`). Keeping the same
        bytes again replaces the entry: the latest class wins and the file moves folders.
        """
        if reviewer_class not in CLASS_NAMES:
            raise KeptCellsError(f"class {reviewer_class!r} is not one of {', '.join(CLASS_NAMES)}")
        if not (reviewer or "").strip():
            raise KeptCellsError("a kept cell needs its reviewer: log in to keep cells")
        if len(data) > MAX_CELL_BYTES:
            raise KeptCellsError(
                f"{len(data) / 2**20:.1f} MB is over the {MAX_CELL_BYTES // 2**20} MB a kept "
                "cell may take; keep the working copy, not the upload"
            )
        fmt, size = image_format(data)
        if fmt not in EXTENSIONS:
            raise KeptCellsError(f"{fmt or 'unknown'} images are not kept; keep a PNG")
        if max(size) > MAX_SIDE:
            raise KeptCellsError(
                f"{size[0]}x{size[1]} px is larger than the {MAX_SIDE} px working copy"
            )
        sha = sha256_bytes(data)
        relative = f"{reviewer_class}/{sha}.{EXTENSIONS[fmt]}"
        cell = KeptCell(
            sha256=sha,
            file=relative,
            reviewer_class=reviewer_class,
            file_name=file_name or "",
            image_sha256=image_sha256 or "",
            reviewer=reviewer.strip(),
            time=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            model=model or "",
        )
        old = None
        try:
            self._open()
            folder = self.root / reviewer_class
            make_private_dir(folder)
            # The file first: a crash before the row commits leaves a file no row names.
            write_private_bytes(self.root / relative, data)
            with self.transaction() as db:
                old = db.execute("SELECT file FROM kept_cells WHERE sha256 = ?", (sha,)).fetchone()
                if old is None:
                    (count,) = db.execute("SELECT COUNT(*) FROM kept_cells").fetchone()
                    if count >= MAX_KEPT_CELLS:
                        raise KeptCellsError(
                            f"{MAX_KEPT_CELLS} cells are kept already; forget some first"
                        )
                values = asdict(cell)
                db.execute(
                    f"INSERT OR REPLACE INTO kept_cells ({', '.join(values)}) "
                    f"VALUES ({', '.join('?' for _ in values)})",
                    tuple(values.values()),
                )
        except KeptCellsError:
            if old is None:
                (self.root / relative).unlink(missing_ok=True)
            raise
        except (sqlite3.Error, OSError) as exc:
            raise KeptCellsError(f"{self.root}: the cell was not kept ({exc})") from None
        if old is not None and old["file"] != relative:
            (self.root / old["file"]).unlink(missing_ok=True)  # a correction moved it
        self._log("keep", cell.reviewer, cell)
        return cell

    # ------------------------------------------------------------------ reading

    def entries(self) -> list[KeptCell]:
        """Every kept cell, by class then sha256 (rows whose file has gone are left out)."""
        return [c for c in self._rows() if (self.root / c.file).is_file()]

    def counts(self) -> dict[str, int]:
        """Kept cells a class, in ``CLASS_NAMES`` order; classes without any are left out."""
        found: dict[str, int] = {}
        for cell in self.entries():
            found[cell.reviewer_class] = found.get(cell.reviewer_class, 0) + 1
        return {name: found[name] for name in CLASS_NAMES if name in found}

    def cells(self) -> dict[str, list[tuple[str, bytes]]]:
        """``class -> [(name, bytes)]``, sorted, as :func:`bcclassify.lab.adapt.adapt` takes them.

        ``name`` is ``<class>/<sha256>.<ext>``. A file whose bytes no longer match its sha256
        (damaged on disk) is left out rather than fitted on.
        """
        out: dict[str, list[tuple[str, bytes]]] = {}
        for cell in self.entries():
            try:
                data = (self.root / cell.file).read_bytes()
            except OSError:
                continue
            if sha256_bytes(data) != cell.sha256:
                continue
            out.setdefault(cell.reviewer_class, []).append((cell.file, data))
        return {name: sorted(out[name]) for name in CLASS_NAMES if name in out}

    def is_kept(self, sha256: str) -> KeptCell | None:
        """The kept cell with these bytes' sha256 (or this upload's sha256), if any."""
        if not self.index.is_file():
            return None
        try:
            with closing(self._connect()) as db:
                row = db.execute(
                    "SELECT * FROM kept_cells WHERE sha256 = ? OR image_sha256 = ? LIMIT 1",
                    (sha256, sha256),
                ).fetchone()
        except sqlite3.Error as exc:
            raise KeptCellsError(f"{self.index}: cannot be read ({exc})") from None
        cell = None if row is None else KeptCell(**dict(row))
        return cell if cell is not None and (self.root / cell.file).is_file() else None

    # ------------------------------------------------------------------ forgetting

    def forget(self, sha256: str, *, by: str) -> int:
        """Delete the kept cell with this sha256 (of its bytes or of its upload); returns how many
        were deleted (0 or 1, more only if one upload was kept as different bytes). ``by``: who
        (the logged-in user), recorded in the kept-cells log with what was forgotten."""
        by = _who(by)
        if not self.root.is_dir():
            return 0
        try:
            with self.transaction() as db:
                rows = db.execute(
                    "SELECT * FROM kept_cells WHERE sha256 = ? OR image_sha256 = ?",
                    (sha256, sha256),
                ).fetchall()
                db.execute(
                    "DELETE FROM kept_cells WHERE sha256 = ? OR image_sha256 = ?",
                    (sha256, sha256),
                )
        except sqlite3.Error as exc:
            raise KeptCellsError(f"{self.index}: not forgotten ({exc})") from None
        shas = {r["sha256"] for r in rows} | {sha256}
        for name in CLASS_NAMES:  # also a file a crash left without its row
            for sha in shas:
                for path in (self.root / name).glob(f"{sha}.*"):
                    path.unlink(missing_ok=True)
        for row in rows:
            self._log("forget", by, KeptCell(**dict(row)))
        return len(rows)

    def forget_all(self, identity: Identity | None) -> int:
        """Delete every kept cell, its index and the kept-cells folder, and the cells kept with
        installed adaptations (``lab-cells/``); returns how many cells were deleted.

        Every reviewer's cells go, so ``identity`` must be allowed to ``forget_cells`` (an admin;
        ``AccessDenied`` otherwise); who did it is recorded in the kept-cells log. The rows go
        first, in one transaction: a crash part way leaves only files no row names, which are
        never listed and which the next call removes."""
        require(identity, "forget_cells")
        by = _who(identity.name)
        if not self.root.exists() and not self.lab_cells.exists():
            return 0
        count = 0
        try:
            if self.index.is_file():
                with self.transaction() as db:
                    (count,) = db.execute("SELECT COUNT(*) FROM kept_cells").fetchone()
                    db.execute("DELETE FROM kept_cells")
            if self.root.exists():
                shutil.rmtree(self.root)
            if self.lab_cells.exists():
                count += sum(1 for p in self.lab_cells.rglob("*") if p.is_file())
                shutil.rmtree(self.lab_cells)
        except sqlite3.Error as exc:
            raise KeptCellsError(f"{self.index}: not forgotten ({exc})") from None
        except OSError as exc:
            raise KeptCellsError(f"{exc.filename or self.root}: not all deleted ({exc})") from None
        self._ready = False
        self._log("forget_all", by, cells=count)
        return count


def _who(by: str) -> str:
    """The user forgetting cells, required: the log says who withdrew what."""
    if not (by or "").strip():
        raise KeptCellsError("forgetting kept cells needs the user's name: log in first")
    return by.strip()
