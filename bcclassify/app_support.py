"""Presentation helpers for the Streamlit app: cached loaders, store readers, plotly figures.

Nothing here trains or classifies: it calls the library and shapes what comes back for display.
The figure builders are pure functions of their inputs, so they are tested without a browser.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from . import CLASS_LABELS, CLASS_NAMES
from .imaging import input_label
from .metrics import classification_metrics, per_class_scores, row_normalize
from .report import spreadsheet_safe
from .reviews import DATA_DIR_ENV
from .store import (
    REPO_ROOT,
    default_model_name,
    initialisation_summary,
    list_models,
    list_runs,
    models_dir,
    read_csv,
    read_json,
    run_state,
    runs_dir,
    sha256_file,
    store_root,
)

EXAMPLES_DIR = REPO_ROOT / "tests" / "data" / "pbc"
EXAMPLE_CREDIT = (
    "Example cells: PBC dataset (Acevedo et al., 2020), Hospital Clinic of Barcelona, CC BY 4.0"
)
TRAIN_HINT = "python -m bcclassify train --arch hybrid --data PATH/TO/PBC --epochs 10"
PROMOTE_HINT = "python -m bcclassify promote RUN_ID --name NAME --default"
BENCH_HINT = "python -m bcclassify bench --model NAME --save"
MISSING = "—"

# Published test accuracies of the reference work; shown apart from what this project measured.
REFERENCE_RESULTS = [
    {"model": "Hybrid InceptionV3 + Xception", "test_accuracy": 0.9851},
    {"model": "Xception", "test_accuracy": 0.9789},
    {"model": "Supervised contrastive learning", "test_accuracy": 0.9635},
]

# Calm clinical palette, one colour per class in canonical order (colour-blind friendly).
CLASS_COLOURS = dict(
    zip(
        CLASS_NAMES,
        ("#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#55a868", "#937860", "#64b5cd", "#8c8c8c"),
    )
)


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


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class CellInput:
    """One image the user gave the app: its display name, bytes and content hash."""

    name: str
    data: bytes = field(repr=False)
    sha256: str

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> CellInput:
        return cls(name, data, hashlib.sha256(data).hexdigest())


def results_csv(predictions, class_names) -> str:
    """A batch's results with the columns of ``python -m bcclassify predict``, formula-safe.

    File names come from the browser, so cells a spreadsheet would run as formulas are escaped.
    """
    from .cli import prediction_rows, write_prediction_csv

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


def app_secrets() -> dict:
    """The app's secrets (``.streamlit/secrets.toml``), or none when there is no such file."""
    try:
        return dict(st.secrets) if st.secrets.load_if_toml_exists() else {}
    except Exception:  # noqa: BLE001 - an unreadable secrets file must not stop the app
        return {}


def oidc_providers(secrets: dict) -> list[str | None] | None:
    """OpenID Connect providers of an ``[auth]`` section: ``[None]`` for a single unnamed one,
    the names of ``[auth.NAME]`` sub-sections otherwise; None when log-in is not configured."""
    auth = secrets.get("auth")
    if not isinstance(auth, Mapping) or not auth:
        return None
    named = [k for k, v in auth.items() if isinstance(v, Mapping)]
    return named or [None]


def oidc_reviewer(user: Mapping) -> str | None:
    """The reviewer name for a user logged in through OpenID Connect (e-mail, else name)."""
    if user.get("is_logged_in") is not True:
        return None
    return str(user.get("email") or user.get("name") or user.get("sub") or "") or None


def card_sha256(name: str) -> str:
    """sha256 of the installed model's card.json ('' when it cannot be read)."""
    try:
        return sha256_file(models_dir() / name / "card.json")
    except OSError:
        return ""


def configured_data_dir(secrets: dict | None = None) -> Path:
    """Where the review log lives: $BCCLASSIFY_DATA_DIR, else a secret of that name, else ~."""
    value = os.environ.get(DATA_DIR_ENV) or (secrets or {}).get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".bcclassify"


# ----------------------------------------------------------------------------- models


def model_cards() -> dict[str, dict]:
    """Installed models by name, the default first."""
    cards = {row["name"]: row for row in list_models()}
    default = default_model_name()
    order = sorted(cards, key=lambda n: (n != default, n))
    return {name: cards[name] for name in order}


def bench_record(name: str) -> dict:
    return read_json(models_dir() / name / "bench.json", {}) or {}


def leaderboard() -> pd.DataFrame:
    """Installed models and finished runs with their measured scores; '—' where unknown."""
    rows, accuracy = [], []
    for name, card in model_cards().items():
        metrics = card.get("test_metrics") or {}
        accuracy.append(metrics.get("accuracy"))
        bench = bench_record(name)
        latency = bench.get("predict_single_s")
        explain = bench.get("explain_single_s")
        rows.append(
            {
                "kind": "model",
                "name": name + (" (default)" if card.get("default") else ""),
                "architecture": card.get("architecture"),
                "input px": input_label(card.get("image_size"), card.get("center_crop")),
                "test accuracy": percent(metrics.get("accuracy"), 2),
                "macro-F1": percent(metrics.get("macro_f1"), 2),
                "size MB": MISSING if card.get("size_mb") is None else f"{card['size_mb']:.1f}",
                "parameters": f"{card['parameters']:,}" if card.get("parameters") else MISSING,
                "latency ms": MISSING if latency is None else f"{1000 * latency:.0f}",
                "Grad-CAM ms": MISSING if explain is None else f"{1000 * explain:.0f}",
                "initialisation": initialisation_summary(card.get("initialisation")) or MISSING,
                "source": card.get("training_run") or MISSING,
            }
        )
    for run in list_runs():
        if run.get("status") != "finished":
            continue
        accuracy.append(run.get("test_accuracy"))
        rows.append(
            {
                "kind": "run",
                "name": run["run_id"],
                "architecture": run.get("arch"),
                "input px": input_label(run.get("image_size"), run.get("center_crop")),
                "test accuracy": percent(run.get("test_accuracy"), 2),
                "macro-F1": percent(run.get("macro_f1"), 2),
                "size MB": MISSING,
                "parameters": MISSING,
                "latency ms": MISSING,
                "Grad-CAM ms": MISSING,
                "initialisation": run.get("initialisation") or MISSING,
                "source": f"{run['folds']}-fold CV" if run.get("folds") else "train/test split",
            }
        )
    # Best first; the shown accuracy is text, so the order comes from the numbers.
    order = sorted(range(len(rows)), key=lambda i: -(accuracy[i] or 0.0))
    return pd.DataFrame([rows[i] for i in order])


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


# ----------------------------------------------------------------------------- runs


def runs_table(runs: list[dict]) -> pd.DataFrame:
    """One row per run with the columns the Training runs page shows."""
    rows = []
    for run in runs:
        rows.append(
            {
                "run id": run["run_id"],
                "test accuracy": run.get("test_accuracy"),
                "macro-F1": run.get("macro_f1"),
                "architecture": run.get("arch"),
                "input px": input_label(run.get("image_size"), run.get("center_crop")),
                "epochs": run.get("epochs"),
                "folds": run.get("folds") or 0,
                "SMOTE": bool(run.get("smote")),
                "augmentation": bool(run.get("augment")),
                "shuffle": bool(run.get("shuffle")),
                "initialisation": run.get("initialisation") or "",
                "status": run_state(run),
                "duration": duration(run.get("duration_s")),
                "created": run.get("created"),
                "note": run.get("note") or "",
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # What a reader compares first: the best runs on top, runs without a score last.
    return frame.sort_values(
        "test accuracy", ascending=False, na_position="last", kind="stable"
    ).reset_index(drop=True)


def table_height(rows: int) -> int:
    """Pixels for st.dataframe to show ``rows`` rows and the header without scrolling."""
    return 35 * (rows + 1) + 3


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
class RunRecord:
    """Everything a run folder holds, read for display (CV folds included)."""

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


def _history_frame(path: Path) -> pd.DataFrame:
    rows = read_csv(path)
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def load_run(run_id: str) -> RunRecord:
    folder = runs_dir() / run_id
    folds = []
    for fold_dir in sorted(folder.glob("fold-*"), key=lambda p: int(p.name.split("-")[-1])):
        folds.append(
            {
                "fold": int(fold_dir.name.split("-")[-1]),
                "folder": fold_dir,
                "metrics": read_json(fold_dir / "metrics.json", {}) or {},
                "history": _history_frame(fold_dir / "history.csv"),
            }
        )
    return RunRecord(
        run_id=run_id,
        folder=folder,
        run=read_json(folder / "run.json", {}) or {},
        config=read_json(folder / "config.json", {}) or {},
        environment=read_json(folder / "environment.json", {}) or {},
        metrics=read_json(folder / "metrics.json", {}) or {},
        history=_history_frame(folder / "history.csv"),
        folds=folds,
    )


def run_progress(record: RunRecord) -> tuple[float, str]:
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


def learning_curves(records: list[RunRecord]) -> dict[str, pd.DataFrame]:
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


def fold_table(record: RunRecord) -> pd.DataFrame:
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


def evaluated_runs() -> list[dict]:
    """Runs with a confusion matrix to show (finished, with metrics)."""
    return [r for r in list_runs() if (runs_dir() / r["run_id"] / "metrics.json").is_file()]


def model_figures(name: str) -> RunRecord | None:
    """An installed model's own test figures, in the shape the run pages read (None: none).

    A model promoted with test-time views was scored as served: its test_predictions.csv holds
    its own answers, and the matrix and per-class scores come from that file. Otherwise the card's
    figures are its training run's single-view ones, so the run's predictions are the model's.
    """
    folder = models_dir() / name
    card = read_json(folder / "card.json", {}) or {}
    run_id = card.get("training_run")
    run = load_run(run_id) if run_id and (runs_dir() / run_id).is_dir() else None
    names = list(card.get("class_names") or CLASS_NAMES)
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
    return RunRecord(
        run_id=name,
        folder=folder,
        run=run.run if run else {},
        config=run.config if run else {},
        environment={},
        metrics={
            **metrics,
            "class_names": names,
            "test_time_views": card.get("test_time_views") or ["identity"],
        },
        history=pd.DataFrame(),
        folds=[],
        predictions_file=predictions,
        kind="model",
    )


def figure_sources() -> list[str]:
    """Choices for the figure pages: installed models (their own figures), then evaluated runs."""
    models = [f"model: {name}" for name in model_cards() if model_figures(name) is not None]
    return models + [f"run: {r['run_id']}" for r in evaluated_runs()]


def load_figures(choice: str) -> RunRecord:
    """The record behind a ``figure_sources`` choice."""
    kind, name = choice.split(": ", 1)
    record = model_figures(name) if kind == "model" else load_run(name)
    if record is None:
        raise LookupError(f"no test figures for {choice}")
    return record


def figures_caption(record: RunRecord) -> str:
    """Whose figures a page shows: a model's as served, or a run's."""
    if record.kind != "model":
        return f"Training run {record.run_id}: its test split, the image as given."
    views = record.metrics.get("test_time_views") or ["identity"]
    how = "as served" + (f", {len(views)} views averaged" if len(views) > 1 else "")
    run = record.run.get("run_id") or record.config.get("run_id") or "its training run"
    return f"Installed model {record.run_id} ({how}), on the test split of {run}."


def run_confusion(record: RunRecord, fold: int | None = None) -> np.ndarray:
    """The run's test confusion matrix; for CV, one fold's or (fold None) the sum over folds."""
    metrics = record.metrics
    if fold is not None:
        metrics = next(f["metrics"] for f in record.folds if f["fold"] == fold)
    return np.asarray(metrics.get("confusion_matrix") or np.zeros((8, 8)), dtype=np.int64)


def run_predictions(record: RunRecord, fold: int | None = None) -> pd.DataFrame:
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


def per_class_table(record: RunRecord) -> pd.DataFrame:
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


# ----------------------------------------------------------------------------- figures

_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=40, b=10))


def probability_figure(probabilities, class_names=CLASS_NAMES, threshold: float | None = None):
    """Horizontal bars of all class probabilities, the top class highlighted."""
    probs = np.asarray(probabilities, dtype=float)
    top = int(np.argmax(probs))
    labels = [class_label(n) for n in class_names]
    colours = ["#2a6f97" if i == top else "#a9c6d9" for i in range(len(probs))]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=labels,
            orientation="h",
            marker_color=colours,
            text=[f"{100 * p:.1f}%" for p in probs],
            textposition="outside",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    if threshold is not None:
        fig.add_vline(
            x=threshold,
            line_dash="dot",
            line_color="#b5651d",
            annotation_text="low-confidence threshold",
            annotation_position="top",
        )
    fig.update_layout(
        **_LAYOUT,
        height=320,
        title="Class probabilities",
        xaxis=dict(range=[0, 1.12], tickformat=".0%"),
        yaxis=dict(autorange="reversed"),
    )
    return fig


def count_figure(rows: list[dict], title: str):
    """Bars of a differential count (rows as in ``report.differential_count``)."""
    fig = go.Figure(
        go.Bar(
            x=[class_label(r["class"]) for r in rows],
            y=[r["count"] for r in rows],
            marker_color=[CLASS_COLOURS.get(r["class"], "#888") for r in rows],
            text=[f"{r['percent']:.1f}%" for r in rows],
            textposition="outside",
        )
    )
    fig.update_layout(**_LAYOUT, height=300, title=title, yaxis_title="cells")
    return fig


def learning_curve_figure(curves: dict[str, pd.DataFrame]):
    """Loss and accuracy per epoch, training solid and validation dashed, one colour per run."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    palette = ["#2a6f97", "#c44e52", "#55a868", "#8172b3", "#dd8452", "#937860", "#64b5cd"]
    for i, (label, history) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        for col, metric in ((1, "loss"), (2, "accuracy")):
            for prefix, dash, part in (("", "solid", "train"), ("val_", "dash", "val")):
                column = prefix + metric
                if column not in history or history[column].isna().all():
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=history["epoch"],
                        y=history[column],
                        mode="lines+markers",
                        name=f"{label} ({part})",
                        line=dict(color=colour, dash=dash),
                        legendgroup=label,
                        showlegend=col == 1,
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(**_LAYOUT, height=380, legend=dict(orientation="h", y=-0.25))
    return fig


def confusion_figure(matrix, class_names=CLASS_NAMES, normalized: bool = False):
    """Heatmap with true classes on rows and predicted classes on columns."""
    counts = np.asarray(matrix)
    values = row_normalize(counts) if normalized else counts
    labels = [class_label(n) for n in class_names]
    text = [[f"{v:.2f}" if normalized else f"{int(v)}" for v in row] for row in values]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalized else None,
            customdata=counts,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} images<extra></extra>",
        )
    )
    fig.update_layout(
        **_LAYOUT,
        height=520,
        xaxis=dict(title="predicted class", side="bottom"),
        yaxis=dict(title="true class", autorange="reversed"),
    )
    return fig


def per_class_comparison_figure(tables: dict[str, pd.DataFrame], metric: str = "F1"):
    """Grouped bars: one group per class, one bar per run."""
    fig = go.Figure()
    for run_id, table in tables.items():
        classes = table[~table["class"].str.endswith("average")]
        fig.add_trace(go.Bar(x=classes["class"], y=classes[metric], name=run_id))
    fig.update_layout(
        **_LAYOUT,
        barmode="group",
        height=420,
        title=f"{metric} per class",
        yaxis=dict(range=[0, 1.05]),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def store_description() -> str:
    return f"model store: `{store_root()}`"


# ----------------------------------------------------------------------------- cached resources
# The caches live here, not in the pages, so every page shares one loaded copy per server process.
# ``store`` and the card's sha256 are part of each key: the same name in another store, or
# re-promoted with new weights, is another model, so a re-promote is loaded afresh.


@st.cache_resource(show_spinner="Loading TensorFlow and the model (first use only)…", max_entries=4)
def _cached_model(name: str, store: str, card_sha256: str):
    from ._tf import import_tensorflow_quietly
    from .serving import load_model

    import_tensorflow_quietly()
    return load_model(name)


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_explainer(name: str, store: str, card_sha256: str):
    from .explain import Explainer

    return Explainer(_cached_model(name, store, card_sha256))


def cached_model(name: str):
    """The installed model ``name`` from the current store, loaded once per card version."""
    return _cached_model(name, str(store_root()), card_sha256(name))


def cached_explainer(name: str):
    """The Grad-CAM explainer of ``name``, built once per card version."""
    return _cached_explainer(name, str(store_root()), card_sha256(name))


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
    return pd.DataFrame(rows)


def reliability_figure(card: dict):
    """Reliability diagram of the test split before and after calibration (None: no record).

    Each point is a confidence bin: mean shown confidence against the share of right answers;
    a calibrated model lies on the diagonal.
    """
    calibration = card.get("calibration") or {}
    before = calibration.get("reliability_test_before")
    after = calibration.get("reliability_test_after")
    if not before or not after:
        return None
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dot", "color": "#999"},
        )
    )
    for rows, name, colour in ((before, "before", "#c9733d"), (after, "after (shown)", "#2a6f97")):
        fig.add_trace(
            go.Scatter(
                x=[r["confidence"] for r in rows],
                y=[r["accuracy"] for r in rows],
                mode="lines+markers",
                name=f"{name}",
                marker={"size": [6 + 4 * np.log10(1 + r["count"]) for r in rows], "color": colour},
                customdata=[r["count"] for r in rows],
                hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{customdata} cells",
            )
        )
    fig.update_layout(
        xaxis_title="shown confidence (bin mean)",
        yaxis_title="share of right answers",
        height=420,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title=f"Test split, temperature {calibration.get('temperature', 1.0):.3f}",
    )
    fig.update_xaxes(range=[0, 1.02])
    fig.update_yaxes(range=[0, 1.02])
    return fig
