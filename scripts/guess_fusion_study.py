"""The second opinion mixed into the guess for far cells (issue 21, target 2).

Under a change of lab, an ensemble of independently trained models is often better than either
(Ovadia et al., "Can you trust your model's uncertainty? Evaluating predictive uncertainty under
dataset shift", NeurIPS 2019). The default's second opinion (`robust-mobilenetv2`, another
architecture at another input size, trained with the `lab` preset) mixed into the *answer* gave a
few points on ext-tecom and none on its low-resolution copy (scripts/cross_lab_probes.py,
``fusion``). This asks the same of the *guess* only: for the cells ``predict`` writes a guess for
(ClassifierModel.guess_strengths above 0), the default's probabilities are replaced by the
weighted geometric mean with the second opinion's (weight w on the default) before the colour
check's swap and the blood's class mix; every other cell, so all of PBC's own that are not
guessed, is unchanged. w = 1 is the guess as served, and reproduces ``evaluate``'s figures.

Other labs only, as given and made to pass the range (far_guess_study.py's stand-ins); each set
is served once and cached under ``--cache``.

    .venv/bin/python scripts/guess_fusion_study.py --out docs/guess-fusion-study.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "gpu"), str(ROOT / "scripts")]

from far_guess_study import OTHER_LABS, other_lab_pixels, served_without_guess  # noqa: E402
from shifted_lab_study import test_cells  # noqa: E402

from bcclassify.data.imaging import load_image  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402
from bcclassify.serving.second_opinion import mixed_in, resize_batch  # noqa: E402

WEIGHTS = (1.0, 0.85, 0.7, 0.5)
LOOKS = {"as given": None, "background to PBC's colour": 0, "background and scale": 1}


def in_batches(forward, pixels: np.ndarray, size: int = 32) -> np.ndarray:
    return np.concatenate([forward(pixels[s : s + size]) for s in range(0, len(pixels), size)])


def fused_guess(outcome: dict, classifier, w: float, faded: bool = False) -> np.ndarray:
    """The probabilities written, with the guessed rows' own probabilities first mixed with the
    second opinion's (weight ``w`` on the default; ``faded``: the second opinion's share scaled
    by each cell's share of the guess, as the prior's is), then served's swap and prior."""
    names, check = list(classifier.class_names), classifier.colour_check
    own, second, grey = outcome["probabilities"], outcome["second"], outcome["grey_all"]
    strengths = classifier.guess_strengths(outcome["scores"])
    rows = strengths > 0
    share = (1 - w) * (strengths if faded else np.ones_like(strengths)) * rows
    mixed = mixed_in(own, second, share)
    swap = (
        rows
        & (mixed.argmax(1) == names.index(check.checked))
        & (grey[:, names.index(check.rival)] >= check.min_rival)
    )
    swapped = np.where(swap[:, None], grey, mixed)
    return classifier.unidentified_prior.apply(swapped, rows, strengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("cache/guess-fusion"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.time()

    classifier = load_model(None)
    classifier.guess_unidentified = lambda pixels, probabilities, rows: probabilities
    second = classifier.second_opinion.model
    dataset, picked = test_cells(classifier, 40, 11)  # PBC's look, for the made-to-pass looks
    copies = [load_image(dataset.paths[i]).astype(np.float32) for i in picked]
    result: dict = {
        "model": classifier.name,
        "second_opinion": second.name,
        "weights_on_default": list(WEIGHTS),
        "sets": {},
    }
    for folder in OTHER_LABS:
        for look_name, look in LOOKS.items():
            title = f"{Path(folder).name}, {look_name}"
            cached = args.cache / ("".join(c if c.isalnum() else "_" for c in title) + ".npz")
            if not cached.exists():
                pixels, truth = other_lab_pixels(
                    folder, look, classifier, copies, dataset.labels[picked]
                )
                outcome = served_without_guess(classifier, pixels)
                outcome["second"] = in_batches(
                    lambda x: second.predict_pixels(resize_batch(x, second.image_size)), pixels
                )
                # Every cell's greyscale view: the mixture may make new eosinophil answers.
                outcome["grey_all"] = in_batches(
                    lambda x: classifier.colour_check.grey_probabilities(classifier, x), pixels
                )
                np.savez(cached, truth=truth, **outcome)
            outcome = dict(np.load(cached))
            truth = outcome["truth"]
            row = {
                "cells": int(len(truth)),
                "guessed": int((classifier.guess_strengths(outcome["scores"]) > 0).sum()),
            }
            for w in WEIGHTS:
                for faded in (False, True) if w < 1 else (False,):
                    written = fused_guess(outcome, classifier, w, faded)
                    key = f"w={w:g}" + (" faded" if faded else "")
                    row[key] = round(float((written.argmax(1) == truth).mean()), 4)
            result["sets"][title] = row
            print(title, row, flush=True)
    result.update(seconds=round(time.time() - started, 1), command=" ".join(sys.argv))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
