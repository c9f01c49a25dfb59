"""Run-record summaries (what `list --json` and the pages show)."""

from __future__ import annotations

from bcclassify.storage.store import initialisation_summary, list_runs, run_state, write_json


def test_initialisation_summary_names_pretrained_scratch_and_mixed():
    assert initialisation_summary({"xception": "pretrained: x.h5"}) == "pretrained"
    assert initialisation_summary({"cnn": "from scratch"}) == "from scratch"
    mixed = {"inceptionv3": "pretrained: i.h5", "xception": "from scratch (no weights)"}
    assert initialisation_summary(mixed) == "partly pretrained"
    assert initialisation_summary(None) is None
    # what a group-norm run adds is not a trunk (issue 21)
    converted = {"mobilenetv2": "pretrained: m.h5", "normalisation": "group norm in place of 52"}
    converted["group_norm_fit"] = {"layers": 52}
    assert initialisation_summary(converted) == "pretrained"


def test_list_runs_reports_initialisation_and_continuation(tmp_path, monkeypatch):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path))
    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    write_json(
        folder / "run.json",
        {
            "arch": "resnet50",
            "status": "finished",
            "initialisation": {"resnet50": "from scratch (no ImageNet weights available here)"},
            "init_from": "r0",
        },
    )
    write_json(folder / "config.json", {"image_size": 32, "arch": "resnet50"})
    [run] = list_runs()
    assert (run["run_id"], run["initialisation"], run["init_from"]) == ("r1", "from scratch", "r0")


def test_list_runs_reads_a_cross_validated_runs_initialisation_from_its_folds(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path))
    folder = tmp_path / "runs" / "cv"
    (folder / "fold-1").mkdir(parents=True)
    write_json(folder / "run.json", {"arch": "cnn", "status": "finished"})
    write_json(folder / "config.json", {"image_size": 32, "arch": "cnn", "folds": 5})
    write_json(folder / "fold-1" / "run.json", {"initialisation": {"cnn": "from scratch"}})
    [run] = list_runs()
    assert run["initialisation"] == "from scratch" and run["folds"] == 5


def test_a_running_record_whose_process_is_gone_lists_as_interrupted(tmp_path, monkeypatch):
    import platform
    import subprocess
    import sys

    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path))
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone_pid = int(finished.stdout)  # a process that has exited
    for name, status in (("done", "finished"), ("killed", "running")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        record = {"arch": "cnn", "status": status, "pid": gone_pid, "host": platform.node()}
        write_json(tmp_path / "runs" / name / "run.json", record)
    states = {row["run_id"]: run_state(row) for row in list_runs()}
    assert states == {"done": "finished", "killed": "interrupted"}
    from bcclassify.presentation.tables import runs_table  # the Training runs page's table

    table = runs_table(list_runs())
    assert dict(zip(table["run id"], table["status"])) == states


def test_only_an_interrupted_run_with_its_data_here_can_be_resumed(tmp_path, monkeypatch):
    import platform

    from bcclassify.storage.store import can_resume

    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path))
    data = tmp_path / "data"
    data.mkdir()
    gone = {"arch": "cnn", "status": "running", "pid": 2**22 + 7, "host": platform.node()}
    records = {
        "killed": (gone, str(data)),
        "killed-elsewhere": (gone, str(tmp_path / "not-here")),
        "stopped": ({**gone, "status": "stopped", "stopped_on_purpose": "no better"}, str(data)),
    }
    for name, (record, folder) in records.items():
        write_json(tmp_path / "runs" / name / "run.json", record)
        write_json(tmp_path / "runs" / name / "config.json", {"arch": "cnn", "data": folder})
    rows = {row["run_id"]: row for row in list_runs()}
    assert {name: can_resume(row) for name, row in rows.items()} == {
        "killed": True,
        "killed-elsewhere": False,
        "stopped": False,
    }
    assert run_state(rows["stopped"]) == "stopped"
    assert rows["stopped"]["stopped_on_purpose"] == "no better"
