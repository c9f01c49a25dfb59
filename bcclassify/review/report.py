"""Differential counts as a hematology report gives them, a batch-level warning when a batch looks
like another lab's cells, and safe CSV cells for exports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from bcclassify import CLASS_NAMES

__all__ = [
    "FORMULA_STARTS",
    "LEUKOCYTE_CLASSES",
    "REVIEW_FLAGS",
    "SHIFT_MIN_CELLS",
    "SHIFT_SHARE",
    "batch_shift_notice",
    "differential_count",
    "final_class",
    "needs_review",
    "reviewed_differential",
    "spreadsheet_safe",
]

# The leukocyte differential: the five mature leukocyte classes plus immature granulocytes.
LEUKOCYTE_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def differential_count(labels: Iterable[str]) -> dict:
    """Counts and percentages per class, the leukocyte differential, NRBC/100 WBC, platelets.

    ``labels`` are the final classes of the cells (reviewer's where corrected); unknown labels
    (e.g. refused files, given as None) are ignored.
    """
    counts = Counter(label for label in labels if label in CLASS_NAMES)
    total = sum(counts.values())
    leukocytes = sum(counts[c] for c in LEUKOCYTE_CLASSES)
    return {
        "total_cells": total,
        "all_cells": [
            {
                "class": name,
                "count": counts[name],
                "percent": 100.0 * counts[name] / total if total else 0.0,
            }
            for name in CLASS_NAMES
        ],
        "leukocytes": leukocytes,
        "leukocyte_differential": [
            {
                "class": name,
                "count": counts[name],
                "percent": 100.0 * counts[name] / leukocytes if leukocytes else 0.0,
            }
            for name in LEUKOCYTE_CLASSES
        ],
        "erythroblasts": counts["erythroblast"],
        # Nucleated red cells are reported per 100 leukocytes, not as part of the differential.
        "erythroblasts_per_100_leukocytes": (
            100.0 * counts["erythroblast"] / leukocytes if leukocytes else None
        ),
        "platelets": counts["platelet"],
    }


# Flags that keep a cell out of the count until a reviewer gives it a class, in the order the
# app shows their groups. Any other non-empty flag except "error" is held back the same way.
REVIEW_FLAGS = ("unidentified", "disputed", "low_confidence")


def needs_review(prediction) -> bool:
    """True for a classified cell whose flag says the model's class must not be trusted as is."""
    return prediction.flag not in ("", "error") and prediction.label is not None


def final_class(prediction, decision: str | None) -> str | None:
    """The class a cell counts as: the reviewer's if any, else the model's unless flagged.

    ``None`` means the cell is not counted (refused file, or flagged and not yet reviewed).
    """
    if prediction.flag == "error" or prediction.label is None:
        return None
    if decision in CLASS_NAMES:
        return decision
    return None if needs_review(prediction) else prediction.label


def reviewed_differential(
    cells: Iterable[tuple[str, object]], decisions: Mapping[str, str]
) -> dict:
    """The differential of a batch, flagged cells held back until reviewed.

    ``cells`` are ``(key, prediction)`` pairs (a prediction has ``label`` and ``flag``);
    ``decisions`` maps a key to the reviewer's class. A reviewer's class always counts; an
    unreviewed flagged cell (``unidentified``, ``disputed``, ``low_confidence``) does not, and is
    reported as awaiting review instead, so a doubtful cell never silently moves the differential.
    """
    labels: list[str] = []
    awaiting = {flag: 0 for flag in REVIEW_FLAGS}
    reviewed = 0
    for key, prediction in cells:
        decision = decisions.get(key)
        label = final_class(prediction, decision)
        if label is not None:
            labels.append(label)
            reviewed += decision in CLASS_NAMES
        elif needs_review(prediction):
            awaiting[prediction.flag] = awaiting.get(prediction.flag, 0) + 1
    counts = differential_count(labels)
    counts["awaiting_review"] = sum(awaiting.values())
    counts["awaiting_by_flag"] = awaiting
    counts["reviewed"] = reviewed
    return counts


# A batch this large whose share of "unidentified" cells reaches this is more likely another lab's
# smears (stain, camera, magnification) than a few odd cells: on the training lab's withheld
# originals under 1% of cells are unidentified, on another lab's cells (ext-tecom) 86%.
SHIFT_MIN_CELLS = 5
SHIFT_SHARE = 0.3


def batch_shift_notice(classified: int, unidentified: int) -> str | None:
    """A warning when much of a batch looks unlike the training cells, else None.

    ``classified``: cells the model gave an answer for (refused files excluded);
    ``unidentified``: how many of them were flagged unidentified.
    """
    if classified < SHIFT_MIN_CELLS or unidentified < SHIFT_SHARE * classified:
        return None
    return (
        f"{unidentified} of {classified} cells ({100 * unidentified / classified:.0f}%) look "
        "unlike the cells this model was trained on. If these are blood cells, your lab's "
        "stain, camera or magnification probably differs from the training lab's: check every "
        "answer, and consider adapting the model to your lab from a few labelled cells "
        "('Adapt to your lab', or python -m bcclassify adapt)."
    )


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection advice).

    Text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
    apostrophe; numbers and other text are returned unchanged.
    """
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return value
