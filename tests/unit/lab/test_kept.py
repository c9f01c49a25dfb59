"""Kept cells: opt-in reviewed crops on disk, atomic and private, latest class wins, forgettable,
and listed as the ``cells`` mapping that ``adapt`` takes."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from bcclassify.access.roles import AccessDenied, Identity, Role
from bcclassify.lab.adapt import choose_cells
from bcclassify.lab.kept import (
    INDEX_NAME,
    KEPT_DIR,
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
    assert kept.forget("0" * 64) == 0 and kept.forget_all(ADMIN) == 0
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
    assert kept.forget("upload-a") == 1  # by the upload's sha256, as the page knows it
    assert kept.counts() == {"eosinophil": 1}
    assert not list((tmp_path / KEPT_DIR / "basophil").iterdir())
    assert kept.forget(sha256_bytes(b)) == 1  # or by the kept bytes' own
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
    assert kept.forget(sha256_bytes(data)) == 0  # and forgetting it still removes the file
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
