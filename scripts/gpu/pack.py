"""Pack what ``train_lab.py`` needs on a lent GPU machine into call-sized folders (issue 12).

Runs here (bcclassify, TensorFlow). Writes ``gpu_pack/`` (git-ignored through .git/info/exclude):

- ``all/``: the merged pack, laid out as train_lab.py reads it (``--pack gpu_pack/all`` here);
- ``call1/``, ``call2/``, ...: the same files (hard links) split so that each folder plus the
  repository's working tree fits one device call's 64 MiB; a call carries one of them and copies
  it into one folder on the machine, which keeps it while warm.

What is packed:
- ``data/train-NNN.npz``, ``data/val-NNN.npz``: the installed model's OWN training and validation
  split, rebuilt with the library's split function, the seed and the data of the model's training
  run, and checked against the split sizes on its card, so no test cell can leak into training;
  optionally a per-class subsample. Each image is the dataset's JPEG file as it is (``jpeg`` is
  the concatenated bytes, ``offsets`` where each starts; ``labels``, ``files``, ``index``);
- ``model/model.json`` and ``model/weights-NNN.npz``: the installed files, verified against the
  card, the weights re-sharded with their keys and precision unchanged (float16 for big arrays);
- ``wheels/`` (``--wheels``): keras (requirements.txt's version), namex and optree for Python 3.12;
- ``manifest.json``: every file's sha256, size and call, the split, the lab preset's parameters
  (``bcclassify.data.augment.PRESETS["lab"]``, so the GPU run uses the library's numbers), and the
  model's probabilities for the first validation images computed here (train_lab.py --check
  compares the GPU's with them).

From scratch (issue 25): ``--arch resnet50,densenet201 --data DIR --image-size N`` packs the
split that ``train --data DIR`` makes and each architecture's ``model/<arch>/model.json``, no
weights (the device initialises them); ``train_lab.py --arch NAME`` trains one per call.

Usage: python scripts/gpu/pack.py [--wheels] [--train-per-class N] [--val-per-class N]
       python scripts/gpu/pack.py --arch A[,B] --data DIR --image-size N [--center-crop F]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_lab import decode_image, sha256_file, stored_arrays  # noqa: E402  (numpy/PIL only)

MIB = 1024 * 1024
CALL_BYTES = 64 * MIB  # what one device call carries, working tree included
SHRUNK_OUT = ("model_store/",)  # left out of the working tree by scripts/gpu/tree.sh shrink
WHEEL_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


# ----------------------------------------------------------------------------- what travels


def travelling_bytes(repo: Path = REPO, leave_out: tuple[str, ...] = ()) -> int:
    """Bytes of the working tree a device call sends: tracked and untracked-not-ignored files
    present on disk, less the paths under ``leave_out``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    total = 0
    for rel in set(filter(None, listed.split("\0"))):
        if rel.startswith(leave_out):
            continue
        path = repo / rel
        if path.is_symlink():
            total += len(os.readlink(path))
        elif path.is_file():
            total += path.stat().st_size
    return total


def ensure_ignored(out: Path, repo: Path = REPO) -> None:
    """Add the pack folder to .git/info/exclude (not .gitignore: it is this checkout's business)."""
    try:
        rel = out.resolve().relative_to(repo)
    except ValueError:
        return  # outside the repository: it does not travel anyway
    exclude = repo / ".git" / "info" / "exclude"
    line = f"/{rel.as_posix()}/"
    existing = exclude.read_text().splitlines() if exclude.is_file() else []
    if line not in existing:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as handle:
            handle.write(("" if not existing or existing[-1] == "" else "\n") + line + "\n")


def plan_calls(sizes: list[tuple[str, int]], capacity: int) -> list[list[str]]:
    """Files into calls of at most ``capacity`` bytes: each, in order, into the first call with
    room (first fit), so small shards fill what a big one left; what comes first in ``sizes``
    (the wheels, the model) lands in the first calls."""
    calls: list[list[str]] = []
    used: list[int] = []
    for path, size in sizes:
        if size > capacity:
            raise ValueError(f"{path}: {size / MIB:.1f} MiB does not fit one call's {capacity}")
        for n, taken in enumerate(used):
            if taken + size <= capacity:
                calls[n].append(path)
                used[n] += size
                break
        else:
            calls.append([path])
            used.append(size)
    return calls


# ----------------------------------------------------------------------------- the split


def model_split(card: dict, data: str | None):
    """The dataset and split the installed model was trained on, checked against its card."""
    from bcclassify.data.datasets import (
        scan_dataset,
        subsample,
        thinned_train,
        train_subset_seed,
        train_val_test_split,
    )
    from bcclassify.storage.store import read_json, runs_dir

    trained = card.get("training_data") or {}
    run_config = read_json(runs_dir() / str(card.get("training_run")) / "config.json", {}) or {}
    seed = int(run_config.get("seed", (card.get("training_config") or {}).get("seed", 42)))
    limit = run_config.get("limit_per_class")
    root = data or trained.get("path") or run_config.get("data")
    dataset = subsample(scan_dataset(root), limit, seed)
    if trained.get("manifest_sha256") and dataset.manifest_hash() != trained["manifest_sha256"]:
        raise ValueError(
            f"{root}: not the data the model was trained on (manifest hash differs), so its "
            "training split cannot be rebuilt"
        )
    split = train_val_test_split(dataset.labels, dataset.hashes, seed)
    expected = (trained.get("split_sizes") or [None])[0]
    # A run continued with --train-per-class trained on a thinned training split: the card is
    # checked against that thinning (the library's), and the full split is returned, what a
    # fresh GPU run trains on.
    limit_train = run_config.get("train_per_class")
    subset_seed = train_subset_seed({"seed": seed, **run_config})
    trained_on = thinned_train(split, dataset.labels, limit_train, subset_seed)
    if expected and trained_on.sizes() != expected:
        raise ValueError(f"split {trained_on.sizes()} differs from the card's {expected}")
    return dataset, split, seed, limit, str(root)


def fresh_split(data: str, seed: int, limit: int | None):
    """The split ``train --data DATA --seed SEED`` makes: a model trained from scratch has no
    card to check it against, so it is the library's split function on the data as given."""
    from bcclassify.data.datasets import scan_dataset, subsample, train_val_test_split

    dataset = subsample(scan_dataset(data), limit, seed)
    return dataset, train_val_test_split(dataset.labels, dataset.hashes, seed), seed, limit, data


def choose(indices: np.ndarray, labels: np.ndarray, per_class: int | None, seed: int, salt: int):
    """At most ``per_class`` of ``indices`` per class (all when None), in a seeded shuffled
    order (shards and the first validation images then mix the classes)."""
    rng = np.random.default_rng([seed, salt])
    if per_class:
        keep = [
            rng.permutation(indices[labels[indices] == c])[:per_class] for c in np.unique(labels)
        ]
        indices = np.concatenate(keep) if keep else indices[:0]
    return rng.permutation(np.sort(indices))


def check_images(dataset, indices: np.ndarray, image_size: int, verify: int) -> None:
    """Every packed file must be a 224 px RGB JPEG without ICC profile (where load_image only
    resizes), and a sample must decode in train_lab.py exactly as in load_image."""
    from bcclassify.data.imaging import TRAINING_COPY_PX, load_image

    bad = []
    for i in indices:
        with Image.open(dataset.paths[i]) as img:
            ok = img.format == "JPEG" and img.mode == "RGB" and "icc_profile" not in img.info
            if not ok or img.size != (TRAINING_COPY_PX, TRAINING_COPY_PX):
                bad.append(dataset.relative_paths[i])
    if bad:
        raise ValueError(f"{len(bad)} files are not 224 px RGB JPEGs, e.g. {bad[0]}")
    for i in indices[:verify]:
        mine = decode_image(dataset.paths[i].read_bytes(), image_size)
        if not np.array_equal(mine, load_image(dataset.paths[i], image_size)):
            raise ValueError(f"{dataset.paths[i]}: train_lab.decode_image differs from load_image")


def write_image_shards(dataset, indices, kind: str, folder: Path, shard_bytes: int) -> list[dict]:
    """``{kind}-NNN.npz`` of at most ``shard_bytes`` of JPEG each."""
    folder.mkdir(parents=True, exist_ok=True)
    entries, batch, used = [], [], 0

    def flush() -> None:
        blobs = [dataset.paths[i].read_bytes() for i in batch]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        path = folder / f"{kind}-{len(entries):03d}.npz"
        np.savez(
            path,
            jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8),
            offsets=offsets,
            labels=dataset.labels[batch].astype(np.int64),
            files=np.asarray([dataset.relative_paths[i] for i in batch]),
            index=np.asarray(batch, dtype=np.int64),
        )
        entries.append({"path": f"data/{path.name}", "kind": kind, "count": len(batch)})

    for i in indices:
        size = dataset.paths[i].stat().st_size + 200  # names, labels, offsets per image
        if batch and used + size > shard_bytes:
            flush()
            batch, used = [], 0
        batch.append(int(i))
        used += size
    if batch:
        flush()
    return entries


# ----------------------------------------------------------------------------- the model


def write_model(folder: Path, card: dict, target: Path, shard_bytes: int) -> tuple[list, str]:
    """model.json as installed; the weights re-sharded, keys and dtypes as installed."""
    arrays: dict[str, np.ndarray] = {}
    for name in sorted(card["files_sha256"]):
        if Path(name).match("weights-*.npz"):
            with np.load(folder / name) as stored:
                arrays.update({k: stored[k] for k in stored.files})
    return write_model_files((folder / "model.json").read_text(), arrays, target, shard_bytes)


def write_group_norm_model(
    name: str, target: Path, shard_bytes: int, calibration: np.ndarray | None
):
    """The installed model with group norm in place of every batch norm (``--norm group``),
    each fitted to the batch norm it replaces on ``calibration`` (training-split pixels;
    :mod:`bcclassify.models.norm_transfer`; None: not fitted); returns the entries, output
    layer, the model and the fit's summary."""
    from bcclassify.models.norm_transfer import fit_group_norm_affine
    from bcclassify.models.registry import with_group_norm
    from bcclassify.serving.classifier import load_model

    source = load_model(name, fold_batch_norm=False, compiled=False).model
    model = with_group_norm(source)
    fit = None if calibration is None else fit_group_norm_affine(source, model, calibration)
    stored = stored_arrays(model.get_weights())
    arrays = {f"w{i:05d}": array for i, array in enumerate(stored)}  # the installed keys
    return (*write_model_files(model.to_json(), arrays, target, shard_bytes), model, fit)


def calibration_pixels(
    dataset, train: np.ndarray, per_class: int, seed: int, image_size: int
) -> np.ndarray:
    """``per_class`` training-split images a class, as the model takes them."""
    from bcclassify.data.imaging import load_image
    from bcclassify.models.norm_transfer import calibration_indices

    picked = train[calibration_indices(dataset.labels[train], per_class, seed)]
    return np.stack([load_image(dataset.paths[i], image_size) for i in picked])


def write_model_files(
    model_json: str, arrays: dict[str, np.ndarray], target: Path, shard_bytes: int
) -> tuple[list, str]:
    """model.json and ``weights-NNN.npz`` shards of at most ``shard_bytes``, keys in order."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.json").write_text(model_json)
    entries = [{"path": "model/model.json", "kind": "model", "count": None}]
    shard: list[str] = []
    used = 0

    def flush() -> None:
        path = target / f"weights-{len(entries) - 1:03d}.npz"
        np.savez(path, **{k: arrays[k] for k in shard})
        entries.append({"path": f"model/{path.name}", "kind": "weights", "count": len(shard)})

    for key in sorted(arrays):
        size = arrays[key].nbytes + 200
        if shard and used + size > shard_bytes:
            flush()
            shard, used = [], 0
        shard.append(key)
        used += size
    if shard:
        flush()
    config = json.loads(model_json)
    output_layer = config["config"]["output_layers"][0][0]
    return entries, output_layer


def write_fresh_model(arch: str, args: argparse.Namespace, classes: int, target: Path):
    """model.json only, as the registry builds ``arch``: nothing to start from, so no weights
    travel; the device initialises them with the run's seed (train_lab.py)."""
    from bcclassify.models.registry import build

    model = build(
        arch, args.image_size, classes, "none", center_crop=args.center_crop, norm=args.norm
    )
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.json").write_text(model.to_json())
    config = json.loads(model.to_json())
    entry = {"path": f"model/{arch}/model.json", "kind": "model", "arch": arch, "count": None}
    return entry, config["config"]["output_layers"][0][0], model.count_params()


def fresh_models(args: argparse.Namespace, class_names: list[str], merged: Path):
    """The manifest's ``models`` (one per ``--arch``) and their file entries."""
    entries, models = [], {}
    for arch in args.arch.split(","):
        entry, output_layer, params = write_fresh_model(
            arch, args, len(class_names), merged / "model" / arch
        )
        entries.append(entry)
        models[arch] = {
            "name": None,
            "architecture": arch,
            "image_size": args.image_size,
            "center_crop": args.center_crop,
            "class_names": class_names,
            "output_layer": output_layer,
            "parameters": params,
            "training_run": None,
            "from_scratch": True,
            "norm": args.norm,
            "initialisation": "from scratch: the layers' initialisers, seeded on the device",
        }
    return entries, models


def reference_probabilities(name: str, dataset, indices, image_size: int, model=None) -> dict:
    """The installed model's probabilities (TensorFlow, CPU, uncalibrated, one view) for the
    first validation images, or the packed ``model``'s when it was converted here:
    train_lab.py --check compares the GPU's with them."""
    from bcclassify.data.imaging import load_image
    from bcclassify.serving.classifier import load_model

    if len(indices) == 0:
        return {}
    model = model if model is not None else load_model(name).model
    pixels = np.stack([load_image(dataset.paths[i], image_size) for i in indices])
    probs = model.predict(pixels.astype(np.float32), verbose=0)
    return {
        "files": [dataset.relative_paths[i] for i in indices],
        "probabilities": np.round(np.asarray(probs, dtype=np.float64), 6).tolist(),
        "computed_with": "TensorFlow on the CPU, installed weights, single view",
    }


def download_wheels(target: Path) -> list[dict]:
    """keras (requirements.txt's pin), namex and optree (this environment's versions) for
    CPython 3.12 on manylinux x86-64: the device's Python has none of them."""
    pins = {"keras": _required_version("keras")}
    for name in ("namex", "optree"):
        pins[name] = metadata.version(name)
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp",
        *[arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)],
        "-d", str(target), *[f"{k}=={v}" for k, v in pins.items()],
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return [
        {"path": f"wheels/{p.name}", "kind": "wheel", "count": None}
        for p in sorted(target.glob("*.whl"))
    ]


def _required_version(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    return metadata.version(name)


# ----------------------------------------------------------------------------- main


def build_pack(args: argparse.Namespace) -> dict:
    from bcclassify.data.augment import PRESETS
    from bcclassify.serving.classifier import resolve_model_name, verify_model_files
    from bcclassify.storage.store import models_dir

    fresh = bool(args.arch)
    converted = None  # the installed model with group norm (--norm group), packed as converted
    norm_fit = None  # how its group norms were fitted to the batch norms they replace
    if fresh:
        if not (args.data and args.image_size):
            raise ValueError("--arch needs --data and --image-size (no card to take them from)")
        name, card, image_size = None, {}, args.image_size
        dataset, split, seed, limit, root = fresh_split(args.data, args.seed, None)
    else:
        name = resolve_model_name(args.model)
        card = verify_model_files(name)
        folder = models_dir() / name
        image_size = int(card["image_size"])
        dataset, split, seed, limit, root = model_split(card, args.data)
    train = choose(split.train, dataset.labels, args.train_per_class, seed, 1)
    val = choose(split.val, dataset.labels, args.val_per_class, seed, 2)
    check_images(dataset, np.concatenate([train, val]), image_size, args.verify)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    ensure_ignored(out)
    merged = out / "all"
    shard_bytes = int(args.shard_mib * MIB)
    entries = []
    if args.wheels:
        entries += download_wheels(merged / "wheels")
    if fresh:
        model_entries, models = fresh_models(args, list(dataset.class_names), merged)
    elif args.norm == "group":
        calibration = (
            calibration_pixels(dataset, split.train, args.norm_fit_images, seed, image_size)
            if args.norm_fit_images
            else None
        )
        model_entries, output_layer, converted, norm_fit = write_group_norm_model(
            name, merged / "model", shard_bytes, calibration
        )
        models = None
    else:
        model_entries, output_layer = write_model(folder, card, merged / "model", shard_bytes)
        models = None
    entries += model_entries
    entries += write_image_shards(dataset, val, "val", merged / "data", shard_bytes)
    entries += write_image_shards(dataset, train, "train", merged / "data", shard_bytes)
    for entry in entries:
        path = merged / entry["path"]
        entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))

    tree = travelling_bytes(leave_out=SHRUNK_OUT)
    margin = int(args.margin_mib * MIB)
    manifest_allowance = 256 * 1024  # manifest.json travels in every call
    capacity = int(args.call_mib * MIB) - tree - margin - manifest_allowance
    calls = plan_calls([(e["path"], e["bytes"]) for e in entries], capacity)
    call_of = {path: n + 1 for n, paths in enumerate(calls) for path in paths}
    for entry in entries:
        entry["call"] = call_of[entry["path"]]

    lab = dataclasses.asdict(PRESETS[args.preset])
    model_record = (
        next(iter(models.values()))
        if fresh
        else {
            "name": name,
            "architecture": card.get("architecture"),
            "image_size": image_size,
            "center_crop": card.get("center_crop", 1.0),
            "class_names": card.get("class_names"),
            "output_layer": output_layer,
            "training_run": card.get("training_run"),
            "initialisation": card.get("initialisation"),
            "norm": args.norm,  # "group": converted at packing (registry.with_group_norm)
            "group_norm_fit": norm_fit,  # and fitted there (models.norm_transfer)
            "training_config": card.get("training_config"),
            "card_sha256": sha256_file(folder / "card.json"),
            "files_sha256": card.get("files_sha256"),
        }
    )
    # Random weights have nothing here to compare with: the device's check needs a model.
    reference = (
        {}
        if fresh
        else reference_probabilities(name, dataset, val[: args.reference], image_size, converted)
    )
    manifest = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "made_by": "scripts/gpu/pack.py",
        "model": model_record,
        "data": {
            "path": card.get("training_data", {}).get("path") or root,
            "resolved": str(Path(root).resolve()),
            "manifest_sha256": dataset.manifest_hash(),
            "num_images": len(dataset),
            "class_counts": dataset.class_counts(),
            "seed": seed,
            "limit_per_class": limit,
            "split_sizes": split.sizes(),
            "split_function": "bcclassify.data.datasets.train_val_test_split",
            "train": _subset_record(dataset, train, len(split.train), args.train_per_class),
            "val": _subset_record(dataset, val, len(split.val), args.val_per_class),
        },
        "augmentation": {**lab, "zoom": list(lab["zoom"]) if lab["zoom"] else None},
        "augmentation_preset": args.preset,
        "reference": reference,
        "calls": [
            {
                "call": n + 1,
                "folder": f"call{n + 1}",
                "bytes": sum(e["bytes"] for e in entries if e["call"] == n + 1),
                "files": len(paths),
            }
            for n, paths in enumerate(calls)
        ],
        "call_budget": {
            "call_bytes": int(args.call_mib * MIB),
            "tree_bytes_shrunk": tree,
            "margin_bytes": margin,
            "capacity_bytes": capacity,
        },
        "files": entries,
    }
    if models:
        manifest["models"] = models  # train_lab.py --arch picks one; "model" is the first
    text = json.dumps(manifest, indent=1) + "\n"
    (merged / "manifest.json").write_text(text)
    for n in range(len(calls)):
        call_dir = out / f"call{n + 1}"
        for entry in entries:
            if entry["call"] == n + 1:
                _link(merged / entry["path"], call_dir / entry["path"])
        (call_dir / "manifest.json").write_text(text)
    return manifest


def _subset_record(dataset, indices, split_count: int, per_class: int | None) -> dict:
    counts = np.bincount(dataset.labels[indices], minlength=len(dataset.class_names))
    return {
        "packed": len(indices),
        "of_split": split_count,
        "per_class_limit": per_class,
        "class_counts": {n: int(c) for n, c in zip(dataset.class_names, counts)},
    }


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _models_line(manifest: dict) -> str:
    if manifest.get("models"):
        return "from scratch " + ", ".join(manifest["models"])
    return f"model {manifest['model']['name']}"


def summary(manifest: dict, out: Path) -> str:
    budget = manifest["call_budget"]
    data = manifest["data"]
    lines = [
        f"pack {out}: {_models_line(manifest)} "
        f"({manifest['model']['image_size']} px), {data['train']['packed']} of "
        f"{data['train']['of_split']} training and {data['val']['packed']} of "
        f"{data['val']['of_split']} validation images (seed {data['seed']})",
        f"total {sum(e['bytes'] for e in manifest['files']) / MIB:.1f} MiB; working tree after "
        f"`scripts/gpu/tree.sh shrink` {budget['tree_bytes_shrunk'] / MIB:.1f} MiB "
        f"(now {travelling_bytes() / MIB:.1f} MiB); {len(manifest['calls'])} device calls of "
        f"{budget['call_bytes'] / MIB:.0f} MiB:",
    ]
    for call in manifest["calls"]:
        lines.append(
            f'  call {call["call"]}: carry ["{out.name}/{call["folder"]}"], '
            f"{call['bytes'] / MIB:.1f} MiB in {call['files']} files"
        )
    if not any(e["kind"] == "wheel" for e in manifest["files"]):
        lines.append("  no wheels packed: add --wheels (the device has no keras)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="installed model (default: the default model)")
    p.add_argument("--data", default=None, help="its training data (default: the card's path)")
    p.add_argument(
        "--arch",
        default=None,
        help="instead of --model: architectures (comma list) trained from scratch on the "
        "device, all from one data pack (needs --data and --image-size)",
    )
    p.add_argument(
        "--norm",
        choices=("batch", "group"),
        default="batch",
        help="group: group norm in place of every batch norm (train --norm group); with --model "
        "the installed model is converted, each group norm fitted to the batch norm it replaces, "
        "to fine-tune on the device",
    )
    p.add_argument(
        "--norm-fit-images",
        type=int,
        default=32,
        metavar="N",
        help="with --norm group and --model: training images a class the fit uses (0: no fit, "
        "the batch norms' scale and offset kept)",
    )
    p.add_argument("--image-size", type=int, default=None, help="with --arch")
    p.add_argument("--center-crop", type=float, default=1.0, help="with --arch")
    p.add_argument("--seed", type=int, default=42, help="with --arch: the split's seed")
    p.add_argument("--out", default=str(REPO / "gpu_pack"))
    p.add_argument("--train-per-class", type=int, default=None, help="subsample (default: all)")
    p.add_argument("--val-per-class", type=int, default=100, help="subsample (default 100)")
    p.add_argument("--preset", default="lab", help="augmentation preset (bcclassify.data.augment)")
    p.add_argument("--wheels", action="store_true", help="download keras, namex, optree wheels")
    p.add_argument("--shard-mib", type=float, default=2.0, help="npz shard size (small shards "
                   "fill the calls tightly)")  # fmt: skip
    p.add_argument("--call-mib", type=float, default=64.0)
    p.add_argument("--margin-mib", type=float, default=2.0, help="room for the tree to grow")
    p.add_argument("--reference", type=int, default=32, help="validation images scored here")
    p.add_argument("--verify", type=int, default=64, help="images decoded both ways and compared")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = build_pack(args)
    print(summary(manifest, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
