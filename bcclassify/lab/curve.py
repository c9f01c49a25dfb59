"""Adapt's learning curve: how another lab's accuracy grows with the reviewed cells a class.

``scripts/adapt_study.py`` runs ``adapt --evaluate`` for several cells-a-class K and several
draws (seeds) and keeps every draw's before/after figures (``trust.trust_figures``) on the cells
that were not taken. :func:`summarise_curve` reduces them to one row per K (mean and worst over
the draws: the worst draw is what a lab may get), and :func:`record_curve` writes that summary
into the source model's card, where the Adapt page reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from bcclassify.storage.cards import load_card, write_card

__all__ = ["CARD_KEY", "curve_rows", "record_curve", "summarise_curve"]

CARD_KEY = "adaptation_curve"


def _after(row: Mapping[str, Any], key: str) -> float | None:
    value = (row.get("after") or {}).get(key)
    return None if value is None else float(value)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


def summarise_curve(draws: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per cells-a-class K, in increasing K, from the study's draws.

    Each draw is a row of ``scripts/adapt_study.py`` (``per_class``, ``seed``, ``taken``,
    ``held_back`` and the ``before``/``after`` figures). Accuracy and the flag fractions are
    over the held-back cells of each draw; "worst" is the lowest accuracy and the highest
    wrong-and-unflagged fraction over the draws.
    """
    by_k: dict[int, list[Mapping[str, Any]]] = {}
    for draw in draws:
        by_k.setdefault(int(draw["per_class"]), []).append(draw)
    rows = []
    for k in sorted(by_k):
        group = sorted(by_k[k], key=lambda d: d["seed"])
        accuracy = [_after(d, "accuracy") for d in group]
        silent = [_after(d, "wrong_and_unflagged_fraction") for d in group]
        rows.append(
            {
                "per_class": k,
                "draws": len(group),
                "seeds": [int(d["seed"]) for d in group],
                "taken_mean": mean(int(d["taken"]) for d in group),
                "held_back_mean": mean(int(d["held_back"]) for d in group),
                "accuracy_before_mean": _mean(
                    (d.get("before") or {}).get("accuracy") for d in group
                ),
                "accuracy_mean": _mean(accuracy),
                "accuracy_worst": min(a for a in accuracy if a is not None),
                "flagged_mean": _mean(_after(d, "flagged_fraction") for d in group),
                "unidentified_mean": _mean(_after(d, "unidentified_fraction") for d in group),
                "wrong_and_unflagged_mean": _mean(silent),
                "wrong_and_unflagged_worst": max(s for s in silent if s is not None),
                "adapt_seconds_mean": _mean(d.get("adapt_seconds") for d in group),
            }
        )
    return rows


def record_curve(
    folder: Path, summary: list[dict[str, Any]], cells: str, study: str, command: str
) -> None:
    """Write ``summary`` into ``folder``'s card as its ``adaptation_curve`` section.

    ``cells``: the lab set's name; ``study``: the file holding every draw (under docs/);
    ``command``: the command line that wrote it, as typed (the set's folder and the study file
    cannot be rebuilt from their names). Other labs' curves already in the card are kept.
    """
    card = load_card(folder)
    curves = dict(card.get(CARD_KEY) or {})
    curves[cells] = {"study": study, "command": command, "rows": summary}
    write_card(folder, card.updated(**{CARD_KEY: curves}))


def curve_rows(card: Mapping[str, Any] | Any) -> dict[str, list[dict[str, Any]]]:
    """The card's learning curves by lab set ({} when it has none)."""
    curves = card.get(CARD_KEY) or {}
    return {cells: list(entry.get("rows") or []) for cells, entry in curves.items()}
