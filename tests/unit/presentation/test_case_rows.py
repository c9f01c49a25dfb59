"""The Cases page's rows: flagged, undecided cells offered first; refused files never offered."""

from __future__ import annotations

from bcclassify.presentation.cases import case_label, cell_rows, cells_to_review
from bcclassify.review.cases import Case


def cell(name, predicted="neutrophil", flag="", reviewed=None, error=None):
    return {
        "file_name": name,
        "predicted_class": predicted,
        "confidence": None if error else 0.91234,
        "flag": flag,
        "error": error,
        "reviewer_class": reviewed,
        "reviewer": "ann" if reviewed else None,
    }


def test_flagged_undecided_cells_come_first_and_refused_files_never():
    cells = [
        cell("a.jpg"),
        cell("b.jpg", flag="low_confidence", reviewed="monocyte"),
        cell("c.jpg", flag="disputed"),
        cell("d.png", predicted=None, flag="error", error="truncated"),
        cell("e.jpg", flag="unidentified"),
    ]
    assert cells_to_review(cells) == ["c.jpg", "e.jpg", "a.jpg", "b.jpg"]
    rows = {r["file"]: r for r in cell_rows(cells)}
    assert rows["d.png"]["flag"] == "truncated" and rows["d.png"]["model class"] == "—"
    assert rows["b.jpg"]["reviewer class"] == "Monocyte" and rows["b.jpg"]["reviewer"] == "ann"
    assert rows["a.jpg"]["confidence"] == 0.912


def test_a_case_reads_as_one_line():
    case = Case("case-1", "H26-1", None, "2026-12-04T05:00:00.000+00:00", "reviewed")
    assert case_label(case) == "H26-1 · reviewed · no WBC · 2026-12-04 05:00"
