"""Whether an image was taken the way the training lab takes its cells (issue 12).

A second gate on "unidentified", beside the feature-space novelty detector (``trust.py``). Each
image is summarised by four numbers of how it was stained and photographed: the chromaticity
(r, g of r + g + b = 1) and brightness of its background (its brightest fifth of pixels) and the
share of the frame darker than 80% of the background (stain, and how much of the frame the cell
fills). One lab with one analyser keeps these in a narrow range; another lab's smears leave it
(ext-tecom's yellowish backgrounds: all 300 outside). The model's answers were only validated
inside that range, and outside it they are mostly wrong (33% right on ext-tecom) while the
novelty detector, looking only at features, lets some through as confident. So an image outside
the range is "unidentified", whatever its features say.

The range is the training-split images' 0.5th-99.5th percentiles widened by half their width on
each side (so the training lab's own odd images stay inside: 0.1% of PBC validation images and
0.2% of the withheld originals fall outside). ``adapt`` widens it to take in the lab's cells.
Pure NumPy: stored in the model card, applied in serving to the pixels the model is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bcclassify.data.imaging import load_image

__all__ = [
    "AcquisitionRange",
    "MARGIN",
    "STATISTICS",
    "TAIL_PERCENT",
    "file_summaries",
    "fit_range",
    "summaries",
]

STATISTICS = ("background_r", "background_g", "background_brightness", "darker_share")
TAIL_PERCENT = 0.5  # percentile cut at each end of the training images' range
MARGIN = 0.5  # added on each side, as a share of the cut range's width


def summaries(images: np.ndarray) -> np.ndarray:
    """The acquisition numbers (STATISTICS) of RGB images, 0-255: (N, H, W, 3) -> (N, 4)."""
    pixels = np.asarray(images, dtype=np.float32).reshape(len(images), -1, 3)
    luminance = pixels.mean(axis=2)
    bright = luminance >= np.percentile(luminance, 80, axis=1, keepdims=True)
    background = (pixels * bright[..., None]).sum(axis=1) / bright.sum(axis=1, keepdims=True)
    chroma = background / np.maximum(background.sum(axis=1, keepdims=True), 1e-6)
    level = background.mean(axis=1)
    darker = (luminance < 0.8 * level[:, None]).mean(axis=1)
    return np.stack([chroma[:, 0], chroma[:, 1], level / 255.0, darker], axis=1).astype(np.float64)


@dataclass(frozen=True)
class AcquisitionRange:
    """Per statistic, the interval an image must lie in to count as taken like the training's."""

    low: np.ndarray
    high: np.ndarray
    fitted_on: str = ""

    def outside(self, numbers: np.ndarray) -> np.ndarray:
        """True for each image (row of :func:`summaries`) outside the range on any statistic."""
        numbers = np.atleast_2d(numbers)
        return ~((numbers >= self.low) & (numbers <= self.high)).all(axis=1)

    def gate(self, scores: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Novelty ``scores`` with +inf for the images outside the range: unidentified whatever
        their features (how serving, calibrate and adapt's figures combine the two)."""
        return np.where(self.outside(numbers), np.inf, scores)

    def widened_to(self, numbers: np.ndarray, note: str) -> AcquisitionRange:
        """The range that also holds ``numbers`` (another lab's cells), each end moved out by
        MARGIN of this range's width beyond them, as the training range was fitted."""
        width = self.high - self.low
        numbers = np.atleast_2d(numbers)
        return AcquisitionRange(
            np.minimum(self.low, numbers.min(axis=0) - MARGIN * width),
            np.maximum(self.high, numbers.max(axis=0) + MARGIN * width),
            f"{self.fitted_on}; widened to hold {note}",
        )

    def to_card(self) -> dict:
        return {
            "statistics": list(STATISTICS),
            "low": [round(float(v), 6) for v in self.low],
            "high": [round(float(v), 6) for v in self.high],
            "fitted_on": self.fitted_on,
            "rule": f"the {TAIL_PERCENT}th-{100 - TAIL_PERCENT}th percentiles of the training "
            f"images, each end moved out by {MARGIN} of that range's width; an image outside on "
            "any statistic is unidentified (bcclassify/serving/acquisition.py)",
        }

    @classmethod
    def from_card(cls, section: dict | None) -> AcquisitionRange | None:
        """The card's range, or None for a card without one (no acquisition gate)."""
        if not section:
            return None
        if list(section.get("statistics", [])) != list(STATISTICS):
            raise ValueError(f"acquisition statistics {section.get('statistics')} not understood")
        return cls(
            np.asarray(section["low"], dtype=np.float64),
            np.asarray(section["high"], dtype=np.float64),
            section.get("fitted_on", ""),
        )


def file_summaries(paths: list, size: int) -> np.ndarray:
    """:func:`summaries` of image files as the model is given them (the one loader, at ``size``),
    64 at a time so memory stays bounded."""
    parts = [
        summaries(np.stack([load_image(p, size) for p in paths[i : i + 64]]))
        for i in range(0, len(paths), 64)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, len(STATISTICS)))


def fit_range(numbers: np.ndarray, fitted_on: str) -> AcquisitionRange:
    """The range of the training images' :func:`summaries` (see the module's rule)."""
    low, high = np.percentile(np.atleast_2d(numbers), [TAIL_PERCENT, 100 - TAIL_PERCENT], axis=0)
    width = high - low
    return AcquisitionRange(low - MARGIN * width, high + MARGIN * width, fitted_on)
