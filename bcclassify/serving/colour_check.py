"""The colour check: an answer is disputed when the same model, shown the cell without its
colour, gives a named rival class most of its probability (issue 21).

Why: on another lab's cells at lower resolution the stain's colour misleads the default. Of the
79 neutrophils of ext-tecom's low-resolution copy it called eosinophils, 68 are neutrophils in a
greyscale view of the same crop, and these wrong eosinophils come at confidence 0.96-1.0, above
the eosinophil floor, with the second opinion agreeing: no other flag catches them. PBC's own
eosinophils almost never look like neutrophils in grey (their granules stay visible as texture),
so the check costs the source lab little.

The card's section, written by ``calibrate --colour-check CLASS RIVAL``::

    "colour_check": {"checked": "eosinophil", "rival": "neutrophil", "min_rival": 0.8,
                     "temperature": 1.2, "budget_extra_flagged": 0.005, ...}

An answer of ``checked`` is disputed when the greyscale view (ITU-R BT.601 luma in every channel,
the image as given, calibrated as served) gives ``rival`` at least ``min_rival``.
:func:`choose_min_rival` picks ``min_rival`` on the model's own validation split, served, as the
lowest candidate that flags at most the budget's share of the cells beyond those already
flagged. Like the class floors it is in calibrated-probability units, so ``calibrate`` drops the
section when it refits the temperature and serving ignores a section chosen under another one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the classifier module imports this one
    from bcclassify.serving.classifier import ClassifierModel

__all__ = [
    "CANDIDATE_MIN_RIVALS",
    "CARD_KEY",
    "ColourCheck",
    "choose_min_rival",
    "colour_disputed_mask",
    "greyscale",
]

CARD_KEY = "colour_check"
# Candidates for min_rival, most lenient first: the lowest within the budget is chosen.
CANDIDATE_MIN_RIVALS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.5)
# ITU-R BT.601 luma weights (R, G, B): how the probe that motivated the check made its grey view.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
GREY_VIEW = ("identity",)


def greyscale(pixels: np.ndarray) -> np.ndarray:
    """A batch ``(N, S, S, 3)`` as luma in all three channels, uint8 (the model's input type)."""
    luma = np.asarray(pixels, dtype=np.float32) @ LUMA
    grey = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def colour_disputed_mask(rival: np.ndarray, min_rival: float) -> np.ndarray:
    """True where the grey view gives the rival class at least ``min_rival`` (NaN: unchecked)."""
    rival = np.asarray(rival, dtype=np.float64)
    return np.nan_to_num(rival, nan=-1.0) >= min_rival


@dataclass(frozen=True)
class ColourCheck:
    """Which answers are checked without colour, against which rival class, and from where."""

    checked: str
    rival: str
    min_rival: float

    @classmethod
    def from_card(cls, card: Mapping) -> ColourCheck | None:
        """The card's check, or None without the section or when the card's temperature is no
        longer the one ``min_rival`` was chosen under."""
        section = card.get(CARD_KEY) or {}
        temperature = float((card.get("calibration") or {}).get("temperature", 1.0))
        if not section or abs(float(section.get("temperature", 1.0)) - temperature) > 1e-9:
            return None
        check = cls(str(section["checked"]), str(section["rival"]), float(section["min_rival"]))
        if not 0.0 < check.min_rival <= 1.0:
            raise ValueError(f"colour_check.min_rival must lie in (0, 1], not {check.min_rival}")
        return check

    def rival_probability(
        self, classifier: ClassifierModel, pixels: np.ndarray, probabilities: np.ndarray
    ) -> np.ndarray:
        """The grey view's probability of the rival class for each answer of the checked class;
        NaN for the other rows, which cost no extra forward pass."""
        names = list(classifier.class_names)
        checked = np.flatnonzero(np.argmax(probabilities, axis=1) == names.index(self.checked))
        rival = np.full(len(pixels), np.nan)
        if len(checked):
            grey = self.grey_probabilities(classifier, pixels[checked])
            rival[checked] = grey[:, names.index(self.rival)]
        return rival

    def grey_probabilities(self, classifier: ClassifierModel, pixels: np.ndarray) -> np.ndarray:
        """The same model's calibrated probabilities for ``pixels`` in greyscale, one view."""
        return classifier.predict_pixels(greyscale(pixels), views=GREY_VIEW)

    def regrey_guesses(
        self,
        classifier: ClassifierModel,
        pixels: np.ndarray,
        probabilities: np.ndarray,
        rows: np.ndarray,
    ) -> np.ndarray:
        """``probabilities`` with each of ``rows`` (a mask) answered the checked class replaced
        by its greyscale view's, where that gives the rival at least ``min_rival``: the colour
        that made the answer is the cue least to be trusted in a cell unlike the training lab's.
        Meant for unidentified cells, whose label is only a guess. A new array."""
        names = list(classifier.class_names)
        top = np.argmax(probabilities, axis=1)
        candidates = np.flatnonzero(np.asarray(rows, bool) & (top == names.index(self.checked)))
        out = np.array(probabilities, copy=True)
        if len(candidates):
            grey = self.grey_probabilities(classifier, pixels[candidates])
            taken = grey[:, names.index(self.rival)] >= self.min_rival
            out[candidates[taken]] = grey[taken]
        return out


def choose_min_rival(
    rival: np.ndarray,
    already_flagged: np.ndarray,
    budget: float,
    candidates: Sequence[float] = CANDIDATE_MIN_RIVALS,
) -> float:
    """The lowest candidate that flags at most ``budget`` (a fraction of all the cells) beyond
    ``already_flagged``. ``rival``: the grey view's rival probability, NaN where unchecked.
    Meant for the source lab's validation split; raises when no candidate fits."""
    flagged = np.asarray(already_flagged, dtype=bool)
    within = [c for c in candidates if (colour_disputed_mask(rival, c) & ~flagged).mean() <= budget]
    if not within:
        raise ValueError(
            f"no min_rival in {list(candidates)} stays within a budget of {budget:.1%}"
        )
    return float(min(within))
