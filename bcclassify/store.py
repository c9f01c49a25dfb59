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
from pathlib import Path
from typing import Any

STORE_ENV = "BCCLASSIFY_STORE"
REPO_ROOT = Path(__file__).resolve().parent.parent


def store_root() -> Path:
    return Path(os.environ.get(STORE_ENV) or REPO_ROOT / "model_store")


def runs_dir() -> Path:
    return store_root() / "runs"


def models_dir() -> Path:
    return store_root() / "models"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename: readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_state(row: dict) -> str:
    """What a `list_runs` row's run is now: its recorded status, or "interrupted"."""
    return "interrupted" if row.get("interrupted") else row.get("status") or ""


def can_resume(row: dict) -> bool:
    """Whether ``train --resume`` can continue a `list_runs` row's run here.

    Only an interrupted run (not one stopped on purpose) whose training data is on this machine:
    resuming re-reads the data to rebuild the same split.
    """
    if not row.get("interrupted"):
        return False
    data = Path(row.get("data") or "")
    return bool(row.get("data")) and (data if data.is_absolute() else REPO_ROOT / data).is_dir()


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


def initialisation_summary(record: dict | None) -> str | None:
    """One word for a run's per-trunk initialisation record (None when it was not recorded)."""
    if not record:
        return None
    pretrained = [str(v).startswith("pretrained") for v in record.values()]
    if all(pretrained):
        return "pretrained"
    return "partly pretrained" if any(pretrained) else "from scratch"


def list_runs() -> list[dict]:
    """Summaries of every run record, newest first (what ``list --json`` prints)."""
    rows = []
    root = runs_dir()
    if not root.is_dir():
        return rows
    for folder in sorted(root.iterdir()):
        run = read_json(folder / "run.json")
        if not isinstance(run, dict):
            continue
        config = read_json(folder / "config.json", {}) or {}
        metrics = read_json(folder / "metrics.json", {}) or {}
        headline = metrics.get("summary", metrics)
        rows.append(
            {
                "run_id": folder.name,
                "arch": run.get("arch") or config.get("arch"),
                "image_size": config.get("image_size"),
                "center_crop": config.get("center_crop", 1.0),
                "status": run.get("status"),
                # a "running" record whose process is gone was interrupted: resume it
                "interrupted": run.get("status") == "running" and not run_is_alive(run),
                # why a run was stopped by hand ("status": "stopped"): not to be resumed
                "stopped_on_purpose": run.get("stopped_on_purpose"),
                "data": config.get("data"),
                "epochs": config.get("epochs"),
                "epochs_done": run.get("epochs_done"),
                "folds": config.get("folds"),
                "smote": config.get("smote"),
                "augment": config.get("augment"),
                "shuffle": config.get("shuffle"),
                "test_accuracy": _mean_or_value(headline.get("accuracy")),
                "macro_f1": _mean_or_value(headline.get("macro_f1")),
                "duration_s": metrics.get("duration_s") or run.get("duration_s"),
                "created": run.get("created"),
                "note": config.get("note", ""),
                "initialisation": initialisation_summary(_initialisation(folder, run)),
                "init_from": run.get("init_from"),
                "has_weights": (folder / "model.keras").is_file(),
            }
        )
    rows.sort(key=lambda r: r.get("created") or "", reverse=True)
    return rows


def _initialisation(folder: Path, run: dict) -> dict | None:
    """How the run's model was initialised; a cross-validated run records it in each fold."""
    if run.get("initialisation") is not None:
        return run["initialisation"]
    first_fold = read_json(folder / "fold-1" / "run.json", {}) or {}
    return first_fold.get("initialisation")


def _mean_or_value(value: Any) -> float | None:
    if isinstance(value, dict):
        return value.get("mean")
    return value


def list_models() -> list[dict]:
    root = models_dir()
    default = default_model_name()
    out = []
    if not root.is_dir():
        return out
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("."):  # a model being installed (promote's staging folder)
            continue
        card = read_json(folder / "card.json")
        if isinstance(card, dict):
            out.append({**card, "name": folder.name, "default": folder.name == default})
    return out


def default_model_name() -> str | None:
    pointer = read_json(store_root() / "default.json", {}) or {}
    return pointer.get("default")


def set_default_model(name: str) -> None:
    write_json(store_root() / "default.json", {"default": name})
