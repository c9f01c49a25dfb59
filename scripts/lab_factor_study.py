"""Which part of another lab's look breaks a model (issue 21): a factor study, one view each.

Two measurements, both written to one JSON record:

1. ``synthetic``: cells of the model's own test split, per class, put through a grid of
   stain density (each optical-density channel multiplied by a gain: 1, a uniformly denser
   stain, and ext-tecom's measured nucleus-to-PBC ratio) and defocus (Gaussian blur, sigma in
   pixels at the model's input size). Per cell: accuracy and what the wrong answers were.
2. ``standardised``: every image of a labelled folder from another lab (ext-tecom) put through
   fixed test-time standardisations (background to PBC's colour, OD normalisation, shrinking,
   cropping, sharpening, blanking all but the centre). If one of them fixed a class, it would be
   a cheap answer; none does for the wide-trained hybrid (docs/lab-factors-hybrid.json).

    .venv/bin/python scripts/lab_factor_study.py --model hybrid \\
        --data ../shared/data/ext-tecom --out docs/lab-factors-hybrid.json
    .venv/bin/python scripts/lab_factor_study.py --run RUN_ID --out docs/lab-factors-RUN.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "gpu")]

from pack import fresh_split, model_split  # noqa: E402

from bcclassify.data.imaging import (  # noqa: E402
    RESAMPLE,
    as_training_copy,
    collect_image_paths,
    load_image,
)
from bcclassify.serving.classifier import load_model  # noqa: E402
from bcclassify.storage.runs import RunRecord  # noqa: E402

# ext-tecom's darkest 8% of pixels (nuclei) over PBC's, in optical density per channel (R, G, B),
# measured on 30 lymphocytes and neutrophils of each: the Tecom stain absorbs green 2.4 times as
# strongly.
TECOM_DENSITY = (1.3, 2.4, 1.9)
DENSITIES = {"as stained": (1.0, 1.0, 1.0), "denser x1.5": (1.5, 1.5, 1.5), "tecom": TECOM_DENSITY}
BLURS = (0.0, 3.0, 4.5, 6.0)
GRID_CLASSES = ("erythroblast", "lymphocyte", "monocyte", "neutrophil", "eosinophil")


def density(pixels: np.ndarray, gains) -> np.ndarray:
    """Each optical-density channel (relative to white, as bcclassify.data.augment) times a gain."""
    od = -np.log((pixels.astype(np.float32) + 1.0) / 256.0)
    return np.clip(256.0 * np.exp(-od * np.asarray(gains, np.float32)) - 1.0, 0, 255)


def blurred(pixels: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return pixels
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)


def background(pixels: np.ndarray) -> np.ndarray:
    """The median colour of the brightest quarter of the frame."""
    lum = pixels.mean(-1)
    return np.median(pixels[lum >= np.percentile(lum, 75)], axis=0)


def pbc_reference(dataset, split, rng, cells: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """PBC's background colour and 99th-percentile nucleus OD, from ``cells`` test cells."""
    reference = [
        load_image(dataset.paths[i]).astype(np.float32) for i in rng.permutation(split.test)[:cells]
    ]
    pbc_background = np.median([background(a) for a in reference], axis=0)
    pbc_od99 = np.median(
        [
            np.percentile(-np.log10(np.clip(a, 1, 255) / background(a)).reshape(-1, 3), 99, 0)
            for a in reference
        ],
        axis=0,
    )
    return pbc_background, pbc_od99


def standardisations(pbc_background: np.ndarray, pbc_od99: np.ndarray) -> dict:
    def white_balance(a):
        return np.clip(a * pbc_background / np.maximum(background(a), 1.0), 0, 255)

    def od_normalised(a):  # each channel's 99th-percentile OD set to PBC's
        bg = np.maximum(background(a), 1.0)
        od = -np.log10(np.clip(a, 1, 255) / bg)
        top = np.percentile(od.reshape(-1, 3), 99, axis=0)
        return pbc_background * 10 ** (-od * np.clip(pbc_od99 / np.maximum(top, 1e-3), 0.3, 3))

    def shrunk(a, factor=0.8):  # the frame grown around the cell with its background colour
        h, w, _ = a.shape
        canvas = np.tile(background(a), (round(h / factor), round(w / factor), 1))
        y, x = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
        canvas[y : y + h, x : x + w] = a
        return canvas

    def cropped(a, keep=0.8):
        h, w, _ = a.shape
        y, x = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
        return a[y : h - y, x : w - x]

    def sharpened(a):
        image = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        return np.asarray(image.filter(ImageFilter.UnsharpMask(2, 100, 2)), dtype=np.float32)

    def centre_only(a, radius=0.3):
        h, w, _ = a.shape
        yy, xx = np.mgrid[:h, :w]
        out = a.copy()
        out[np.hypot(yy - h / 2, xx - w / 2) / min(h, w) > radius] = background(a)
        return out

    return {
        "as given": lambda a: a,
        "background to PBC's colour": white_balance,
        "OD normalised to PBC": od_normalised,
        "background + shrunk 0.8": lambda a: shrunk(white_balance(a)),
        "centre crop 0.8": cropped,
        "background + sharpened": lambda a: sharpened(white_balance(a)),
        "all but the centre blanked": centre_only,
    }


def resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """As the served path brings an upload to the model (``load_image``): the training copy's
    form (224 px, JPEG 90), then the model's input size."""
    copy = as_training_copy(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.asarray(Image.fromarray(copy).resize((size, size), RESAMPLE))


def outcome(predicted: np.ndarray, label: int, names) -> dict:
    wrong = Counter(names[p] for p in predicted if p != label)
    return {
        "n": int(len(predicted)),
        "accuracy": round(float((predicted == label).mean()), 4),
        "wrong_as": dict(wrong.most_common(3)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="installed model (default: the default)")
    source.add_argument("--run", default=None, help="a run's model.keras instead")
    parser.add_argument("--per-class", type=int, default=40, help="test-split cells a class")
    parser.add_argument("--data", nargs="*", default=[], help="other labs' labelled folders")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()

    if args.run:
        import keras

        record = RunRecord.of(args.run)
        config = record.config()
        model = keras.models.load_model(record.folder / "model.keras", safe_mode=True)
        size, names = int(config["image_size"]), list(config["class_names"])
        dataset, split, *_ = fresh_split(
            config["data"], int(config["seed"]), config.get("limit_per_class")
        )

        def predict(pixels):
            return model.predict(pixels.astype(np.float32), batch_size=16, verbose=0)

        subject = {"run": args.run}
    else:
        classifier = load_model(args.model)
        size, names = classifier.image_size, list(classifier.class_names)
        dataset, split, *_ = model_split(dict(classifier.card), None)

        def predict(pixels):
            return classifier.predict_pixels(pixels, views=("identity",))

        subject = {"model": classifier.name, "sha256": classifier.card.get("sha256")}

    rng = np.random.default_rng(args.seed)
    test_labels = dataset.labels[split.test]
    synthetic: dict = {}
    for name in GRID_CLASSES:
        label = names.index(name)
        members = split.test[test_labels == label]
        picked = rng.permutation(members)[: args.per_class]
        cells = [load_image(dataset.paths[i], size).astype(np.float32) for i in picked]
        for stain, gains in DENSITIES.items():
            for sigma in BLURS:
                batch = np.stack([blurred(density(c, gains), sigma) for c in cells])
                predicted = predict(np.clip(batch, 0, 255).astype(np.uint8)).argmax(1)
                synthetic.setdefault(name, {}).setdefault(stain, {})[f"blur {sigma:g}"] = outcome(
                    predicted, label, names
                )
        print(name, json.dumps(synthetic[name]["as stained"]), flush=True)

    pbc_background, pbc_od99 = pbc_reference(dataset, split, rng)
    standardised: dict = {}
    for folder in args.data:
        paths = [p for p in collect_image_paths([folder]) if p.parent.name in names]
        labels = np.array([names.index(p.parent.name) for p in paths])
        originals = [load_image(p).astype(np.float32) for p in paths]
        result = {}
        for title, transform in standardisations(pbc_background, pbc_od99).items():
            batch = np.stack([resized(transform(a), size) for a in originals])
            predicted = predict(batch).argmax(1)
            result[title] = {
                "accuracy": round(float((predicted == labels).mean()), 4),
                "per_class": {
                    names[k]: outcome(predicted[labels == k], k, names) for k in np.unique(labels)
                },
            }
            print(Path(folder).name, title, result[title]["accuracy"], flush=True)
        standardised[str(folder)] = result

    record = {
        **subject,
        "image_size": size,
        "views": ["identity"],
        "per_class": args.per_class,
        "seed": args.seed,
        "densities": DENSITIES,
        "blur_sigmas_px": BLURS,
        "pbc_background": pbc_background.round(1).tolist(),
        "pbc_od99": pbc_od99.round(3).tolist(),
        "synthetic": synthetic,
        "standardised": standardised,
        "seconds": round(time.time() - started, 1),
        "command": " ".join(sys.argv),
    }
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text[:2000])


if __name__ == "__main__":
    main()
