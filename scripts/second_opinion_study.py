"""What the second opinion catches on a labelled folder (issue 21), with and without the
acquisition gate.

A CellaVision lab's cells pass the acquisition range (its backgrounds look like PBC's), so on
them only the feature-based flags and the second opinion stand between a wrong class and the
reviewer. ext-tecom's cells do not pass it; scoring them with the gate switched off stands in for
such a lab. For each setting it prints the served model's accuracy and, as `predict` would flag
them: flagged, disputed, and wrong-and-unflagged, with and without the card's second opinion.

    .venv/bin/python scripts/second_opinion_study.py ../shared/data/ext-tecom [--model hybrid]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bcclassify import CLASS_NAMES  # noqa: E402
from bcclassify.data.imaging import collect_image_paths  # noqa: E402
from bcclassify.serving.classifier import iter_sources, load_model  # noqa: E402


def figures(predictions, truth: np.ndarray) -> dict:
    labels = np.array([CLASS_NAMES.index(p.label) for p in predictions])
    flags = np.array([p.flag for p in predictions])
    wrong = labels != truth
    flagged = flags != ""
    # The same cells without the second opinion (the colour check stays on).
    flagged_before = np.array(
        [p.unidentified or p.disputed_by_colour or p.confidence < p.threshold for p in predictions]
    )
    silent = wrong & ~flagged
    pairs = zip(truth[silent], labels[silent])
    silent_by_class = Counter(f"{CLASS_NAMES[t]} as {CLASS_NAMES[p]}" for t, p in pairs)
    return {
        "accuracy": float((~wrong).mean()),
        "flagged": float(flagged.mean()),
        "disputed": float((flags == "disputed").mean()),
        "wrong_and_unflagged": float((wrong & ~flagged).mean()),
        "flagged_without_second_opinion": float(flagged_before.mean()),
        "wrong_and_unflagged_without_second_opinion": float((wrong & ~flagged_before).mean()),
        "silent_errors": dict(silent_by_class.most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="class folders of labelled cells")
    parser.add_argument("--model", default=None, help="installed model (default: the default)")
    args = parser.parse_args()
    paths = collect_image_paths([Path(args.folder)])
    truth = np.array([CLASS_NAMES.index(p.parent.name) for p in paths])
    classifier = load_model(args.model)
    served = classifier.classify(iter_sources(paths))
    classifier.acquisition = None  # stands in for a lab whose backgrounds pass the range
    ungated = classifier.classify(iter_sources(paths))
    result = {
        "model": classifier.name,
        "second_opinion": classifier.card.get("second_opinion", {}).get("model"),
        "min_support": classifier.card.get("second_opinion", {}).get("min_support"),
        "folder": args.folder,
        "num_images": len(paths),
        "as_served": figures(served, truth),
        "without_acquisition_gate": figures(ungated, truth),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
