"""Per-class confidence floors: a stricter "low confidence" for a class other labs are wrongly
given (issue 21).

Why: with the acquisition range off, as for a lab whose backgrounds pass it, the default serves
shifted-stain neutrophils as eosinophils at calibrated confidence 0.75 to 1.0, with novelty
scores inside PBC's own and the second opinion agreeing (``scripts/eosinophil_guard_study.py``:
neither a neighbour vote, a per-class novelty threshold nor a stain-standardised view catches
them). What does separate them is confidence relative to the class: PBC's own eosinophils are
served at 0.98 or more almost always, so an eosinophil at 0.9 is unusual for the source lab
too. A floor on a class raises the ``low_confidence`` threshold for answers of that class only.

The card's section, written by ``calibrate --class-floor CLASS``::

    "class_confidence_floors": {"floors": {"eosinophil": 0.96}, "temperature": 1.2,
                                "budget_extra_flagged": 0.005, "chosen_on": "...", ...}

Each floor is chosen on the model's own validation split, served as ``predict`` serves it, as
the highest value that flags at most the budget's share of the validation cells beyond those
already flagged. Floors are in calibrated-probability units, so they hold only for the
temperature they were chosen under: ``calibrate`` drops the section when it refits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "CARD_KEY",
    "LOW_CONFIDENCE_KEY",
    "choose_floor",
    "floors_from_card",
    "thresholds_by_class",
]

CARD_KEY = "class_confidence_floors"
# The card's record of how its global threshold was re-chosen within a budget for all the
# served flags (``calibrate --flag-budget``, trust.fit_low_confidence), floors included.
LOW_CONFIDENCE_KEY = "low_confidence"


def floors_from_card(card: Mapping) -> dict[str, float]:
    """The card's floors by class name ({} without the section, or when the card's temperature
    is no longer the one they were chosen under)."""
    section = card.get(CARD_KEY) or {}
    temperature = float((card.get("calibration") or {}).get("temperature", 1.0))
    if not section or abs(float(section.get("temperature", 1.0)) - temperature) > 1e-9:
        return {}
    return {str(name): float(value) for name, value in (section.get("floors") or {}).items()}


def thresholds_by_class(
    threshold: float, floors: Mapping[str, float], class_names: Sequence[str]
) -> np.ndarray:
    """The low-confidence threshold of an answer of each class: the floor where one is set,
    never under the model's global threshold."""
    return np.array([max(threshold, float(floors.get(name, 0.0))) for name in class_names])


def choose_floor(confidences: np.ndarray, total: int, budget: float, threshold: float) -> float:
    """The highest floor under which at most ``budget * total`` of ``confidences`` fall.

    ``confidences``: calibrated top probabilities of the validation cells served as the class
    and not otherwise flagged; ``total``: all validation cells. Never under ``threshold``."""
    allowed = int(np.floor(budget * total + 1e-9))
    ordered = np.sort(np.asarray(confidences, dtype=np.float64))
    if allowed >= len(ordered):  # the budget covers every such cell: flag them all
        return 1.0
    # Exactly the values below ordered[allowed] (at most ``allowed`` of them) are flagged.
    return float(max(threshold, ordered[allowed]))
