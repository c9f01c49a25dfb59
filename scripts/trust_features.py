"""Cache the installed model's features and served probabilities for the trust study.

For each image set it writes ``cache/trust/<model>/<set>.npz`` with, per image: the pooled
features the classifier head reads (image as given), the single-view probabilities, and the
probabilities averaged over the card's test-time views (where asked). Chunked and resumable:
a killed run keeps its finished chunks.

    python scripts/trust_features.py --model hybrid --sets train val test
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bcclassify.data.datasets import scan_dataset, train_val_test_split  # noqa: E402
from bcclassify.data.imaging import collect_image_paths, load_image  # noqa: E402
from bcclassify.serving.classifier import load_model  # noqa: E402
from bcclassify.serving.trust import features_and_probabilities  # noqa: E402

CHUNK = 256


def pbc_split_paths(data: Path, seed: int, train_limit: int | None) -> dict[str, list]:
    dataset = scan_dataset(data)
    split = train_val_test_split(dataset.labels, dataset.hashes, seed)
    sets = {}
    for part in ("train", "val", "test"):
        idx = getattr(split, part)
        if part == "train" and train_limit:
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.permutation(idx)[:train_limit])
        sets[part] = [(dataset.paths[i], int(dataset.labels[i])) for i in idx]
    return sets


def folder_paths(root: Path, class_names) -> list:
    out = []
    for path in collect_image_paths([root]):
        top = path.relative_to(root).parts[0]
        out.append((path, class_names.index(top) if top in class_names else -1))
    return out


def load(path, size: int, raw: bool) -> np.ndarray:
    if not raw:
        return load_image(path, size)
    # The loader before train/serve parity: decode, then one Lanczos resize to the input size.
    return np.asarray(Image.fromarray(load_image(path)).resize((size, size), Image.LANCZOS))


def run(classifier, items: list, target: Path, all_views: bool, raw: bool = False) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in range(0, len(items), CHUNK):
        part = target.with_name(f"{target.stem}.part{start // CHUNK:04d}.npz")
        parts.append(part)
        if part.is_file():
            continue
        chunk = items[start : start + CHUNK]
        pixels, kept = [], []
        for i, (path, _) in enumerate(chunk):
            try:
                pixels.append(load(path, classifier.image_size, raw))
                kept.append(i)
            except ValueError as exc:
                print("skip", exc, file=sys.stderr)
        feats, single, served = [], [], []
        for b in range(0, len(pixels), 32):
            batch = np.stack(pixels[b : b + 32])
            f, p1, pv = features_and_probabilities(classifier, batch, averaged=all_views)
            feats.append(f)
            single.append(p1)
            served.append(pv)
        tmp = part.with_name(part.stem + f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            features=np.concatenate(feats).astype(np.float32),
            single=np.concatenate(single),
            served=np.concatenate(served),
            kept=np.asarray(kept),
        )
        tmp.replace(part)
        print(f"{target.stem}: {min(start + CHUNK, len(items))}/{len(items)}", flush=True)
    merged = {k: [] for k in ("features", "single", "served")}
    labels, paths = [], []
    for n, part in enumerate(parts):
        with np.load(part) as stored:
            for k in merged:
                merged[k].append(stored[k])
            for i in stored["kept"]:
                path, label = items[n * CHUNK + int(i)]
                paths.append(str(path))
                labels.append(label)
    np.savez(
        target,
        **{k: np.concatenate(v) for k, v in merged.items()},
        labels=np.asarray(labels),
        paths=np.asarray(paths),
    )
    for part in parts:
        part.unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="hybrid")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/pbc224"))
    parser.add_argument("--sets", nargs="+", required=True)
    parser.add_argument("--train-limit", type=int, default=4000)
    parser.add_argument("--folder", action="append", default=[], help="NAME=DIR extra sets")
    parser.add_argument("--raw", action="store_true", help="the old loader: one Lanczos resize")
    parser.add_argument("--only", help="a file listing the relative paths to keep (folder sets)")
    args = parser.parse_args()
    classifier = load_model(args.model)
    out = REPO / "cache" / "trust" / args.model
    splits = pbc_split_paths(Path(args.data), 42, args.train_limit)
    folders = dict(item.split("=", 1) for item in args.folder)
    for name in args.sets:
        target = out / f"{name}.npz"
        if target.is_file():
            continue
        items = (
            splits[name]
            if name in splits
            else folder_paths(Path(folders[name]), classifier.class_names)
        )
        if args.only:
            keep = set(Path(args.only).read_text().split())
            items = [
                it for it in items if Path(it[0]).relative_to(folders[name]).as_posix() in keep
            ]
        run(classifier, items, target, all_views=name not in ("train", "test"), raw=args.raw)


if __name__ == "__main__":
    main()
