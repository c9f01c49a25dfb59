"""What else ``adapt`` could fit on the frozen features, measured on another lab (issue 21).

``adapt`` refitted the classifier head on the pooled features of K cells a class (README, "Using
it in your lab"); at 10 cells a class on ext-tecom its worst of 5 draws was 88.4%. This study asks
whether another fit of the same features does better, without re-running the network per draw:
the features of every cell of the lab (8 symmetries + 8 standard-augmented views, drawn once
with seed 0) are computed once and cached, then each variant is fitted per draw (the same
``choose_cells`` draws as ``adapt``) and scored on the served views of the cells not taken.
Because the augmented views are drawn once, the shipped fit here differs from ``adapt``'s own
runs by under a point a draw.

The "mid-level features" variants (issue 21) also fit the head on pooled activations of earlier
blocks (the registry's ``adapt_layers``, which ``adapt`` now reads too), computed from the same
views and cached beside the head features.

    .venv/bin/python scripts/adapt_head_study.py --cells ../shared/data/ext-tecom \\
        --out docs/adapt-head-study-ext-tecom.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bcclassify import CLASS_NAMES  # noqa: E402
from bcclassify.lab.adapt import DEFAULT_PULL, choose_cells, fit_head, scan_cells, served  # noqa: E402

ALL_VIEWS = 16  # 8 symmetries, then 8 augmented views


def cache_path(name: str, items: list[Path], cache: Path, suffix: str) -> Path:
    """Where the views' features of ``items`` under model ``name`` are cached.

    Keyed on the weights too: a model name outlives its weights (the default was replaced). And
    on the cells: two sets of the same size (a lab and its low-resolution copy) differ.
    """
    import hashlib

    from bcclassify.storage.cards import load_card, weights_id
    from bcclassify.storage.store import models_dir

    cells_id = hashlib.sha256("\n".join(str(p.resolve()) for p in items).encode()).hexdigest()[:8]
    weights = weights_id(load_card(models_dir() / name))
    return cache / f"{name}-{weights}-{len(items)}-cells-{cells_id}{suffix}.npz"


def cached_features(name: str, items: list[Path], cache: Path) -> dict[str, np.ndarray]:
    """Features of every view of every cell, with the model's head and served views."""
    path = cache_path(name, items, cache, "")
    if not path.exists():
        from bcclassify.lab.adapt import view_features
        from bcclassify.serving.classifier import VIEW_TRANSFORMS, load_model
        from bcclassify.serving.trust import HEAD_LAYER, atomic_savez

        model = load_model(name)
        feats = view_features(model, items, name, views=tuple(VIEW_TRANSFORMS), augmented=8)
        w0, b0 = model.model.get_layer(HEAD_LAYER).get_weights()
        served_views = [list(VIEW_TRANSFORMS).index(v) for v in model.test_time_views]
        cache.mkdir(parents=True, exist_ok=True)
        atomic_savez(path, {"feats": feats, "w0": w0, "b0": b0, "served": np.asarray(served_views)})
    with np.load(path) as stored:
        return {key: stored[key].astype(np.float64) for key in stored.files}


def cached_mid_features(name: str, items: list[Path], cache: Path) -> dict[str, np.ndarray]:
    """Globally pooled activations of the architecture's ``adapt_layers`` (the blocks `adapt`
    reads, bcclassify/lab/mid_level.py) for the same views as cached_features, with the width of
    each block (``sizes``)."""
    path = cache_path(name, items, cache, "-mid")
    if not path.exists():
        from bcclassify.lab.adapt import view_features
        from bcclassify.lab.mid_level import block_sizes, feature_forward_with_mid, mid_layers
        from bcclassify.serving.classifier import VIEW_TRANSFORMS, load_model
        from bcclassify.serving.trust import HEAD_LAYER, atomic_savez

        model = load_model(name, fold_batch_norm=False)
        blocks = mid_layers(model)
        forward = feature_forward_with_mid(model.model, blocks)
        head_dim = int(model.model.get_layer(HEAD_LAYER).input.shape[-1])
        # The same augmentation seed draws the same views as cached_features.
        feats = view_features(
            model, items, name, views=tuple(VIEW_TRANSFORMS), augmented=8, forward=forward
        )
        sizes = np.asarray(block_sizes(model.model, blocks))
        cache.mkdir(parents=True, exist_ok=True)
        atomic_savez(path, {"mid": feats[..., head_dim:], "sizes": sizes})
    with np.load(path) as stored:
        return {"mid": stored["mid"].astype(np.float64), "sizes": stored["sizes"]}


def with_mid_features(f, m, taken, labels, rest, weight: float):
    """adapt's fit on the head's features plus the mid-level blocks, served.

    Each block is scaled so its mean norm over the taken cells' views is ``weight`` times the
    head features': the blocks' own norms differ 20-fold, and the pull (toward zero for the
    blocks' new weights, toward the source head for the rest) acts on the scaled features, so a
    larger ``weight`` means a weaker pull on the blocks.
    """
    reference = np.linalg.norm(f["feats"][:, taken], axis=-1).mean()
    scales, start = [], 0
    for size in m["sizes"]:
        norm = np.linalg.norm(m["mid"][:, taken, start : start + size], axis=-1).mean()
        scales.append(np.full(size, weight * reference / norm))
        start += size
    scales = np.concatenate(scales)

    def features(views, cells):  # only the cells asked for: all views of all cells are ~GBs
        return np.concatenate([m["mid"][views][:, cells] * scales, f["feats"][views][:, cells]], -1)

    w0 = np.concatenate([np.zeros((len(scales), f["w0"].shape[1])), f["w0"]])
    w, b = fit_head(features(slice(None), taken), labels[taken], w0, f["b0"], DEFAULT_PULL)
    return served(features(served_index(f), rest), w, b)


def cosine_prototypes(f: dict, taken: np.ndarray, labels: np.ndarray, rest: np.ndarray):
    """Nearest class mean (cosine) of the taken cells' views, softmax at temperature 0.05."""
    unit = f["feats"] / np.linalg.norm(f["feats"], axis=-1, keepdims=True)
    means = np.full((len(CLASS_NAMES), unit.shape[-1]), np.nan)
    for c in np.unique(labels[taken]):
        mean = unit[:, taken[labels[taken] == c]].reshape(-1, unit.shape[-1]).mean(axis=0)
        means[c] = mean / np.linalg.norm(mean)
    scores = np.nan_to_num(unit[served_index(f)][:, rest] @ means.T, nan=-1e9) / 0.05
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    return (p / p.sum(axis=-1, keepdims=True)).mean(axis=0)


def served_index(f: dict) -> np.ndarray:
    return f["served"].astype(int)


def head(f, taken, labels, rest, pull=DEFAULT_PULL, views=slice(None), mask=None):
    """adapt's fit (optionally on some views, or on a subset of the features), served."""
    x, w0 = f["feats"], f["w0"]
    if mask is not None:
        x, w0 = x * mask, w0 * mask[:, None]
    w, b = fit_head(x[views][:, taken], labels[taken], w0, f["b0"], pull)
    return served(x[served_index(f)][:, rest], w, b)


def prior_corrected(f, taken, labels, rest, prior: np.ndarray):
    """adapt's fit, its bias moved from the balanced taken sample's class prior to the
    source's (the share of each class in the model's training split)."""
    w, b = fit_head(f["feats"][:, taken], labels[taken], f["w0"], f["b0"], DEFAULT_PULL)
    counts = np.bincount(labels[taken], minlength=len(CLASS_NAMES)).astype(float)
    present = counts > 0
    shift = np.where(
        present, np.log(prior) - np.log(np.where(present, counts, 1) / counts.sum()), 0
    )
    return served(f["feats"][served_index(f)][:, rest], w, b + shift)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hybrid")
    parser.add_argument("--second", default="robust-mobilenetv2", help="'' to leave out")
    parser.add_argument("--cells", default=str(REPO.parent / "shared/data/ext-tecom"))
    parser.add_argument("--per-class", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--cache", default=str(REPO / "cache" / "adapt-head-study"))
    parser.add_argument("--out", default=None, help="also write the table here (JSON)")
    args = parser.parse_args()

    from bcclassify.storage.cards import load_card
    from bcclassify.storage.store import models_dir, read_json, runs_dir

    cells = scan_cells(Path(args.cells))
    items = [p for c in CLASS_NAMES for p in cells.get(c, [])]
    labels = np.asarray([CLASS_NAMES.index(c) for c in CLASS_NAMES for _ in cells.get(c, [])])
    index = {p: i for i, p in enumerate(items)}
    f = cached_features(args.model, items, Path(args.cache))
    run = load_card(models_dir() / args.model)["training_run"]
    counts = read_json(runs_dir() / run / "config.json")["class_counts"]  # its training images
    prior = np.asarray([counts[c] for c in CLASS_NAMES], dtype=float)
    prior /= prior.sum()
    width = f["feats"].shape[-1]
    halves = [
        np.r_[np.ones(width // 2), np.zeros(width // 2)],
        np.r_[np.zeros(width // 2), np.ones(width // 2)],
    ]
    variants = {
        "adapt as shipped (pull 0.01, 16 views)": lambda t, r: head(f, t, labels, r),
        "pull 0.003": lambda t, r: head(f, t, labels, r, pull=0.003),
        "pull 0.03": lambda t, r: head(f, t, labels, r, pull=0.03),
        "fitted on the 4 served views only": lambda t, r: head(
            f, t, labels, r, views=served_index(f)
        ),
        "bias corrected to the source's class prior": lambda t, r: prior_corrected(
            f, t, labels, r, prior
        ),
        "cosine class prototypes": lambda t, r: cosine_prototypes(f, t, labels, r),
    }
    if args.model == "hybrid":
        variants["InceptionV3 features only"] = lambda t, r: head(f, t, labels, r, mask=halves[0])
        variants["Xception features only"] = lambda t, r: head(f, t, labels, r, mask=halves[1])
        m = cached_mid_features(args.model, items, Path(args.cache))
        for weight in (1, 2, 5):
            variants[f"mid-level features added, weight {weight}"] = lambda t, r, weight=weight: (
                with_mid_features(f, m, t, labels, r, weight)
            )
    if args.second:
        g = cached_features(args.second, items, Path(args.cache))
        variants[f"{args.second} adapted the same way"] = lambda t, r: head(g, t, labels, r)
        variants[f"mean of the adapted {args.model} and {args.second}"] = lambda t, r: (
            (head(f, t, labels, r) + head(g, t, labels, r)) / 2
        )
    rows = []
    for k in args.per_class:
        draws = []
        for seed in args.seeds:
            taken_items, rest_items = choose_cells(cells, k, seed)
            draws.append(
                (
                    np.asarray([index[p] for p, _ in taken_items]),
                    np.asarray([index[p] for p, _ in rest_items]),
                )
            )
        for name, fit in variants.items():
            accuracy = [float((fit(t, r).argmax(axis=1) == labels[r]).mean()) for t, r in draws]
            rows.append(
                {
                    "variant": name,
                    "per_class": k,
                    "seeds": args.seeds,
                    "accuracy": accuracy,
                    "mean": float(np.mean(accuracy)),
                    "worst": float(np.min(accuracy)),
                }
            )
            print(
                f"K={k:3d}  {name:55s} mean {rows[-1]['mean']:.1%}  worst {rows[-1]['worst']:.1%}"
            )
        if args.out:  # after each number of cells: a long study keeps what it finished
            document = {"model": args.model, "cells": Path(args.cells).name, "rows": rows}
            Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
