"""Run records: the one reader and writer of a run folder, ``model_store/runs/<run-id>/``.

:class:`RunRecord` writes a run (or one fold of it) as it trains or adapts, run.json, history.csv
and metrics.json (the only writer of metrics.json), and reads a finished one back for the pages,
``list`` and promote. :class:`RunSummary` is one row of ``list --json``, read through it.
Nothing here needs TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bcclassify.storage.store import (
    REPO_ROOT,
    initialisation_summary,
    read_csv,
    read_json,
    run_is_alive,
    runs_dir,
    write_csv,
    write_json,
)

HISTORY_COLUMNS = [
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
    "stage",
]


def utc_now() -> str:
    """The time stamp run records carry (UTC, ISO 8601, to the second)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def mean_or_value(value: Any) -> float | None:
    """A headline figure: a cross-validation summary's mean, or the plain value of one split."""
    if isinstance(value, Mapping):
        return value.get("mean")
    return value


def headline(metrics: Mapping) -> dict[str, float | None]:
    """A metrics.json's headline figures, plain values (the fold mean for a CV run)."""
    summary = metrics.get("summary", metrics)
    return {key: mean_or_value(value) for key, value in summary.items()}


class RunRecord:
    """A run, or one fold of it, in its folder: run.json, config.json, environment.json,
    history.csv and metrics.json (the model, its predictions and checkpoints sit beside them).

    Once its clock is started, every update of run.json refreshes ``duration_s``: the seconds
    recorded by earlier processes plus this one's, so a run killed with kill -9 still accounts
    for its time up to then.
    """

    def __init__(self, folder: Path, mode: int = 0o644):
        self.folder = folder
        # 0o600 for a run whose records name people or files (an adaptation run from the app):
        # every file this record writes is then readable by the server's user only.
        self.mode = mode
        self._clock: tuple[float, float] | None = None  # (seconds recorded before, start here)

    @classmethod
    def of(cls, run_id: str) -> RunRecord:
        """The record of run ``run_id`` in the store."""
        return cls(runs_dir() / run_id)

    @property
    def run_id(self) -> str:
        return self.folder.name

    # ------------------------------------------------------------------ writing

    def start_clock(self) -> None:
        before = self.read().get("duration_s", 0.0) or 0.0
        self._clock = (float(before), time.time())

    def elapsed(self) -> float:
        if self._clock is None:
            raise RuntimeError(f"{self.folder}: the run's clock was never started")
        before, started = self._clock
        return round(before + time.time() - started, 1)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """config.json: every argument of the run, and what it was run on."""
        write_json(self.folder / "config.json", dict(config), self.mode)

    def write_environment(self, environment: Mapping[str, Any]) -> None:
        write_json(self.folder / "environment.json", dict(environment), self.mode)

    def create(self, **fields: Any) -> None:
        write_json(self.folder / "run.json", fields, self.mode)

    def start(self, arch: str, **fields: Any) -> None:
        """A new run.json for a run starting in this process (status running, who and where
        runs it), then the clock; ``fields`` add what kind of run it is."""
        self.create(
            run_id=self.run_id,
            arch=arch,
            status="running",
            created=utc_now(),
            pid=os.getpid(),
            host=platform.node(),
            **fields,
        )
        self.start_clock()

    def resume(self) -> None:
        """An interrupted run continues in this process: running again, its clock restarted."""
        self.update(status="running", pid=os.getpid(), host=platform.node())
        self.start_clock()

    def update(self, **changes: Any) -> dict:
        run = self.read()
        if self._clock is not None and "duration_s" not in changes:
            changes["duration_s"] = self.elapsed()
        run.update(changes, updated=utc_now())
        write_json(self.folder / "run.json", run, self.mode)
        return run

    def write_history(self, history: list[dict]) -> None:
        write_csv(
            self.folder / "history.csv",
            HISTORY_COLUMNS,
            [[row.get(c, "") for c in HISTORY_COLUMNS] for row in history],
            self.mode,
        )

    def write_cost(self, cost: Mapping[str, Any]) -> None:
        """cost.json: the architecture's parameters and CPU speed at the run's input size
        (``bench --run``; bcclassify.serving.bench.architecture_cost)."""
        write_json(self.folder / "cost.json", dict(cost), self.mode)

    def cost(self) -> dict:
        """cost.json, or {} when the run's architecture was not measured."""
        return read_json(self.folder / "cost.json", {}) or {}

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.folder / "metrics.json", metrics, self.mode)

    def finish(self, metrics: dict) -> None:
        """metrics.json and the finished run.json, with one reading of the clock for both."""
        metrics["duration_s"] = self.elapsed()
        self.write_metrics(metrics)
        self.update(status="finished", finished=utc_now(), duration_s=metrics["duration_s"])

    def fail(self, exc: BaseException) -> None:
        self.update(status="failed", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ reading

    def read(self) -> dict:
        """run.json ({} when missing)."""
        return read_json(self.folder / "run.json", {}) or {}

    def config(self) -> dict:
        return read_json(self.folder / "config.json", {}) or {}

    def environment(self) -> dict:
        return read_json(self.folder / "environment.json", {}) or {}

    def metrics(self) -> dict | None:
        """metrics.json (None until the run or fold has finished)."""
        return read_json(self.folder / "metrics.json")

    def history_rows(self) -> list[dict[str, str]]:
        """history.csv's rows as written (text), for tables that parse them their own way."""
        return read_csv(self.folder / "history.csv")

    def history(self) -> list[dict]:
        """history.csv's rows, numbers parsed (the stage stays a name)."""

        def parse(key: str, value: str):
            if key == "stage" or value in ("", None):
                return value or None
            return float(value)

        return [{k: parse(k, v) for k, v in row.items()} for row in self.history_rows()]

    def folds(self) -> list[RunRecord]:
        """A cross-validated run's folds (``fold-1``, ``fold-2``, …), in order."""
        return sorted((RunRecord(p) for p in self.folder.glob("fold-*")), key=lambda r: r.fold)

    @property
    def fold(self) -> int:
        """This fold's number (a fold record's folder is ``fold-<k>``)."""
        return int(self.folder.name.split("-")[-1])

    def summary(self) -> RunSummary | None:
        """The run's ``list --json`` row (None: no readable run.json)."""
        run = read_json(self.folder / "run.json")
        if not isinstance(run, dict):
            return None
        config = self.config()
        metrics = self.metrics() or {}
        figures = headline(metrics)
        cost = self.cost()
        return RunSummary(
            run_id=self.run_id,
            arch=run.get("arch") or config.get("arch"),
            image_size=config.get("image_size"),
            center_crop=config.get("center_crop", 1.0),
            status=run.get("status"),
            interrupted=run.get("status") == "running" and not run_is_alive(run),
            stopped_on_purpose=run.get("stopped_on_purpose"),
            data=config.get("data"),
            epochs=config.get("epochs"),
            epochs_done=run.get("epochs_done"),
            folds=config.get("folds"),
            limit_per_class=config.get("limit_per_class"),
            train_per_class=config.get("train_per_class"),
            smote=config.get("smote"),
            augment=config.get("augment"),
            shuffle=config.get("shuffle"),
            test_accuracy=figures.get("accuracy"),
            macro_f1=figures.get("macro_f1"),
            duration_s=metrics.get("duration_s") or run.get("duration_s"),
            created=run.get("created"),
            note=config.get("note", ""),
            initialisation=initialisation_summary(self.initialisation(run)),
            init_from=run.get("init_from"),
            has_weights=(self.folder / "model.keras").is_file(),
            parameters=cost.get("parameters"),
            forward_s=cost.get("forward_single_s"),
        )

    def initialisation(self, run: Mapping | None = None) -> Mapping | None:
        """How the run's model was initialised; a cross-validated run records it in each fold."""
        run = self.read() if run is None else run
        if run.get("initialisation") is not None:
            return run["initialisation"]
        return RunRecord(self.folder / "fold-1").read().get("initialisation")


@dataclass
class RunSummary:
    """One training run as ``list --json`` prints it (see :meth:`RunRecord.summary`)."""

    run_id: str
    arch: str | None = None
    image_size: int | None = None
    center_crop: float | None = 1.0
    status: str | None = None
    # a "running" record whose process is gone was interrupted: resume it
    interrupted: bool = False
    # why a run was stopped by hand ("status": "stopped"): not to be resumed
    stopped_on_purpose: str | None = None
    data: str | None = None
    epochs: int | None = None
    epochs_done: int | None = None
    folds: int | None = None
    limit_per_class: int | None = None  # the data thinned before splitting
    train_per_class: int | None = None  # only the training split thinned
    smote: bool | None = None
    augment: bool | None = None
    shuffle: bool | None = None
    test_accuracy: float | None = None
    macro_f1: float | None = None
    duration_s: float | None = None
    created: str | None = None
    note: str | None = ""
    initialisation: str | None = None
    init_from: str | None = None
    has_weights: bool = False
    parameters: int | None = None  # from cost.json (bench --run)
    forward_s: float | None = None  # one image, one forward pass, on this project's CPU
    other: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        known = {f.name for f in fields(cls)} - {"other"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            other={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "other"}
        return {**out, **self.other}

    @property
    def state(self) -> str:
        """What the run is now: its recorded status, or "interrupted"."""
        return "interrupted" if self.interrupted else self.status or ""

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def resumable(self) -> bool:
        """Whether ``train --resume`` can continue the run here.

        Only an interrupted run (not one stopped on purpose) whose training data is on this
        machine: resuming re-reads the data to rebuild the same split.
        """
        if not self.interrupted or not self.data:
            return False
        data = Path(self.data)
        return (data if data.is_absolute() else REPO_ROOT / data).is_dir()


def run_summaries() -> list[RunSummary]:
    """Every run record in the store, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = [RunRecord(folder).summary() for folder in sorted(root.iterdir())]
    runs = [run for run in found if run is not None]
    runs.sort(key=lambda r: r.created or "", reverse=True)
    return runs
