"""How much of an installed model survives the switch to group norm, before any training (issue 21).

Converts the model's batch norms to group norms twice: with their scale and offset kept (the
old conversion) and fitted to the batch norms' outputs on training cells
(``bcclassify.models.norm_transfer``, what ``train --norm group`` and ``pack.py --norm group``
now do). Scores the batch-norm model and both conversions, one view each, on cells of the
model's own test split and on every labelled folder given; writes a JSON record.

    .venv/bin/python scripts/norm_fit_study.py --model robust-mobilenetv2 \\
        --data ../shared/data/ext-tecom --out docs/norm-fit-robust-mobilenetv2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "gpu")]

from pack import calibration_pixels, model_split  # noqa: E402

from bcclassify.data.imaging import collect_image_paths, load_image  # noqa: E402
from bcclassify.models.norm_transfer import calibration_indices, fit_group_norm_affine  # noqa: E402
from bcclassify.models.registry import with_group_norm  # noqa: E402
from bcclassify.serving.classifier import load_model, verify_model_files  # noqa: E402


def labelled_folder(root: Path, class_names: list[str], size: int):
    pixels, labels = [], []
    for path in collect_image_paths([root]):
        if path.parent.name in class_names:
            pixels.append(load_image(path, size))
            labels.append(class_names.index(path.parent.name))
    return np.stack(pixels), np.array(labels)


def accuracy(model, pixels: np.ndarray, labels: np.ndarray, batch: int = 32) -> float:
    probabilities = np.concatenate(
        [
            np.asarray(model(pixels[i : i + batch].astype(np.float32), training=False))
            for i in range(0, len(pixels), batch)
        ]
    )
    return float((probabilities.argmax(1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="installed model (default: the default)")
    parser.add_argument("--per-class", type=int, default=25, help="test-split cells a class")
    parser.add_argument("--fit-per-class", type=int, default=32, help="training cells a class")
    parser.add_argument("--data", nargs="*", default=[], help="labelled folders to score too")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    card = verify_model_files(args.model)
    name, size = card["name"], int(card["image_size"])
    dataset, split, seed, _, _ = model_split(card, None)
    class_names = list(dataset.class_names)
    fit_cells = calibration_pixels(dataset, split.train, args.fit_per_class, seed, size)
    test = split.test[calibration_indices(dataset.labels[split.test], args.per_class, args.seed)]
    sets = {
        "test split": (
            np.stack([load_image(dataset.paths[i], size) for i in test]),
            dataset.labels[test],
        )
    }
    for folder in args.data:
        sets[Path(folder).name] = labelled_folder(Path(folder), class_names, size)

    source = load_model(name, fold_batch_norm=False, compiled=False).model
    naive = with_group_norm(source)
    fitted = with_group_norm(source)
    started = time.perf_counter()
    fit = fit_group_norm_affine(source, fitted, fit_cells)
    fit["seconds"] = round(time.perf_counter() - started, 1)
    models = {"batch norm": source, "group norm, scale and offset kept": naive}
    models["group norm, fitted"] = fitted
    scores = {
        label: {s: accuracy(model, *cells) for s, cells in sets.items()}
        for label, model in models.items()
    }
    record = {
        "model": name,
        "card_training_run": card.get("training_run"),
        "cells": {s: int(len(cells[1])) for s, cells in sets.items()},
        "fit": fit,
        "accuracy_one_view": scores,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
