"""The model store: training-run records and installed models, written so nothing is half-saved.

Layout::

    model_store/runs/<run-id>/      run.json, config.json, environment.json, history.csv,
                                    metrics.json, predictions.csv, checkpoints/ (not committed)
    model_store/models/<name>/      card.json, model.json, weights-*.npz
    model_store/default.json        {"default": "<name>"}
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bcclassify import REPO_ROOT

STORE_ENV = "BCCLASSIFY_STORE"


def store_root() -> Path:
    return Path(os.environ.get(STORE_ENV) or REPO_ROOT / "model_store")


def runs_dir() -> Path:
    return store_root() / "runs"


def models_dir() -> Path:
    return store_root() / "models"


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file, fsync, rename, fsync the folder: readers, or a restart after
    a crash, see the old or the new file, whole. ``mode`` 0o600 keeps it private from the start
    (the temporary file is created 0600 and only then widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode != 0o600:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system syncs folders
    finally:
        os.close(fd)


def write_json(path: Path, payload: Any, mode: int = 0o644) -> None:
    data = (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode()
    atomic_write_bytes(path, data, mode=mode)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_csv(path: Path, header: list[str], rows: list[list[Any]], mode: int = 0o644) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode(), mode=mode)


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_state(row: Mapping[str, Any]) -> str:
    """What a `list_runs` row's run is now: its recorded status, or "interrupted"."""
    from bcclassify.storage.runs import RunSummary  # runs reads the store through this module

    return RunSummary.from_json(row).state


def can_resume(row: Mapping[str, Any]) -> bool:
    """Whether ``train --resume`` can continue a `list_runs` row's run here (see
    :attr:`bcclassify.storage.runs.RunSummary.resumable`)."""
    from bcclassify.storage.runs import RunSummary

    return RunSummary.from_json(row).resumable


def run_is_alive(run: dict) -> bool:
    """Whether the process recorded in a run.json is still running (on this host)."""
    import platform

    pid = run.get("pid")
    if not pid or run.get("host", platform.node()) != platform.node():
        return run.get("status") == "running"  # another host: trust the record
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# What a run's initialisation record holds besides one entry per trunk.
NOT_TRUNKS = ("normalisation", "group_norm_fit", "stem_weights_sha256")


def trunk_initialisation(record: dict) -> dict:
    """The per-trunk entries of an initialisation record."""
    return {k: v for k, v in record.items() if k not in NOT_TRUNKS}


def initialisation_summary(record: dict | None) -> str | None:
    """One word for a run's per-trunk initialisation record (None when it was not recorded)."""
    if not record:
        return None
    pretrained = [str(v).startswith("pretrained") for v in trunk_initialisation(record).values()]
    if all(pretrained):
        return "pretrained"
    return "partly pretrained" if any(pretrained) else "from scratch"


def list_runs() -> list[dict]:
    """Summaries of every run record, newest first (what ``list --json`` prints)."""
    from bcclassify.storage.runs import run_summaries

    return [run.to_json() for run in run_summaries()]


def default_model_name() -> str | None:
    pointer = read_json(store_root() / "default.json", {}) or {}
    return pointer.get("default")


def set_default_model(name: str) -> None:
    write_json(store_root() / "default.json", {"default": name})
