"""Method verification: how often the model agrees with the lab's reviewers, with uncertainty.

A lab deciding whether to trust a pre-classifier compares it with its own reviewers, in the way
of CLSI H20-A2 (a candidate method against a reference): the reviewer's decision is the reference.
From the review log's decisions on one model (the newest decision per cell) this module computes

- the agreement matrix (rows: reviewer's class, columns: model's class);
- overall percent agreement with a Wilson 95% interval;
- Cohen's kappa with a 95% interval from its large-sample standard error (Fleiss, Cohen and
  Everitt 1969, the variance used when kappa is not zero);
- per class, positive percent agreement (PPA: of the cells the reviewer put in the class, the
  share the model put there too; a sensitivity with the reviewer as reference) and negative
  percent agreement (NPA, the specificity counterpart), each with a Wilson 95% interval.

Pure functions of counts and labels, no I/O: tested against hand-computed values and sklearn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from bcclassify.evaluation.metrics import confusion_matrix

__all__ = [
    "Z95",
    "AgreementReport",
    "ClassAgreement",
    "agreement_matrix",
    "agreement_report",
    "cohen_kappa",
    "kappa_interval",
    "kappa_standard_error",
    "log_models",
    "reviewed_pairs",
    "wilson_interval",
]

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...: two-sided 95%


def agreement_matrix(
    reviewer: Sequence[str], model: Sequence[str], classes: Sequence[str]
) -> np.ndarray:
    """Counts: ``m[i, j]`` cells the reviewer put in ``classes[i]``, the model in ``classes[j]``."""
    if len(reviewer) != len(model):
        raise ValueError(f"{len(reviewer)} reviewer classes but {len(model)} model classes")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({c for c in (*reviewer, *model) if c not in index})
    if unknown:
        raise ValueError(f"classes {', '.join(unknown)} are not among {', '.join(classes)}")
    return confusion_matrix(
        np.array([index[c] for c in reviewer], dtype=int),
        np.array([index[c] for c in model], dtype=int),
        len(classes),
    )


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaNs when ``total`` is 0).

    Unlike the plain p ± z·se interval it stays within [0, 1] and keeps its coverage near 0% and
    100%, where a good method's agreement lies."""
    if total <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= total:
        raise ValueError(f"{successes} successes out of {total}")
    p = successes / total
    z2 = z * z
    denominator = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def _proportions(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    counts = np.asarray(matrix, dtype=float)
    total = counts.sum()
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"an agreement matrix is square, not {counts.shape}")
    if total <= 0:
        raise ValueError("no decisions: kappa needs at least one reviewed cell")
    p = counts / total
    return p, p.sum(axis=1), p.sum(axis=0), float(total)


def cohen_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa of a square count matrix: (observed - chance) / (1 - chance) agreement.

    NaN when chance agreement is 1 (both raters used one and the same class for every cell)."""
    p, rows, cols, _ = _proportions(matrix)
    observed, chance = float(np.trace(p)), float(rows @ cols)
    return math.nan if chance >= 1 else (observed - chance) / (1 - chance)


def kappa_standard_error(matrix: np.ndarray) -> float:
    """Large-sample standard error of kappa (Fleiss, Cohen & Everitt 1969, non-null variance)."""
    p, rows, cols, total = _proportions(matrix)
    chance = float(rows @ cols)
    kappa = cohen_kappa(matrix)
    if math.isnan(kappa):
        return math.nan
    agreeing = float(np.sum(np.diag(p) * (1 - (rows + cols) * (1 - kappa)) ** 2))
    off = ~np.eye(len(p), dtype=bool)
    spread = (cols[:, None] + rows[None, :]) ** 2  # (p.i + pj.)^2 for the cell (i, j)
    disagreeing = (1 - kappa) ** 2 * float(np.sum(p[off] * spread[off]))
    correction = (kappa - chance * (1 - kappa)) ** 2
    variance = (agreeing + disagreeing - correction) / (total * (1 - chance) ** 2)
    return math.sqrt(max(variance, 0.0))


def kappa_interval(matrix: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """kappa ± z·SE, clipped to [-1, 1]."""
    kappa, se = cohen_kappa(matrix), kappa_standard_error(matrix)
    if math.isnan(kappa) or math.isnan(se):
        return math.nan, math.nan
    return max(-1.0, kappa - z * se), min(1.0, kappa + z * se)


@dataclass(frozen=True)
class ClassAgreement:
    """One class, the reviewer as reference."""

    name: str
    reviewer_count: int  # cells the reviewer put in the class
    model_count: int  # cells the model put in the class
    agreed: int  # both
    ppa: float  # agreed / reviewer_count (NaN when the reviewer never chose the class)
    ppa_ci: tuple[float, float]
    npa: float  # both said "not this class" / reviewer said "not this class"
    npa_ci: tuple[float, float]


@dataclass(frozen=True)
class AgreementReport:
    classes: tuple[str, ...]
    matrix: np.ndarray  # rows reviewer, columns model
    total: int
    agreed: int
    percent_agreement: float
    percent_agreement_ci: tuple[float, float]
    kappa: float
    kappa_se: float
    kappa_ci: tuple[float, float]
    per_class: tuple[ClassAgreement, ...]


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def agreement_report(matrix: np.ndarray, classes: Sequence[str]) -> AgreementReport:
    """Every figure of the method-verification page from one agreement matrix."""
    counts = np.asarray(matrix, dtype=int)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"a {counts.shape} matrix for {len(classes)} classes")
    total, agreed = int(counts.sum()), int(np.trace(counts))
    per_class = []
    for i, name in enumerate(classes):
        reviewer_count, model_count, both = (
            int(counts[i].sum()),
            int(counts[:, i].sum()),
            int(counts[i, i]),
        )
        negatives = total - reviewer_count
        both_not = total - reviewer_count - model_count + both
        per_class.append(
            ClassAgreement(
                name,
                reviewer_count,
                model_count,
                both,
                _ratio(both, reviewer_count),
                wilson_interval(both, reviewer_count),
                _ratio(both_not, negatives),
                wilson_interval(both_not, negatives),
            )
        )
    empty = total == 0
    return AgreementReport(
        classes=tuple(classes),
        matrix=counts,
        total=total,
        agreed=agreed,
        percent_agreement=_ratio(agreed, total),
        percent_agreement_ci=wilson_interval(agreed, total),
        kappa=math.nan if empty else cohen_kappa(counts),
        kappa_se=math.nan if empty else kappa_standard_error(counts),
        kappa_ci=(math.nan, math.nan) if empty else kappa_interval(counts),
        per_class=tuple(per_class),
    )


def _newest_per_cell(entries: Iterable[Mapping]) -> list[Mapping]:
    """The newest decision per (image, model, card): a later decision supersedes, as in the log."""
    newest: dict[tuple, Mapping] = {}
    for row in sorted(entries, key=lambda r: r.get("id", 0)):
        newest[(row["image_sha256"], row["model"], row.get("model_card_sha256", ""))] = row
    return list(newest.values())


def log_models(entries: Iterable[Mapping]) -> list[tuple[str, str, int]]:
    """``(model, card sha256, reviewed cells)`` in the log, most reviewed first.

    A model is its name and its card: a name promoted again with other weights is another
    method and is verified apart."""
    counts: dict[tuple[str, str], int] = {}
    for row in _newest_per_cell(entries):
        key = (row["model"], row.get("model_card_sha256", "") or "")
        counts[key] = counts.get(key, 0) + 1
    return sorted(((m, c, n) for (m, c), n in counts.items()), key=lambda t: (-t[2], t[0], t[1]))


def reviewed_pairs(
    entries: Iterable[Mapping], model: str, card_sha256: str
) -> tuple[list[str], list[str]]:
    """(reviewer classes, model classes) of one model's reviewed cells, newest decision each."""
    chosen = [
        row
        for row in _newest_per_cell(entries)
        if row["model"] == model and (row.get("model_card_sha256", "") or "") == card_sha256
    ]
    return [r["reviewer_class"] for r in chosen], [r["predicted_class"] for r in chosen]
