"""The one card writer: a new card version is staged, then promoted in one rename."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import REPO

from bcclassify.storage.cards import (
    CardError,
    ModelCard,
    card_history,
    card_seal_problem,
    load_card,
    weights_id,
    write_card,
)
from bcclassify.storage.store import write_json


def _model(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "m"
    write_json(folder / "card.json", {"name": "m", "architecture": "cnn", "calibration": {"t": 1}})
    return folder


def test_a_new_card_replaces_the_old_one_which_is_kept_in_the_history(tmp_path):
    folder = _model(tmp_path)
    old = (folder / "card.json").read_bytes()
    card = ModelCard.read(folder).updated(novelty={"file": "n.npz"}, architecture="hybrid")
    write_card(folder, card)
    written = json.loads((folder / "card.json").read_text())
    # keys keep their place; a new section goes last
    assert list(written) == ["name", "architecture", "calibration", "novelty"]
    assert written["architecture"] == "hybrid"
    [kept] = card_history(folder).iterdir()
    assert kept.read_bytes() == old
    # nothing else in the model but the card's own checksum
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "card.sha256"]
    assert card_seal_problem(folder) is None
    write_card(folder, card)  # the same card again: no new version
    assert len(list(card_history(folder).iterdir())) == 1


def test_a_crash_between_staging_and_promoting_leaves_the_old_card_in_force(tmp_path, monkeypatch):
    folder = _model(tmp_path)
    old = (folder / "card.json").read_bytes()
    real_replace = os.replace

    def crash_on_card(src, dst):
        if Path(dst).name == "card.json":
            raise OSError("killed before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_card)
    with pytest.raises(OSError, match="killed"):
        write_card(folder, {"name": "m", "architecture": "other"})
    assert (folder / "card.json").read_bytes() == old
    assert sorted(p.name for p in folder.iterdir()) == ["card.json"]  # the staged file is gone


def test_a_staged_model_keeps_no_card_history(tmp_path):
    folder = tmp_path / "models" / ".m.staging"  # promote's staging folder: not installed yet
    write_card(folder, {"name": "m", "files_sha256": {"model.json": "a"}})
    card = write_card(folder, {"name": "m", "files_sha256": {"model.json": "b"}})
    assert json.loads((folder / "card.json").read_text()) == card.to_json()
    assert not (tmp_path / "models" / ".card-history").exists()


@pytest.mark.parametrize("folder", sorted((REPO / "model_store" / "models").glob("*/card.json")))
def test_bundled_cards_are_written_back_byte_for_byte(folder):
    assert ModelCard.from_json(json.loads(folder.read_text())).to_bytes() == folder.read_bytes()


def test_the_weights_id_follows_the_network_not_files_added_to_the_card_later():
    card = {"files_sha256": {"model.json": "a", "weights-000.npz": "b"}}
    calibrated = {"files_sha256": {**card["files_sha256"], "novelty-1.npz": "c"}}
    retrained = {"files_sha256": {"model.json": "a", "weights-000.npz": "z"}}
    assert weights_id(card) == weights_id(calibrated) != weights_id(retrained)
    assert weights_id(ModelCard.from_json(card)) == weights_id(card)


def test_a_card_round_trips_with_its_unknown_sections_in_order():
    card = {
        "name": "m",
        "architecture": "cnn",
        "calibration": {"temperature": 1.2},
        "test_metrics": {"accuracy": 0.9},
        "adaptation": {"cells": 10},
        "explain_layers": None,
    }
    typed = ModelCard.from_json(card)
    assert typed.accuracy == 0.9 and typed.views == ["identity"]
    assert typed.sections == {"calibration": {"temperature": 1.2}, "adaptation": {"cells": 10}}
    assert list(typed.to_json().items()) == list(card.items())  # same keys, same order
    assert typed.get("adaptation") == {"cells": 10}
    typed.size_mb = 5.0  # a new field goes after the card's own keys
    assert list(typed.to_json())[-1] == "size_mb"


def test_a_card_that_cannot_be_used_is_refused_with_the_reason(tmp_path):
    with pytest.raises(CardError, match="card.json: missing"):
        load_card(tmp_path)
    (tmp_path / "card.json").write_text("[1, 2]")
    with pytest.raises(CardError, match="not a model card"):
        load_card(tmp_path)
    (tmp_path / "card.json").write_text("{")
    with pytest.raises(CardError, match="cannot be read"):
        load_card(tmp_path)
    assert ModelCard.read(tmp_path) is None  # the lenient reader of listings
