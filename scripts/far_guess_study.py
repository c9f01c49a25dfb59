"""The guess for cells far beyond PBC's own: how high a novelty score must be (issue 21, target 2).

``predict`` wrote a guess (the blood's class mix, colour_check's swap; blood_prior.py) for cells
outside the acquisition range only. A CellaVision lab's cells pass the range, so for them the
guess did nothing. This study asks what it does for cells unidentified by their features,
above a second, higher novelty score (``calibrate --beyond-own-cells`` sets the highest score of
the validation and test splits, and fades the guess in from the validation split's highest; the
last rule in the output): on PBC's own cells (the validation and test splits, the
originals, two nearer-lab looks), where it may only cost, and on another lab's cells made to pass
the range (scripts/shifted_lab_study.py's stand-ins), where it should help.

Each set is served once, as ``predict`` serves it but with the guess taken out; the per-cell
outcome (calibrated probabilities, novelty score, the greyscale view's probabilities for an
eosinophil answer) is saved to ``--cache`` and every threshold is then applied offline, exactly as
``ClassifierModel.guess_unidentified`` applies it. Resumable: a set already in the cache is not
served again.

    .venv/bin/python scripts/far_guess_study.py --cache cache/far-guess \
        --out docs/far-guess-study.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "gpu"), str(ROOT / "scripts")]

from lab_factor_study import resized  # noqa: E402
from pack import model_split  # noqa: E402
from shifted_lab_study import (  # noqa: E402
    background,
    looks,
    nucleus_share,
    passing_looks,
    test_cells,
)

from bcclassify.data.datasets import scan_dataset  # noqa: E402
from bcclassify.data.imaging import load_image  # noqa: E402
from bcclassify.evaluation.metrics import expected_calibration_error  # noqa: E402
from bcclassify.evaluation.scoring import training_split_hashes  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402

OTHER_LABS = ("../shared/data/ext-tecom", "cache/ext-tecom-lowres")
NEARER_LOOKS = ("defocus sigma 3.5", "redder + defocus sigma 2")
THRESHOLDS = (3.6914, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, np.inf)


def served_without_guess(classifier, pixels: np.ndarray) -> dict:
    """Probabilities and novelty scores as served, with no guess applied; the greyscale view's
    probabilities for each eosinophil answer (NaN rows for the others)."""
    probabilities, scores = [], []
    for start in range(0, len(pixels), 32):
        p, s = classifier.assess_pixels(pixels[start : start + 32])
        probabilities.append(p)
        scores.append(s)
    probabilities, scores = np.concatenate(probabilities), np.concatenate(scores)
    names = list(classifier.class_names)
    grey = np.full_like(probabilities, np.nan)
    checked = np.flatnonzero(
        probabilities.argmax(1) == names.index(classifier.colour_check.checked)
    )
    for start in range(0, len(checked), 32):
        rows = checked[start : start + 32]
        grey[rows] = classifier.colour_check.grey_probabilities(classifier, pixels[rows])
    return {"probabilities": probabilities, "scores": scores, "grey": grey}


def guessed(
    outcome: dict, threshold: float, classifier, fade_from: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Which cells get the guess if the card's ``beyond_novelty`` were ``threshold`` and its
    ``fade_from_novelty`` ``fade_from`` (serving's own rule, ``ClassifierModel.guess_strengths``),
    and the probabilities then written: the colour check's swap from the cached greyscale view,
    then the prior, each cell by its share of the guess."""
    names = list(classifier.class_names)
    check = classifier.colour_check
    probabilities, scores, grey = outcome["probabilities"], outcome["scores"], outcome["grey"]
    served_prior = classifier.unidentified_prior
    classifier.unidentified_prior = replace(
        served_prior, beyond_novelty=threshold, fade_from_novelty=fade_from
    )
    try:
        strengths = classifier.guess_strengths(scores)
    finally:
        classifier.unidentified_prior = served_prior
    rows = strengths > 0
    swap = (
        rows
        & (probabilities.argmax(1) == names.index(check.checked))
        & (np.nan_to_num(grey[:, names.index(check.rival)]) >= check.min_rival)
    )
    out = np.where(swap[:, None], grey, probabilities)
    return rows, served_prior.apply(out, rows, strengths)


def other_lab_pixels(
    folder: str, look: int | None, classifier, copies: list, copy_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Another lab's labelled cells at the model's input size, as given (``look`` None) or made
    to pass the range (shifted_lab_study.passing_looks: 0 background to PBC's colour, 1 and the
    cell at PBC's scale, measured against ``copies``, PBC test cells of labels ``copy_labels``)."""
    names, size = list(classifier.class_names), classifier.image_size
    lab = scan_dataset(folder, tuple(names))
    images = [load_image(p).astype(np.float32) for p in lab.paths]
    if look is None:
        return np.stack([resized(a, size) for a in images]), lab.labels
    same = np.isin(copy_labels, np.unique(lab.labels))
    pbc_share = np.median([nucleus_share(a) for a, keep in zip(copies, same) if keep])
    scale = float(np.sqrt(pbc_share / np.median([nucleus_share(a) for a in images])))
    pbc_background = np.median([background(a) for a in copies], axis=0)
    change = list(passing_looks(pbc_background, scale).values())[look]
    return np.stack([resized(change(a), size) for a in images]), lab.labels


def pixels_of(paths, size: int) -> np.ndarray:
    return np.stack([load_image(p, size) for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("cache/far-guess"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--per-class", type=int, default=40, help="test cells a class per look")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.time()

    classifier = load_model(None)
    classifier.guess_unidentified = lambda pixels, probabilities, rows: probabilities
    size, names = classifier.image_size, list(classifier.class_names)
    dataset, split, *_ = model_split(dict(classifier.card), None)
    _, picked = test_cells(classifier, args.per_class, args.seed)
    copies = [load_image(dataset.paths[i]).astype(np.float32) for i in picked]

    def originals():
        found = scan_dataset("../shared/data/pbc-originals", tuple(names))
        return pixels_of(found.paths, size), found.labels

    def other_lab(folder: str, look: int):
        return other_lab_pixels(folder, look, classifier, copies, dataset.labels[picked])

    def nearer(look: str):
        change = looks()[look]
        return np.stack([resized(change(a), size) for a in copies]), dataset.labels[picked]

    sets = {
        f"{Path(f).name}, background to PBC's colour": (lambda f=f: other_lab(f, 0))
        for f in OTHER_LABS
    }
    sets.update(
        {f"{Path(f).name}, background and scale": (lambda f=f: other_lab(f, 1)) for f in OTHER_LABS}
    )
    sets["pbc-originals"] = originals
    sets["validation split"] = lambda: (
        pixels_of([dataset.paths[i] for i in split.val], size),
        dataset.labels[split.val],
    )
    sets.update(
        {f"PBC test cells, {look}": (lambda look=look: nearer(look)) for look in NEARER_LOOKS}
    )
    sets["test split"] = lambda: (
        pixels_of([dataset.paths[i] for i in split.test], size),
        dataset.labels[split.test],
    )

    saved = {}
    for title, build in sets.items():
        stem = "".join(c if c.isalnum() else "_" for c in title)
        cached = args.cache / f"{stem}.npz"
        if not cached.exists():
            t0 = time.time()
            pixels, truth = build()
            outcome = served_without_guess(classifier, pixels)
            np.savez(cached, truth=truth, **outcome)
            print(f"{title}: {len(truth)} cells served in {time.time() - t0:.0f} s", flush=True)
        saved[title] = dict(np.load(cached))

    # The rule calibrate --beyond-own-cells writes: above every validation and test cell's
    # score; and the validation split's alone, the rule first tried.
    finite = {k: v["scores"][np.isfinite(v["scores"])] for k, v in saved.items()}
    validation_highest = float(finite["validation split"].max())
    own_highest = max(validation_highest, float(finite["test split"].max()))
    # (beyond, fade_from): a step at each threshold, and the shipped rule, which fades the guess
    # in from the validation split's highest to the highest of both splits.
    rules = [(t, None) for t in sorted({*THRESHOLDS, validation_highest, own_highest})]
    rules.append((own_highest, validation_highest))
    held_out_hashes = training_split_hashes(classifier.card)
    originals = scan_dataset("../shared/data/pbc-originals", tuple(names))
    result = {
        "model": classifier.name,
        "sha256": classifier.card.get("sha256"),
        "unidentified_threshold": classifier.unidentified_threshold,
        "validation_highest_score": validation_highest,
        "validation_and_test_highest_score": own_highest,
        "sets": {},
    }
    for title, outcome in saved.items():
        scopes = {title: np.ones(len(outcome["truth"]), bool)}
        if title == "pbc-originals":
            scopes["pbc-originals (held out)"] = np.array(
                [h not in held_out_hashes for h in originals.hashes]
            )
        for scope, keep in scopes.items():
            part = {k: v[keep] for k, v in outcome.items()}
            finite = part["scores"][np.isfinite(part["scores"])]
            own = part["probabilities"].argmax(1) == part["truth"]
            row = {
                "cells": int(keep.sum()),
                "outside_range": int(np.isposinf(part["scores"]).sum()),
                "highest_finite_score": round(float(finite.max()), 3) if len(finite) else None,
                "by_threshold": {},
            }
            for threshold, fade_from in rules:
                rows, written = guessed(part, threshold, classifier, fade_from)
                right = written.argmax(1) == part["truth"]
                key = str(round(threshold, 4))
                if fade_from is not None:
                    key = f"fade {round(fade_from, 4)} to {key}"
                row["by_threshold"][key] = {
                    "guessed": int(rows.sum()),
                    "accuracy": round(float(right.mean()), 4),
                    "ece": round(float(expected_calibration_error(part["truth"], written)), 4),
                    "made_right": int((right & ~own).sum()),
                    "made_wrong": int((~right & own).sum()),
                }
            result["sets"][scope] = row
            print(scope, json.dumps(row), flush=True)
    result.update(seconds=round(time.time() - started, 1), command=" ".join(sys.argv))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
