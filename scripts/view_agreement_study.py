"""Instability under the test-time views as a flag (issue 21, target 1): what it would add.

The default serves the mean of four views (the image as given, flipped left-right, flipped
up-down, turned 180 degrees). A cell whose views disagree on the class is one the model does
not see the same way twice; on another lab's cells that may mark wrong answers that the
calibrated confidence, the novelty score and the second opinion let through. This study serves
cells exactly as ``predict`` does (one forward pass over the views, recorded on the way) and
counts, per set, the served flags and what each candidate view rule would add:

- ``any view disagrees``: some view's top class is not the served class;
- ``min view support < t``: some view gives the served class less than ``t`` of its probability.

Sets: the validation split (what a rule costs on the source lab; a rule is only worth having if
it adds little there), the test split, other labs' folders with the acquisition range switched
off (standing in for labs whose backgrounds pass it), and two of the shifted labs of
``shifted_lab_study.py`` built from test cells.

    .venv/bin/python scripts/view_agreement_study.py --data ../shared/data/ext-tecom \\
        cache/ext-tecom-lowres --out docs/view-agreement-hybrid.json
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

from lab_factor_study import resized  # noqa: E402
from pack import model_split  # noqa: E402
from shifted_lab_study import looks  # noqa: E402

from bcclassify.data.imaging import collect_image_paths, load_image  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402

SUPPORT_THRESHOLDS = (0.5, 0.3, 0.2)
SHIFTED_LOOKS = ("defocus sigma 3.5", "redder + defocus sigma 2")


def served_with_views(classifier, pixels: np.ndarray) -> tuple[list, np.ndarray]:
    """The served predictions and each served view's probabilities ``(V, N, C)``, from the one
    forward pass that serves them (the pass is recorded, not repeated)."""
    forward = classifier.feature_forward()
    seen: list[np.ndarray] = []

    def recording(stacked):
        features, probs = forward(stacked)
        seen.append(np.asarray(probs, dtype=np.float64))
        return features, probs

    classifier.feature_forward = lambda: recording
    try:
        predictions = classifier.classify_pixels(pixels, [str(i) for i in range(len(pixels))])
    finally:
        del classifier.feature_forward  # the class's method again
    views = classifier.test_time_views
    # trust.features_and_probabilities stacks the image as given first, then the other views
    order = ("identity",) + tuple(v for v in views if v != "identity")
    assert len(seen) == 1, "one forward pass serves the answer and the novelty score"
    per_view = seen[0].reshape(len(order), len(pixels), -1)
    return predictions, per_view[[order.index(v) for v in views]]


def outcome(predictions, per_view: np.ndarray, truth: np.ndarray, names) -> dict:
    labels = np.array([names.index(p.label) for p in predictions])
    wrong = labels != truth
    flagged = np.array([p.flag != "" for p in predictions])
    support = np.take_along_axis(per_view, labels[None, :, None], axis=2)[..., 0].min(axis=0)
    rules = {"any view disagrees": (per_view.argmax(axis=2) != labels[None]).any(axis=0)}
    rules.update({f"min view support < {t:g}": support < t for t in SUPPORT_THRESHOLDS})
    row = {
        "cells": int(len(truth)),
        "accuracy": round(float((~wrong).mean()), 4),
        "flagged": round(float(flagged.mean()), 4),
        "wrong_and_unflagged": round(float((wrong & ~flagged).mean()), 4),
        "rules": {},
    }
    for name, unstable in rules.items():
        row["rules"][name] = {
            "adds_flags": round(float((unstable & ~flagged).mean()), 4),
            "of_them_right": int((unstable & ~flagged & ~wrong).sum()),
            "wrong_and_unflagged_after": round(float((wrong & ~flagged & ~unstable).mean()), 4),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="installed model (default: the default)")
    parser.add_argument("--data", nargs="*", default=[], help="other labs' labelled folders")
    parser.add_argument("--per-class", type=int, default=100, help="split cells a class")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()

    classifier = load_model(args.model)
    size, names = classifier.image_size, list(classifier.class_names)
    dataset, split, *_ = model_split(dict(classifier.card), None)
    rng = np.random.default_rng(args.seed)

    def drawn(members: np.ndarray) -> tuple[list, np.ndarray]:
        labels = dataset.labels[members]
        picked = np.concatenate(
            [rng.permutation(members[labels == k])[: args.per_class] for k in range(len(names))]
        )
        copies = [load_image(dataset.paths[i]).astype(np.float32) for i in picked]
        return copies, dataset.labels[picked]

    sets = {"validation split": drawn(split.val), "test split": drawn(split.test)}
    test_copies, test_truth = sets["test split"]
    table = looks()
    for look in SHIFTED_LOOKS:
        sets[f"test split, {look}"] = ([table[look](a) for a in test_copies], test_truth)
    gated = set(sets)  # PBC's own cells keep the range; other labs' stand in without it
    for folder in args.data:
        paths = [p for p in collect_image_paths([Path(folder)]) if p.parent.name in names]
        truth = np.array([names.index(p.parent.name) for p in paths])
        sets[f"{Path(folder).name}, range off"] = (
            [load_image(p).astype(np.float32) for p in paths],
            truth,
        )

    acquisition = classifier.acquisition
    result = {
        "model": classifier.name,
        "sha256": classifier.card.get("sha256"),
        "views": list(classifier.test_time_views),
        "per_class": args.per_class,
        "seed": args.seed,
        "sets": {},
    }
    for name, (copies, truth) in sets.items():
        classifier.acquisition = acquisition if name in gated else None
        predictions, per_view = [], []
        for start in range(0, len(copies), 32):
            batch = np.stack([resized(a, size) for a in copies[start : start + 32]])
            rows, views = served_with_views(classifier, batch)
            predictions += rows
            per_view.append(views)
        row = outcome(predictions, np.concatenate(per_view, axis=1), truth, names)
        result["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    classifier.acquisition = acquisition
    result["seconds"] = round(time.time() - started, 1)
    result["command"] = " ".join(sys.argv)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
