"""Exit statuses and what a long or interrupted `predict` leaves behind."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, REPO

from bcclassify import CLASS_NAMES
from bcclassify.cli import main as cli

CELLS = sorted(FIXTURE_IMAGES.rglob("*.jpg"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture()
def crashing_list(monkeypatch):
    def crash(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "list", crash)


def test_an_internal_error_exits_three_in_one_line(crashing_list, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["list"]) == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("internal error: RuntimeError: disk on fire second line")
    assert "--debug" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_traceback_of_an_internal_error_on_request(crashing_list, capsys, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    argv = ["--debug", "list"] if how == "flag" else ["list"]
    assert cli.main(argv) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "disk on fire" in err


def test_an_unreadable_folder_becomes_an_error_row(tiny_store, tmp_path, monkeypatch, capsys):
    shutil.copy(CELLS[0], tmp_path / "a.jpg")
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(CELLS[1], locked / "b.jpg")
    real_scandir = os.scandir

    def scandir(path="."):  # as chmod 000 does for a non-root user
        if Path(os.fsdecode(path)) == locked:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    status = cli.main(["predict", "--model", "tiny-cnn", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == cli.EXIT_REFUSED
    rows = _rows(out)
    assert [r["path"] for r in rows] == [str(tmp_path / "a.jpg"), str(locked)]
    assert rows[0]["flag"] != "error"
    assert rows[1]["flag"] == "error" and "folder that cannot be read" in rows[1]["error"]
    assert err == f"refused: {rows[1]['error']}\n"


def test_predict_shows_a_progress_bar_on_a_terminal(tiny_store, monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    files = [str(p) for p in CELLS[:3]]
    assert cli.main(["predict", "--model", "tiny-cnn", "--batch-size", "2", *files]) == 0
    assert "classifying" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert [r["path"] for r in _rows(capsys.readouterr().out)] == sorted(files)


def test_a_killed_predict_keeps_its_finished_rows(store_env, tmp_path):
    """kill -9 while `predict` waits on an input: the batches before it are already on disk."""
    cells = tmp_path / "cells"
    cells.mkdir()
    for i, source in enumerate(CELLS[:4]):
        shutil.copy(source, cells / f"{i}.jpg")
    stuck = tmp_path / "zz-stuck.png"  # sorts last; reading a FIFO with no writer blocks
    os.mkfifo(stuck)
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "bcclassify", "predict", "--model", "tiny-cnn"]
    with out.open("w") as stdout:
        process = subprocess.Popen(
            [*command, "--batch-size", "2", str(cells), str(stuck)],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env=store_env,
        )
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and process.poll() is None:
                if len(out.read_text().splitlines()) >= 5:  # header and two batches
                    break
                time.sleep(0.2)
            finished_before_kill = process.poll() is not None
        finally:
            process.kill()
            process.wait()
    assert not finished_before_kill
    rows = _rows(out.read_text())
    assert [r["path"] for r in rows] == [str(cells / f"{i}.jpg") for i in range(4)]
    for row in rows:
        probs = np.array([float(row[c]) for c in CLASS_NAMES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5) and row["error"] == ""
