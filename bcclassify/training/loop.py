"""The epoch loop and checkpoints every run shares, on any Keras 3 backend.

``python -m bcclassify train`` (TensorFlow, tf.data feeds) and the GPU fine-tune
(``scripts/gpu/train_lab.py``, Keras on JAX) both run :func:`run_epochs`: restore the last
checkpoint, fit one epoch at a time, append history.csv, keep the best (or last) weights, write a
whole checkpoint and update run.json. Imports neither TensorFlow nor Keras at module level, so the
lent GPU machine (no TensorFlow) runs the same code.

A checkpoint folder (``<run>/checkpoints/``): ``epoch-NNNN/`` (model.weights.h5, optimizer.npz,
state.json), ``latest.json`` pointing at it, and ``best.weights.h5``, the kept weights.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bcclassify.storage.store import read_json, write_json

log = logging.getLogger(__name__)


class Record(Protocol):
    """What the loop needs of ``bcclassify.storage.runs.RunRecord``."""

    def history(self) -> list[dict]: ...

    def write_history(self, history: list[dict]) -> None: ...

    def update(self, **changes) -> dict: ...


def keeps_epoch(keep_weights: str, val_accuracy: float, best_so_far: float) -> bool:
    """Whether an epoch's weights replace the kept ones.

    "best": only a better validation accuracy. "last": always, because the validation split is
    the source lab's, and training meant to hold up in other labs (the lab preset) trades a
    little of it away; its best source epoch is not the one to keep.
    """
    if keep_weights not in ("best", "last"):
        raise ValueError(f"keep_weights must be 'best' or 'last', not {keep_weights!r}")
    return keep_weights == "last" or val_accuracy > best_so_far


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay by epoch, so a resumed run gets exactly the rate it would have had."""
    return 0.5 * base * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(ckpt_dir: Path, epoch: int, model, optimizer, state: dict) -> None:
    """One folder per epoch, then an atomic pointer: a kill at any moment leaves a whole one.

    ``optimizer`` None: weights only (a run brought back from a device without its optimizer)."""
    folder = ckpt_dir / f"epoch-{epoch:04d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_weights(folder / "model.weights.h5")
    if optimizer is not None:
        # np.asarray, not .numpy(): the same on TensorFlow and JAX variables
        np.savez(folder / "optimizer.npz", *[np.asarray(v) for v in optimizer.variables])
    write_json(folder / "state.json", state)
    write_json(ckpt_dir / "latest.json", {"folder": folder.name, "epoch": epoch})
    for old in ckpt_dir.glob("epoch-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def restore_checkpoint(ckpt_dir: Path, model, optimizer) -> dict | None:
    """The last checkpoint's weights and optimizer state into ``model`` and ``optimizer``; its
    state, or None when there is none. A checkpoint without optimizer.npz restores the weights
    and leaves the optimizer fresh."""
    pointer = read_json(ckpt_dir / "latest.json")
    if not pointer:
        return None
    folder = ckpt_dir / pointer["folder"]
    model.load_weights(folder / "model.weights.h5")
    if optimizer is not None and (folder / "optimizer.npz").is_file():
        optimizer.build(model.trainable_variables)
        with np.load(folder / "optimizer.npz") as stored:
            values = [stored[f"arr_{i}"] for i in range(len(stored.files))]
        if len(values) != len(optimizer.variables):
            raise ValueError(
                f"{folder}: {len(values)} optimizer arrays for {len(optimizer.variables)} "
                "variables (another optimizer or learning-rate schedule)"
            )
        for variable, value in zip(optimizer.variables, values):
            variable.assign(value)
    return read_json(folder / "state.json")


def save_best(ckpt_dir: Path, model) -> None:
    """The kept weights, replaced atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    partial = ckpt_dir / "best.tmp.weights.h5"
    model.save_weights(partial)
    partial.replace(ckpt_dir / "best.weights.h5")


# ----------------------------------------------------------------------------- the loop


@dataclass
class Epoch:
    """One epoch of the run's schedule."""

    index: int  # of the run, from 0
    stage: str = "supervised"  # history.csv's stage column
    lr: float | None = None  # assigned before the epoch; None: the optimizer's own schedule
    validated: bool = True  # a stage that does not fit the classifier has nothing to validate
    before: Callable[[], None] | None = None  # e.g. the staged trainer's set_stage


FitEpoch = Callable[[int], dict[str, Any]]


def run_epochs(
    record: Record,
    ckpt_dir: Path,
    trainable,
    optimizer,
    schedule: Sequence[Epoch],
    fit_epoch: FitEpoch,
    keep_weights: str = "best",
    stop: Callable[[], str | None] | None = None,
) -> dict:
    """Train from the last checkpoint on; returns the checkpoint state at the end.

    ``fit_epoch(epoch)`` trains one epoch and returns its logs (loss, accuracy, val_loss,
    val_accuracy; anything else is kept in the returned ``rows``, not in history.csv); a true
    ``stopped`` in them ends the run after that epoch is recorded. ``stop()`` is asked before each
    epoch: a reason (a string) ends the run there. The state's ``stop_reason`` says why it ended.
    """
    state = restore_checkpoint(ckpt_dir, trainable, optimizer) or {
        "epoch": -1,
        "best_val_accuracy": -1.0,
        "best_epoch": -1,
    }
    history = record.history()[: state["epoch"] + 1]
    rows: list[dict] = []
    total_epochs = len(schedule)
    started, first_epoch = time.time(), state["epoch"] + 1
    state["stop_reason"] = "epochs"
    for epoch in schedule:
        if epoch.index < first_epoch:
            continue
        reason = stop() if stop is not None else None
        if reason:
            state["stop_reason"] = reason
            break
        if epoch.before is not None:
            epoch.before()
        if epoch.lr is not None:
            optimizer.learning_rate.assign(epoch.lr)
        tick = time.time()
        log.info("epoch %d/%d (lr %s)", epoch.index + 1, total_epochs, epoch.lr or "scheduled")
        logs = fit_epoch(epoch.index)
        # After the epoch: a schedule's rate is the one its last step used.
        lr = epoch.lr if epoch.lr is not None else float(np.asarray(optimizer.learning_rate))
        row = {
            **logs,
            "epoch": epoch.index + 1,
            "learning_rate": lr,
            "seconds": round(time.time() - tick, 2),
            "stage": epoch.stage,
        }
        row.pop("stopped", None)
        history.append(row)
        rows.append(row)
        record.write_history(history)
        # Without a validation part (tiny datasets) the latest epoch counts as the best.
        val_accuracy = logs.get("val_accuracy")
        val_accuracy = float(epoch.index) if val_accuracy is None else val_accuracy
        improved = keeps_epoch(keep_weights, val_accuracy, state["best_val_accuracy"])
        if epoch.validated and improved:
            state.update(best_val_accuracy=val_accuracy, best_epoch=epoch.index + 1)
            save_best(ckpt_dir, trainable)
        state["epoch"] = epoch.index
        save_checkpoint(ckpt_dir, epoch.index, trainable, optimizer, state)
        per_epoch = (time.time() - started) / (epoch.index + 1 - first_epoch)
        remaining = per_epoch * (total_epochs - epoch.index - 1)
        record.update(epochs_done=epoch.index + 1, eta_s=round(remaining, 1))
        if logs.get("stopped"):
            state["stop_reason"] = "stopped mid-epoch"
            break
    state["rows"] = rows
    return state


def fit_logs(fitted) -> dict[str, float]:
    """The last epoch's values of a ``model.fit`` History."""
    return {k: float(v[-1]) for k, v in fitted.history.items()}
