"""What serving alone could change for other labs (issue 21, target 2): views and class priors.

Two questions about the installed model, answered without training:

1. ``views``: do test-time views beyond the served four (the square's other symmetries, zooming
   out and in, random draws of the training augmentations, the image in greyscale) carry another
   lab's cells better?
   Each view's calibrated probabilities are recorded once; combinations average them.
2. ``priors``: how much of the error on another lab is the training set's class mix? PBC's
   folders are near balanced (an eosinophil is as likely as a neutrophil), where a lab's blood
   is mostly neutrophils and lymphocytes. The served probabilities are re-weighted by
   ``(prior / PBC's) ** strength`` (Saerens et al., Neural Computation 14, 2002), for a textbook
   adult differential and for the prior that EM estimates from each set itself.

PBC's own test split (``--per-class`` cells a class) is measured beside the other labs: it is
near balanced, as the withheld PBC originals are, so it shows what a change costs there.

    .venv/bin/python scripts/test_time_study.py --data ../shared/data/ext-tecom \\
        cache/ext-tecom-lowres --out docs/test-time-study-hybrid.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "gpu")]

from lab_factor_study import background  # noqa: E402
from pack import model_split  # noqa: E402

from bcclassify.data.datasets import scan_dataset  # noqa: E402
from bcclassify.data.imaging import load_image  # noqa: E402
from bcclassify.serving.classifier import VIEW_TRANSFORMS, load_model  # noqa: E402

SERVED = ("identity", "flip_lr", "flip_ud", "rot180")
ZOOMS = (0.8, 0.9, 1.12, 1.25)  # < 1: the frame grown around the cell; > 1: a centre crop
DRAWS = 4  # random draws of each augmentation preset
# Luma weights (ITU-R BT.601): the greyscale view keeps the cell's shapes and densities and drops
# the stain's colours, the cue that turns other labs' neutrophils into eosinophils.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)

# A healthy adult's white-cell differential, the middle of the usual reference ranges
# (neutrophils 40-70%, lymphocytes 20-40%, monocytes 2-8%, eosinophils 1-4%, basophils 0.5-1%),
# with small shares for the classes a healthy smear rarely shows in a crop (immature
# granulocytes, erythroblasts) and for platelets, which are not counted with white cells.
ADULT_DIFFERENTIAL = {
    "basophil": 0.005,
    "eosinophil": 0.03,
    "erythroblast": 0.005,
    "ig": 0.01,
    "lymphocyte": 0.30,
    "monocyte": 0.06,
    "neutrophil": 0.55,
    "platelet": 0.04,
}


def zoomed(pixels: np.ndarray, factor: float) -> np.ndarray:
    """The cell shown ``factor`` times as large, at the same input size."""
    h, w, _ = pixels.shape
    if factor < 1:
        side = round(max(h, w) / factor)
        canvas = np.tile(background(pixels), (side, side, 1))
        y, x = (side - h) // 2, (side - w) // 2
        canvas[y : y + h, x : x + w] = pixels
    else:
        keep_h, keep_w = round(h / factor), round(w / factor)
        y, x = (h - keep_h) // 2, (w - keep_w) // 2
        canvas = pixels[y : y + keep_h, x : x + keep_w]
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return np.asarray(image.resize((w, h), Image.BICUBIC), dtype=np.float32)


def view_batches(pixels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every view of a batch at the input size, by name."""
    import tensorflow as tf

    from bcclassify.data.augment import augment_batch, preset

    views = {name: transform(pixels) for name, transform in VIEW_TRANSFORMS.items()}
    for factor in ZOOMS:
        views[f"zoom {factor:g}"] = np.stack([zoomed(a, factor) for a in pixels])
    views["greyscale"] = np.repeat((pixels @ LUMA)[..., None], 3, axis=-1)
    generator = tf.random.Generator.from_seed(seed)
    for name in ("standard", "wide"):
        for k in range(DRAWS):
            drawn = augment_batch(pixels, generator, preset(name)).numpy()
            views[f"{name} draw {k}"] = np.clip(drawn, 0, 255)
    return views


def combinations() -> dict[str, list[str]]:
    return {
        "identity": ["identity"],
        "served 4 views": list(SERVED),
        "8 symmetries": list(VIEW_TRANSFORMS),
        "served + zoom 0.9, 1.12": [*SERVED, "zoom 0.9", "zoom 1.12"],
        "served + zoom 0.8, 1.25": [*SERVED, "zoom 0.8", "zoom 1.25"],
        "served + standard draws": [*SERVED, *(f"standard draw {k}" for k in range(DRAWS))],
        "served + wide draws": [*SERVED, *(f"wide draw {k}" for k in range(DRAWS))],
        "served + greyscale (a fifth)": [*SERVED, "greyscale"],
        "served + greyscale (half)": [*SERVED, *["greyscale"] * len(SERVED)],
    }


def reweighted(probs: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    out = probs * ratio
    return out / out.sum(axis=1, keepdims=True)


def em_prior(probs: np.ndarray, source: np.ndarray, steps: int = 100) -> np.ndarray:
    """The class prior of a set that EM (Saerens et al. 2002) estimates from its probabilities."""
    prior = source.copy()
    for _ in range(steps):
        prior = reweighted(probs, prior / source).mean(axis=0)
    return prior


def predicted(classifier, pixels: np.ndarray, views, batch: int = 32) -> np.ndarray:
    """The classifier's calibrated probabilities over ``views``, a batch at a time."""
    return np.concatenate(
        [
            classifier.predict_pixels(pixels[i : i + batch], views=views)
            for i in range(0, len(pixels), batch)
        ]
    )


def accuracy(probs: np.ndarray, truth: np.ndarray) -> float:
    return round(float((probs.argmax(1) == truth).mean()), 4)


def per_class(probs: np.ndarray, truth: np.ndarray, names) -> dict[str, float]:
    right = probs.argmax(1) == truth
    return {names[c]: round(float(right[truth == c].mean()), 4) for c in np.unique(truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="installed model (default: the default)")
    parser.add_argument("--per-class", type=int, default=40, help="test-split cells a class")
    parser.add_argument("--data", nargs="*", default=[], help="other labs' labelled folders")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()

    classifier = load_model(args.model)
    size, names = classifier.image_size, list(classifier.class_names)
    dataset, split, *_ = model_split(dict(classifier.card), None)
    counts = np.bincount(dataset.labels, minlength=len(names)).astype(float)
    source_prior = counts / counts.sum()  # the class mix of PBC's folders, which training saw
    adult = np.array([ADULT_DIFFERENTIAL[n] for n in names])

    rng = np.random.default_rng(args.seed)
    test_labels = dataset.labels[split.test]
    picked = np.concatenate(
        [rng.permutation(split.test[test_labels == c])[: args.per_class] for c in range(len(names))]
    )
    sets = {"PBC test split": ([dataset.paths[i] for i in picked], dataset.labels[picked])}
    for folder in args.data:
        lab = scan_dataset(folder, tuple(names))
        sets[Path(folder).name] = (lab.paths, lab.labels)

    result: dict = {
        "model": classifier.name,
        "sha256": classifier.card.get("sha256"),
        "served_views": list(classifier.test_time_views),
        "per_class": args.per_class,
        "seed": args.seed,
        "zooms": list(ZOOMS),
        "draws_per_preset": DRAWS,
        "source_prior": dict(zip(names, source_prior.round(4).tolist(), strict=True)),
        "adult_differential": ADULT_DIFFERENTIAL,
        "sets": {},
    }
    for set_name, (paths, truth) in sets.items():
        pixels = np.stack([load_image(p, size).astype(np.float32) for p in paths])
        probs = {
            view: predicted(classifier, batch, ("identity",))
            for view, batch in view_batches(pixels, args.seed).items()
        }
        served = predicted(classifier, pixels, SERVED)
        estimated = em_prior(served, source_prior)
        row = {
            "cells": len(paths),
            "single_views": {v: accuracy(p, truth) for v, p in probs.items()},
            "views": {
                title: accuracy(np.mean([probs[v] for v in members], axis=0), truth)
                for title, members in combinations().items()
            },
            "priors": {
                "served (PBC's mix)": accuracy(served, truth),
                **{
                    f"adult differential, strength {s:g}": accuracy(
                        reweighted(served, (adult / source_prior) ** s), truth
                    )
                    for s in (0.5, 1.0)
                },
                "EM estimate from the set": accuracy(
                    reweighted(served, estimated / source_prior), truth
                ),
            },
            "per_class": {
                "served": per_class(served, truth, names),
                "adult differential, strength 1": per_class(
                    reweighted(served, adult / source_prior), truth, names
                ),
            },
            "em_prior": dict(zip(names, estimated.round(3).tolist(), strict=True)),
        }
        result["sets"][set_name] = row
        print(set_name, json.dumps({k: row[k] for k in ("views", "priors")}), flush=True)
    result["seconds"] = round(time.time() - started, 1)
    result["command"] = " ".join(sys.argv)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
