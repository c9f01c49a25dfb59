"""Model cards: the one card type (:class:`ModelCard`) and the one card writer (:func:`write_card`).

An installed model's ``model_store/models/<name>/card.json`` says what it is, how it was trained
and scored, and the sha256 of every file. :class:`ModelCard` reads the fields used by name and
keeps every other section (calibration, novelty, faithfulness, adaptation, …) and the key order
as read, so a card read and written again is byte-for-byte the same.

Every tool that changes a card (promote, calibrate, faithfulness, adapt) writes it through
:func:`write_card`, which stages and promotes a new version:

1. the current card.json, if any and different, is kept whole as
   ``<models>/.card-history/<name>/<UTC time>-<sha256[:12]>.json`` (beside the model folders,
   not in them, so a model folder holds only the files its card lists). A hidden folder (promote's
   or adapt's staging) keeps none: its card was never installed;
2. the new card is written to a temporary file in the model folder and fsynced (staged);
3. ``os.replace`` puts it over card.json in one step (promoted).

A crash before step 3 leaves the previous card.json whole and in force.

4. ``card.sha256`` beside it is rewritten with the new card's sha256 (``sha256sum`` format, so
   ``sha256sum -c card.sha256`` checks it too). ``files_sha256`` covers every other file, and
   this file covers the card itself: classes, thresholds and temperature are read from the
   card, so a card edited by hand afterwards is refused when the model is loaded
   (:func:`card_seal_problem`). A crash between steps 3 and 4 leaves them disagreeing: the
   model is refused until the tool that wrote the card is run again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bcclassify.storage.store import (
    atomic_write_bytes,
    default_model_name,
    models_dir,
    read_json,
    sha256_bytes,
)

CARD_FILE = "card.json"
CARD_CHECKSUM_FILE = "card.sha256"  # the card's own sha256, written with it by write_card
HISTORY_DIR = ".card-history"  # under models/: hidden, so never taken for an installed model
_ABSENT = object()


class CardError(ValueError):
    """A card.json that is missing, unreadable or not a JSON object; the message says which."""


@dataclass
class ModelCard(Mapping[str, Any]):
    """An installed model's card.json: the fields read by name, every other section kept.

    It is also a read-only mapping of card.json's keys (``card["calibration"]``, ``"novelty" in
    card``, ``dict(card)``), so code reading an optional section needs no second card type.
    """

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
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def typed_fields(cls) -> tuple[str, ...]:
        """The card keys read into named fields (the rest stay in ``sections``)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("sections", "key_order"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        typed = cls.typed_fields()
        return cls(
            **{k: v for k, v in data.items() if k in typed},
            sections={k: v for k, v in data.items() if k not in typed},
            key_order=tuple(data),
        )

    def to_json(self) -> dict[str, Any]:
        """The card as card.json holds it: keys in the order read, new ones after them.

        A field that is None and was not in the card stays absent, so no key is added.
        """
        values = {k: getattr(self, k) for k in self.typed_fields()}
        values = {k: v for k, v in values.items() if v is not None or k in self.key_order}
        values.update(self.sections)
        out = {k: values[k] for k in self.key_order if k in values}
        out.update((k, v) for k, v in values.items() if k not in out)
        return out

    def to_bytes(self) -> bytes:
        """card.json's bytes (what :func:`bcclassify.storage.store.write_json` would write)."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def read(cls, folder: Path) -> ModelCard | None:
        """``folder/card.json`` (None when missing or not a JSON object; see :func:`load_card`)."""
        try:
            return load_card(folder)
        except CardError:
            return None

    def updated(self, **changes: Any) -> ModelCard:
        """A copy with some keys set (typed or not): existing keys keep their place."""
        return ModelCard.from_json({**self.to_json(), **changes})

    def get(self, key: str, default: Any = None) -> Any:
        """Any key of the card as written, typed or not (for the optional sections)."""
        if key in self.sections:
            return self.sections[key]
        if key in _TYPED:
            value = getattr(self, key)
            if value is not None or key in self.key_order:
                return value
        return default

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

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


_TYPED = frozenset(ModelCard.typed_fields())


def load_card(folder: Path) -> ModelCard:
    """``folder/card.json``, or :class:`CardError` saying why it cannot be used."""
    path = folder / CARD_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CardError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CardError(f"{path}: cannot be read ({reason})") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: not a model card (a JSON object)")
    return ModelCard.from_json(data)


def as_card(card: ModelCard | Mapping[str, Any]) -> ModelCard:
    """A card given as a ModelCard or as card.json's mapping, as a ModelCard."""
    return card if isinstance(card, ModelCard) else ModelCard.from_json(card)


def card_history(folder: Path) -> Path:
    """Where the earlier versions of ``folder``'s card are kept (see the module docstring)."""
    return folder.parent / HISTORY_DIR / folder.name


def write_card(folder: Path, card: ModelCard | Mapping[str, Any]) -> ModelCard:
    """Stage ``card`` as the new version of ``folder/card.json`` and promote it atomically.

    The previous version of an installed model's card, when it differs, is kept in
    :func:`card_history` first. Returns the card written.
    """
    card = as_card(card)
    data = card.to_bytes()
    path = folder / CARD_FILE
    try:
        previous = path.read_bytes()
    except FileNotFoundError:
        previous = None
    if previous == data:
        if card_seal_problem(folder) is not None:
            seal_card(folder)  # a card written before the seal existed, rewritten unchanged
        return card
    if previous is not None and not folder.name.startswith("."):
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        kept = card_history(folder) / f"{stamp}-{sha256_bytes(previous)[:12]}.json"
        atomic_write_bytes(kept, previous)
    # A temporary file fsynced beside card.json, then one rename (atomic_write_bytes).
    atomic_write_bytes(path, data)
    seal_card(folder)
    return card


def seal_card(folder: Path) -> str:
    """Write ``folder/card.sha256`` for the card.json there now; returns its sha256.

    Only the card writer and ``python -m bcclassify seal`` (an administrator who has read the
    card) call this: sealing is what vouches for the card's contents."""
    digest = sha256_bytes((folder / CARD_FILE).read_bytes())
    atomic_write_bytes(folder / CARD_CHECKSUM_FILE, f"{digest}  {CARD_FILE}\n".encode())
    return digest


def card_seal_problem(folder: Path) -> str | None:
    """Why ``folder/card.json`` is not vouched for by ``card.sha256`` (None when it is)."""
    seal = folder / CARD_CHECKSUM_FILE
    try:
        recorded = seal.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return f"no {CARD_CHECKSUM_FILE} beside it, so the card itself cannot be verified"
    except (OSError, UnicodeDecodeError) as exc:
        return f"{seal} cannot be read ({exc})"
    if len(recorded) != 2 or recorded[1] != CARD_FILE or len(recorded[0]) != 64:
        return f"{seal} is not a sha256 line for {CARD_FILE}"
    actual = sha256_bytes((folder / CARD_FILE).read_bytes())
    if actual != recorded[0]:
        return (
            f"altered since it was written: its sha256 {actual[:12]}… differs from "
            f"{CARD_CHECKSUM_FILE}'s {recorded[0][:12]}… (classes, thresholds and temperature are "
            "read from it, so the model is not loaded)"
        )
    return None


def weights_id(card: ModelCard | Mapping[str, Any]) -> str:
    """A short id of the model's network weights (model.json and weights-*.npz checksums).

    Caches of features or saliency scores are keyed on it, so they never outlive the weights;
    calibration or novelty files added to the card later do not change it.
    """
    files = as_card(card).files_sha256 or {}
    network = {k: v for k, v in files.items() if k == "model.json" or k.startswith("weights-")}
    listed = "".join(f"{k}={v};" for k, v in sorted(network.items()))
    return hashlib.sha256(listed.encode()).hexdigest()[:12]


def installed_cards() -> dict[str, ModelCard]:
    """Installed models by folder name, the default first, then by name."""
    root = models_dir()
    if not root.is_dir():
        return {}
    cards = {}
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("."):  # promote's staging folder, the card history
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
