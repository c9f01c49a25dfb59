"""Installing and uninstalling adapted models: admins only (checked by the library itself), the
install recorded in the card, a quota, and uninstall reversible and never the default model.

The store here holds cards and a stand-in weight file, not real networks: these steps only move
folders and write cards (the loading checks are test_adapt's)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from bcclassify.access.roles import AccessDenied, Identity, Role
from bcclassify.lab import adapt as lab
from bcclassify.lab.adapt import AdaptError, install_staged, staging_folder, uninstall_adapted
from bcclassify.storage.cards import installed_cards, write_card
from bcclassify.storage.runs import RunRecord
from bcclassify.storage.store import runs_dir, set_default_model, sha256_bytes

ADMIN = Identity("lab.admin", Role.ADMIN)
REVIEWER = Identity("qa", Role.REVIEWER)
PATHOLOGIST = Identity("dr.p", Role.PATHOLOGIST)


WEIGHTS = b"stand-in weights"


def _run(name: str) -> str:
    return f"20261204-adapt-{name}"


def _model(folder: Path, name: str, adapted: bool = True, **extra) -> Path:
    folder.mkdir(parents=True)
    (folder / "weights-0.npz").write_bytes(WEIGHTS)
    (folder / "model.json").write_bytes(b"{}")
    card = {
        "name": name,
        "architecture": "cnn",
        "files_sha256": {"weights-0.npz": sha256_bytes(WEIGHTS), "model.json": sha256_bytes(b"{}")},
    }
    if adapted:
        card.update(source_model={"name": "base"}, adaptation_run=_run(name))
    write_card(folder, {**card, **extra})  # sealed (card.sha256), as every tool writes cards
    return folder


@pytest.fixture()
def store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("BCCLASSIFY_STORE", str(root))
    _model(root / "models" / "base", "base", adapted=False)
    set_default_model("base")
    return root


def _stage(store: Path, name: str) -> str:
    """A staged adaptation, where and as ``adapt(..., install=False)`` leaves it (its own staging
    folder, its run finished staging it); returns the run id."""
    run_id = _run(name)
    folder = _model(staging_folder(run_id), name)
    (runs_dir() / run_id).mkdir(parents=True)
    RunRecord.of(run_id).create(
        run_id=run_id, kind="adaptation", status="finished", model=name, staging=folder.name
    )
    return run_id


def test_only_an_admin_installs_and_the_card_records_who_when_and_which_run(store):
    staged = staging_folder(_stage(store, "base-lab"))
    for who in (None, REVIEWER, PATHOLOGIST):
        with pytest.raises(AccessDenied, match="installing models needs the admin role"):
            install_staged(_run("base-lab"), "base-lab", who)
    assert staged.is_dir() and "base-lab" not in installed_cards()  # nothing moved

    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    folder = install_staged(_run("base-lab"), "base-lab", ADMIN)
    card = json.loads((folder / "card.json").read_text())
    assert card["installed"]["by"] == "lab.admin" and card["installed"]["role"] == "admin"
    assert card["installed"]["from_run"] == "20261204-adapt-base-lab"
    assert dt.datetime.fromisoformat(card["installed"]["at"]) >= before
    assert card["files_sha256"]["weights-0.npz"] == sha256_bytes(WEIGHTS)  # as staged
    assert "base-lab" in installed_cards() and not staged.exists()


def test_installs_stop_at_the_quota_with_a_message_saying_what_to_do(store, monkeypatch):
    monkeypatch.setattr(lab, "MAX_ADAPTED_MODELS", 2)
    install_staged(_stage(store, "lab-1"), "lab-1", ADMIN)
    install_staged(_stage(store, "lab-2"), "lab-2", ADMIN)
    _stage(store, "lab-3")
    with pytest.raises(AdaptError, match=r"2 adapted models are installed.*uninstall one first"):
        install_staged(_run("lab-3"), "lab-3", ADMIN)
    assert "lab-3" not in installed_cards()
    uninstall_adapted("lab-1", ADMIN)
    install_staged(_run("lab-3"), "lab-3", ADMIN)  # room again
    assert lab.adapted_models() == ["lab-2", "lab-3"]


def test_uninstall_is_for_admins_and_adapted_models_and_can_be_undone(store):
    install_staged(_stage(store, "base-lab"), "base-lab", ADMIN)
    _model(store / "models" / "other", "other", adapted=False)
    with pytest.raises(AccessDenied, match="uninstalling models needs the admin role"):
        uninstall_adapted("base-lab", REVIEWER)
    with pytest.raises(AdaptError, match="default model"):
        uninstall_adapted("base", ADMIN)
    with pytest.raises(AdaptError, match="not made by adapt"):
        uninstall_adapted("other", ADMIN)
    with pytest.raises(AdaptError, match="no installed model"):
        uninstall_adapted("nothing", ADMIN)
    assert set(installed_cards()) == {"base", "base-lab", "other"}

    moved = uninstall_adapted("base-lab", ADMIN)
    assert set(installed_cards()) == {"base", "other"}
    assert moved.parent == store / "models" / ".uninstalled"
    card = json.loads((moved / "card.json").read_text())
    assert card["uninstalled"]["by"] == "lab.admin" and card["installed"]["by"] == "lab.admin"
    assert (moved / "weights-0.npz").read_bytes() == b"stand-in weights"  # kept whole
    moved.replace(store / "models" / "base-lab")  # undo: move it back
    assert "base-lab" in installed_cards()


def test_a_second_opinion_in_use_is_not_uninstalled(store):
    install_staged(_stage(store, "base-lab"), "base-lab", ADMIN)
    _model(store / "models" / "main", "main", adapted=False, second_opinion={"model": "base-lab"})
    with pytest.raises(AdaptError, match="second opinion of main"):
        uninstall_adapted("base-lab", ADMIN)


def test_models_uninstall_command(store, capsys):
    from bcclassify.cli.main import main

    install_staged(_stage(store, "base-lab"), "base-lab", ADMIN)
    assert main(["models", "uninstall", "base"]) == 2
    assert "default model" in capsys.readouterr().err
    assert main(["models", "uninstall", "base-lab"]) == 0
    err = capsys.readouterr().err
    assert "uninstalled base-lab" in err and ".uninstalled" in err
    card = json.loads(
        next((store / "models" / ".uninstalled").glob("base-lab-*/card.json")).read_text()
    )
    assert card["uninstalled"]["by"].endswith("(command line)")
    assert "base-lab" not in installed_cards()


def test_adapt_itself_refuses_a_role_that_may_not_before_any_work(store, tmp_path):
    from bcclassify.lab.adapt import AdaptConfig, adapt

    config = AdaptConfig(source="base", cells=str(tmp_path / "none"), name="base-lab")
    for install in (False, True):
        with pytest.raises(AccessDenied, match="adapting models needs the admin role"):
            adapt(config, cells={"ig": [("a.jpg", b"x")]}, install=install, identity=REVIEWER)
    assert not (store / "runs").exists() and set(installed_cards()) == {"base"}
