"""Can a guard catch the shifted-stain neutrophils the default calls eosinophils? (issue 21)

With the acquisition range off (a stand-in for a lab whose backgrounds pass it), the default
leaves ext-tecom's low-resolution copy with about a tenth of its cells wrong and unflagged,
nearly all neutrophils served as eosinophils with high confidence. This study measures three
candidate guards against the served flags (novelty over the card's threshold, or calibrated
confidence under ``low_confidence_threshold``; the second opinion is left out, so every guard is
compared with the same base):

- **neighbour vote**: fewer than half of the 10 nearest training cells in feature space (the
  novelty detector's bank, labels recomputed from the card's split) share the served class
  (the k-NN side of Jiang et al., "To Trust or Not to Trust a Classifier", NeurIPS 2018);
- **per-class novelty**: the k-NN distance over a threshold of the served class's own, the
  given quantile of the validation cells served as that class;
- **stain-standardised view**: the image with each optical-density channel's 99th percentile
  set to PBC's (``lab_factor_study.py``'s "OD normalised to PBC"), one more single-view forward
  pass; flagged when that view gives the served class less than a floor.

For each it prints the share of the validation split it newly flags (the cost on the source
lab) and, on each other-lab set, silent errors before and after and the right unflagged answers
it would flag. Reads the features cached by ``scripts/trust_features.py``:

    .venv/bin/python scripts/trust_features.py --model hybrid --sets val lowres tecom \\
        --folder lowres=cache/ext-tecom-lowres --folder tecom=../shared/data/ext-tecom
    .venv/bin/python scripts/eosinophil_guard_study.py --out docs/eosinophil-guard-study.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "scripts" / "gpu")]

from lab_factor_study import pbc_reference, resized, standardisations  # noqa: E402
from pack import model_split  # noqa: E402

from bcclassify.data.imaging import load_image  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402
from bcclassify.serving.trust import l2_normalise, temper, training_subset  # noqa: E402

CACHE = ROOT / "cache" / "trust"
NEIGHBOURS = 10
QUANTILES = (0.99, 0.995, 0.997)
FLOORS = (0.5, 0.3)


def bank_labels(classifier, dataset, split, train_limit: int = 4000) -> np.ndarray:
    """Labels of the novelty bank's rows: calibrate's training-split subset, in its order."""
    seed = int(classifier.card["training_config"]["seed"])
    chosen = training_subset(split.train, train_limit, seed)
    labels = dataset.labels[chosen]
    if len(labels) != len(classifier.novelty.arrays["bank"]):
        raise SystemExit("the bank is not calibrate's training subset; rerun calibrate")
    return labels


def signals(classifier, cached: dict, bank: np.ndarray, labels: np.ndarray) -> dict:
    """Served class, base flags and the two feature-space scores of each cached cell."""
    detector = classifier.novelty
    served = temper(cached["served"], classifier.temperature)
    predicted = served.argmax(axis=1)
    base = (detector.score(cached["features"]) > detector.threshold) | (
        served.max(axis=1) < classifier.threshold
    )
    sims = l2_normalise(cached["features"]).astype(np.float32) @ bank.T
    nearest = np.argsort(-sims, axis=1)[:, :NEIGHBOURS]
    vote = (labels[nearest] == predicted[:, None]).mean(axis=1)
    knn = 1.0 - np.sort(sims, axis=1)[:, -NEIGHBOURS]
    return {
        "truth": cached["labels"],
        "predicted": predicted,
        "base": base,
        "vote": vote,
        "knn": knn,
    }


def effect(cells: dict, guard: np.ndarray) -> dict:
    wrong = cells["predicted"] != cells["truth"]
    silent = wrong & ~cells["base"]
    right = ~wrong & ~cells["base"]
    return {
        "silent_before": int(silent.sum()),
        "silent_after": int((silent & ~guard).sum()),
        "right_unflagged_newly_flagged": int((right & guard).sum()),
        "right_unflagged": int(right.sum()),
        "num_cells": int(len(guard)),
    }


def stain_view_support(classifier, paths, predicted, transform) -> np.ndarray:
    """The standardised view's probability (one view, uncalibrated) of each served class."""
    support = []
    for start in range(0, len(paths), 16):
        batch = np.stack(
            [
                resized(transform(load_image(p).astype(np.float32)), classifier.image_size)
                for p in paths[start : start + 16]
            ]
        )
        probs = classifier.predict_pixels(batch, views=("identity",))
        support.append(probs[np.arange(len(batch)), predicted[start : start + 16]])
    return np.concatenate(support)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hybrid")
    parser.add_argument("--sets", nargs="+", default=["tecom", "lowres"])
    parser.add_argument("--pbc-cells", type=int, default=500, help="test cells for the view's cost")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()
    classifier = load_model(args.model)
    dataset, split, *_ = model_split(dict(classifier.card), None)
    bank = np.asarray(classifier.novelty.arrays["bank"], dtype=np.float32)
    labels = bank_labels(classifier, dataset, split)

    def cached(name: str) -> dict:
        with np.load(CACHE / args.model / f"{name}.npz") as stored:
            return {key: stored[key] for key in stored.files}

    val = signals(classifier, cached("val"), bank, labels)
    sets = {name: (cached(name), None) for name in args.sets}
    sets = {name: (raw, signals(classifier, raw, bank, labels)) for name, (raw, _) in sets.items()}
    record: dict = {"model": args.model, "sha256": classifier.card.get("sha256"), "guards": {}}

    def report(name: str, val_guard: np.ndarray, guards: dict, note: str) -> None:
        row = {
            "note": note,
            "validation_newly_flagged": float((val_guard & ~val["base"]).mean()),
            **{s: effect(sets[s][1], g) for s, g in guards.items()},
        }
        record["guards"][name] = row
        print(name, json.dumps(row), flush=True)

    vote_note = f"fewer than half of the {NEIGHBOURS} nearest training cells share the class"
    report(
        "neighbour vote",
        val["vote"] < 0.5,
        {s: cells["vote"] < 0.5 for s, (_, cells) in sets.items()},
        vote_note,
    )
    for quantile in QUANTILES:
        per_class = np.array(
            [np.quantile(val["knn"][val["predicted"] == c], quantile) for c in range(8)]
        )
        report(
            f"per-class novelty q{quantile}",
            val["knn"] > per_class[val["predicted"]],
            {s: cells["knn"] > per_class[cells["predicted"]] for s, (_, cells) in sets.items()},
            f"k-NN distance over the {quantile} quantile of validation cells served as the class",
        )

    # The standardised view: PBC's background and nucleus density from 200 test cells, as in
    # lab_factor_study.py; its cost measured on test cells (forward passes, not cached).
    rng = np.random.default_rng(7)
    pbc_background, pbc_od99 = pbc_reference(dataset, split, rng)
    transform = standardisations(pbc_background, pbc_od99)["OD normalised to PBC"]
    supports = {
        s: stain_view_support(classifier, list(raw["paths"]), cells["predicted"], transform)
        for s, (raw, cells) in sets.items()
    }
    test_cells = rng.permutation(split.test)[: args.pbc_cells]
    test_paths = [dataset.paths[i] for i in test_cells]
    test_predicted = np.concatenate(
        [
            classifier.predict_pixels(
                np.stack([load_image(p, classifier.image_size) for p in test_paths[b : b + 16]]),
                views=("identity",),
            ).argmax(axis=1)
            for b in range(0, len(test_paths), 16)
        ]
    )
    test_support = stain_view_support(classifier, test_paths, test_predicted, transform)
    for floor in FLOORS:
        guard_name = f"stain-standardised view < {floor}"
        record["guards"][guard_name] = {
            "note": "one more single-view pass on the image with its OD normalised to PBC's",
            "pbc_test_newly_flagged": float((test_support < floor).mean()),
            "pbc_test_cells": len(test_paths),
            **{s: effect(sets[s][1], supports[s] < floor) for s in sets},
        }
        print(guard_name, json.dumps(record["guards"][guard_name]), flush=True)
    record["seconds"] = round(time.time() - started, 1)
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
