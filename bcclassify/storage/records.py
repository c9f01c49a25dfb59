"""Typed records of the store: a training run's summary and an installed model's card.

These are the only readers of ``model_store/runs/<id>/`` summaries (run.json, config.json and
metrics.json's headline) and of ``model_store/models/<name>/card.json``. Both keep every key they
do not know, in the order read, so ``to_json`` gives back what ``from_json`` was given: cards
carry many optional sections (calibration, novelty, faithfulness, adaptation, …) and are
checksummed, so a card read and written again must not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bcclassify.storage.store import (
    REPO_ROOT,
    default_model_name,
    initialisation_summary,
    models_dir,
    read_json,
    run_is_alive,
    runs_dir,
)


def mean_or_value(value: Any) -> float | None:
    """A headline figure: a cross-validation summary's mean, or the plain value of one split."""
    if isinstance(value, Mapping):
        return value.get("mean")
    return value


def headline(metrics: Mapping) -> dict[str, float | None]:
    """A metrics.json's headline figures, plain values (the fold mean for a CV run)."""
    summary = metrics.get("summary", metrics)
    return {key: mean_or_value(value) for key, value in summary.items()}


# ----------------------------------------------------------------------------- runs


@dataclass
class RunSummary:
    """One training run as ``list --json`` prints it (one row of ``store.list_runs``)."""

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

    @classmethod
    def read(cls, folder: Path) -> RunSummary | None:
        """The summary of the run in ``folder`` (None: no readable run.json)."""
        run = read_json(folder / "run.json")
        if not isinstance(run, dict):
            return None
        config = read_json(folder / "config.json", {}) or {}
        metrics = read_json(folder / "metrics.json", {}) or {}
        figures = headline(metrics)
        return cls(
            run_id=folder.name,
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
            smote=config.get("smote"),
            augment=config.get("augment"),
            shuffle=config.get("shuffle"),
            test_accuracy=figures.get("accuracy"),
            macro_f1=figures.get("macro_f1"),
            duration_s=metrics.get("duration_s") or run.get("duration_s"),
            created=run.get("created"),
            note=config.get("note", ""),
            initialisation=initialisation_summary(_initialisation(folder, run)),
            init_from=run.get("init_from"),
            has_weights=(folder / "model.keras").is_file(),
        )

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


def _initialisation(folder: Path, run: Mapping) -> Mapping | None:
    """How the run's model was initialised; a cross-validated run records it in each fold."""
    if run.get("initialisation") is not None:
        return run["initialisation"]
    first_fold = read_json(folder / "fold-1" / "run.json", {}) or {}
    return first_fold.get("initialisation")


def run_summaries() -> list[RunSummary]:
    """Every run record in the store, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = [RunSummary.read(folder) for folder in sorted(root.iterdir())]
    runs = [run for run in found if run is not None]
    runs.sort(key=lambda r: r.created or "", reverse=True)
    return runs


# ----------------------------------------------------------------------------- model cards


@dataclass
class ModelCard:
    """An installed model's card.json: the fields read by name, every other section kept."""

    name: str | None = None
    architecture: str | None = None
    description: str | None = None
    image_size: int | None = None
    center_crop: float | None = None
    class_names: list[str] | None = None
    explain_layers: list[str] | None = None
    low_confidence_threshold: float | None = None
    training_run: str | None = None
    initialisation: dict | None = None
    training_data: dict | None = None
    training_config: dict | None = None
    test_metrics: dict | None = None
    test_time_views: list[str] | None = None
    parameters: int | None = None
    size_mb: float | None = None
    files_sha256: dict[str, str] | None = None
    # Every other key of the card (calibration, novelty, faithfulness, …), as read.
    sections: dict[str, Any] = field(default_factory=dict)
    # The card's keys in file order, so a card written back keeps its layout.
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def _typed(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("sections", "keys"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        typed = cls._typed()
        return cls(
            **{k: v for k, v in data.items() if k in typed},
            sections={k: v for k, v in data.items() if k not in typed},
            keys=tuple(data),
        )

    def to_json(self) -> dict[str, Any]:
        """The card as card.json holds it: keys in the order read, new ones after them.

        A field that is None and was not in the card stays absent, so no key is added.
        """
        values = {k: getattr(self, k) for k in self._typed()}
        values = {k: v for k, v in values.items() if v is not None or k in self.keys}
        values.update(self.sections)
        out = {k: values[k] for k in self.keys if k in values}
        out.update((k, v) for k, v in values.items() if k not in out)
        return out

    @classmethod
    def read(cls, folder: Path) -> ModelCard | None:
        """``folder/card.json`` (None when missing or not a JSON object)."""
        card = read_json(folder / "card.json")
        return cls.from_json(card) if isinstance(card, dict) else None

    def get(self, key: str, default: Any = None) -> Any:
        """Any key of the card as written, typed or not (for the optional sections)."""
        return self.to_json().get(key, default)

    @property
    def accuracy(self) -> float | None:
        return (self.test_metrics or {}).get("accuracy")

    @property
    def macro_f1(self) -> float | None:
        return (self.test_metrics or {}).get("macro_f1")

    @property
    def views(self) -> list[str]:
        """The test-time views the model averages (the image as given when none)."""
        return list(self.test_time_views or ["identity"])


def installed_cards() -> dict[str, ModelCard]:
    """Installed models by folder name, the default first, then by name."""
    root = models_dir()
    if not root.is_dir():
        return {}
    cards = {}
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("."):  # a model being installed (promote's staging folder)
            continue
        card = ModelCard.read(folder)
        if card is not None:
            card.name = folder.name  # the folder is what predict --model names
            cards[folder.name] = card
    default = default_model_name()
    return {n: cards[n] for n in sorted(cards, key=lambda n: (n != default, n))}


def bench_record(name: str) -> dict:
    """An installed model's bench.json (``bench --save``), or {} when it was not measured."""
    return read_json(models_dir() / name / "bench.json", {}) or {}
