"""Kept cells: opt-in reviewed crops on disk, atomic and private, latest class wins, forgettable,
and listed as the ``cells`` mapping that ``adapt`` takes."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from bcclassify.access.roles import AccessDenied, Identity, Role
from bcclassify.lab.adapt import choose_cells, keep_cells
from bcclassify.lab.kept import (
    HISTORY_NAME,
    INDEX_NAME,
    KEPT_DIR,
    LAB_CELLS_DIR,
    MAX_SIDE,
    KeptCells,
    KeptCellsError,
    cell_bytes,
    write_private_bytes,
)
from bcclassify.serving.uploads import WORKING_PX, UploadLimits, working_copy
from bcclassify.storage.store import sha256_bytes

EXAMPLES = REPO / "bcclassify" / "examples" / "pbc"
ADMIN = Identity("lab.admin", Role.ADMIN)


def _png(value: int, side: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_nothing_is_created_until_a_cell_is_kept(tmp_path):
    kept = KeptCells(tmp_path, create=False)
    assert kept.entries() == [] and kept.cells() == {} and kept.counts() == {}
    assert kept.forget("0" * 64, by="qa") == 0 and kept.forget_all(ADMIN) == 0
    assert not (tmp_path / KEPT_DIR).exists()


def test_keep_is_private_and_listed_as_adapts_cells_mapping(tmp_path):
    kept = KeptCells(tmp_path / "data")
    a, b, c = _png(10), _png(20), _png(30)
    kept.keep(a, "neutrophil", "qa", "a.png", image_sha256="up-a", model="hybrid")
    kept.keep(b, "neutrophil", "qa", "b.png")
    cell = kept.keep(c, "lymphocyte", " qa ", "c.png")
    root = tmp_path / "data" / KEPT_DIR
    assert cell.file == f"lymphocyte/{sha256_bytes(c)}.png" and cell.reviewer == "qa"
    assert (root / cell.file).read_bytes() == c
    assert _mode(tmp_path / "data") == 0o700 and _mode(root) == 0o700
    assert _mode(root / "neutrophil") == 0o700 and _mode(root / "lymphocyte") == 0o700
    assert all(_mode(p) == 0o600 for p in root.rglob("*") if p.is_file()), [
        (p, oct(_mode(p))) for p in root.rglob("*")
    ]
    assert not [p for p in root.rglob("*.tmp")]

    assert kept.counts() == {"lymphocyte": 1, "neutrophil": 2}  # CLASS_NAMES order
    cells = kept.cells()
    assert list(cells) == ["lymphocyte", "neutrophil"]
    assert cells["neutrophil"] == sorted([(f"neutrophil/{sha256_bytes(x)}.png", x) for x in (a, b)])
    taken, rest = choose_cells(cells, per_class=1, seed=0)  # what adapt() does with them
    assert [name for _, name in taken] == ["lymphocyte", "neutrophil"]
    assert len(rest) == 1 and isinstance(rest[0][0], tuple)
    first = kept.is_kept("up-a")
    assert first is not None and first.model == "hybrid" and first.file_name == "a.png"
    assert KeptCells(tmp_path / "data").counts() == kept.counts()  # another process sees them


def test_the_latest_class_wins_and_moves_the_file(tmp_path):
    kept = KeptCells(tmp_path)
    data = _png(40)
    kept.keep(data, "monocyte", "qa", "x.png")
    kept.keep(data, "lymphocyte", "lead", "x.png")  # a correction
    root = tmp_path / KEPT_DIR
    sha = sha256_bytes(data)
    assert [c.reviewer_class for c in kept.entries()] == ["lymphocyte"]
    assert kept.entries()[0].reviewer == "lead"
    assert not (root / "monocyte" / f"{sha}.png").exists()
    assert (root / "lymphocyte" / f"{sha}.png").read_bytes() == data
    assert kept.counts() == {"lymphocyte": 1}


def test_forget_one_and_all(tmp_path):
    kept = KeptCells(tmp_path)
    a, b = _png(50), _png(60)
    kept.keep(a, "basophil", "qa", image_sha256="upload-a")
    kept.keep(b, "eosinophil", "qa")
    assert kept.forget("upload-a", by="qa") == 1  # by the upload's sha256, as the page knows it
    assert kept.counts() == {"eosinophil": 1}
    assert not list((tmp_path / KEPT_DIR / "basophil").iterdir())
    assert kept.forget(sha256_bytes(b), by="qa") == 1  # or by the kept bytes' own
    assert kept.counts() == {}
    kept.keep(a, "basophil", "qa")
    kept.keep(b, "platelet", "qa")
    for who in (None, Identity("qa"), Identity("dr.p", Role.PATHOLOGIST)):
        with pytest.raises(AccessDenied, match="forgetting kept cells needs the admin role"):
            kept.forget_all(who)  # every reviewer's cells: an admin's call
    assert kept.counts() == {"basophil": 1, "platelet": 1}
    assert kept.forget_all(ADMIN) == 2
    assert not (tmp_path / KEPT_DIR).exists()
    assert kept.counts() == {} and kept.cells() == {}
    kept.keep(a, "basophil", "qa")  # keeping again after a withdrawal starts afresh
    assert kept.counts() == {"basophil": 1}


def test_refuses_unknown_classes_anonymous_reviewers_and_unbounded_images(tmp_path):
    kept = KeptCells(tmp_path)
    with pytest.raises(KeptCellsError, match="not one of"):
        kept.keep(_png(1), "granulocyte", "qa")
    with pytest.raises(KeptCellsError, match="not one of"):
        kept.keep(_png(1), "Neutrophil", "qa")  # the canonical names only
    with pytest.raises(KeptCellsError, match="reviewer"):
        kept.keep(_png(1), "neutrophil", "  ")
    with pytest.raises(KeptCellsError, match="not an image"):
        kept.keep(b"not an image", "neutrophil", "qa")
    with pytest.raises(KeptCellsError, match="working copy"):
        kept.keep(_png(1, side=MAX_SIDE + 1), "neutrophil", "qa")
    assert kept.entries() == [] and _files(tmp_path / KEPT_DIR) == [INDEX_NAME]


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "cell.png"
    write_private_bytes(target, b"old")
    assert _mode(target) == 0o600

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_private_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cell.png"]

    kept = KeptCells(tmp_path / "data")
    with pytest.raises(KeptCellsError, match="not kept"):
        kept.keep(_png(70), "neutrophil", "qa")
    monkeypatch.undo()
    assert kept.entries() == []  # no row for a file that was never written
    assert _files(tmp_path / "data" / KEPT_DIR) == [INDEX_NAME]


def test_a_crash_between_file_and_row_leaves_only_an_unlisted_file(tmp_path, monkeypatch):
    kept = KeptCells(tmp_path)
    kept.keep(_png(80), "monocyte", "qa")

    def dies(self):
        raise SystemExit("the process died here")  # no cleanup runs after it

    monkeypatch.setattr(KeptCells, "transaction", dies)
    data = _png(90)
    with pytest.raises(SystemExit):
        kept.keep(data, "monocyte", "qa")
    monkeypatch.undo()
    orphan = tmp_path / KEPT_DIR / "monocyte" / f"{sha256_bytes(data)}.png"
    assert orphan.read_bytes() == data  # whole, but no row names it
    assert kept.counts() == {"monocyte": 1}  # so the unfinished keep is not listed
    assert kept.forget(sha256_bytes(data), by="qa") == 0  # and forgetting it still removes the file
    assert not orphan.exists()


def test_a_damaged_file_is_not_fitted_on(tmp_path):
    kept = KeptCells(tmp_path)
    cell = kept.keep(_png(100), "erythroblast", "qa")
    kept.keep(_png(110), "erythroblast", "qa")
    (tmp_path / KEPT_DIR / cell.file).write_bytes(b"garbage")
    names = [n for n, _ in kept.cells()["erythroblast"]]
    assert len(names) == 1 and cell.file not in names


def test_cell_bytes_keeps_the_bounded_working_copy(tmp_path):
    assert MAX_SIDE == WORKING_PX
    crop = (EXAMPLES / "neutrophil").glob("*.jpg").__next__().read_bytes()
    small = working_copy("n.jpg", crop, UploadLimits())
    assert cell_bytes(small) == crop  # a crop within the working size is kept as uploaded
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1500, 3000, 3), np.uint8)).save(buffer, format="PNG")
    big = working_copy("big.png", buffer.getvalue(), UploadLimits())
    kept = cell_bytes(big)
    assert Image.open(io.BytesIO(kept)).size == (1024, 512)
    assert KeptCells(tmp_path).keep(kept, "platelet", "qa").file.endswith(".png")


# ----------------------------------------------------------------------------- security issue #22


def test_who_kept_forgot_or_forgot_all_what_is_logged_append_only(tmp_path):
    kept = KeptCells(tmp_path)
    a, b = _png(70), _png(80)
    kept.keep(a, "basophil", "qa", "a.png", image_sha256="upload-a")
    kept.keep(b, "monocyte", "qa", "b.png")
    kept.forget("upload-a", by="lead")  # the box unticked and saved
    kept.forget_all(Identity("admin", Role.ADMIN))
    log = kept.history()
    assert [(r["action"], r["by"]) for r in log] == [
        ("keep", "qa"),
        ("keep", "qa"),
        ("forget", "lead"),
        ("forget_all", "admin"),
    ]
    assert (log[2]["sha256"], log[2]["file_name"]) == (sha256_bytes(a), "a.png")
    assert log[3]["cells"] == 1
    path = tmp_path / HISTORY_NAME
    assert path.is_file() and _mode(path) == 0o600  # kept outside kept-cells/, which is gone
    with sqlite3.connect(path) as db:
        for statement in (
            "UPDATE kept_cells_log SET by = 'someone else'",
            "DELETE FROM kept_cells_log",
            "INSERT OR REPLACE INTO kept_cells_log (id, action, by, time) "
            "VALUES (1, 'keep', 'x', 'now')",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
    assert len(kept.history()) == 4


def test_forgetting_needs_who(tmp_path):
    kept = KeptCells(tmp_path)
    kept.keep(_png(5), "basophil", "qa")
    with pytest.raises(KeptCellsError, match="log in"):
        kept.forget(sha256_bytes(_png(5)), by=" ")
    with pytest.raises(AccessDenied):
        kept.forget_all(None)
    assert kept.counts() == {"basophil": 1}


def test_cells_kept_with_an_adaptation_are_private_and_forgotten_with_the_rest(tmp_path):
    folder = tmp_path / LAB_CELLS_DIR / "hybrid-lab"
    assert keep_cells([("neutrophil/a.png", _png(1)), ("monocyte/b.png", _png(2))], folder) == 2
    files = [p for p in (tmp_path / LAB_CELLS_DIR).rglob("*") if p.is_file()]
    folders = [p for p in (tmp_path / LAB_CELLS_DIR).rglob("*") if p.is_dir()]
    assert len(files) == 2 and {_mode(p) for p in files} == {0o600}
    assert {_mode(p) for p in [tmp_path / LAB_CELLS_DIR, *folders]} == {0o700}
    kept = KeptCells(tmp_path, create=False)
    kept.keep(_png(3), "basophil", "qa")
    assert kept.forget_all(Identity("admin", Role.ADMIN)) == 3
    assert not (tmp_path / LAB_CELLS_DIR).exists() and not (tmp_path / KEPT_DIR).exists()
