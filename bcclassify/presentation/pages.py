"""Data shaping for the app's pages: run folders, figures' data, page tables, inputs.

Nothing here trains, classifies or draws: it reads the store through the library and shapes what
comes back for display. Streamlit and plotly stay in the top-level ``ui`` package; the tables
shared with the command line are in :mod:`bcclassify.presentation.tables`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bcclassify import CLASS_NAMES, DATASET_CREDIT, EXAMPLES_DIR
from bcclassify.evaluation.metrics import classification_metrics, per_class_scores
from bcclassify.presentation.tables import (
    MISSING,
    class_label,
    duration,
    percent,
    prediction_rows,
    write_prediction_csv,
)
from bcclassify.review.report import spreadsheet_safe
from bcclassify.storage.cards import ModelCard, installed_cards
from bcclassify.storage.runs import RunRecord, run_summaries
from bcclassify.storage.store import (
    REPO_ROOT,
    STORE_ENV,
    default_model_name,
    models_dir,
    read_csv,
    runs_dir,
    sha256_bytes,
    sha256_file,
    store_root,
)

EXAMPLE_CREDIT = f"Example cells: {DATASET_CREDIT}"
TRAIN_HINT = "python -m bcclassify train --arch hybrid --data PATH/TO/PBC --epochs 10"
PROMOTE_HINT = "python -m bcclassify promote RUN_ID --name NAME --default"
BENCH_HINT = "python -m bcclassify bench --model NAME --save"
BENCH_RUNS_HINT = "python -m bcclassify bench --run all"
BENCH_RUNS_HINT = "python -m bcclassify bench --run all"


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class CellInput:
    """One image the user gave the app: its display name, bytes and content hash."""

    name: str
    data: bytes = field(repr=False)
    sha256: str

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> CellInput:
        return cls(name, data, sha256_bytes(data))


def results_csv(predictions, class_names) -> str:
    """A batch's results with the columns of ``python -m bcclassify predict``, formula-safe.

    File names come from the browser, so cells a spreadsheet would run as formulas are escaped.
    """
    rows = [
        {k: spreadsheet_safe(v) for k, v in row.items()}
        for row in prediction_rows(predictions, class_names)
    ]
    buffer = io.StringIO()
    write_prediction_csv(rows, class_names, buffer)
    return buffer.getvalue()


def example_images() -> list[Path]:
    """The bundled example cells (two real PBC images per class), in class order."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return [p for name in CLASS_NAMES for p in sorted((EXAMPLES_DIR / name).glob("*.jpg"))]


def example_label(path: Path) -> str:
    return f"{class_label(path.parent.name)} · {path.name}"


def unique_inputs(inputs: list[CellInput]) -> list[CellInput]:
    """Drop repeats of the same file (same name and content), keeping the first."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for item in inputs:
        if (item.name, item.sha256) not in seen:
            seen.add((item.name, item.sha256))
            kept.append(item)
    return kept


def oidc_providers(secrets: dict) -> list[str | None] | None:
    """OpenID Connect providers of an ``[auth]`` section: ``[None]`` for a single unnamed one,
    the names of ``[auth.NAME]`` sub-sections otherwise; None when log-in is not configured."""
    auth = secrets.get("auth")
    if not isinstance(auth, Mapping) or not auth:
        return None
    named = [k for k, v in auth.items() if isinstance(v, Mapping)]
    return named or [None]


def card_sha256(name: str) -> str:
    """sha256 of the installed model's card.json ('' when it cannot be read)."""
    try:
        return sha256_file(models_dir() / name / "card.json")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- models


def model_cards() -> dict[str, dict]:
    """Installed models by name, the default first: each card as written, with its ``name``
    and whether it is the ``default`` (what the pages read optional sections from)."""
    default = default_model_name()
    return {name: _page_card(card, name == default) for name, card in installed_cards().items()}


def _page_card(card: ModelCard, default: bool) -> dict:
    return {**card.to_json(), "name": card.name, "default": default}


# ----------------------------------------------------------------------------- runs


_MACHINE_PATH = re.compile(r"(?<![\w.~:/-])(?:/|[A-Za-z]:\\)[^\s'\",;]+")


def without_machine_paths(value):
    """A copy of a JSON value whose absolute paths are shown relative to the repository.

    Run records keep the command line and folders of the machine that trained them; a page shows
    them without that machine's layout (paths outside the repository keep only their name).
    """
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(item) for item in value]
    if isinstance(value, str):
        return _MACHINE_PATH.sub(_shown_path, value)
    return value


def _shown_path(match: re.Match) -> str:
    path = Path(match.group(0))
    if path.parts[-2:] == ("bcclassify", "__main__.py"):
        return "python -m bcclassify"
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return f"…/{path.name}"


@dataclass
class RunView:
    """What the run and figure pages show: a run folder read through
    :class:`~bcclassify.storage.runs.RunRecord` (CV folds included), or an installed model's own
    test figures in the same shape (:func:`model_figures`)."""

    run_id: str
    folder: Path
    run: dict
    config: dict
    environment: dict
    metrics: dict
    history: pd.DataFrame
    folds: list[dict]  # {"fold": k, "metrics": ..., "history": DataFrame, "folder": Path}
    # An installed model's figures (see model_figures): its own predictions file, else the run's.
    predictions_file: Path | None = None
    kind: str = "run"  # "run" or "model": whose figures these are

    @property
    def is_cv(self) -> bool:
        return bool(self.folds)

    @property
    def class_names(self) -> list[str]:
        return list(
            self.metrics.get("class_names") or self.config.get("class_names") or CLASS_NAMES
        )


def history_frame(record: RunRecord) -> pd.DataFrame:
    """A run's (or fold's) history.csv as numbers, for the learning-curve figures."""
    frame = pd.DataFrame(record.history_rows())
    for column in frame.columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def load_run(run_id: str) -> RunView:
    """A run of the store, read for display."""
    record = RunRecord.of(run_id)
    folds = [
        {
            "fold": fold.fold,
            "folder": fold.folder,
            "metrics": fold.metrics() or {},
            "history": history_frame(fold),
        }
        for fold in record.folds()
    ]
    return RunView(
        run_id=run_id,
        folder=record.folder,
        run=record.read(),
        config=record.config(),
        environment=record.environment(),
        metrics=record.metrics() or {},
        history=history_frame(record),
        folds=folds,
    )


def run_progress(record: RunView) -> tuple[float, str]:
    """Fraction done and a caption for a run in progress."""
    epochs = int(record.config.get("epochs") or 0)
    done = int(record.run.get("epochs_done") or 0)
    folds = int(record.config.get("folds") or 0)
    text = f"epoch {done}/{epochs}"
    if folds:
        fold = int(record.run.get("current_fold") or 1)
        text = f"fold {fold}/{folds}, " + text
        total, finished = epochs * folds, epochs * (fold - 1) + done
    else:
        total, finished = epochs, done
    eta = record.run.get("eta_s")
    if eta is not None:
        text += f" · about {duration(eta)} left in this {'fold' if folds else 'run'}"
    return (min(finished / total, 1.0) if total else 0.0), text


def learning_curves(records: list[RunView]) -> dict[str, pd.DataFrame]:
    """Histories to overlay, labelled by run (and fold for cross-validation runs)."""
    curves = {}
    for record in records:
        if record.is_cv:
            for fold in record.folds:
                if not fold["history"].empty:
                    curves[f"{record.run_id} · fold {fold['fold']}"] = fold["history"]
        elif not record.history.empty:
            curves[record.run_id] = record.history
    return curves


def fold_table(record: RunView) -> pd.DataFrame:
    """Each fold's accuracy and macro-F1, then mean ± std from the run's summary."""
    rows = [
        {
            "fold": str(f["fold"]),
            "accuracy": percent(f["metrics"].get("accuracy"), 2),
            "macro-F1": percent(f["metrics"].get("macro_f1"), 2),
        }
        for f in record.folds
    ]
    summary = record.metrics.get("summary") or {}

    def mean_std(key: str) -> str:
        value = summary.get(key)
        if not isinstance(value, dict):
            return MISSING
        return f"{100 * value['mean']:.2f} ± {100 * value['std']:.2f}%"

    rows.append(
        {"fold": "mean ± std", "accuracy": mean_std("accuracy"), "macro-F1": mean_std("macro_f1")}
    )
    return pd.DataFrame(rows)


def evaluated_runs() -> list[str]:
    """Ids of the runs with a confusion matrix to show (finished, with metrics), newest first."""
    return [r.run_id for r in run_summaries() if (runs_dir() / r.run_id / "metrics.json").is_file()]


def model_figures(name: str) -> RunView | None:
    """An installed model's own test figures, in the shape the run pages read (None: none).

    A model promoted with test-time views was scored as served: its test_predictions.csv holds
    its own answers, and the matrix and per-class scores come from that file. Otherwise the card's
    figures are its training run's single-view ones, so the run's predictions are the model's.
    """
    folder = models_dir() / name
    card = ModelCard.read(folder) or ModelCard()
    run_id = card.training_run
    run = load_run(run_id) if run_id and (runs_dir() / run_id).is_dir() else None
    names = list(card.class_names or CLASS_NAMES)
    own = folder / "test_predictions.csv"
    if own.is_file():
        rows = [r for r in read_csv(own) if r.get("true") in names and r.get("predicted") in names]
        if not rows:
            return None
        metrics = classification_metrics(
            np.array([names.index(r["true"]) for r in rows]),
            np.array([names.index(r["predicted"]) for r in rows]),
            names,
        )
        predictions = own
    elif run is not None and run.metrics and not run.is_cv:
        metrics, predictions = run.metrics, run.folder / "predictions.csv"
    else:
        return None
    return RunView(
        run_id=name,
        folder=folder,
        run=run.run if run else {},
        config=run.config if run else {},
        environment={},
        metrics={
            **metrics,
            "class_names": names,
            "test_time_views": card.views,
        },
        history=pd.DataFrame(),
        folds=[],
        predictions_file=predictions,
        kind="model",
    )


def figure_sources() -> list[str]:
    """Choices for the figure pages: installed models (their own figures), then evaluated runs."""
    models = [f"model: {name}" for name in model_cards() if model_figures(name) is not None]
    return models + [f"run: {run_id}" for run_id in evaluated_runs()]


def load_figures(choice: str) -> RunView:
    """The record behind a ``figure_sources`` choice."""
    kind, name = choice.split(": ", 1)
    record = model_figures(name) if kind == "model" else load_run(name)
    if record is None:
        raise LookupError(f"no test figures for {choice}")
    return record


def figures_caption(record: RunView) -> str:
    """Whose figures a page shows: a model's as served, or a run's."""
    if record.kind != "model":
        return f"Training run {record.run_id}: its test split, the image as given."
    views = record.metrics.get("test_time_views") or ["identity"]
    how = "as served" + (f", {len(views)} views averaged" if len(views) > 1 else "")
    run = record.run.get("run_id") or record.config.get("run_id") or "its training run"
    return f"Installed model {record.run_id} ({how}), on the test split of {run}."


def run_confusion(record: RunView, fold: int | None = None) -> np.ndarray:
    """The run's test confusion matrix; for CV, one fold's or (fold None) the sum over folds."""
    metrics = record.metrics
    if fold is not None:
        metrics = next(f["metrics"] for f in record.folds if f["fold"] == fold)
    return np.asarray(metrics.get("confusion_matrix") or np.zeros((8, 8)), dtype=np.int64)


def run_predictions(record: RunView, fold: int | None = None) -> pd.DataFrame:
    """predictions.csv rows (every fold's for CV when ``fold`` is None) with a resolved path."""
    if record.predictions_file is not None:
        files = [record.predictions_file]
    elif record.is_cv:
        folds = [f for f in record.folds if fold is None or f["fold"] == fold]
        files = [f["folder"] / "predictions.csv" for f in folds]
    else:
        files = [record.folder / "predictions.csv"]
    frames = [pd.DataFrame(read_csv(path)) for path in files]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["file", "true", "predicted", *record.class_names, "image"])
    frame = pd.concat(frames, ignore_index=True)
    for name in record.class_names:
        if name in frame:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    data_root = Path(record.config.get("data") or ".")
    if not data_root.is_absolute():
        data_root = REPO_ROOT / data_root
    frame["image"] = [
        str(data_root / f) if (data_root / f).is_file() else "" for f in frame["file"]
    ]
    return frame


def per_class_table(record: RunView) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, then macro and weighted averages.

    A cross-validation run stores per-class scores per fold, so they are taken from the confusion
    matrix pooled over its folds.
    """
    names = record.class_names
    per_class = record.metrics.get("per_class")
    if per_class:
        precision = np.array([per_class[n]["precision"] for n in names])
        recall = np.array([per_class[n]["recall"] for n in names])
        f1 = np.array([per_class[n]["f1"] for n in names])
        support = np.array([per_class[n]["support"] for n in names])
    else:
        scores = per_class_scores(run_confusion(record))
        precision, recall, f1 = scores["precision"], scores["recall"], scores["f1"]
        support = scores["support"]
    frame = pd.DataFrame(
        {
            "class": [class_label(n) for n in names],
            "precision": precision,
            "recall": recall,
            "F1": f1,
            "support": support.astype(int),
        }
    )
    total = support.sum()
    weights = support / total if total else np.zeros(len(names))
    averages = pd.DataFrame(
        [
            {
                "class": "macro average",
                "precision": precision.mean(),
                "recall": recall.mean(),
                "F1": f1.mean(),
                "support": int(total),
            },
            {
                "class": "weighted average",
                "precision": float(np.sum(precision * weights)),
                "recall": float(np.sum(recall * weights)),
                "F1": float(np.sum(f1 * weights)),
                "support": int(total),
            },
        ]
    )
    return pd.concat([frame, averages], ignore_index=True)


def shown_store() -> str:
    """The store the app reads as a page shows it: relative to the repository, else ``…/name``,
    never this machine's absolute path."""
    return without_machine_paths(str(store_root()))


def store_description() -> str:
    """Which store the app reads, without this machine's folders."""
    return f"model store: `{shown_store()}`"


def empty_store_note(what: str) -> str:
    """Where a page looked and found nothing (``what``: "No model is installed"), store-relative."""
    return f"{what} in the model store `{shown_store()}` (set by `{STORE_ENV}`)"


TRUST_COLUMNS = (
    "set",
    "cells",
    "ECE before",
    "ECE after",
    "ECE by chance alone",  # what a perfectly calibrated model shows on that many cells
    "Brier after",
    "flagged",
    "unidentified",
    "wrong, unflagged",
    "accuracy of unflagged",
)


def trust_summary(card: dict) -> pd.DataFrame | None:
    """An installed model's calibration and flag figures (from its card), one row per set."""
    calibration, novelty = card.get("calibration"), card.get("novelty")
    if not calibration or not novelty:
        return None
    rows = []
    for key, label in (("validation", "validation split"), ("test", "test split")):
        figures, cal = novelty.get(key) or {}, calibration.get(key) or {}
        rows.append(
            {
                "set": label,
                "cells": figures.get("num_samples"),
                "ECE before": cal.get("ece_before"),
                "ECE after": cal.get("ece_after"),
                "Brier after": cal.get("brier_after"),
                "flagged": figures.get("flagged_fraction"),
                "unidentified": figures.get("unidentified_fraction"),
                "wrong, unflagged": figures.get("wrong_and_unflagged_fraction"),
                "accuracy of unflagged": figures.get("accuracy_of_unflagged"),
            }
        )
    # The card's evaluations are the model as served now (every flag on), on the sets that
    # judge it: the analyser's originals (held out: cells it did not train on) and other labs.
    for key, entry in sorted((card.get("evaluations") or {}).items()):
        trust = entry.get("trust") or {}
        if not trust:
            continue
        rows.append(
            {
                "set": f"{key}, as served now",
                "cells": entry.get("num_samples"),
                "ECE after": trust.get("ece"),
                "ECE by chance alone": (trust.get("ece_noise_floor") or {}).get("median"),
                "Brier after": trust.get("brier"),
                "flagged": trust.get("flagged_fraction"),
                "unidentified": trust.get("unidentified_fraction"),
                "wrong, unflagged": trust.get("wrong_and_unflagged_fraction"),
                "accuracy of unflagged": trust.get("accuracy_of_unflagged"),
            }
        )
    shifted = novelty.get("shifted_cells")
    if shifted:
        rows.append(
            {
                "set": f"another lab ({shifted.get('data')})",
                "cells": shifted.get("num_samples"),
                "flagged": shifted.get("flagged_fraction"),
                "unidentified": shifted.get("unidentified_fraction"),
                "wrong, unflagged": shifted.get("wrong_and_unflagged_fraction"),
                "accuracy of unflagged": shifted.get("accuracy_of_unflagged"),
            }
        )
    noncell = novelty.get("noncell_development_set")
    if noncell:
        rows.append(
            {
                "set": "non-cell images (development set)",
                "cells": noncell.get("num_images"),
                "flagged": noncell.get("flagged_fraction"),
                "unidentified": noncell.get("unidentified_fraction"),
            }
        )
    return pd.DataFrame(rows, columns=TRUST_COLUMNS)
