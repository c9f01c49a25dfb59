"""How far to mix a fine-tuned run with the shipped weights it started from (issue 21; WiSE-FT).

For each share ``alpha`` of the run's weights, ``(1 - alpha) * start + alpha * run`` (the same
arithmetic as ``python -m bcclassify interpolate``, :func:`interpolated_weights`) is scored, one
view (the image as given), on the start model's PBC test split and on other labs' labelled
folders through the served resizing. Nothing is written to model_store/; ``interpolate`` then
records the chosen mixture as a run.

    .venv/bin/python scripts/interpolation_study.py \\
        --run 20261206-hybrid-213px-crop75-defocus-cpu --alphas 0 0.3 0.5 0.7 1 \\
        --data ../shared/data/ext-tecom cache/ext-tecom-lowres --out docs/interpolation-study.json

The run's model.keras must be on this machine (runs keep their weights out of git).
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

from lab_factor_study import resized  # noqa: E402
from pack import model_split  # noqa: E402

from bcclassify.data.imaging import collect_image_paths, load_image  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402
from bcclassify.storage.runs import RunRecord  # noqa: E402
from bcclassify.storage.store import sha256_file  # noqa: E402
from bcclassify.training.interpolate import interpolated_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run continued from --start")
    parser.add_argument("--start", default="hybrid", help="the installed model it started from")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--data", nargs="*", default=[], help="other labs' labelled folders")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import keras

    started = time.time()
    classifier = load_model(args.start, fold_batch_norm=False, compiled=False)
    model = classifier.model
    size, names = classifier.image_size, list(classifier.class_names)
    tuned = keras.models.load_model(RunRecord.of(args.run).folder / "model.keras", safe_mode=True)
    start_weights, tuned_weights = model.get_weights(), tuned.get_weights()
    dataset, split, *_ = model_split(dict(classifier.card), None)
    sets = {
        "pbc-test": (
            np.stack([load_image(dataset.paths[i], size) for i in split.test]),
            dataset.labels[split.test],
        )
    }
    for folder in args.data:
        paths = [p for p in collect_image_paths([folder]) if p.parent.name in names]
        sets[Path(folder).name] = (
            np.stack([resized(load_image(p).astype(np.float32), size) for p in paths]),
            np.array([names.index(p.parent.name) for p in paths]),
        )
    rows = {}
    for alpha in args.alphas:
        model.set_weights(interpolated_weights(start_weights, tuned_weights, alpha))
        row = {}
        for name, (pixels, labels) in sets.items():
            predicted = model.predict(pixels.astype(np.float32), batch_size=32, verbose=0)
            predicted = predicted.argmax(1)
            row[name] = round(float((predicted == labels).mean()) * 100, 2)
            if name != "pbc-test":
                row[name + " per class"] = {
                    names[k]: int((predicted[labels == k] == k).sum()) for k in np.unique(labels)
                }
        rows[f"{alpha:g}"] = row
        print(alpha, json.dumps(row), flush=True)
    record = {
        "start": f"model:{classifier.name}",
        "start_card_sha256": sha256_file(classifier.folder / "card.json"),
        "run": args.run,
        "views": ["identity"],
        "accuracy_percent_by_alpha": rows,
        "seconds": round(time.time() - started, 1),
        "command": " ".join(sys.argv),
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
