"""What the "Adapt to your lab" page shows, as data: the cells taken and held back per class, the
kept cells' counts, the before/after figures and the staged result awaiting install (no Streamlit
here; ``ui.adapt`` draws it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from bcclassify.presentation.tables import percent

ZIP, KEPT = "Upload a zip", "Cells reviewed and kept here"  # where the cells come from
FIGURE_ROWS = (  # (key of the adaptation's figures, row label), in the table's order
    ("accuracy", "Accuracy"),
    ("flagged_fraction", "Flagged for review (unidentified or low confidence)"),
    ("unidentified_fraction", "Unidentified"),
    ("wrong_and_unflagged_fraction", "Wrong and not flagged"),
)


def figures_table(figures: Mapping) -> pd.DataFrame:
    """The source and the adapted model side by side on the cells held back."""
    return pd.DataFrame(
        {
            "": [label for _, label in FIGURE_ROWS],
            "source model": [percent(figures["before"].get(k)) for k, _ in FIGURE_ROWS],
            "adapted model": [percent(figures["after"].get(k)) for k, _ in FIGURE_ROWS],
        }
    )


def curve_table(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Adapt's learning curve on one lab (``lab.curve.summarise_curve`` rows), one row per K."""
    return pd.DataFrame(
        {
            "cells a class": [r["per_class"] for r in rows],
            "draws": [r["draws"] for r in rows],
            "held back (mean)": [round(r["held_back_mean"]) for r in rows],
            "accuracy before": [percent(r["accuracy_before_mean"]) for r in rows],
            "accuracy after (mean)": [percent(r["accuracy_mean"]) for r in rows],
            "accuracy after (worst draw)": [percent(r["accuracy_worst"]) for r in rows],
            "flagged (mean)": [percent(r["flagged_mean"]) for r in rows],
            "wrong and not flagged (worst draw)": [
                percent(r["wrong_and_unflagged_worst"]) for r in rows
            ],
        }
    )


def split_table(cells: Mapping[str, Sequence], taken: Sequence, rest: Sequence) -> pd.DataFrame:
    """Per class: the cells given, those to fit on and those held back to score."""
    return pd.DataFrame(
        {
            "class": list(cells),
            "cells": [len(v) for v in cells.values()],
            "to fit on": [sum(c == k for _, c in taken) for k in cells],
            "held back to score": [sum(c == k for _, c in rest) for k in cells],
        }
    )


def kept_counts_table(counts: Mapping[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"class": list(counts), "kept cells": list(counts.values())})


def staged_result(done, source: str, kind: str, taken: Sequence, keep: bool) -> dict:
    """What the page remembers of a staged adaptation (``adapt``'s result) until the reviewer
    installs or discards it; ``keep``: the taken cells go with the model when installed."""
    return {
        "name": done.name,
        "run_id": done.run_dir.name,  # install_staged checks the staged card names this run
        "source": source,
        "taken": done.taken,
        "held_back": done.held_back,
        "figures": done.figures,
        "from": "the kept cells" if kind == KEPT else "your upload",
        "keep": [item for item, _ in taken] if keep else None,
    }


def result_summary(result: Mapping) -> str:
    return (
        f"Fitted on {result['taken']} cells; scored on the {result['held_back']} cells of "
        f"{result.get('from', 'your upload')} it did not take."
    )


def installed_line(name: str, card: Mapping) -> str:
    """One adapted model for the uninstall list: its source, who installed it and when."""
    source = (card.get("source_model") or {}).get("name", "?")
    installed = card.get("installed") or {}
    who = (
        f"installed by {installed['by']} at {installed.get('at', '?')}"
        if installed
        else ("installed before installs were recorded")
    )
    return f"{name} (from {source}), {who}"
