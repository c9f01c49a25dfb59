"""The guess written for a cell taken unlike the training lab's images: the model's
probabilities re-weighted to the classes a white-cell crop of peripheral blood can be (issue 21).

Why: such a cell (outside the acquisition range, so ``unidentified``) comes from another lab's
smear, its probabilities say little, and on another lab's cells they lean to the classes PBC's
folders over-represent. PBC
files 9% of its cells as erythroblasts, 17% as immature granulocytes and 14% as platelets, where
a smear's white-cell differential has no erythroblasts in an adult, at most about 1% immature
granulocytes, and no platelets (they are not white cells). The default's commonest errors on
ext-tecom are exactly lymphocytes called erythroblasts and monocytes called ig. For a cell the
model does recognise, its evidence outweighs any prior and nothing changes; for one from another
lab's smear, the label is chosen as Bayes' rule would under a prior shift (Saerens, Latinne and
Decaestecker, Neural Computation 14, 2002): each class's probability times (its share in
the prior) / (its share in the training data), renormalised.

The prior keeps the five white-cell classes in their training proportions, so it assumes
nothing about a lab's white-cell mix, and gives each class that a white-cell differential does
not count (``RARE_IN_BLOOD``) a share of ``RARE_SHARE``. The cell stays ``unidentified``: the
contract still tells the reader to treat its class as unknown. Only the written label and
probabilities of such a cell change, so no flag and no figure of wrong-and-unflagged answers
moves. A cell unidentified by its features alone, taken like PBC's, keeps its probabilities
(``ClassifierModel.guess_unidentified`` says why), unless its novelty score is above every cell
of PBC's validation and test splits (``beyond_novelty``, written by ``--beyond-own-cells``): a
CellaVision lab's cells pass the acquisition range, and such a score says the cell is further
from PBC's training cells than any of PBC's own held-out cells. Between the validation split's
highest score (``fade_from_novelty``) and that one the guess fades in: the weights are raised to
the power (score - fade_from) / (beyond - fade_from), so no validation cell is touched and a
cell barely past every validation cell is barely re-weighted.

With ``second_opinion_share`` (``--second-opinion-share``), a guessed cell's probabilities are
first mixed with the card's second opinion's (a weighted geometric mean, that share of the
weight on the second opinion, times the cell's share of the guess): under a change of lab two
independently trained models are more often right together than either alone (Ovadia et al.,
NeurIPS 2019); measured in scripts/guess_fusion_study.py.

The card's section, written by ``calibrate --unidentified-prior [--beyond-own-cells]``::

    "unidentified_prior": {"prior": {"basophil": 0.11, ...}, "training_mix": {...},
                           "rare_in_blood": ["erythroblast", "ig", "platelet"],
                           "beyond_novelty": 5.43, "fade_from_novelty": 4.37,
                           "second_opinion_share": 0.5, ...}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BEYOND_KEY",
    "CARD_KEY",
    "FADE_KEY",
    "RARE_IN_BLOOD",
    "RARE_SHARE",
    "SECOND_OPINION_SHARE_KEY",
    "UnidentifiedPrior",
    "reweighted",
    "set_unidentified_prior",
    "white_cell_prior",
]

CARD_KEY = "unidentified_prior"
BEYOND_KEY = "beyond_novelty"
FADE_KEY = "fade_from_novelty"
SECOND_OPINION_SHARE_KEY = "second_opinion_share"
# Classes a white-cell differential of adult peripheral blood does not count, or counts at
# under about 1%: nucleated red cells (absent in adults), immature granulocytes (0-1%) and
# platelets (not white cells; CellaVision lists them apart).
RARE_IN_BLOOD = ("erythroblast", "ig", "platelet")
RARE_SHARE = 0.01


def white_cell_prior(
    training_mix: Mapping[str, float],
    rare: Sequence[str] = RARE_IN_BLOOD,
    rare_share: float = RARE_SHARE,
) -> dict[str, float]:
    """The prior: ``rare_share`` for each ``rare`` class, the rest shared among the others in
    their training proportions. ``training_mix``: each class's share (or count) in the data."""
    unknown = [c for c in rare if c not in training_mix]
    if unknown:
        raise ValueError(f"not classes of this model: {', '.join(unknown)}")
    if not 0.0 < rare_share * len(rare) < 1.0:
        raise ValueError(f"{len(rare)} rare classes at {rare_share} leave no share for the rest")
    common = {c: float(n) for c, n in training_mix.items() if c not in rare}
    total = sum(common.values())
    if total <= 0:
        raise ValueError("the training mix gives the common classes no cells")
    left = 1.0 - rare_share * len(rare)
    return {c: rare_share if c in rare else left * common[c] / total for c in training_mix}


def reweighted(
    probabilities: np.ndarray,
    weights: np.ndarray,
    rows: np.ndarray,
    strengths: np.ndarray | None = None,
) -> np.ndarray:
    """``probabilities`` (N, C) with the rows where ``rows`` is true multiplied by ``weights``
    (C,), each raised to that row's ``strengths`` (N,; default 1), and renormalised; the other
    rows as they were. A new array."""
    out = np.array(probabilities, dtype=np.float64, copy=True)
    rows = np.asarray(rows, dtype=bool)
    if rows.any():
        power = np.ones(len(out)) if strengths is None else np.asarray(strengths, np.float64)
        shifted = out[rows] * np.asarray(weights, dtype=np.float64)[None, :] ** power[rows, None]
        out[rows] = shifted / shifted.sum(axis=1, keepdims=True)
    return out.astype(np.asarray(probabilities).dtype, copy=False)


@dataclass(frozen=True)
class UnidentifiedPrior:
    """Per-class weights (prior share / training share), in the model's class order; the
    novelty score above which a cell taken like the training images gets the whole guess too
    (None: only cells outside the acquisition range), and the one from which it fades in (None:
    no fading, the whole guess above ``beyond_novelty`` and none below); and the second
    opinion's share of the weight in a guessed cell's probabilities (0: the model's own)."""

    weights: np.ndarray
    beyond_novelty: float | None = None
    fade_from_novelty: float | None = None
    second_opinion_share: float = 0.0

    def strengths(self, scores: np.ndarray) -> np.ndarray:
        """How much of the guess each served cell gets, 0 to 1: all of it outside the
        acquisition range (score +inf) and, with ``beyond_novelty``, above every PBC cell held
        out of training (taken like PBC's images yet further from them than any of PBC's own);
        with ``fade_from_novelty``, rising linearly from 0 at that score to 1 at
        ``beyond_novelty``."""
        scores = np.asarray(scores, dtype=np.float64)
        strength = np.isposinf(scores).astype(np.float64)
        if self.beyond_novelty is not None:
            strength[scores > self.beyond_novelty] = 1.0
            if self.fade_from_novelty is not None:
                span = self.beyond_novelty - self.fade_from_novelty
                ramp = np.clip((scores - self.fade_from_novelty) / span, 0.0, 1.0)
                strength = np.maximum(strength, np.nan_to_num(ramp, nan=0.0))
        return strength

    def guessed_rows(self, scores: np.ndarray) -> np.ndarray:
        """Which served cells get any of the guess (:meth:`strengths` above 0)."""
        return self.strengths(scores) > 0

    @classmethod
    def from_card(cls, card: Mapping, class_names: Sequence[str]) -> UnidentifiedPrior | None:
        """The card's prior, or None without the section."""
        section = card.get(CARD_KEY) or {}
        if not section:
            return None
        prior, mix = section["prior"], section["training_mix"]
        missing = [c for c in class_names if c not in prior or c not in mix]
        if missing:
            raise ValueError(f"{CARD_KEY} has no share for {', '.join(missing)}")
        total_prior = sum(float(prior[c]) for c in class_names)
        total_mix = sum(float(mix[c]) for c in class_names)
        weights = np.array(
            [(float(prior[c]) / total_prior) / (float(mix[c]) / total_mix) for c in class_names]
        )
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ValueError(f"{CARD_KEY}: every share must be positive")
        beyond, fade = section.get(BEYOND_KEY), section.get(FADE_KEY)
        for key, value in ((BEYOND_KEY, beyond), (FADE_KEY, fade)):
            if value is not None and not np.isfinite(float(value)):
                raise ValueError(f"{CARD_KEY}: {key} must be a finite novelty score")
        if fade is not None and (beyond is None or float(fade) >= float(beyond)):
            raise ValueError(f"{CARD_KEY}: {FADE_KEY} must lie below {BEYOND_KEY}")
        share = float(section.get(SECOND_OPINION_SHARE_KEY, 0.0))
        if not 0.0 <= share < 1.0:
            raise ValueError(f"{CARD_KEY}: {SECOND_OPINION_SHARE_KEY} must lie in [0, 1)")
        return cls(
            weights,
            None if beyond is None else float(beyond),
            None if fade is None else float(fade),
            share,
        )

    def apply(
        self,
        probabilities: np.ndarray,
        unidentified: np.ndarray,
        strengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """The served probabilities with the unidentified rows re-weighted, each by its share
        of the guess (:meth:`strengths`; default all of it)."""
        return reweighted(probabilities, self.weights, unidentified, strengths)


def set_unidentified_prior(
    name: str | None,
    data: str | Path,
    rare_share: float = RARE_SHARE,
    beyond_novelty: Mapping | None = None,
    second_opinion_share: float = 0.0,
) -> dict:
    """Write installed model ``name``'s ``unidentified_prior`` from the class mix of ``data``,
    its training data (class folders), and return the new card. Reads no pixels.

    ``beyond_novelty``: ``{"score": S, "rule": ...}`` (trust.highest_own_novelty) to give the
    guess also to cells whose novelty score is above S, and, with ``"fade_from": F`` in it, a
    share of it to those between F and S; None leaves it to the cells outside the acquisition
    range. ``second_opinion_share``: the card's second opinion's share of the weight in a
    guessed cell's probabilities (0: none; the card must name a second opinion)."""
    from bcclassify.data.datasets import scan_dataset
    from bcclassify.serving.classifier import read_card, resolve_model_name
    from bcclassify.storage.cards import write_card
    from bcclassify.storage.store import models_dir

    chosen = resolve_model_name(name)
    folder = models_dir() / chosen
    card = dict(read_card(folder))
    class_names = tuple(card.get("class_names") or ())
    dataset = scan_dataset(data, class_names)
    counts = np.bincount(dataset.labels, minlength=len(class_names))
    if np.any(counts == 0):
        empty = [c for c, n in zip(class_names, counts) if n == 0]
        raise ValueError(f"{data}: no cells of {', '.join(empty)}, so no training mix")
    mix = {c: float(n / counts.sum()) for c, n in zip(class_names, counts)}
    prior = white_cell_prior(mix, RARE_IN_BLOOD, rare_share)
    card[CARD_KEY] = {
        "prior": prior,
        "training_mix": mix,
        "rare_in_blood": list(RARE_IN_BLOOD),
        "rare_share": rare_share,
        "applies_to": "cells taken unlike the training images (outside the acquisition range, "
        "so unidentified): their label and probabilities are a guess",
        "training_data": f"{Path(data).name} ({int(counts.sum())} cells)",
        "why": "a white-cell differential of peripheral blood has no erythroblasts in an adult, "
        "at most about 1% immature granulocytes and no platelets; the training data holds "
        + ", ".join(f"{mix[c]:.0%} {c}" for c in RARE_IN_BLOOD if c in mix)
        + " (the label re-weighted as for a prior shift: Saerens et al. 2002)",
    }
    if beyond_novelty is not None:
        card[CARD_KEY][BEYOND_KEY] = float(beyond_novelty["score"])
        card[CARD_KEY]["beyond_novelty_rule"] = beyond_novelty["rule"]
        card[CARD_KEY]["applies_to"] = (
            "cells outside the acquisition range, and cells whose novelty score is above "
            f"{float(beyond_novelty['score']):.3f} (higher than any validation- or test-split "
            "cell's): unidentified, their label and probabilities a guess"
        )
        fade = beyond_novelty.get("fade_from")
        if fade is not None:
            card[CARD_KEY][FADE_KEY] = float(fade)
            card[CARD_KEY]["applies_to"] += (
                f"; between {float(fade):.3f} (the validation split's highest score) and it, "
                "a share of the guess rising linearly with the score"
            )
    if second_opinion_share:
        if not (card.get("second_opinion") or {}).get("model"):
            raise ValueError(f"{chosen}: its card names no second opinion to share the guess with")
        card[CARD_KEY][SECOND_OPINION_SHARE_KEY] = float(second_opinion_share)
        card[CARD_KEY]["applies_to"] += (
            f"; a guessed cell's probabilities are first mixed with the second opinion's "
            f"(weighted geometric mean, {float(second_opinion_share):g} of the weight on the "
            "second opinion, times the cell's share of the guess)"
        )
    UnidentifiedPrior.from_card(card, class_names)  # refuse a section serving could not read
    return dict(write_card(folder, card))
