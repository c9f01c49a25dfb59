"""Differential counts as a hematology report gives them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from . import CLASS_NAMES

# The leukocyte differential: the five mature leukocyte classes plus immature granulocytes.
LEUKOCYTE_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig")


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
