"""Silent errors on labs built from PBC's own test cells (issue 21, target 1).

The withheld other-lab cells pass the acquisition range, so there only the feature-based flags and
the second opinion stand between a wrong class and the reviewer. ext-tecom cannot stand in for
such a lab: its backgrounds lie outside the range, and even with the range off its features are
so unlike PBC's that three quarters of it is flagged. This study builds nearer labs: the model's
own test-split cells, every image through one fixed change of look, the background kept where
the change is a stain's:

- stain intensity and hue: each pixel's optical density relative to the image's background
  (so the background stays as it is) times per-channel gains;
- focus and resolution: Gaussian defocus, and the frame taken down to a lower resolution and
  back, as a camera with fewer pixels across the cell;
- the two together;
- a monochrome camera: every image in greyscale (luma in all three channels, as a greyscale
  upload is served).

``--other-lab DIR`` adds another lab's labelled cells, made to pass as a lab whose crops the
acquisition range accepts: each image's background brought to PBC's colour (per-channel gain),
and then also the cell brought to PBC's scale (the frame grown around it with its background, by
the square root of the ratio of the two sets' median nucleus shares of the frame). ext-tecom
with the range switched off keeps its yellow ground, which the novelty score alone flags; these
looks take that cue away, as a CellaVision lab's crops would.

Every cell goes the served way (the training copy's form, then the input size; the card's views,
calibration, novelty, acquisition range and second opinion), one forward pass per look. Per look:
accuracy, the share flagged, the share the range refuses, and wrong-and-unflagged with and
without the second opinion, overall and per true class.

    .venv/bin/python scripts/shifted_lab_study.py --per-class 40 --other-lab \
        ../shared/data/ext-tecom cache/ext-tecom-lowres --out docs/shifted-labs-hybrid.json

(``--looks`` with no name serves only the other labs; ``--looks "greyscale camera"
--out docs/shifted-labs-greyscale.json`` the monochrome camera alone.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "gpu")]

from lab_factor_study import blurred, resized  # noqa: E402
from pack import model_split  # noqa: E402

from bcclassify.data.datasets import scan_dataset  # noqa: E402
from bcclassify.data.imaging import load_image  # noqa: E402
from bcclassify.serving.acquisition import summaries  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402
from bcclassify.serving.colour_check import greyscale  # noqa: E402

# Optical-density gains per RGB channel. (1.3, 2.4, 1.9) is ext-tecom's nucleus-to-PBC ratio
# (scripts/lab_factor_study.py): a stain that absorbs green far more, so nuclei turn red-brown.
STAINS = {
    "paler x0.6": (0.6, 0.6, 0.6),
    "denser x1.6": (1.6, 1.6, 1.6),
    "redder (tecom ratio)": (1.3, 2.4, 1.9),
    "bluer": (1.5, 1.0, 0.8),
}


def background(pixels: np.ndarray) -> np.ndarray:
    """The mean colour of the brightest fifth of the frame (as the acquisition range reads it)."""
    lum = pixels.mean(-1)
    return pixels[lum >= np.percentile(lum, 80)].mean(axis=0)


def restained(pixels: np.ndarray, gains) -> np.ndarray:
    """Optical density relative to the background, times ``gains``: the background stays."""
    bg = np.maximum(background(pixels), 1.0)
    od = -np.log(np.clip(pixels, 1.0, 255.0) / bg)
    return np.clip(bg * np.exp(-np.maximum(od, 0.0) * np.asarray(gains, np.float32)), 0, 255)


def lower_resolution(pixels: np.ndarray, factor: float) -> np.ndarray:
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    w, h = image.size
    small = image.resize((round(w * factor), round(h * factor)), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.float32)


def looks() -> dict:
    """Each synthetic lab: a fixed change applied to every 224 px training copy."""
    table = {"as given": lambda a: a}
    for name, gains in STAINS.items():
        table[f"stain {name}"] = lambda a, g=gains: restained(a, g)
    table["defocus sigma 2"] = lambda a: blurred(a, 2.0)
    table["defocus sigma 3.5"] = lambda a: blurred(a, 3.5)
    table["resolution x0.4"] = lambda a: lower_resolution(a, 0.4)
    redder, denser = STAINS["redder (tecom ratio)"], STAINS["denser x1.6"]
    table["redder + defocus sigma 2"] = lambda a: blurred(restained(a, redder), 2.0)
    table["denser + resolution x0.5"] = lambda a: lower_resolution(restained(a, denser), 0.5)
    table["greyscale camera"] = lambda a: greyscale(a).astype(np.float32)
    return table


def nucleus_share(pixels: np.ndarray) -> float:
    """The share of the frame darker than half the background's brightness: mostly nucleus."""
    return float((pixels.mean(-1) < 0.5 * background(pixels).mean()).mean())


def framed(pixels: np.ndarray, factor: float) -> np.ndarray:
    """The frame grown around the image with its background colour, the cell ``factor`` as large."""
    h, w, _ = pixels.shape
    side = round(max(h, w) / factor)
    canvas = np.tile(background(pixels), (side, side, 1))
    y, x = (side - h) // 2, (side - w) // 2
    canvas[y : y + h, x : x + w] = pixels
    return canvas


def passing_looks(pbc_background: np.ndarray, scale: float) -> dict:
    """Another lab's cells with the cues a CellaVision lab's crops would not show taken away."""

    def balanced(a):
        return np.clip(a * pbc_background / np.maximum(background(a), 1.0), 0, 255)

    return {
        "background to PBC's colour": balanced,
        f"background to PBC's colour, cell x{scale:.2f} (PBC's scale)": lambda a: framed(
            balanced(a), scale
        ),
    }


def test_cells(classifier, per_class: int, seed: int):
    """The installed model's dataset and ``per_class`` of its test-split cells a class, drawn
    with ``seed`` (the same cells for every study that asks for the same two)."""
    dataset, split, *_ = model_split(dict(classifier.card), None)
    rng = np.random.default_rng(seed)
    test_labels = dataset.labels[split.test]
    classes = range(len(classifier.class_names))
    picked = [rng.permutation(split.test[test_labels == c])[:per_class] for c in classes]
    return dataset, np.concatenate(picked)


def outcome(predictions, outside: np.ndarray, truth: np.ndarray, names) -> dict:
    """The served flags (range first, as serving gates), and what happens without the range."""
    labels = np.array([names.index(p.label) for p in predictions])
    wrong = labels != truth
    flag_features = np.array([p.flag != "" for p in predictions])
    before_second = np.array(
        [p.unidentified or p.disputed_by_colour or p.confidence < p.threshold for p in predictions]
    )
    flagged = flag_features | outside
    silent = wrong & ~flagged
    pairs = zip(truth[silent], labels[silent])
    silent_by_class = Counter(f"{names[t]} as {names[p]}" for t, p in pairs)
    confidence = np.array([p.confidence for p in predictions])
    return {
        "accuracy": round(float((~wrong).mean()), 4),
        "outside_range": round(float(outside.mean()), 4),
        "flagged": round(float(flagged.mean()), 4),
        "wrong_and_unflagged": round(float(silent.mean()), 4),
        "wrong_and_unflagged_without_second_opinion": round(
            float((wrong & ~(before_second | outside)).mean()), 4
        ),
        "without_range": {
            "flagged": round(float(flag_features.mean()), 4),
            "wrong_and_unflagged": round(float((wrong & ~flag_features).mean()), 4),
            "wrong_and_unflagged_without_second_opinion": round(
                float((wrong & ~before_second).mean()), 4
            ),
        },
        "silent_errors": dict(silent_by_class.most_common()),
        "silent_confidences": sorted(round(float(c), 3) for c in confidence[silent]),
        "accuracy_by_class": {
            names[c]: round(float((~wrong[truth == c]).mean()), 4) for c in np.unique(truth)
        },
    }


def serve(classifier, acquisition, pixels: np.ndarray, truth: np.ndarray, names) -> dict:
    """Serve a batch as ``predict`` would and score it (the range applied apart, see outcome)."""
    outside = (
        acquisition.outside(summaries(pixels))
        if acquisition is not None
        else np.zeros(len(pixels), bool)
    )
    predictions = []
    for start in range(0, len(pixels), 32):
        batch = pixels[start : start + 32]
        predictions += classifier.classify_pixels(batch, [str(i) for i in range(len(batch))])
    return outcome(predictions, outside, truth, names)


def report(title: str, row: dict) -> None:
    print(
        f"{title:60s} acc {row['accuracy']:.3f} outside {row['outside_range']:.3f} "
        f"flagged {row['flagged']:.3f} silent {row['wrong_and_unflagged']:.3f} "
        f"(no 2nd {row['wrong_and_unflagged_without_second_opinion']:.3f}; "
        f"no range {row['without_range']['wrong_and_unflagged']:.3f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="installed model (default: the default)")
    parser.add_argument("--per-class", type=int, default=40, help="test-split cells a class")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--looks", nargs="*", default=None, help="names of looks (default: all; none: no looks)"
    )
    parser.add_argument(
        "--other-lab", nargs="*", default=[], help="other labs' labelled folders, made to pass"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()

    classifier = load_model(args.model)
    acquisition, classifier.acquisition = classifier.acquisition, None  # applied below, apart
    size, names = classifier.image_size, list(classifier.class_names)
    dataset, picked = test_cells(classifier, args.per_class, args.seed)
    truth = dataset.labels[picked]
    copies = [load_image(dataset.paths[i]).astype(np.float32) for i in picked]

    table = looks()
    chosen = list(table) if args.looks is None else args.looks
    result = {
        "model": classifier.name,
        "sha256": classifier.card.get("sha256"),
        "views": list(classifier.test_time_views),
        "second_opinion": (classifier.card.get("second_opinion") or {}).get("model"),
        "class_confidence_floors": classifier.class_floors,
        "colour_check": classifier.card.get("colour_check"),
        "low_confidence_threshold": classifier.threshold,
        "cells": int(len(picked)),
        "per_class": args.per_class,
        "seed": args.seed,
        "looks": {},
    }
    for look in chosen:
        pixels = np.stack([resized(table[look](a), size) for a in copies])
        result["looks"][look] = serve(classifier, acquisition, pixels, truth, names)
        report(look, result["looks"][look])

    if args.other_lab:
        pbc_background = np.median([background(a) for a in copies], axis=0)
        result["pbc_background"] = pbc_background.round(1).tolist()
        result["other_labs"] = {}
    for folder in args.other_lab:
        lab = scan_dataset(folder, tuple(names))
        lab_truth = lab.labels
        originals = [load_image(p).astype(np.float32) for p in lab.paths]
        # PBC's cells of the same classes, so that the ratio compares like with like
        same = np.isin(truth, np.unique(lab_truth))
        pbc_share = np.median([nucleus_share(a) for a, keep in zip(copies, same) if keep])
        lab_share = np.median([nucleus_share(a) for a in originals])
        scale = float(np.sqrt(pbc_share / lab_share))
        rows = {"nucleus_share_pbc": round(float(pbc_share), 4)}
        rows["nucleus_share_lab"] = round(float(lab_share), 4)
        rows["looks"] = {}
        for look, change in passing_looks(pbc_background, scale).items():
            pixels = np.stack([resized(change(a), size) for a in originals])
            rows["looks"][look] = serve(classifier, acquisition, pixels, lab_truth, names)
            report(f"{Path(folder).name}: {look}", rows["looks"][look])
        result["other_labs"][Path(folder).name] = rows
    result["seconds"] = round(time.time() - started, 1)
    result["command"] = " ".join(sys.argv)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
