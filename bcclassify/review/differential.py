"""A case's differential as a hematology report gives it, and its decision-support flags.

Pure functions of the case's cells (the model's class, its flag and the reviewer's class): no
database, no Streamlit. The order and the form are those of a lab's manual differential:

- the leukocytes (neutrophils, lymphocytes, monocytes, eosinophils, basophils, immature
  granulocytes) as whole-number percentages of the leukocytes counted, summing to exactly 100
  (largest-remainder rounding, below), and, when the analyser's WBC count is given, as absolute
  counts (x10^9/L) = WBC x the unrounded fraction;
- apart from them, never inside the percentages: erythroblasts (nucleated red cells) per 100
  leukocytes, platelets (a count of the crops, not a platelet count), unidentified cells (the
  model's "not like the training cells" that no reviewer classified), cells awaiting review and
  refused files;
- the reviewer's changes (model class -> reviewer class: how many);
- decision-support flags, each with the rule that fired, from limits a lab sets in one place
  (:class:`ReportLimits`: defaults here, overridable in a TOML file or the app's secrets).

Largest-remainder (Hamilton) rounding: each class gets the whole part of its exact percentage;
the points still missing to reach 100 go, one each, to the classes with the largest fractional
parts (ties: the larger count, then the report order). A class never moves by more than one
point from its exact value, and a class with no cells stays at 0.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bcclassify import CLASS_NAMES
from bcclassify.review.report import LEUKOCYTE_CLASSES, REVIEW_FLAGS

__all__ = [
    "LIMITS_ENV",
    "LIMITS_SECTION",
    "REPORT_LABELS",
    "ROUNDING_NOTE",
    "CaseCell",
    "ReportLimits",
    "build_differential",
    "largest_remainder_percentages",
    "load_limits",
]

LIMITS_ENV = "BCCLASSIFY_REPORT_LIMITS"  # path of a TOML file with a [report_limits] table
LIMITS_SECTION = "report_limits"  # the table's name, in that file or in the app's secrets
REPORT_LABELS = {
    "neutrophil": "Neutrophils",
    "lymphocyte": "Lymphocytes",
    "monocyte": "Monocytes",
    "eosinophil": "Eosinophils",
    "basophil": "Basophils",
    "ig": "Immature granulocytes",
    "erythroblast": "Erythroblasts (NRBC)",
    "platelet": "Platelets",
}
ROUNDING_NOTE = (
    "Percentages are whole numbers summing to 100 (largest-remainder rounding: whole parts "
    "first, the missing points to the largest fractions); absolute counts = WBC x exact fraction."
)


@dataclass(frozen=True)
class ReportLimits:
    """Where a case's differential raises a decision-support flag (the lab sets these).

    Percentages are of the leukocytes counted; ``None`` switches a rule off. The defaults are
    conservative screening limits for adults, to be replaced by the lab's own (review rules such
    as those of the International Consensus Group for Hematology Review are the usual source).
    """

    min_leukocytes: int = 100  # a differential on fewer leukocytes is too noisy to report as is
    ig_percent_above: float | None = 2.0
    eosinophil_percent_above: float | None = 7.0
    basophil_percent_above: float | None = 2.0
    monocyte_percent_above: float | None = 12.0
    lymphocyte_percent_above: float | None = 50.0
    neutrophil_percent_below: float | None = 40.0
    nrbc_per_100_wbc_above: float | None = 1.0
    unidentified_share_above: float | None = 0.1  # unidentified / all classified cells

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name != "min_leukocytes":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"report limit {item.name}: {value!r} is not a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"report limit {item.name}: {value!r} must be a number >= 0")
        if not isinstance(self.min_leukocytes, int):
            raise ValueError(f"report limit min_leukocytes: {self.min_leukocytes!r} is not whole")

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, object], source: str = "report limits"
    ) -> ReportLimits:
        """Limits from a TOML table or secrets section; unknown keys are refused by name."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        # TOML has no null: a negative number or false switches a rule off.
        cleaned = {
            k: (None if (v is False or (isinstance(v, int | float) and v < 0)) else v)
            for k, v in values.items()
        }
        try:
            return cls(**cleaned)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def as_dict(self) -> dict:
        return asdict(self)


def load_limits(secrets: Mapping | None = None, path: str | Path | None = None) -> ReportLimits:
    """The lab's limits: the TOML file ``path`` (else $BCCLASSIFY_REPORT_LIMITS), else the
    secrets' ``[report_limits]`` section, else the defaults. A file's own table wins whole."""
    path = path or os.environ.get(LIMITS_ENV)
    if path:
        path = Path(path).expanduser()
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: report limits cannot be read ({exc})") from None
        return ReportLimits.from_mapping(data.get(LIMITS_SECTION, data), str(path))
    section = (secrets or {}).get(LIMITS_SECTION)
    if section:
        return ReportLimits.from_mapping(dict(section), f"secrets [{LIMITS_SECTION}]")
    return ReportLimits()


@dataclass(frozen=True)
class CaseCell:
    """What the report needs of one cell: its file, the model's answer and the reviewer's."""

    file: str
    predicted: str | None  # None: the file was refused (error)
    flag: str = ""
    reviewed: str | None = None  # the reviewer's latest class, if any
    error: str | None = None

    @property
    def final(self) -> str | None:
        """The class the cell counts as (reviewer's, else the model's unless flagged)."""
        if self.predicted is None:
            return None
        if self.reviewed in CLASS_NAMES:
            return self.reviewed
        return None if self.flag not in ("", "error") else self.predicted


def largest_remainder_percentages(counts: Mapping[str, int], order: Iterable[str]) -> dict:
    """Whole-number percentages of ``counts`` summing to 100 (all 0 when nothing is counted)."""
    order = list(order)
    total = sum(counts.get(k, 0) for k in order)
    if total == 0:
        return {k: 0 for k in order}
    exact = {k: 100 * counts.get(k, 0) / total for k in order}
    whole = {k: math.floor(v) for k, v in exact.items()}
    missing = 100 - sum(whole.values())
    rank = sorted(order, key=lambda k: (-(exact[k] - whole[k]), -counts.get(k, 0), order.index(k)))
    for k in rank[:missing]:
        whole[k] += 1
    return whole


def build_differential(
    cells: Iterable[CaseCell], wbc_count: float | None, limits: ReportLimits | None = None
) -> dict:
    """The report's results section: leukocytes, the cells reported apart, changes and flags."""
    limits = limits or ReportLimits()
    cells = list(cells)
    counts = Counter(c.final for c in cells if c.final is not None)
    leukocytes = sum(counts[k] for k in LEUKOCYTE_CLASSES)
    percents = largest_remainder_percentages(counts, LEUKOCYTE_CLASSES)
    rows = []
    for name in LEUKOCYTE_CLASSES:
        fraction = counts[name] / leukocytes if leukocytes else 0.0
        rows.append(
            {
                "class": name,
                "label": REPORT_LABELS[name],
                "count": counts[name],
                "percent": percents[name],
                "exact_percent": round(100 * fraction, 3),
                "absolute_10e9_per_l": (
                    round(wbc_count * fraction, 2) if wbc_count is not None and leukocytes else None
                ),
            }
        )
    awaiting = Counter(
        c.flag
        for c in cells
        if c.final is None and c.predicted is not None and c.flag != "unidentified"
    )
    unidentified = sum(
        1 for c in cells if c.final is None and c.predicted is not None and c.flag == "unidentified"
    )
    classified = sum(1 for c in cells if c.predicted is not None)
    nrbc = round(100 * counts["erythroblast"] / leukocytes, 1) if leukocytes else None
    changes = Counter(
        (c.predicted, c.reviewed)
        for c in cells
        if c.predicted is not None and c.reviewed in CLASS_NAMES and c.reviewed != c.predicted
    )
    section = {
        "leukocytes_counted": leukocytes,
        "wbc_count_10e9_per_l": wbc_count,
        "leukocytes": rows,
        "rounding": ROUNDING_NOTE,
        "reported_apart": {
            "erythroblasts": counts["erythroblast"],
            "nrbc_per_100_wbc": nrbc,
            "platelets": counts["platelet"],
            "unidentified": unidentified,
            "awaiting_review": sum(awaiting.values()),
            "awaiting_by_flag": {
                f: awaiting.get(f, 0) for f in REVIEW_FLAGS if f != "unidentified"
            },
            "refused_files": sum(1 for c in cells if c.predicted is None),
        },
        "cells_total": len(cells),
        "cells_classified": classified,
        "reviewed_cells": sum(1 for c in cells if c.reviewed in CLASS_NAMES),
        "changes": [
            {"model_class": a, "reviewer_class": b, "count": n}
            for (a, b), n in sorted(changes.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }
    section["flags"] = decision_flags(section, limits)
    return section


def decision_flags(section: Mapping, limits: ReportLimits) -> list[dict]:
    """Each flag that fires: its name, the rule (with the lab's limit) and the value seen."""
    flags = []
    counted = section["leukocytes_counted"]
    by_class = {row["class"]: row for row in section["leukocytes"]}

    def fire(name: str, rule: str, value: object) -> None:
        flags.append({"flag": name, "rule": rule, "value": value})

    if counted < limits.min_leukocytes:
        fire(
            "too_few_cells",
            f"fewer than {limits.min_leukocytes} leukocytes classified",
            counted,
        )
    above = (
        ("ig", limits.ig_percent_above),
        ("eosinophil", limits.eosinophil_percent_above),
        ("basophil", limits.basophil_percent_above),
        ("monocyte", limits.monocyte_percent_above),
        ("lymphocyte", limits.lymphocyte_percent_above),
    )
    for name, limit in above:
        exact = by_class[name]["exact_percent"]
        if counted and limit is not None and exact > limit:
            fire(f"{name}_high", f"{REPORT_LABELS[name]} > {limit:g}% of leukocytes", exact)
    low = limits.neutrophil_percent_below
    exact = by_class["neutrophil"]["exact_percent"]
    if counted and low is not None and exact < low:
        fire("neutrophil_low", f"Neutrophils < {low:g}% of leukocytes", exact)
    apart = section["reported_apart"]
    limit = limits.nrbc_per_100_wbc_above
    if limit is not None and apart["nrbc_per_100_wbc"] is not None:
        if apart["nrbc_per_100_wbc"] > limit:
            fire("nrbc_present", f"NRBC > {limit:g} per 100 leukocytes", apart["nrbc_per_100_wbc"])
    limit = limits.unidentified_share_above
    classified = section["cells_classified"]
    if limit is not None and classified and apart["unidentified"] / classified > limit:
        fire(
            "many_unidentified",
            f"unidentified cells > {100 * limit:g}% of classified cells",
            round(100 * apart["unidentified"] / classified, 1),
        )
    if apart["awaiting_review"]:
        fire("awaiting_review", "flagged cells not yet reviewed", apart["awaiting_review"])
    return flags
