"""Two cheap probes of routes to other labs (issue 21), one view each, on the CPU.

1. ``frozen``: a linear probe (standardised logistic regression) on the global-average-pooled
   features of the untouched pretrained trunks (Xception's ImageNet weights, InceptionV3's
   weights as shipped in ../shared/weights), fitted on N training-split cells a class of the
   default model's split. Fine-tuning is known to distort pretrained features and cost accuracy
   out of distribution (Kumar et al., "Fine-tuning can distort pretrained features", ICLR 2022);
   if the frozen features carried across labs, linear-probe-then-fine-tune would be the route.
2. ``fusion``: the default's probabilities mixed with its second opinion's (a weighted geometric
   mean, weight w on the default), as an answer rather than a check.

Both are scored on the default's test split (M cells a class) and on other labs' folders.

    .venv/bin/python scripts/cross_lab_probes.py --data ../shared/data/ext-tecom \\
        cache/ext-tecom-lowres --out docs/cross-lab-probes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "gpu"), str(ROOT / "scripts")]

from lab_factor_study import resized  # noqa: E402
from pack import model_split  # noqa: E402

from bcclassify.data.imaging import collect_image_paths, load_image  # noqa: E402
from bcclassify.models.registry import TRUNKS, _trunk, resolve_weights_dir  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402

FUSION_WEIGHTS = (1.0, 0.85, 0.7, 0.5, 0.0)


def labelled(folder: str, names: list[str]) -> tuple[list[Path], np.ndarray]:
    paths = [p for p in collect_image_paths([Path(folder)]) if p.parent.name in names]
    return paths, np.array([names.index(p.parent.name) for p in paths])


def scored(predicted: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    right = {
        names[k]: f"{int((predicted[truth == k] == k).sum())}/{int((truth == k).sum())}"
        for k in np.unique(truth)
    }
    called = Counter(names[p] for p, t in zip(predicted, truth) if p != t)
    return {
        "accuracy": round(float((predicted == truth).mean()), 4),
        "right": right,
        "wrong_as": dict(called.most_common(4)),
    }


def frozen_probe(sets: dict, train: tuple, size: int, names: list[str]) -> dict:
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pixels = keras.Input((size, size, 3))
    record: dict = {}
    trunks = {}
    for key in ("xception", "inceptionv3"):
        pooled = keras.layers.GlobalAveragePooling2D()(
            _trunk(key, pixels, resolve_weights_dir(None), record)
        )
        trunks[key] = keras.Model(pixels, pooled)

    def features(paths):
        batch = np.stack([load_image(p, size) for p in paths]).astype(np.float32)
        return {k: m.predict(batch, batch_size=32, verbose=0) for k, m in trunks.items()}

    fitted_on = features(train[0])
    scored_on = {name: features(paths) for name, (paths, _) in sets.items()}
    result = {"init": record, "trunk_weights": {k: TRUNKS[k].weights_file for k in trunks}}
    for title, keys in (
        ("xception", ["xception"]),
        ("inceptionv3", ["inceptionv3"]),
        ("both", ["xception", "inceptionv3"]),
    ):

        def joined(f, keys=keys):
            return np.concatenate([f[k] for k in keys], axis=1)

        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
        probe.fit(joined(fitted_on), train[1])
        result[title] = {
            name: scored(probe.predict(joined(scored_on[name])), truth, names)
            for name, (_, truth) in sets.items()
        }
        print("frozen", title, {n: r["accuracy"] for n, r in result[title].items()}, flush=True)
    return result


def fusion(sets: dict, names: list[str]) -> dict:
    default = load_model(None)
    second = load_model(default.card["second_opinion"]["model"])
    result = {"default": default.name, "second_opinion": second.name}
    for name, (paths, truth) in sets.items():
        images = [load_image(p).astype(np.float32) for p in paths]
        default_probs, second_probs = (
            m.predict_pixels(np.stack([resized(a, m.image_size) for a in images]), ("identity",))
            for m in (default, second)
        )
        result[name] = {}
        for w in FUSION_WEIGHTS:
            mixed = w * np.log(default_probs + 1e-9) + (1 - w) * np.log(second_probs + 1e-9)
            result[name][f"w={w:g}"] = scored(mixed.argmax(1), truth, names)
        print("fusion", name, {k: r["accuracy"] for k, r in result[name].items()}, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=[], help="other labs' labelled folders")
    parser.add_argument("--train-per-class", type=int, default=150, help="probe's fitting cells")
    parser.add_argument("--test-per-class", type=int, default=100, help="test-split cells")
    parser.add_argument("--size", type=int, default=128, help="frozen trunks' input size")
    parser.add_argument("--probes", nargs="*", default=["frozen", "fusion"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()

    default = load_model(None)
    names = list(default.class_names)
    dataset, split, *_ = model_split(dict(default.card), None)
    rng = np.random.default_rng(args.seed)

    def drawn(members: np.ndarray, n: int) -> np.ndarray:
        labels = dataset.labels[members]
        return np.concatenate(
            [rng.permutation(members[labels == k])[:n] for k in range(len(names))]
        )

    test = drawn(split.test, args.test_per_class)
    sets = {"pbc-test-split": ([dataset.paths[i] for i in test], dataset.labels[test])}
    sets.update({Path(f).name: labelled(f, names) for f in args.data})
    record: dict = {
        "default": default.name,
        "sha256": default.card.get("sha256"),
        "views": ["identity"],
        "sizes": {name: len(truth) for name, (_, truth) in sets.items()},
        "seed": args.seed,
    }
    if "frozen" in args.probes:
        train = drawn(split.train, args.train_per_class)
        record["frozen"] = {
            "size": args.size,
            "train_per_class": args.train_per_class,
            **frozen_probe(
                sets, ([dataset.paths[i] for i in train], dataset.labels[train]), args.size, names
            ),
        }
    if "fusion" in args.probes:
        record["fusion"] = fusion(sets, names)
    record["seconds"] = round(time.time() - started, 1)
    record["command"] = " ".join(sys.argv)
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text[:1500])


if __name__ == "__main__":
    main()
