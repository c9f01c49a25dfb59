"""A second, independently trained model as a check on the served answer (issue 21).

Why: on another lab's cells the hybrid is often wrong with high confidence, and its own
confidence and feature-space novelty miss many of those answers (a CellaVision lab's cells pass
the acquisition gate; the withheld one had 21% of its cells wrong and unflagged). A model trained
apart from it — a different trunk (MobileNetV2), with the "lab" augmentation preset (stain,
illuminant, zoom, camera) and ImageNet batch-norm statistics kept rather than the source lab's —
makes different mistakes, and where it gives the hybrid's class little probability the answer is
shown as ``disputed`` (needs review) instead of as a confident class.

The default model's card names it::

    "second_opinion": {"model": "robust-mobilenetv2", "min_support": 0.1,
                       "chosen_on": "...", ...}

``min_support`` is the second model's probability of the served class under which the cell is
disputed; :func:`choose_min_support` picks it on the source lab's validation split, within a
budget of extra flagged cells. The second model sees the same decoded pixels, resized to its own
input size, and averages its own card's test-time views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # the classifier module imports this one
    from bcclassify.serving.classifier import ClassifierModel

__all__ = [
    "CARD_KEY",
    "CANDIDATE_MIN_SUPPORTS",
    "SecondOpinion",
    "SecondOpinionConfig",
    "choose_min_support",
    "disputed_mask",
    "mixed_in",
    "resize_batch",
    "support_for",
]

CARD_KEY = "second_opinion"
# Candidates for min_support, strictest first; the first within the flagging budget is chosen.
CANDIDATE_MIN_SUPPORTS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)


@dataclass(frozen=True)
class SecondOpinionConfig:
    """The card's ``second_opinion`` section: which installed model, and where it disputes."""

    model: str
    min_support: float

    @classmethod
    def from_card(cls, section: dict | None) -> SecondOpinionConfig | None:
        if not section:
            return None
        min_support = float(section["min_support"])
        if not 0.0 < min_support < 1.0:
            raise ValueError(f"second_opinion.min_support must lie in (0, 1), not {min_support}")
        return cls(model=str(section["model"]), min_support=min_support)


def resize_batch(pixels: np.ndarray, size: int) -> np.ndarray:
    """A batch ``(N, S, S, 3)`` resized to ``size`` (Lanczos, as the image loader resizes)."""
    if pixels.shape[1] == size and pixels.shape[2] == size:
        return pixels
    out = np.empty((len(pixels), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(np.clip(pixels, 0, 255).astype(np.uint8)):
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
    return out


def support_for(
    second_probabilities: np.ndarray, classes: Sequence[int] | np.ndarray
) -> np.ndarray:
    """The second model's probability of each row's given class (the served one)."""
    rows = np.arange(len(second_probabilities))
    return np.asarray(second_probabilities)[rows, np.asarray(classes, dtype=int)]


def mixed_in(own: np.ndarray, second: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Each row of ``own`` mixed with the same row of ``second`` as a weighted geometric mean,
    ``shares`` (one per row, 0 to 1) of the weight on ``second``, renormalised; a row with share
    0 comes back exactly as it was. A new array."""
    own = np.asarray(own, dtype=np.float64)
    shares = np.asarray(shares, dtype=np.float64)[:, None]
    logs = (1.0 - shares) * np.log(own + 1e-9) + shares * np.log(np.asarray(second) + 1e-9)
    mixed = np.exp(logs - logs.max(axis=1, keepdims=True))
    mixed /= mixed.sum(axis=1, keepdims=True)
    return np.where(shares > 0, mixed, own)


def disputed_mask(support: np.ndarray, min_support: float) -> np.ndarray:
    """True where the second model gives the served class less than ``min_support``."""
    return np.asarray(support) < min_support


def choose_min_support(
    served_probabilities: np.ndarray,
    second_probabilities: np.ndarray,
    already_flagged: np.ndarray,
    budget: float,
    candidates: Sequence[float] = CANDIDATE_MIN_SUPPORTS,
) -> float:
    """The strictest candidate that flags at most ``budget`` more of these cells.

    Meant for the source lab's validation split: on the lab the model was trained for, the
    dispute flag may add at most ``budget`` (a fraction) to the cells already flagged there; on
    other labs it then flags as much as the two models disagree. Raises when no candidate fits.
    """
    support = support_for(second_probabilities, np.argmax(served_probabilities, axis=1))
    flagged = np.asarray(already_flagged, dtype=bool)
    for candidate in sorted(candidates, reverse=True):
        extra = disputed_mask(support, candidate) & ~flagged
        if extra.mean() <= budget:
            return float(candidate)
    raise ValueError(f"no min_support in {list(candidates)} stays within a budget of {budget:.1%}")


@dataclass
class SecondOpinion:
    """The loaded second model and the support under which it disputes the served class."""

    model: ClassifierModel
    min_support: float

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """The second model's calibrated probabilities for the same decoded cells."""
        return self.model.predict_pixels(resize_batch(pixels, self.model.image_size))

    def support(self, pixels: np.ndarray, served_classes: np.ndarray) -> np.ndarray:
        """The second model's probability of each served class, on the same decoded cells."""
        return support_for(self.probabilities(pixels), served_classes)
