"""What the pages show, shaped without Streamlit: Classify's gallery and captions, the kept-cell
decision, Adapt's tables, the run filters and the first confusion shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bcclassify.lab.kept import KeptCells
from bcclassify.presentation.adapt import KEPT, figures_table, split_table, staged_result
from bcclassify.presentation.classify import (
    FLAG_GROUPS,
    apply_keep,
    cell_choice_label,
    gallery_groups,
    group_heading,
    shown_maps,
    thumbnail_caption,
)
from bcclassify.presentation.confusion import chosen_fold, fold_choices, most_confused
from bcclassify.presentation.pages import CellInput
from bcclassify.presentation.runs import (
    HIDDEN,
    curve_defaults,
    filter_runs,
    for_viewer,
    stopped_note,
)
from bcclassify.serving.classifier import Prediction


def _cell(
    name: str, top: int, p: float, novelty: float | None = None, support: float | None = None
):
    probs = np.full(8, (1 - p) / 7)
    probs[top] = p
    item = CellInput.from_bytes(name, name.encode())
    prediction = Prediction(
        name,
        probabilities=probs,
        novelty=novelty,
        novelty_threshold=1.0,
        second_support=support,
        min_support=0.1,
    )
    return item, prediction, None


def test_flagged_cells_come_first_then_classes_most_confident_first():
    cells = [
        _cell("a", 1, 0.6),
        _cell("b", 1, 0.9),
        _cell("c", 2, 0.2),  # low confidence
        _cell("d", 3, 0.9, novelty=5.0),  # unidentified
        _cell("e", 4, 0.95, support=0.02),  # disputed by the second opinion
        _cell("f", 1, 0.8, support=0.5),  # the second opinion agrees enough
    ]
    groups = gallery_groups(cells)
    assert [title for title, _ in groups] == [*FLAG_GROUPS.values(), "Eosinophil"]
    assert [c[0].name for c in groups[1][1]] == ["e"]
    assert [c[0].name for c in groups[3][1]] == ["b", "f", "a"]
    heading = group_heading(*groups[0], reviewed={})
    assert heading.endswith("1 cell(s) · 1 awaiting review")
    reviewed = {groups[0][1][0][0].sha256: "monocyte"}
    assert "awaiting" not in group_heading(*groups[0], reviewed=reviewed)
    item, pred, _ = groups[0][1][0]
    assert thumbnail_caption(item.sha256, pred, reviewed).endswith("· ✓ Monocyte")
    assert cell_choice_label(item, pred).startswith("d — Unidentified (")


def test_a_hybrid_shows_both_trunks_and_a_one_trunk_model_its_fused_map():
    assert shown_maps(["inception", "xception", "fused"]) == [
        ("inception", "inception"),
        ("xception", "xception"),
        ("fused", "fused"),
    ]
    assert shown_maps(["conv", "fused"]) == [("fused", "conv")]


def test_keeping_is_opt_in_and_unticking_forgets(tmp_path):
    item = CellInput.from_bytes("x.png", b"x")

    class Copy:  # never read: unticked and not kept before, nothing is written
        pass

    kept = KeptCells(tmp_path, create=False)
    assert apply_keep(kept, False, None, item, Copy(), "monocyte", "qa", "m") is None
    assert not (tmp_path / "kept-cells").exists()


def test_adapt_tables_count_the_split_and_show_both_models():
    cells = {"monocyte": ["m1", "m2"], "neutrophil": ["n1", "n2", "n3"]}
    taken = [("m1", "monocyte"), ("n1", "neutrophil")]
    rest = [("m2", "monocyte"), ("n2", "neutrophil"), ("n3", "neutrophil")]
    table = split_table(cells, taken, rest)
    assert list(table["to fit on"]) == [1, 1] and list(table["held back to score"]) == [1, 2]
    figures = figures_table({"before": {"accuracy": 0.5}, "after": {"accuracy": 0.75}})
    assert figures.loc[0, "source model"] == "50.0%" and figures.loc[0, "adapted model"] == "75.0%"

    class Done:
        name, taken, held_back, figures = "lab", 2, 3, None
        run_dir = Path("runs/20260101-000000-adapt-lab-abc123")

    result = staged_result(Done(), "src", KEPT, taken, keep=False)
    assert result["from"] == "the kept cells" and result["keep"] is None
    assert result["run_id"] == "20260101-000000-adapt-lab-abc123"  # what Install checks


def test_run_records_hide_people_and_files_from_visitors():
    config = {
        "kind": "adaptation",
        "requested_by": "alice",
        "cells": "upload:x.zip",
        "cells_sha256": {"neutrophil/a.png": "0"},
        "command": "adapt --cells x",
        "seed": 0,
    }
    shown = for_viewer(config, signed_in=False)
    assert shown["seed"] == 0 and shown["kind"] == "adaptation"
    assert all(shown[k] == HIDDEN for k in ("requested_by", "cells", "cells_sha256", "command"))
    assert for_viewer(config, signed_in=True) == config
    training = {"command": "train --arch cnn", "error": "x.png: unreadable"}
    assert for_viewer(training, False) == {"command": "train --arch cnn", "error": HIDDEN}


def test_run_filters_and_notes():
    table = pd.DataFrame(
        {
            "run id": ["a1", "b2"],
            "note": ["first", "Second"],
            "architecture": ["cnn", "hybrid"],
            "status": ["finished", "running"],
            "SMOTE": [True, False],
        }
    )
    assert list(filter_runs(table)["run id"]) == ["a1", "b2"]
    assert list(filter_runs(table, text="second")["run id"]) == ["b2"]
    assert list(filter_runs(table, architectures=["cnn"], options=["SMOTE"])["run id"]) == ["a1"]
    assert stopped_note({"run_id": "r", "status": "finished"}) is None
    assert curve_defaults(["b2", "a1"], running=["b2"]) == ["a1"]


def test_the_first_confusion_shown_is_the_largest():
    matrix = np.array([[5, 1, 0], [4, 5, 0], [0, 2, 5]])
    assert most_confused(matrix) == (1, 0)
    assert [chosen_fold(c) for c in fold_choices([1, 2])] == [None, 1, 2]


def test_the_page_data_modules_import_neither_streamlit_nor_plotly():
    import subprocess
    import sys

    from helpers import REPO

    code = (
        "import sys, bcclassify.presentation.classify, bcclassify.presentation.adapt, "
        "bcclassify.presentation.runs, bcclassify.presentation.confusion, "
        "bcclassify.presentation.cases, bcclassify.review.cases, bcclassify.review.fhir, "
        "bcclassify.review.pdf; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'plotly', 'ui')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
