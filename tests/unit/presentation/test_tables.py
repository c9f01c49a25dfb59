"""One table module for ``list --markdown`` and the pages: one mark for unknown, best first."""

from __future__ import annotations

from bcclassify.presentation.tables import (
    LEADERBOARD_COLUMNS,
    MISSING,
    as_text,
    leaderboard_rows,
    markdown_tables,
    runs_table,
    training_times,
)
from bcclassify.storage.cards import ModelCard
from bcclassify.storage.runs import RunSummary

RUNS = [
    RunSummary("low", arch="cnn", image_size=32, status="finished", test_accuracy=0.5),
    RunSummary("none", arch="cnn", status="running"),
    RunSummary("cv", arch="cnn", image_size=32, status="finished", test_accuracy=0.9, folds=5),
    RunSummary("mid", arch="unet", image_size=32, status="finished", test_accuracy=0.7),
]
B_RUN = RunSummary("b-run", arch="hybrid", status="finished", test_accuracy=0.95, duration_s=3723)
CARDS = {
    "a": ModelCard("a", architecture="cnn", image_size=32, test_metrics={"accuracy": 0.8}),
    "b": ModelCard(
        "b",
        architecture="hybrid",
        test_metrics={"accuracy": 0.95},
        size_mb=86.3,
        training_run="b-run",
    ),
}


def test_runs_are_sorted_by_accuracy_with_unscored_runs_last():
    table = runs_table(RUNS)
    assert list(table["run id"]) == ["cv", "mid", "low", "none"]
    assert table.loc[3, "input px"] == MISSING and table.loc[3, "duration"] == MISSING
    assert table.loc[0, "split"] == "5-fold CV" and table.loc[1, "split"] == "70/30"


def test_the_split_says_what_was_thinned_before_or_after_splitting():
    runs = [
        RunSummary("limited", status="finished", test_accuracy=0.9, limit_per_class=300),
        RunSummary("thinned", status="finished", test_accuracy=0.8, train_per_class=150),
    ]
    table = runs_table(runs)
    assert table.loc[0, "split"] == "70/30 of ≤300 a class"
    assert table.loc[1, "split"] == "70/30, trained on ≤150 a class"


def test_the_leaderboard_mixes_models_and_finished_runs_best_first():
    rows = leaderboard_rows(CARDS, [*RUNS, B_RUN], {"a": {"predict_single_s": 0.012}}, default="a")
    text = as_text(rows, LEADERBOARD_COLUMNS)
    assert [r["name"] for r in text] == ["b", "b-run", "cv", "a (default)", "mid", "low"]
    by_name = {r["name"]: r for r in text}
    assert by_name["a (default)"]["latency ms"] == "12"
    assert by_name["b"]["latency ms"] == MISSING and by_name["b"]["size MB"] == "86.3"
    assert by_name["cv"]["size MB"] == MISSING and by_name["cv"]["source"] == "5-fold CV"
    # A run's cost is its architecture's (bench --run): unmeasured until then.
    assert by_name["mid"]["parameters"] == by_name["mid"]["latency ms"] == MISSING
    # A model's training time is its run's; a run's is its own.
    assert by_name["b"]["training time"] == by_name["b-run"]["training time"] == "1h 02m"
    assert by_name["a (default)"]["training time"] == MISSING


def test_a_runs_training_time_includes_the_runs_it_continued():
    stage1 = RunSummary("s1", status="finished", duration_s=1800)
    stage2 = RunSummary("s2", status="finished", duration_s=3000, init_from="s1", test_accuracy=0.9)
    orphan = RunSummary("o", status="finished", duration_s=60, init_from="gone")
    unknown = RunSummary("u", status="finished", duration_s=None)
    after_unknown = RunSummary("v", status="finished", duration_s=60, init_from="u")
    loop = RunSummary("x", status="finished", duration_s=60, init_from="x")
    totals = training_times([stage1, stage2, orphan, unknown, after_unknown, loop])
    assert totals == {"s1": 1800, "s2": 4800, "o": None, "u": None, "v": None, "x": None}
    card = {"m": ModelCard("m", test_metrics={"accuracy": 0.9}, training_run="s2")}
    text = {r["name"]: r for r in as_text(leaderboard_rows(card, [stage1, stage2]),
                                           LEADERBOARD_COLUMNS)}  # fmt: skip
    assert text["m"]["training time"] == text["s2"]["training time"] == "1h 20m"
    assert text["s1"]["training time"] == "30m 00s"


def test_markdown_uses_the_same_rows_and_mark():
    models, runs = markdown_tables(RUNS, CARDS, {}, default="b").split("\n\n")
    model_lines, run_lines = models.splitlines()[2:], runs.splitlines()[2:]
    assert model_lines[0].startswith("| **b** (default) | hybrid | — | 95.00% |")
    assert [line.split(" | ")[0] for line in run_lines] == ["| `cv`", "| `mid`", "| `low`"]
    assert "| - |" not in models + runs and "None" not in models + runs
    rows_from_json = markdown_tables([r.to_json() for r in RUNS], CARDS, {}, default="b")
    assert rows_from_json == markdown_tables(RUNS, CARDS, {}, default="b")


def test_the_library_imports_neither_streamlit_nor_plotly_nor_the_cli():
    import subprocess
    import sys

    from helpers import REPO

    code = (
        "import sys, bcclassify.presentation.pages, bcclassify.presentation.tables, "
        "bcclassify.storage.cards, bcclassify.storage.runs, "
        "bcclassify.evaluation.scoring, bcclassify.evaluation.agreement, "
        "bcclassify.presentation.verification, bcclassify.api.server, bcclassify.access.tokens; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('streamlit', 'plotly', 'ui') or m.startswith('bcclassify.cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_measured_run_shows_its_parameters_and_forward_pass():
    measured = RunSummary(
        "m", arch="resnet50", image_size=128, status="finished", test_accuracy=0.9,
        parameters=23_604_104, forward_s=0.0415,
    )  # fmt: skip
    (row,) = as_text(leaderboard_rows({}, [measured]), LEADERBOARD_COLUMNS)
    assert row["parameters"] == "23,604,104" and row["latency ms"] == "42"
