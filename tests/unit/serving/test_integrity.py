"""Model integrity: only the files the card lists are loaded, and a card that cannot vouch for
its folder is refused (exit 2 and one line from the command line)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES

from bcclassify.cli import main as cli
from bcclassify.serving.classifier import (
    ModelIntegrityError,
    load_model,
    load_model_folder,
    verify_model_files,
)
from bcclassify.storage.cards import write_card
from bcclassify.storage.store import sha256_file

CELL = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[0]


@pytest.fixture()
def store(cnn_store):
    """A private store holding a copy of the small ``tiny-cnn`` model only."""
    return cnn_store


def _folder(store):
    return store / "models" / "tiny-cnn"


def _edit_card(store, change) -> None:
    path = _folder(store) / "card.json"
    card = json.loads(path.read_text())
    change(card)
    write_card(path.parent, card)  # as a tool writes it: the card's own checksum follows


def _predict_cli(capsys, *args: str) -> tuple[int, str]:
    status = cli.main(["predict", "--model", "tiny-cnn", *args, str(CELL)])
    return status, capsys.readouterr().err


def test_an_unlisted_weight_shard_is_refused_not_loaded(store, capsys):
    folder = _folder(store)
    with np.load(folder / "weights-000.npz") as stored:
        hostile = {key: np.zeros_like(stored[key]) for key in stored.files}
    np.savez(folder / "weights-001.npz", **hostile)  # would override every array when loaded
    with pytest.raises(ModelIntegrityError, match=r"weights-001\.npz: weight file not listed"):
        load_model_folder(folder, "tiny-cnn")
    with pytest.raises(ModelIntegrityError, match="not listed"):
        verify_model_files("tiny-cnn")
    with pytest.raises(ModelIntegrityError, match="not listed"):
        load_model_folder(folder, "tiny-cnn", verify=False)  # skipping checksums is no way round
    status, err = _predict_cli(capsys)
    assert status == cli.EXIT_USAGE
    assert err.count("\n") == 1 and "weights-001.npz" in err and "Traceback" not in err


def test_a_card_without_checksums_is_refused(store, capsys):
    _edit_card(store, lambda card: card.pop("files_sha256"))
    with pytest.raises(ModelIntegrityError, match="no files_sha256"):
        load_model("tiny-cnn")
    status, err = _predict_cli(capsys)
    assert status == cli.EXIT_USAGE and err.count("\n") == 1 and "card.json" in err


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe binary", b"[1, 2]"])
def test_an_unreadable_card_is_refused_in_one_line(store, capsys, content):
    (_folder(store) / "card.json").write_bytes(content)
    with pytest.raises(ModelIntegrityError, match=r"card\.json: .*reinstall the model"):
        load_model("tiny-cnn")
    status, err = _predict_cli(capsys)
    assert status == cli.EXIT_USAGE
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    # evaluate reaches the model by another path: the same refusal, not an internal error
    status = cli.main(["evaluate", "--model", "tiny-cnn", "--data", str(FIXTURE_IMAGES)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_USAGE and "card.json" in err and err.count("\n") == 1


def test_a_card_entry_outside_the_folder_is_refused(store):
    outside = store / "elsewhere.npz"
    shutil.copy(_folder(store) / "weights-000.npz", outside)
    _edit_card(store, lambda card: card["files_sha256"].update({"../../elsewhere.npz": "0" * 64}))
    with pytest.raises(ModelIntegrityError, match="not a plain file name"):
        load_model("tiny-cnn")


def test_extra_files_listed_with_checksums_are_accepted(store):
    # Cards may carry more checksummed files (test predictions, novelty statistics): the rule
    # is "listed in files_sha256", whatever the name.
    extra = _folder(store) / "novelty.npz"
    np.savez(extra, mean=np.zeros(3))
    _edit_card(store, lambda card: card["files_sha256"].update({extra.name: sha256_file(extra)}))
    assert load_model("tiny-cnn").card["files_sha256"][extra.name] == sha256_file(extra)
    extra.write_bytes(b"changed")
    with pytest.raises(ModelIntegrityError, match="does not match the card"):
        verify_model_files("tiny-cnn")


# ----------------------------------------------------------------------------- the card itself
# Security issue #22: classes, thresholds and temperature are read from card.json, so the card is
# covered too (card.sha256, written with it by the one card writer).


def _edit_by_hand(store, change) -> None:
    path = _folder(store) / "card.json"
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card, indent=2) + "\n")


def test_a_card_altered_by_hand_is_refused_with_a_clear_message(store, capsys):
    _edit_by_hand(store, lambda card: card.update(low_confidence_threshold=0.0))
    with pytest.raises(ModelIntegrityError, match=r"card\.json: altered since it was written"):
        load_model("tiny-cnn")
    with pytest.raises(ModelIntegrityError, match="altered"):
        load_model_folder(_folder(store), "tiny-cnn", verify=False)  # no way round
    with pytest.raises(ModelIntegrityError, match="altered"):
        verify_model_files("tiny-cnn")
    status, err = _predict_cli(capsys)
    assert status == cli.EXIT_USAGE and err.count("\n") == 1
    assert "altered since it was written" in err and "bcclassify seal" in err


def test_a_card_without_its_checksum_is_refused_until_sealed(store, capsys):
    (_folder(store) / "card.sha256").unlink()
    with pytest.raises(ModelIntegrityError, match=r"no card\.sha256"):
        load_model("tiny-cnn")
    assert cli.main(["seal", "tiny-cnn"]) == cli.EXIT_OK  # an administrator vouches for it
    assert "sealed" in capsys.readouterr().err
    assert load_model("tiny-cnn").name == "tiny-cnn"


def test_seal_still_checks_every_other_file(store, capsys):
    _edit_by_hand(store, lambda card: card.update(description="checked by hand"))
    weights = _folder(store) / "weights-000.npz"
    weights.write_bytes(weights.read_bytes()[:-4])
    assert cli.main(["seal", "tiny-cnn"]) == cli.EXIT_USAGE
    assert "does not match" in capsys.readouterr().err
    with pytest.raises(ModelIntegrityError, match="altered"):
        load_model("tiny-cnn", verify=False)  # not sealed
