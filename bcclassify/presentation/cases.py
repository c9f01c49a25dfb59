"""Rows for the Cases page: a case's cells, its differential and its sign-offs, as tables."""

from __future__ import annotations

from collections.abc import Mapping

from bcclassify.presentation.tables import MISSING, class_label
from bcclassify.review.cases import Case

__all__ = [
    "STATUS_LABELS",
    "case_label",
    "cell_rows",
    "cells_to_review",
    "differential_rows",
    "signoff_rows",
]

STATUS_LABELS = {
    "open": "open: adding and reviewing cells",
    "reviewed": "reviewed: awaiting the final sign-off",
    "final": "final: signed off",
    "amended": "amended after sign-off",
}


def case_label(case: Case) -> str:
    """One line per case for the picker (plain text: the accession is data)."""
    wbc = f"WBC {case.wbc_count:g}" if case.wbc_count is not None else "no WBC"
    return f"{case.accession} · {case.status} · {wbc} · {case.created[:16].replace('T', ' ')}"


def cell_rows(cells: list[Mapping]) -> list[dict]:
    """The case's cells: model class and flag, the reviewer's class and who decided."""
    return [
        {
            "file": c["file_name"],
            "model class": class_label(c["predicted_class"]) if c["predicted_class"] else MISSING,
            "confidence": None if c["confidence"] is None else round(c["confidence"], 3),
            "flag": c["error"] if c["error"] else (c["flag"] or ""),
            "reviewer class": class_label(c["reviewer_class"]) if c["reviewer_class"] else "",
            "reviewer": c["reviewer"] or "",
        }
        for c in cells
    ]


def cells_to_review(cells: list[Mapping]) -> list[str]:
    """File names a reviewer can decide on: flagged and undecided first, then the rest."""
    ready = [c for c in cells if c["predicted_class"] is not None]
    first = [c for c in ready if c["flag"] and c["reviewer_class"] is None]
    return [c["file_name"] for c in first] + [c["file_name"] for c in ready if c not in first]


def differential_rows(report: Mapping) -> list[dict]:
    """The leukocyte table as the PDF prints it."""
    return [
        {
            "cell type": row["label"],
            "count": row["count"],
            "%": row["percent"],
            "x10^9/L": row["absolute_10e9_per_l"],
        }
        for row in report["results"]["leukocytes"]
    ]


def signoff_rows(signoffs: list[Mapping]) -> list[dict]:
    return [
        {
            "#": s["id"],
            "step": s["step"],
            "who": s["signer"],
            "role": s["signer_role"],
            "when (UTC)": s["time"][:19].replace("T", " "),
            "model card sha256": s["model_card_sha256"],
            "amends #": s["amends"] or "",
            "reason": s["reason"],
        }
        for s in signoffs
    ]
