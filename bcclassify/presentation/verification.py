"""Rows and labels of the method verification page, from ``evaluation.agreement``'s report."""

from __future__ import annotations

import math

from bcclassify.evaluation.agreement import AgreementReport
from bcclassify.presentation.tables import MISSING, class_label
from bcclassify.presentation.tables import percent as percent_text

__all__ = ["MIN_CELLS_PER_CLASS", "agreement_rows", "interval_text", "model_choice", "percent"]

# Below this many reviewer cells in a class, its interval is too wide to decide anything on:
# with 20 cells all agreeing, the Wilson lower bound is still only 84%.
MIN_CELLS_PER_CLASS = 20


def percent(value: float) -> str:
    """A share as a percentage; NaN (nothing to divide) as the tables' missing mark."""
    return percent_text(None if math.isnan(value) else value)


def interval_text(interval: tuple[float, float], as_percent: bool = True) -> str:
    low, high = interval
    if math.isnan(low) or math.isnan(high):
        return MISSING
    if as_percent:
        return f"{100 * low:.1f}–{100 * high:.1f}%"
    return f"{low:.3f} to {high:.3f}"


def model_choice(model: str, card_sha256: str, cells: int) -> str:
    """How a (model, card) of the review log is offered for choice."""
    card = f"card {card_sha256[:8]}" if card_sha256 else "card not recorded"
    return f"{model} · {card} · {cells} reviewed cell{'s' if cells != 1 else ''}"


def agreement_rows(report: AgreementReport) -> list[dict]:
    """One row per class: counts, PPA and NPA with their Wilson 95% intervals."""
    return [
        {
            "class": class_label(c.name),
            "reviewer": c.reviewer_count,
            "model": c.model_count,
            "both": c.agreed,
            "PPA": percent(c.ppa),
            "PPA 95% CI": interval_text(c.ppa_ci),
            "NPA": percent(c.npa),
            "NPA 95% CI": interval_text(c.npa_ci),
            "enough cells": "yes" if c.reviewer_count >= MIN_CELLS_PER_CLASS else "no",
        }
        for c in report.per_class
    ]
