"""`adapt`: a model fitted to another lab from a few labelled cells (issue 12), end to end on the
tiny CNN in a store of its own (the session's tiny store is shared and stays as it is)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES

from bcclassify.access.roles import Identity, Role
from bcclassify.lab.adapt import (
    STAGING_PREFIX,
    AdaptConfig,
    AdaptError,
    adapt,
    choose_cells,
    clean_stale_staging,
    discard_staged,
    install_staged,
    scan_cells,
    staging_folder,
)
from bcclassify.storage.runs import RunRecord
from bcclassify.storage.store import sha256_file

ADMIN = Identity("lab.admin", Role.ADMIN)
LAB_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


@pytest.fixture()
def lab(tmp_path) -> Path:
    """A 'lab' folder: four class folders of fixture cells (two each)."""
    root = tmp_path / "lab"
    for name in LAB_CLASSES:
        shutil.copytree(FIXTURE_IMAGES / name, root / name)
    return root


@pytest.fixture()
def store(tiny_store, tmp_path) -> Path:
    """A store holding a copy of tiny-cnn with a k-NN novelty detector (as `calibrate` installs)."""
    from bcclassify.serving.classifier import NOVELTY_FILE, load_model_folder
    from bcclassify.serving.trust import atomic_savez, extract, fit_novelty
    from bcclassify.storage.cards import write_card

    root = tmp_path / "store"
    folder = root / "models" / "tiny-cnn"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", folder)
    model = load_model_folder(folder, "tiny-cnn")
    paths = sorted(FIXTURE_IMAGES.rglob("*.jpg"))
    got = extract(model, paths, averaged=False)
    labels = np.asarray([model.class_names.index(p.parent.name) for p in paths])
    detector = fit_novelty(got["features"], labels, method="knn", k=2)
    detector.threshold = float(np.quantile(detector.score(got["features"]), 0.9))
    file_name = f"novelty-{'0' * 12}.npz"
    atomic_savez(folder / file_name, detector.to_arrays())
    card = dict(model.card)
    card["novelty"] = {"method": "knn", "k": 2, "threshold": detector.threshold, "file": file_name}
    card["calibration"] = {"temperature": 1.5}
    card["class_confidence_floors"] = {"floors": {"eosinophil": 0.99}, "temperature": 1.5}
    card["colour_check"] = {
        "checked": "eosinophil",
        "rival": "neutrophil",
        "min_rival": 0.9,
        "temperature": 1.5,
    }
    shares = {c: 1.0 / len(model.class_names) for c in model.class_names}
    card["unidentified_prior"] = {"prior": shares, "training_mix": shares}
    # A threshold lowered within the flag budget to make room for the floors (0.7 before).
    card["low_confidence_threshold"] = 0.55
    card["low_confidence"] = {"threshold": 0.55, "before": 0.7, "budget_flagged": 0.03}
    card["files_sha256"] = {**card["files_sha256"], file_name: sha256_file(folder / file_name)}
    write_card(folder, card)
    assert NOVELTY_FILE  # the name calibrate stems from
    return root


def test_choose_cells_is_seeded_and_per_class():
    cells = {"neutrophil": [f"n{i}" for i in range(30)], "basophil": ["b0"]}
    taken, rest = choose_cells(cells, 10, seed=3)
    assert [c for _, c in taken].count("neutrophil") == 10
    assert ("b0", "basophil") in taken  # a smaller class is taken whole
    assert len(rest) == 20 and not {i for i, _ in taken} & {i for i, _ in rest}
    assert choose_cells(cells, 10, seed=3) == (taken, rest)
    assert choose_cells(cells, 10, seed=4)[0] != taken
    # a class's draw does not depend on which other folders exist
    alone, _ = choose_cells({"neutrophil": cells["neutrophil"]}, 10, seed=3)
    assert alone == [t for t in taken if t[1] == "neutrophil"]


def test_adapt_installs_a_model_that_lists_its_cells_and_predicts(cli, store, lab, monkeypatch):
    from bcclassify.serving.classifier import ClassifierModel, load_model

    loaded: list[str] = []
    original = ClassifierModel.load

    def spy(self, source, name=None):
        loaded.append(Path(name or source).name)
        return original(self, source, name=name)

    monkeypatch.setattr(ClassifierModel, "load", spy)
    args = ["adapt", "--from", "tiny-cnn", "--cells", lab, "--name", "tiny-lab"]
    result = cli([*args, "--per-class", "1", "--seed", "0"], store=store, check=True)
    summary = json.loads(result.stdout)
    assert summary["taken"] == 4 and summary["held_back"] == 4

    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    adapted = load_model("tiny-lab")  # every listed file verified
    card = adapted.card
    used = card["adaptation"]["cells_sha256"]
    assert len(used) == 4 and {Path(p).parts[0] for p in used} == set(LAB_CLASSES)
    for relative, digest in used.items():
        assert sha256_file(lab / relative) == digest
    # only the taken cells were read
    assert sorted(loaded) == sorted(Path(p).name for p in used)
    assert card["source_model"]["name"] == "tiny-cnn"
    assert card["source_model"]["card_sha256"] == sha256_file(
        store / "models" / "tiny-cnn" / "card.json"
    )
    run = store / "runs" / card["adaptation_run"]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # the install is recorded: the command line acts as the lab admin
    assert card["installed"]["from_run"] == run.name and card["installed"]["role"] == "admin"
    assert card["installed"]["by"].endswith("(command line)")
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 0 and config["augmented_views"] == 8
    assert card["adaptation"]["augmented_views"] == 8
    # the compact CNN names no mid-level blocks: its head alone was refitted
    assert card["adaptation"]["mid_layers"] == [] and card["adaptation"]["mid_weight"] == 0.0
    assert (run / "environment.json").is_file()
    # the head changed, the trunk did not
    source = load_model("tiny-cnn")
    new, old = adapted.model.get_weights(), source.model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(new[:-2], old[:-2]))
    assert not np.array_equal(new[-2], old[-2])
    # the novelty bank holds the source's cells and the 8 symmetries of each of the 4 taken
    # ones (the image as given among them), checksummed in the card
    assert card["novelty"]["file"] in card["files_sha256"]
    bank, source_bank = adapted.novelty.arrays["bank"], source.novelty.arrays["bank"]
    assert len(bank) == len(source_bank) + 4 * 8
    assert np.array_equal(bank[: len(source_bank)], source_bank)
    assert card["calibration"]["temperature"] > 0
    # the source's class floors were chosen at its temperature on its lab: they stay behind
    assert source.class_floors == {"eosinophil": 0.99}
    assert "class_confidence_floors" not in card and adapted.class_floors == {}
    # as does the colour check, chosen within the source lab's flag budget
    assert source.colour_check is not None and source.colour_check.min_rival == 0.9
    assert "colour_check" not in card and adapted.colour_check is None
    # and the unidentified guess's prior, weighed against the source's training mix
    assert source.unidentified_prior is not None
    assert "unidentified_prior" not in card and adapted.unidentified_prior is None
    # ... and so does the threshold lowered to make room for them: it takes the one before
    assert source.threshold == 0.55 and adapted.threshold == 0.7
    assert "low_confidence" not in card
    # and it predicts
    rows = adapted.classify([(p.name, p) for p in sorted(lab.rglob("*.jpg"))])
    assert all(r.ok and abs(r.probabilities.sum() - 1) < 1e-6 for r in rows)
    assert "tiny-lab" in cli(["list", "--json"], store=store, check=True).stdout


def test_fitting_views_are_the_symmetries_and_seeded_augmentations(store, monkeypatch):
    """The head is fitted on all 8 symmetries plus seeded augmented views; serving is unchanged."""
    from bcclassify.lab.adapt import served_views, view_features
    from bcclassify.serving.classifier import VIEW_TRANSFORMS, load_model

    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))
    model = load_model("tiny-cnn")
    items = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:3]
    views = tuple(VIEW_TRANSFORMS)
    first = view_features(model, items, "t", views=views, augmented=2, seed=5)
    assert first.shape[:2] == (len(views) + 2, 3)
    # the named views are the symmetries of the image, identity first
    plain = view_features(model, items, "t")
    np.testing.assert_allclose(first[0], plain[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        served_views(model, first, views), served_views(model, plain), rtol=1e-5, atol=1e-6
    )
    # augmented views differ from the image and from each other, and a rerun repeats them
    assert not np.allclose(first[-1], first[0]) and not np.allclose(first[-1], first[-2])
    again = view_features(model, items, "t", views=views, augmented=2, seed=5)
    np.testing.assert_array_equal(first, again)
    other = view_features(model, items, "t", views=views, augmented=2, seed=6)
    assert not np.allclose(other[-1], first[-1])


def test_adapt_can_score_the_cells_it_did_not_take(cli, store, lab):
    args = ["adapt", "--from", "tiny-cnn", "--cells", lab, "--name", "tiny-lab-2"]
    result = cli([*args, "--per-class", "1", "--evaluate"], store=store, check=True)
    figures = json.loads(result.stdout)["held_back_figures"]
    assert figures["num_cells"] == 4
    assert set(figures["before"]) == set(figures["after"]) >= {"accuracy", "flagged_fraction"}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda lab: shutil.rmtree(lab) or lab.mkdir(), "no cells"),
        (lambda lab: (lab / "granulocyte").mkdir(), "unknown class folder"),
        (lambda lab: (lab / "neutrophil" / "broken.jpg").write_bytes(b"not an image"), "unread"),
        (lambda lab: (lab / "loose.jpg").write_bytes(b"x"), "not a class folder"),
        (lambda lab: shutil.rmtree(lab), "not a folder"),
    ],
)
def test_bad_cells_exit_two_with_one_line(cli, store, lab, make, message):
    make(lab)
    result = cli(["adapt", "--from", "tiny-cnn", "--cells", lab, "--name", "x"], store=store)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (store / "models" / "x").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--name", "tiny-cnn"], "already installed"),
        (["--name", "../escape"], "--name"),
        (["--name", "ok\n"], "--name"),  # "$" in a regex accepts a trailing newline
        (["--name", "ok", "--from", "nope"], "unknown model"),
        (["--name", "ok", "--per-class", "0"], "at least 1"),
    ],
)
def test_bad_arguments_exit_two(cli, store, lab, extra, message):
    result = cli(["adapt", "--from", "tiny-cnn", "--cells", lab, *extra], store=store)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_scan_cells_skips_hidden_entries(lab):
    (lab / ".DS_Store").write_bytes(b"")
    (lab / "neutrophil" / ".hidden.jpg").write_bytes(b"")
    assert len(scan_cells(lab)["neutrophil"]) == 2
    with pytest.raises(AdaptError):
        scan_cells(lab / "missing")


# ----------------------------------------------------------------------------- staged adaptations
# Security issue #22: one staging folder per run, Install checks that the staged model is its
# session's run and whole, Discard and abandoned runs clean up, adaptation run records private.


@pytest.fixture()
def staged(store, lab, monkeypatch):
    """``staged(name)``: an adaptation of tiny-cnn left staged, as the app leaves it."""
    monkeypatch.setenv("BCCLASSIFY_STORE", str(store))

    def run(name: str = "tiny-lab", seed: int = 0):
        config = AdaptConfig(
            source="tiny-cnn", cells=str(lab), name=name, per_class=1, seed=seed, augmented_views=0
        )
        return adapt(config, install=False)

    return run


def _run_json(done) -> dict:
    return json.loads((done.run_dir / "run.json").read_text())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_two_adaptations_under_one_name_stage_apart_and_each_installs_its_own(staged, store):
    first, second = staged("tiny-lab", seed=0), staged("tiny-lab", seed=1)
    assert first.run_dir != second.run_dir
    folders = sorted(p.name for p in (store / "models").glob(f"{STAGING_PREFIX}*"))
    assert folders == sorted(STAGING_PREFIX + d.run_dir.name for d in (first, second))

    installed = install_staged(second.run_dir.name, "tiny-lab", ADMIN)
    card = json.loads((installed / "card.json").read_text())
    assert card["adaptation_run"] == second.run_dir.name  # the session's own run, not the other
    with pytest.raises(AdaptError, match="already installed"):
        install_staged(first.run_dir.name, "tiny-lab", ADMIN)
    assert staging_folder(first.run_dir.name).is_dir()  # the other one is untouched
    assert _run_json(second)["installed"] and not _run_json(second)["staging"]


def test_install_refuses_a_staged_model_that_is_not_the_runs_or_not_whole(staged, store):
    done = staged()
    run_id = done.run_dir.name
    with pytest.raises(AdaptError, match="has not finished"):
        install_staged(run_id, "another-name", ADMIN)  # the run staged tiny-lab, not this
    record = RunRecord(done.run_dir)
    record.update(status="running")  # still being written
    with pytest.raises(AdaptError, match="has not finished"):
        install_staged(run_id, "tiny-lab", ADMIN)
    record.update(status="finished")
    weights = next(staging_folder(run_id).glob("weights-*.npz"))
    weights.write_bytes(weights.read_bytes()[:-10])  # half written
    with pytest.raises(AdaptError, match="incomplete or damaged"):
        install_staged(run_id, "tiny-lab", ADMIN)
    assert not (store / "models" / "tiny-lab").exists()


def test_install_refuses_a_card_naming_another_run(staged, store):
    """Another run's complete model under this run's staging folder is not installed."""
    first, second = staged("tiny-lab", seed=0), staged("tiny-lab", seed=1)
    mine = staging_folder(first.run_dir.name)
    shutil.rmtree(mine)
    shutil.copytree(staging_folder(second.run_dir.name), mine)
    with pytest.raises(AdaptError, match="not run"):
        install_staged(first.run_dir.name, "tiny-lab", ADMIN)
    assert not (store / "models" / "tiny-lab").exists()


def test_discard_removes_the_staged_copy_and_records_it(staged):
    done = staged()
    discard_staged(done.run_dir.name)
    assert not staging_folder(done.run_dir.name).exists()
    assert _run_json(done)["status"] == "discarded"
    with pytest.raises(AdaptError, match="no longer staged"):
        install_staged(done.run_dir.name, "tiny-lab", ADMIN)


def test_abandoned_adaptations_are_cleaned_up_and_marked(staged, store):
    gone, live, old = staged("gone"), staged("live"), staged("old")
    RunRecord(gone.run_dir).update(pid=_dead_pid())  # the app that staged it restarted
    ancient = time.time() - 7 * 3600
    os.utime(staging_folder(old.run_dir.name), (ancient, ancient))  # nobody installed it
    crashed = store / "runs" / "20260101-000000-adapt-crashed"
    RunRecord(crashed).create(kind="adaptation", status="running", pid=_dead_pid())

    cleaned = clean_stale_staging()
    assert set(cleaned) == {gone.run_dir.name, old.run_dir.name, crashed.name}
    assert not staging_folder(gone.run_dir.name).exists()
    assert not staging_folder(old.run_dir.name).exists()
    assert staging_folder(live.run_dir.name).is_dir()  # its process lives and it is recent
    for done in (gone, old):
        assert _run_json(done)["status"] == "abandoned"
    assert RunRecord(crashed).read()["status"] == "abandoned"
    assert _run_json(live)["status"] == "finished"
    install_staged(live.run_dir.name, "live", ADMIN)  # still installable


def test_a_new_adaptation_cleans_up_first(staged):
    gone = staged("gone")
    RunRecord(gone.run_dir).update(pid=_dead_pid())
    staged("next")
    assert not staging_folder(gone.run_dir.name).exists()
    assert _run_json(gone)["status"] == "abandoned"


def test_an_adaptation_run_record_is_private(staged):
    done = staged()
    assert stat.S_IMODE(done.run_dir.stat().st_mode) == 0o700
    files = [p for p in done.run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"run.json", "config.json", "environment.json"}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
    discard_staged(done.run_dir.name)  # and stays so when updated
    assert stat.S_IMODE((done.run_dir / "run.json").stat().st_mode) == 0o600


def test_adapt_cli_still_installs_at_once(cli, store, lab):
    args = ["adapt", "--from", "tiny-cnn", "--cells", lab, "--name", "tiny-now"]
    cli([*args, "--per-class", "1"], store=store, check=True)
    assert (store / "models" / "tiny-now" / "card.json").is_file()
    assert not list((store / "models").glob(f"{STAGING_PREFIX}*"))
