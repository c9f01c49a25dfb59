"""Cheap probes of routes to other labs (issue 21), one view each, on the CPU.

1. ``frozen``: a linear probe (standardised logistic regression) on the global-average-pooled
   features of the untouched pretrained trunks (Xception's ImageNet weights, InceptionV3's
   weights as shipped in ../shared/weights), fitted on N training-split cells a class of the
   default model's split. Fine-tuning is known to distort pretrained features and cost accuracy
   out of distribution (Kumar et al., "Fine-tuning can distort pretrained features", ICLR 2022);
   if the frozen features carried across labs, linear-probe-then-fine-tune would be the route.
2. ``fusion``: the default's probabilities mixed with its second opinion's (a weighted geometric
   mean, weight w on the default), as an answer rather than a check.

3. ``sample-bn``: every batch norm of the default normalising with its running statistics mixed
   with the image's own spatial moments, the running ones counting as N images (single-sample
   covariate-shift adaptation: Schneider et al., "Improving robustness against common
   corruptions by covariate shift adaptation", NeurIPS 2020). Unlike statistics re-estimated on
   a batch of the lab's cells (AdaBN), each answer depends on its own image only.
4. ``batch-bn``: every batch norm normalising with the moments of the batch it is in (B cells of
   one folder, drawn in a shuffled order so that no batch is one class), mixed with its running
   statistics counted as N images (prediction-time batch norm: Nado et al., "Evaluating
   prediction-time batch normalization for robustness under covariate shift", 2020; with N = 0
   it is AdaBN on batches, Li et al. 2016). Each answer then depends on the other cells of the
   upload, which the lab shares.
5. ``prototypes``: the default's own features (those its novelty score reads) classified by the
   nearest class mean (cosine) or the 15 nearest cells, fitted on N training-split cells a class,
   instead of by its softmax head; prototype classifiers are often said to degrade more gently
   under shift.

All are scored on the default's test split (M cells a class) and on other labs' folders.

    .venv/bin/python scripts/cross_lab_probes.py --data ../shared/data/ext-tecom \\
        cache/ext-tecom-lowres --out docs/cross-lab-probes.json
    .venv/bin/python scripts/cross_lab_probes.py --data ../shared/data/ext-tecom \\
        cache/ext-tecom-lowres --probes sample-bn prototypes --out docs/cross-lab-probes-2.json
    .venv/bin/python scripts/cross_lab_probes.py --data ../shared/data/ext-tecom \\
        cache/ext-tecom-lowres --probes batch-bn --test-per-class 25 \\
        --out docs/cross-lab-probes-3.json
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
# The running statistics' weight as a count of images; None: batch norm as trained.
PSEUDO_COUNTS = (None, 256, 64, 16)
# batch-bn: (running statistics counted as N images, cells a batch).
BATCH_MIXES = ((None, 32), (0, 32), (32, 32), (128, 32), (0, 100))
NEIGHBOURS = 15


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


def _unfolded_with_mixed_norms(state: dict):
    """The default with every batch norm's call replaced: with ``state["count"]`` None, as
    trained; else its running statistics, counted as that many images, mixed with the moments
    of each image (``state["axes"]`` (1, 2)) or of the whole batch ((0, 1, 2))."""
    import types

    import keras
    from keras import ops

    # Unfolded, so that the batch norms exist as layers (serving folds them into the convs).
    default = load_model(None, fold_batch_norm=False, compiled=False)

    def call(layer, inputs, training=None, mask=None):
        count = state["count"]
        if count is None or len(inputs.shape) != 4:
            return type(layer).call(layer, inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")
        axes = list(state["axes"])
        images = state["batch"] if 0 in axes else 1
        own = images / (count + images)
        mean = (1 - own) * layer.moving_mean + own * ops.mean(x, axis=axes, keepdims=True)
        var = (1 - own) * layer.moving_variance + own * ops.var(x, axis=axes, keepdims=True)
        y = (x - mean) / ops.sqrt(var + layer.epsilon)
        y = y * layer.gamma if layer.scale else y
        y = y + layer.beta if layer.center else y
        return ops.cast(y, layer.compute_dtype)

    def walk(model):
        for layer in model.layers:
            yield layer
            if hasattr(layer, "layers"):
                yield from walk(layer)

    norms = [lay for lay in walk(default.model) if isinstance(lay, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.call = types.MethodType(call, layer)
    return default, len(norms)


def sample_bn(sets: dict, names: list[str]) -> dict:
    state: dict = {"count": None, "axes": (1, 2), "batch": 1}
    default, norms = _unfolded_with_mixed_norms(state)
    pixels = {
        name: np.stack([load_image(p, default.image_size) for p in paths])
        for name, (paths, _) in sets.items()
    }
    result = {"default": default.name, "batch_norms": norms}
    for count in PSEUDO_COUNTS:
        state["count"] = count
        default.model.predict_function = None  # traced anew: the count is read when tracing
        key = "as trained" if count is None else f"N={count}"
        result[key] = {}
        for name, (_, truth) in sets.items():
            probs = default.model.predict(pixels[name], batch_size=32, verbose=0)
            result[key][name] = scored(probs.argmax(1), truth, names)
        print("sample-bn", key, {n: r["accuracy"] for n, r in result[key].items()}, flush=True)
    return result


def batch_bn(sets: dict, names: list[str], seed: int) -> dict:
    """Scored as the image's own answer and, on other labs' folders, as the guess an
    unidentified cell gets served (the colour check's greyscale swap, then the blood's class
    mix at full strength), both views under the same batch norms."""
    from bcclassify.serving.colour_check import GREY_VIEW, greyscale

    state: dict = {"count": None, "axes": (0, 1, 2), "batch": 32}
    default, norms = _unfolded_with_mixed_norms(state)
    check, prior = default.colour_check, default.unidentified_prior
    result = {"default": default.name, "batch_norms": norms, "order_seed": seed}
    pixels = {}
    for name, (paths, truth) in sets.items():
        # Shuffled, and the labels with them: a class-sorted folder would give each batch one
        # class's moments, which carry the label.
        order = np.random.default_rng(seed).permutation(len(paths))
        pixels[name] = (
            np.stack([load_image(paths[i], default.image_size) for i in order]),
            truth[order],
        )
    for count, batch in BATCH_MIXES:
        state["count"], state["batch"] = count, batch
        default._forward = None  # traced anew: count and batch are read when tracing
        key = "as trained" if count is None else f"N={count} B={batch}"
        result[key] = {}
        for name, (images, truth) in pixels.items():
            # Whole batches only, so every cell's moments come from `batch` cells of its folder.
            starts = range(0, len(images) // batch * batch, batch)
            truth = truth[: len(starts) * batch]
            probs = np.concatenate(
                [default.predict_pixels(images[s : s + batch], ("identity",)) for s in starts]
            )
            result[key][name] = scored(probs.argmax(1), truth, names)
            if name == "pbc-test-split":
                continue
            grey = np.concatenate(
                [
                    default.predict_pixels(greyscale(images[s : s + batch]), GREY_VIEW)
                    for s in starts
                ]
            )
            swapped = (probs.argmax(1) == names.index(check.checked)) & (
                grey[:, names.index(check.rival)] >= check.min_rival
            )
            guess = prior.apply(np.where(swapped[:, None], grey, probs), np.ones(len(probs), bool))
            result[key][f"{name}, served guess"] = scored(guess.argmax(1), truth, names)
        print("batch-bn", key, {n: r["accuracy"] for n, r in result[key].items()}, flush=True)
    return result


def prototypes(sets: dict, train: tuple, names: list[str]) -> dict:
    from bcclassify.serving.trust import features_and_probabilities

    default = load_model(None)

    def features(paths):
        out = [[], []]
        for start in range(0, len(paths), 32):
            batch = np.stack([load_image(p, default.image_size) for p in paths[start : start + 32]])
            got, probs, _ = features_and_probabilities(default, batch, averaged=False)
            out[0].append(got)
            out[1].append(probs)
        return np.concatenate(out[0]), np.concatenate(out[1])

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    fitted, _ = features(train[0])
    fitted = unit(fitted)
    means = unit(np.stack([fitted[train[1] == k].mean(0) for k in range(len(names))]))
    result = {"default": default.name, "neighbours": NEIGHBOURS}
    for name, (paths, truth) in sets.items():
        got, probs = features(paths)
        similar = unit(got) @ fitted.T
        nearest = np.argsort(-similar, axis=1)[:, :NEIGHBOURS]
        votes = np.stack([(train[1][nearest] == k).sum(1) for k in range(len(names))], axis=1)
        result[name] = {
            "head": scored(probs.argmax(1), truth, names),
            "nearest mean": scored((unit(got) @ means.T).argmax(1), truth, names),
            "nearest cells": scored(votes.argmax(1), truth, names),
        }
        print("prototypes", name, {k: r["accuracy"] for k, r in result[name].items()}, flush=True)
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
    train = drawn(split.train, args.train_per_class)
    fitting = ([dataset.paths[i] for i in train], dataset.labels[train])
    if "frozen" in args.probes:
        record["frozen"] = {
            "size": args.size,
            "train_per_class": args.train_per_class,
            **frozen_probe(sets, fitting, args.size, names),
        }
    if "fusion" in args.probes:
        record["fusion"] = fusion(sets, names)
    if "sample-bn" in args.probes:
        record["sample_bn"] = sample_bn(sets, names)
    if "batch-bn" in args.probes:
        record["batch_bn"] = batch_bn(sets, names, args.seed)
    if "prototypes" in args.probes:
        record["prototypes"] = {
            "train_per_class": args.train_per_class,
            **prototypes(sets, fitting, names),
        }
    record["seconds"] = round(time.time() - started, 1)
    record["command"] = " ".join(sys.argv)
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text[:1500])


if __name__ == "__main__":
    main()
