"""The tables of runs, installed models and predictions, for the command line and the pages.

Rows are built here once: ``python -m bcclassify list --markdown``, the Training runs page and
the Model comparison leaderboard show the same columns with the same words, best test accuracy
first, and :data:`MISSING` wherever a value is unknown. Prediction rows are the columns of
``predict``'s CSV, which the app's batch export also writes.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

import pandas as pd

from bcclassify import CLASS_LABELS
from bcclassify.data.imaging import input_label
from bcclassify.storage.cards import ModelCard, bench_record, installed_cards
from bcclassify.storage.runs import RunSummary, run_summaries
from bcclassify.storage.store import default_model_name, initialisation_summary

MISSING = "—"  # the one mark for an unknown value, in every table

# Published test accuracies of the reference work; shown apart from what this project measured.
REFERENCE_RESULTS = [
    {"model": "Hybrid InceptionV3 + Xception", "test_accuracy": 0.9851},
    {"model": "Xception", "test_accuracy": 0.9789},
    {"model": "Supervised contrastive learning", "test_accuracy": 0.9635},
]


def class_label(name: str | None) -> str:
    return CLASS_LABELS.get(name or "", name or MISSING)


def percent(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{100 * value:.{digits}f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def input_px(image_size: int | None, center_crop: float | None) -> str:
    return input_label(image_size, center_crop) if image_size else MISSING


def split_label(
    folds: int | None, limit_per_class: int | None = None, train_per_class: int | None = None
) -> str:
    """How a run was tested: K-fold cross-validation or the stratified 70/30 split, and what
    was thinned: the data before splitting, or only the training part."""
    label = f"{folds}-fold CV" if folds else "70/30"
    if limit_per_class:
        label += f" of ≤{limit_per_class} a class"
    if train_per_class:
        label += f", trained on ≤{train_per_class} a class"
    return label


def _best_first(rows: list[dict], key: str = "test accuracy") -> list[dict]:
    """Best test accuracy first, rows without a score last (stable otherwise)."""
    return sorted(rows, key=lambda r: (r[key] is None, -(r[key] or 0.0)))


def _summary(run: RunSummary | Mapping[str, Any]) -> RunSummary:
    return run if isinstance(run, RunSummary) else RunSummary.from_json(run)


# ----------------------------------------------------------------------------- rows


def run_rows(runs: Iterable[RunSummary | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run, best first; scores and counts as numbers, None where unknown."""
    rows = []
    for run in map(_summary, runs):
        rows.append(
            {
                "run id": run.run_id,
                "test accuracy": run.test_accuracy,
                "macro-F1": run.macro_f1,
                "architecture": run.arch,
                "input px": input_px(run.image_size, run.center_crop),
                "initialisation": run.initialisation,
                "epochs": run.epochs,
                "split": split_label(run.folds, run.limit_per_class, run.train_per_class),
                "augmentation": bool(run.augment),
                "SMOTE": bool(run.smote),
                "shuffle": bool(run.shuffle),
                "status": run.state,
                "duration": run.duration_s,
                "created": run.created,
                "note": run.note or None,
                "parameters": run.parameters,
                "latency ms": run.forward_s,  # one forward pass (bench --run), not as served
            }
        )
    return _best_first(rows)


def model_rows(
    cards: Mapping[str, ModelCard],
    benches: Mapping[str, Mapping] | None = None,
    default: str | None = None,
) -> list[dict[str, Any]]:
    """One row per installed model with its bench figures (``bench --save``), best first."""
    benches = benches or {}
    rows = []
    for name, card in cards.items():
        bench = benches.get(name) or {}
        rows.append(
            {
                "model": name,
                "default": name == default,
                "architecture": card.architecture,
                "input px": input_px(card.image_size, card.center_crop),
                "test accuracy": card.accuracy,
                "macro-F1": card.macro_f1,
                "size MB": card.size_mb,
                "parameters": card.parameters,
                "latency ms": bench.get("predict_single_s"),
                "maps ms": bench.get("explain_single_s"),
                "batch img/s": bench.get("predict_batch_img_per_s"),
                "views averaged": len(card.views),
                "initialisation": initialisation_summary(card.initialisation),
                "training run": card.training_run,
            }
        )
    return _best_first(rows)


# How each column is written as text; None is always MISSING.
FORMATS: dict[str, Callable[[Any], str]] = {
    "test accuracy": lambda v: percent(v, 2),
    "macro-F1": lambda v: percent(v, 2),
    "size MB": lambda v: f"{v:.1f}",
    "parameters": lambda v: f"{v:,}",
    "latency ms": lambda v: f"{1000 * v:.0f}",
    "maps ms": lambda v: f"{1000 * v:.0f}",
    "duration": duration,
    "training time": duration,
    "augmentation": lambda v: "yes" if v else "no",
    "SMOTE": lambda v: "yes" if v else "no",
    "shuffle": lambda v: "yes" if v else "no",
}


def as_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows' ``columns`` as the tables write them."""
    return [
        {c: MISSING if row.get(c) is None else FORMATS.get(c, str)(row[c]) for c in columns}
        for row in rows
    ]


# ----------------------------------------------------------------------------- pages

RUNS_PAGE_COLUMNS = (
    "run id", "test accuracy", "macro-F1", "architecture", "input px", "initialisation", "epochs",
    "split", "SMOTE", "augmentation", "shuffle", "status", "duration", "created", "note",
)  # fmt: skip
# Kept as numbers or booleans on the runs page: the page sorts and filters on them.
_RAW = ("test accuracy", "macro-F1", "epochs", "SMOTE", "augmentation", "shuffle")


def runs_table(runs: Iterable[RunSummary | Mapping[str, Any]]) -> pd.DataFrame:
    """The Training runs page's table: every run, best test accuracy first, unscored last."""
    rows = run_rows(runs)
    text = as_text(rows, RUNS_PAGE_COLUMNS)
    return pd.DataFrame(
        [{c: row[c] if c in _RAW else t[c] for c in RUNS_PAGE_COLUMNS}
         for row, t in zip(rows, text)],
        columns=list(RUNS_PAGE_COLUMNS),
    )  # fmt: skip


LEADERBOARD_COLUMNS = (
    "kind", "name", "architecture", "input px", "test accuracy", "macro-F1", "size MB",
    "parameters", "latency ms", "maps ms", "training time", "initialisation", "source",
)  # fmt: skip


def training_times(runs: Iterable[RunSummary]) -> dict[str, float | None]:
    """Each run's wall time plus that of the runs it continued (``--init-from``, followed back):
    a stage-2 run of progressive resizing cost its stage 1 too. None when a run in the chain is
    unrecorded or has no duration, since a partial sum would understate the cost."""
    by_id = {r.run_id: r for r in runs}
    totals: dict[str, float | None] = {}
    for run_id in by_id:
        total, seen, current = 0.0, set(), by_id[run_id]
        while True:
            if current.duration_s is None or current.run_id in seen:  # unknown, or a cycle
                total = None
                break
            seen.add(current.run_id)
            total += current.duration_s
            if not current.init_from:
                break
            current = by_id.get(current.init_from)
            if current is None:
                total = None
                break
        totals[run_id] = total
    return totals


def leaderboard_rows(
    cards: Mapping[str, ModelCard],
    runs: Iterable[RunSummary],
    benches: Mapping[str, Mapping] | None = None,
    default: str | None = None,
) -> list[dict[str, Any]]:
    """Installed models and finished runs in one list, best test accuracy first; a model's
    training time is its training run's (wall time on the machine that ran it), with the runs
    that run continued (``training_times``)."""
    runs = list(runs)
    finished = [r for r in runs if r.finished]
    durations = training_times(runs)
    rows = [
        {
            **row,
            "kind": "model",
            "name": row["model"] + (" (default)" if row["default"] else ""),
            "source": row["training run"],
            "training time": durations.get(row["training run"] or ""),
        }
        for row in model_rows(cards, benches, default)
    ]
    rows += [
        {
            **row,
            "kind": "run",
            "name": row["run id"],
            "source": row["split"],
            "training time": durations.get(row["run id"]),
        }
        for row in run_rows(finished)
    ]
    return _best_first(rows)


def leaderboard() -> pd.DataFrame:
    """The Model comparison page's leaderboard, from the store."""
    cards = installed_cards()
    rows = leaderboard_rows(
        cards, run_summaries(), {n: bench_record(n) for n in cards}, default_model_name()
    )
    return pd.DataFrame(as_text(rows, LEADERBOARD_COLUMNS), columns=list(LEADERBOARD_COLUMNS))


def reference_table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": r["model"],
                "test accuracy": percent(r["test_accuracy"], 2),
                "source": "published by the reference work (not measured here)",
            }
            for r in REFERENCE_RESULTS
        ]
    )


# ----------------------------------------------------------------------------- markdown

MARKDOWN_MODEL_COLUMNS = (
    "model", "architecture", "input px", "test accuracy", "macro-F1", "size MB", "latency ms",
    "maps ms", "batch img/s", "views averaged", "training run",
)  # fmt: skip
MARKDOWN_RUN_COLUMNS = (
    "run id", "architecture", "input px", "initialisation", "epochs", "split", "augmentation",
    "SMOTE", "shuffle", "test accuracy", "macro-F1", "parameters", "latency ms", "duration",
)  # fmt: skip


def _markdown(columns: Sequence[str], rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown_tables(
    runs: Iterable[RunSummary | Mapping[str, Any]],
    cards: Mapping[str, ModelCard],
    benches: Mapping[str, Mapping] | None = None,
    default: str | None = None,
) -> str:
    """The installed models with their bench, then the finished runs (``list --markdown``)."""
    models = model_rows(cards, benches, default)
    model_text = as_text(models, MARKDOWN_MODEL_COLUMNS)
    for row, text in zip(models, model_text):
        text["model"] = f"**{row['model']}** (default)" if row["default"] else row["model"]
        if row["training run"]:
            text["training run"] = f"`{row['training run']}`"
    finished = run_rows(r for r in map(_summary, runs) if r.finished)
    run_text = as_text(finished, MARKDOWN_RUN_COLUMNS)
    for text in run_text:
        text["run id"] = f"`{text['run id']}`"
    return (
        _markdown(MARKDOWN_MODEL_COLUMNS, model_text)
        + "\n\n"
        + _markdown(MARKDOWN_RUN_COLUMNS, run_text)
    )


# ----------------------------------------------------------------------------- predictions

PREDICT_HEADER = ["path", "label", "confidence", "flag", "error"]


def prediction_rows(predictions: Iterable, class_names: Sequence[str]) -> list[dict[str, str]]:
    """``predict``'s CSV rows: a refused file keeps its path and says why in one line."""
    rows = []
    for pred in predictions:
        row = {"path": pred.path, "label": "", "confidence": "", "flag": pred.flag, "error": ""}
        if pred.ok:
            row.update(label=pred.label, confidence=f"{pred.confidence:.6f}")
            row.update({c: f"{p:.6f}" for c, p in zip(class_names, pred.probabilities)})
        else:
            row["error"] = " ".join(pred.error.split())  # always one line
            row.update({c: "" for c in class_names})
        rows.append(row)
    return rows


def write_prediction_csv(
    rows: list[dict], class_names: Sequence[str], stream: IO[str], header: bool = True
) -> None:
    writer = csv.DictWriter(
        stream, fieldnames=PREDICT_HEADER + list(class_names), lineterminator="\n"
    )
    if header:
        writer.writeheader()
    writer.writerows(rows)
