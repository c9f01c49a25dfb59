"""Fine-tune the shipped hybrid end to end with the lab augmentation, on a lent GPU (issue 12).

Runs where there is no TensorFlow: Keras 3 on JAX, NumPy and Pillow, with the repository's
TensorFlow-free modules (the run's ``TrainConfig``, the epoch loop and checkpoints of
``bcclassify.training.loop``, the run record of ``bcclassify.storage.runs``, the lab preset in
``keras.ops`` from ``bcclassify.data.augment_ops``). What is left here is the device glue: read
a pack made by ``scripts/gpu/pack.py`` (JPEG shards of the model's own training and validation
splits, model.json and float16 weight shards, a manifest with checksums), decode it once, build
the step (augmentation inside it, a per-step warm-up and cosine schedule, jit), bound the time,
and write to $OUT the kept weights (float16 as installed, encoded losslessly against the packed
ones to fit the 64 MiB that come back) and a JSON log carrying the run folder's small files.
The run folder itself (config.json, run.json, history.csv, checkpoints/) is the library's, under
``--work``/runs/<run-id>; ``scripts/gpu/import_run.py`` puts it and the weights under
model_store/runs/ and finishes it with ``train --resume``'s code.

Modes (scripts/gpu/README.md gives the device calls):
  --check-env     versions and devices (the first call: is the machine as expected?)
  --check         the pack files present so far, each verified; imports no Keras
  --check-model   --check, then the model's clean predictions on the first validation images
                  against the probabilities pack.py computed with TensorFlow on the CPU
  (default)       train; --max-seconds bounds the whole process, export included
  --export-only pending|best|last   a follow-up call: weight files that did not fit the
                  training call, or that run's best-validation or last-epoch weights

Under TensorFlow (the tests here) the same code runs unchanged with KERAS_BACKEND=tensorflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# The repository root: bcclassify's store and serving modules import without TensorFlow or Keras
# (checked under JAX in cache/jaxenv), so the device reuses them rather than copies.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bcclassify.serving.classifier import zero_initialisers  # noqa: E402
from bcclassify.storage.runs import RunRecord  # noqa: E402
from bcclassify.storage.store import read_json, sha256_file, write_json  # noqa: E402
from bcclassify.training.config import TrainConfig, new_run_id  # noqa: E402
from bcclassify.training.loop import Epoch, fit_logs, run_epochs  # noqa: E402

MIB = 1024 * 1024
# What comes back from $OUT: at most 8 files of at most 16 MiB, 64 MiB together. The float16
# weights are 82 MiB, so they travel as a lossless difference from the packed weights (below).
OUT_FILE_BYTES = 16 * MIB
OUT_MAX_FILES = 8
OUT_TOTAL_BYTES = 64 * MIB
EXPORT_FILE_BYTES = 15 * MIB  # a margin under 16 MiB for the npz headers
LOG_RESERVE_BYTES = 2 * MIB  # the log's share of the 64 MiB
HALF_PRECISION_MIN_SIZE = (
    4096  # as bcclassify.serving.classifier: large float32 arrays stored as float16
)
LOG_NAME = "train_log.json"
# The run folder's small files, carried back inside the log (import_run.py writes them out).
RUN_FILES = ("config.json", "environment.json", "run.json", "history.csv")
PROBE_IMAGES = 16  # validation images whose probabilities the log keeps for import_run's check


# ----------------------------------------------------------------------------- the pack


def read_manifest(pack: Path) -> dict:
    path = pack / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pack manifest (run scripts/gpu/pack.py)")
    return json.loads(path.read_text())


def check_pack_files(pack: Path, manifest: dict, require: set[str] | None = None) -> list[str]:
    """Verify every manifest file that is present; returns the missing ones.

    ``require``: kinds (model, weights, train, val) that must be complete, else an error.
    """
    missing = []
    for entry in manifest["files"]:
        path = pack / entry["path"]
        if not path.is_file():
            missing.append(entry["path"])
            continue
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: size or sha256 differs from the manifest (damaged copy)")
    if require:
        kinds = {e["path"]: e["kind"] for e in manifest["files"]}
        lacking = [p for p in missing if kinds[p] in require]
        if lacking:
            raise FileNotFoundError(
                f"pack incomplete: {len(lacking)} file(s) missing, e.g. {lacking[0]} "
                "(were all the carry calls made on this machine?)"
            )
    return missing


def decode_image(data: bytes, size: int) -> np.ndarray:
    """A packed JPEG as ``bcclassify.data.imaging.load_image(path, size)`` gives it for these files:
    decoded to RGB, then Lanczos to ``size`` (pack.py checks they are 224 px RGB without an ICC
    profile, where load_image does nothing else, and compares a sample bit for bit)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = np.asarray(img.convert("RGB"))
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS))
    return np.ascontiguousarray(rgb)


def _decode_shard(job: tuple[str, int, int | None]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    path, size, limit = job
    with np.load(path) as shard:
        blob, offsets = shard["jpeg"], shard["offsets"]
        labels, files = shard["labels"], [str(f) for f in shard["files"]]
    count = len(labels) if limit is None else min(limit, len(labels))
    pixels = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        pixels[i] = decode_image(blob[offsets[i] : offsets[i + 1]].tobytes(), size)
    return pixels, labels[:count].astype(np.int64), files[:count]


def load_split(
    pack: Path, manifest: dict, kind: str, workers: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode the ``kind`` (train/val) shards present in the pack, once, into uint8 arrays."""
    size = int(manifest["model"]["image_size"])
    shards = [e for e in manifest["files"] if e["kind"] == kind and (pack / e["path"]).is_file()]
    jobs, remaining = [], limit
    for entry in shards:
        if remaining is not None and remaining <= 0:
            break
        jobs.append((str(pack / entry["path"]), size, remaining))
        if remaining is not None:
            remaining -= entry["count"]
    if not jobs:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64), []
    total = sum(e["count"] for e in shards)
    if workers > 1 and len(jobs) > 1 and total > 256:
        # fork is safe here: Keras/JAX are not imported yet in the training run (see main)
        import multiprocessing

        method = "fork" if "jax" not in sys.modules and "tensorflow" not in sys.modules else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            parts = list(pool.map(_decode_shard, jobs))
    else:
        parts = [_decode_shard(job) for job in jobs]
    pixels = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    files = [f for p in parts for f in p[2]]
    return pixels, labels, files


# ----------------------------------------------------------------------------- the model


def _set_policies(config: Any, policy: str, keep_float32: set[str]) -> Any:
    """Every layer's dtype policy set to ``policy``, except the layers named in
    ``keep_float32`` (the softmax head: its probabilities stay float32)."""
    if isinstance(config, dict):
        out = {k: _set_policies(v, policy, keep_float32) for k, v in config.items()}
        dtype = out.get("dtype")
        is_policy = isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy"
        if is_policy and out.get("name") not in keep_float32:
            out["dtype"] = {**dtype, "config": {"name": policy}}
        return out
    if isinstance(config, list):
        return [_set_policies(v, policy, keep_float32) for v in config]
    return config


def select_model(manifest: dict, arch: str | None) -> dict:
    """The manifest as seen by one run: a from-scratch pack (pack.py --arch) holds several
    architectures' model.json; ``arch`` picks one, as ``model``, with only its files."""
    models = manifest.get("models")
    if not models:
        if arch and arch != manifest["model"]["architecture"]:
            raise ValueError(f"the pack holds {manifest['model']['architecture']}, not {arch}")
        return manifest
    if arch is None:
        if len(models) > 1:
            raise ValueError(f"the pack holds {', '.join(models)}: choose one with --arch")
        arch = next(iter(models))
    if arch not in models:
        raise ValueError(f"the pack holds {', '.join(models)}, not {arch}")
    files = [e for e in manifest["files"] if e.get("arch") in (None, arch)]
    return {**manifest, "model": models[arch], "files": files}


def from_scratch(manifest: dict) -> bool:
    return bool(manifest["model"].get("from_scratch"))


def model_entry(manifest: dict) -> dict:
    return next(e for e in manifest["files"] if e["kind"] == "model")


def read_stored_weights(pack: Path, manifest: dict) -> list[np.ndarray]:
    """The pack's weights as installed (float16 for large arrays), in ``model.weights`` order."""
    arrays: dict[str, np.ndarray] = {}
    for entry in manifest["files"]:
        if entry["kind"] == "weights":
            with np.load(pack / entry["path"]) as stored:
                arrays.update({k: stored[k] for k in stored.files})
    return [arrays[k] for k in sorted(arrays)]


def as_float32(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays]


def read_weights(pack: Path, manifest: dict) -> list[np.ndarray]:
    """The pack's weights as the model takes them (float32)."""
    return as_float32(read_stored_weights(pack, manifest))


def build_model(pack: Path, manifest: dict, precision: str = "float32", initialise: bool = True):
    """The installed model from its model.json (standard layers only) with the packed weights;
    from scratch, the layers' own initialisers (seed set by the caller), or zeros when only the
    shapes are wanted (``initialise=False``)."""
    import keras

    config = json.loads((pack / model_entry(manifest)["path"]).read_text())
    fresh = from_scratch(manifest)
    if not (fresh and initialise):
        config = zero_initialisers(config)
    if precision != "float32":
        head = manifest["model"].get("output_layer", "predictions")
        config = _set_policies(config, precision, {head})
    model = keras.models.model_from_json(json.dumps(config))
    if fresh:
        return model
    weights = read_weights(pack, manifest)
    if len(weights) != len(model.weights):
        raise ValueError(f"{len(weights)} packed arrays for {len(model.weights)} model weights")
    model.set_weights(weights)
    return model


def export_base(pack: Path, manifest: dict, model=None) -> list[np.ndarray]:
    """What the exported weights are coded against: the packed starting weights, or, from
    scratch (nothing packed to start from), zeros of the model's shapes in the installed
    precision, which import_run.py rebuilds from model.json alone."""
    if not from_scratch(manifest):
        return read_stored_weights(pack, manifest)
    model = model if model is not None else build_model(pack, manifest, initialise=False)
    return stored_arrays([np.zeros(tuple(v.shape), str(v.dtype)) for v in model.weights])


def stored_arrays(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The installed format's precision: float32 arrays of 4096+ values as float16."""
    return [
        a.astype(np.float16) if a.dtype == np.float32 and a.size >= HALF_PRECISION_MIN_SIZE else a
        for a in arrays
    ]


# The exported weights: each array's bit pattern minus the packed (starting) array's, counted in
# units in the last place (an integer difference of the bit patterns, zigzag-coded so small
# negative steps are small numbers too), split into byte planes and deflated. Lossless;
# fine-tuning moves most weights by a few ulps, so the planes are mostly zeros and small numbers
# and the whole shrinks to well under the 64 MiB that come back (measured on the shipped hybrid
# with simulated 2-5% changes: 40-49 of 82 MiB; XOR instead: 46-53). Whoever decodes needs the
# packed weights, which import_run.py reads from the same pack.
ENCODING = "ulp difference from the packed weights, zigzag, byte planes, zlib (train_lab.py)"
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(_UNSIGNED[array.dtype.itemsize])


def ulp_difference(array: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Zigzag-coded ``bits(array) - bits(start)`` (wrapping), one unsigned integer per value."""
    width = array.dtype.itemsize
    signed = (_bits(array) - _bits(start)).view(_SIGNED[width])  # unsigned arithmetic wraps
    return ((signed << 1) ^ (signed >> (8 * width - 1))).view(_UNSIGNED[width])


def undo_ulp_difference(coded: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``start`` moved by the coded differences: the encoded array, bit for bit."""
    unsigned = _UNSIGNED[start.dtype.itemsize]
    signed = (coded >> unsigned(1)) ^ (unsigned(0) - (coded & unsigned(1)))
    return (_bits(start) + signed).view(start.dtype).reshape(start.shape)


def encode_weights(arrays: list[np.ndarray], base: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Members ``zNNNNN`` (an encoded array) or ``wNNNNN`` (the array itself, where it cannot be
    compared with the base: another dtype or shape)."""
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[str, np.ndarray]:
        array, start = arrays[i], base[i]
        if array.dtype != start.dtype or array.shape != start.shape:
            return f"w{i:05d}", array
        coded = ulp_difference(array, start)
        planes = coded.view(np.uint8).reshape(-1, coded.itemsize).T.tobytes()
        return f"z{i:05d}", np.frombuffer(zlib.compress(planes, 6), dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # zlib frees the GIL
        return dict(pool.map(one, range(len(arrays))))


def decode_weights(members: dict[str, np.ndarray], base: list[np.ndarray]) -> list[np.ndarray]:
    """The arrays :func:`encode_weights` encoded, bit for bit, in model order."""
    import zlib

    if len(members) != len(base):
        raise ValueError(f"{len(members)} exported arrays for {len(base)} model weights")
    out = []
    for i, start in enumerate(base):
        if f"w{i:05d}" in members:
            out.append(members[f"w{i:05d}"])
            continue
        if f"z{i:05d}" not in members:
            raise ValueError(f"exported weights lack array {i} of {len(base)}")
        planes = np.frombuffer(zlib.decompress(members[f"z{i:05d}"].tobytes()), dtype=np.uint8)
        width = start.dtype.itemsize
        coded = np.ascontiguousarray(planes.reshape(width, -1).T).reshape(-1)
        out.append(undo_ulp_difference(coded.view(_UNSIGNED[width]), start))
    return out


def read_export(folders: list[Path], names: list[str], base: list[np.ndarray]) -> list[np.ndarray]:
    """Exported files (looked up in ``folders``, in order), decoded against ``base``."""
    members: dict[str, np.ndarray] = {}
    for name in names:
        path = next((f / name for f in folders if (f / name).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{name}: not in {', '.join(map(str, folders))}")
        with np.load(path) as stored:
            members.update({k: stored[k] for k in stored.files})
    return decode_weights(members, base)


def write_export(
    arrays: list[np.ndarray], base: list[np.ndarray], tag: str, staging: Path
) -> list[dict]:
    """Encoded arrays in ``weights-{tag}-NNN.npz`` files of at most 15 MiB under ``staging``
    (first-fit decreasing: the fewest files)."""
    members = encode_weights(arrays, base)
    bins: list[list[str]] = []
    sizes: list[int] = []
    for name in sorted(members, key=lambda n: -members[n].nbytes):
        size = members[name].nbytes + 256  # npz member header
        for b, used in enumerate(sizes):
            if used + size <= EXPORT_FILE_BYTES:
                bins[b].append(name)
                sizes[b] += size
                break
        else:
            bins.append([name])
            sizes.append(size)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = []
    for n, names in enumerate(bins):
        path = staging / f"weights-{tag}-{n:03d}.npz"
        np.savez(path, **{k: members[k] for k in sorted(names)})
        files.append({"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return files


def deliver(files: list[dict], staging: Path, out: Path) -> tuple[list[dict], list[dict]]:
    """Move exported files into ``out`` while they fit what comes back (files, bytes, the log's
    share); the rest stay in ``staging`` for ``--export-only pending`` in a follow-up call."""
    present = [p for p in out.iterdir() if p.is_file()] if out.is_dir() else []
    count, used = len(present) + 1, sum(p.stat().st_size for p in present) + LOG_RESERVE_BYTES
    sent, pending = [], []
    for entry in files:
        fits = count + 1 <= OUT_MAX_FILES and used + entry["bytes"] <= OUT_TOTAL_BYTES
        if fits and not pending:
            shutil.move(staging / entry["file"], out / entry["file"])
            count, used = count + 1, used + entry["bytes"]
            sent.append(entry)
        else:
            pending.append(entry)
    return sent, pending


# ----------------------------------------------------------------------------- training


def _version_of(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def backend_versions() -> dict:
    import keras
    import PIL

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "h5py": _version_of("h5py"),  # the library's checkpoints are .weights.h5
    }
    if keras.backend.backend() == "jax":
        import jax
        import jaxlib

        info.update(
            jax=jax.__version__,
            jaxlib=jaxlib.__version__,
            devices=[str(d) for d in jax.devices()],
            gpus=[d.device_kind for d in jax.devices() if d.platform == "gpu"],
        )
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        info.update(
            tensorflow=tf.__version__,
            devices=[d.name for d in tf.config.list_physical_devices()],
            gpus=[d.name for d in tf.config.list_physical_devices("GPU")],
        )
    return info


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def epoch_batches(pixels, targets, batch_size: int, steps: int, seed: int, epoch: int):
    """This epoch's batches: a fresh permutation (as bcclassify.training.feeds.epoch_order), full
    batches only, so the jitted step always sees one shape."""
    order = np.random.default_rng([seed, epoch]).permutation(len(pixels))
    for step in range(steps):
        index = np.sort(order[step * batch_size : (step + 1) * batch_size])
        yield pixels[index], targets[index]


def predict_probs(model, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Clean probabilities; the last batch is padded to full size (one compiled shape)."""
    if len(pixels) == 0:
        return np.zeros((0, 0), np.float32)
    pad = (-len(pixels)) % batch_size
    padded = np.concatenate([pixels, pixels[:pad]]) if pad else pixels
    probs = model.predict(padded, batch_size=batch_size, verbose=0)
    return np.asarray(probs, dtype=np.float64)[: len(pixels)]


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    if len(labels) == 0:
        return {"loss": None, "accuracy": None}
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return {
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
    }


class _Clock:
    """Seconds since the script started, and what is left of --max-seconds."""

    def __init__(self, max_seconds: float | None):
        self.start = time.monotonic()
        self.max_seconds = max_seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return math.inf if self.max_seconds is None else self.max_seconds - self.elapsed()


def time_limit_callback(clock: _Clock, reserve: float, sync_every: int = 8):
    import keras

    class TimeLimit(keras.callbacks.Callback):
        """Stops fit mid-epoch when only ``reserve`` seconds are left (validation and export
        still have to run). Reads the loss every few steps so the check waits for the device:
        JAX dispatches steps ahead of their completion."""

        def __init__(self):
            super().__init__()
            self.stopped = False
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if logs and self.steps % sync_every == 0 and "loss" in logs:
                float(logs["loss"])
            if clock.left() <= reserve:
                self.stopped = True
                self.model.stop_training = True

    return TimeLimit()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)


# ----------------------------------------------------------------------------- the run record


def lab_config(args: argparse.Namespace, manifest: dict) -> TrainConfig:
    """The run's TrainConfig: the library's one config class, as ``train`` would be given it for
    an end-to-end lab fine-tune of the packed model."""
    model, data = manifest["model"], manifest["data"]
    preset = manifest.get("augmentation_preset", "lab")
    if args.note:
        note = args.note
    elif from_scratch(manifest):
        note = f"from scratch on a GPU, {preset} augmentation (issue 25)"
    else:
        note = f"{preset} preset, every layer fine-tuned on a GPU (issue 12)"
    config = TrainConfig(
        arch=model["architecture"],
        data=data["path"],
        image_size=int(model["image_size"]),
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="adam",
        lr=args.lr,
        augment=True,
        augment_preset=preset,
        keep_weights=args.keep,
        seed=args.seed,
        freeze_until=None,  # end to end: every layer trained, stem included
        freeze_bn=args.freeze_bn,
        center_crop=float(model["center_crop"]),
        norm=model.get("norm", "batch"),
        limit_per_class=data["limit_per_class"],  # the split's; the subsets are under "gpu"
        aug_copies=0,  # fresh views every step, none cached
        init_from=None,  # the source is an installed model (or none), not a run: see "gpu"
        backbone_weights="none",  # the installed model's weights (or random), not ImageNet's
        note=note,
    )
    stamp = new_run_id(config, config.image_size)
    config.run_id = args.run_id or f"{stamp}-{config.augment_preset}"
    return config


def run_config(config: TrainConfig, args: argparse.Namespace, manifest: dict, log: dict) -> dict:
    """config.json as ``train`` writes it, plus how the device run differs (under ``gpu``)."""
    data, model = manifest["data"], manifest["model"]
    return {
        **dataclasses.asdict(config),
        "data_manifest_sha256": data["manifest_sha256"],
        "num_images": data["num_images"],
        "class_counts": data["class_counts"],
        "skipped_files": [],
        "split_sizes": [data["split_sizes"]],
        "class_names": model["class_names"],
        "augmentation": {
            "ops": "dihedral flips/rotations, scale, shift, HSV + brightness/contrast jitter; "
            "OD stain mixing, white balance, zoom, blur, noise, resolution, JPEG",
            "preset": manifest.get("augmentation_preset", "lab"),
            **(manifest.get("augmentation") or {}),
            "implementation": "keras.ops port (bcclassify.data.augment_ops) inside the jitted "
            "step; JPEG simulated in-graph (DCT quantisation, 4:2:0)",
            "clean_fraction": args.clean_fraction,
        },
        "smote_space": None,
        "command": log.get("command"),
        "gpu": {
            "script": "scripts/gpu/train_lab.py",
            "precision": args.precision,
            "label_smoothing": args.label_smoothing,
            "warmup_steps": args.warmup_steps,
            "lr_schedule": "cosine per step after a linear warm-up (keras CosineDecay)",
            "max_seconds": args.max_seconds,
            "train_subset": data["train"],
            "val_subset": data["val"],
            "initialised_from": (
                {"from_scratch": True, "seed": args.seed}
                if from_scratch(manifest)
                else {
                    "model": model["name"],
                    "training_run": model["training_run"],
                    "card_sha256": model["card_sha256"],
                }
            ),
            "pack_manifest_sha256": (log.get("pack") or {}).get("manifest_sha256"),
        },
    }


def environment(versions: dict) -> dict:
    """environment.json with ``environment_info``'s keys, describing the device."""
    return {
        "python": versions.get("python"),
        "platform": versions.get("platform"),
        "packages": {
            "tensorflow": versions.get("tensorflow"),
            "keras": versions.get("keras"),
            "jax": versions.get("jax"),
            "jaxlib": versions.get("jaxlib"),
            "numpy": versions.get("numpy"),
            "pillow": versions.get("pillow"),
        },
        "cpu": None,
        "cpu_count": versions.get("cpu_count"),
        "gpus": versions.get("gpus") or [],
        "intra_op_threads": None,
        "inter_op_threads": None,
        "hostname": versions.get("hostname"),
        "backend": versions.get("backend"),
    }


def run_files(run_dir: Path) -> dict:
    """The run folder's small files, carried back inside the log (at most 8 files come back,
    and the weights need most of them); import_run.py writes them out again."""
    files: dict[str, Any] = {}
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_file():
            files[name] = (
                path.read_text() if name.endswith(".csv") else json.loads(path.read_text())
            )
    return files


def _open_run(args: argparse.Namespace, manifest: dict, log: dict) -> tuple[RunRecord, dict]:
    """The run folder under --work (created, or the previous call's with --resume)."""
    work = Path(args.work)
    if args.resume:
        previous = json.loads((work / LOG_NAME).read_text())
        args.run_id = previous["run_id"]
    config = lab_config(args, manifest)
    run_dir = work / "runs" / config.run_id
    record = RunRecord(run_dir)
    if not (run_dir / "config.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", run_config(config, args, manifest, log))
        write_json(run_dir / "environment.json", environment(backend_versions()))
        record.start(
            config.arch,
            epochs_done=0,
            # Not initialisation/init_from: train's fields, rewritten when resume finishes it.
            started_from_model=manifest["model"]["name"],
            started_from_run=manifest["model"].get("training_run"),
            trained_by="scripts/gpu/train_lab.py",
        )
    else:
        record.resume()
    log["run_id"] = config.run_id
    return record, dataclasses.asdict(config)


# ----------------------------------------------------------------------------- training


def train(args: argparse.Namespace, log: dict, clock: _Clock) -> dict:
    """The fine-tune, through the library's epoch loop and checkpoints; fills ``log`` as it
    goes (the caller writes it)."""
    pack, work, out = Path(args.pack), Path(args.work), Path(args.out)
    manifest = select_model(read_manifest(pack), args.arch)
    check_pack_files(pack, manifest, require={"model", "weights", "train", "val"})
    log["arch"] = manifest["model"]["architecture"]
    log["pack"] = {
        "manifest_sha256": sha256_file(pack / "manifest.json"),
        "model": manifest["model"],
        "data": manifest["data"],
    }
    classes = len(manifest["model"]["class_names"])

    tick = time.monotonic()
    x_train, y_train, _ = load_split(pack, manifest, "train", args.workers, args.limit_train)
    x_val, y_val, val_files = load_split(pack, manifest, "val", args.workers, args.limit_val)
    log["timings"]["decode_s"] = round(time.monotonic() - tick, 2)
    log["data"] = {"train_images": len(x_train), "val_images": len(x_val)}
    print(
        f"decoded {len(x_train)} train + {len(x_val)} val images in {log['timings']['decode_s']} s",
        flush=True,
    )

    import keras

    from bcclassify.data.augment_ops import LabConfig, make_layer_class

    record, config = _open_run(args, manifest, log)
    keras.utils.set_random_seed(args.seed)
    if args.backend_cache and keras.backend.backend() == "jax":
        import jax

        # A second process on the same machine (--resume, --export-only) reuses compiled steps.
        jax.config.update("jax_compilation_cache_dir", str(work / "jaxcache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    tick = time.monotonic()
    base = build_model(pack, manifest, args.precision)
    if args.freeze_bn:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    lab = LabConfig.from_dict(manifest.get("augmentation") or LabConfig().to_dict())
    augmenter = make_layer_class()(
        lab.to_dict(), clean_fraction=args.clean_fraction, seed=args.seed, name="lab_augment"
    )
    size = int(manifest["model"]["image_size"])
    inputs = keras.Input((size, size, 3), dtype="uint8", name="pixels_uint8")
    model = keras.Model(inputs, base(augmenter(inputs)), name="lab_trainer")
    steps = len(x_train) // args.batch_size
    if args.steps_per_epoch:
        steps = min(steps, args.steps_per_epoch)
    if steps < 1:
        raise ValueError(
            f"{len(x_train)} training images: fewer than one batch of {args.batch_size}"
        )
    total_steps = steps * args.epochs
    warmup = min(args.warmup_steps, total_steps // 4)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else args.lr,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=args.lr if warmup else None,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    jit = {"on": True, "off": False}.get(args.jit, keras.backend.backend() == "jax" or "auto")
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit,
    )
    log["timings"]["build_s"] = round(time.monotonic() - tick, 2)
    log["schedule"] = {"steps_per_epoch": steps, "total_steps": total_steps, "warmup": warmup}

    targets = one_hot(y_train, classes)
    ckpt_dir = record.folder / "checkpoints"
    if not (ckpt_dir / "latest.json").is_file():
        tick = time.monotonic()
        initial_probs = predict_probs(model, x_val, args.eval_batch_size)
        log["initial_val"] = scores(initial_probs, y_val)
        log["timings"]["initial_val_s"] = round(time.monotonic() - tick, 2)  # compile included
        log["reference_check"] = reference_check(manifest, val_files, initial_probs)
        print(f"initial validation {log['initial_val']}; {log['reference_check']}", flush=True)

    seed_state = augmenter.seed_generator.state
    log["augment_seed_state"] = {"start": keras.ops.convert_to_numpy(seed_state).tolist()}
    limit = time_limit_callback(clock, args.reserve_seconds)

    def fit_epoch(epoch: int) -> dict:
        tick = time.monotonic()
        limit.steps = 0
        fitted = model.fit(
            epoch_batches(x_train, targets, args.batch_size, steps, args.seed, epoch),
            shuffle=False,  # the generator shuffles, per epoch
            steps_per_epoch=steps,
            epochs=epoch + 1,
            initial_epoch=epoch,
            callbacks=[limit],
            verbose=0,
        )
        train_s = time.monotonic() - tick
        val = scores(predict_probs(model, x_val, args.eval_batch_size), y_val)
        row = {
            **fit_logs(fitted),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "train_seconds": round(train_s, 2),
            "steps": limit.steps,
            "images_per_s": round(limit.steps * args.batch_size / max(train_s, 1e-9), 1),
            "complete": not limit.stopped,
            "stopped": limit.stopped,
        }
        print(json.dumps({"epoch": epoch + 1, **row}), flush=True)
        return row

    def out_of_time() -> str | None:
        return "max-seconds before an epoch" if clock.left() <= args.reserve_seconds else None

    # The checkpointed model is the classifier itself (what train's checkpoints hold), not
    # the augmenting wrapper: the same files resume here and on the CPU.
    state = run_epochs(
        record,
        ckpt_dir,
        base,
        optimizer,
        [Epoch(index=e) for e in range(args.epochs)],
        fit_epoch,
        config["keep_weights"],
        stop=out_of_time,
    )
    log["history"] = record.history()
    log["epoch_details"] = state.pop("rows")
    log["stop_reason"] = state["stop_reason"]
    # advanced once per step: every step drew fresh augmentation parameters
    log["augment_seed_state"]["end"] = keras.ops.convert_to_numpy(seed_state).tolist()
    log["best_epoch"], log["best_val_accuracy"] = state["best_epoch"], state["best_val_accuracy"]
    log["epochs_done"] = state["epoch"] + 1
    # Trained; the test split is scored here by import_run (train --resume's last step).
    record.update(stop_reason=state["stop_reason"], device_finished=_now())

    # Export the kept weights (as train's evaluation loads them), in the installed precision.
    stored_base = export_base(pack, manifest, base)
    if (ckpt_dir / "best.weights.h5").is_file():
        base.load_weights(ckpt_dir / "best.weights.h5")
    arrays = stored_arrays(base.get_weights())
    log["exported"] = export(arrays, stored_base, config["keep_weights"], work, out)
    # The probe and the last validation score exactly what was exported, decoded again.
    staging = work / f"export-{config['keep_weights']}"
    names = [f["file"] for f in log["exported"]["files"]]
    base.set_weights(as_float32(read_export([out, staging], names, stored_base)))
    exported_probs = predict_probs(model, x_val, args.eval_batch_size)
    log["exported_val"] = scores(exported_probs, y_val)
    log["probe"] = {
        "files": val_files[:PROBE_IMAGES],
        "labels": [int(v) for v in y_val[:PROBE_IMAGES]],
        "probabilities": np.round(exported_probs[:PROBE_IMAGES], 6).tolist(),
    }
    log["run_files"] = run_files(record.folder)
    return log


def export(arrays: list[np.ndarray], base: list[np.ndarray], tag: str, work: Path, out: Path):
    """Encode, write and deliver; the log's ``exported`` record."""
    staging = work / f"export-{tag}"
    files = write_export(arrays, base, tag, staging)
    sent, pending = deliver(files, staging, out)
    if pending:
        print(
            f"{len(pending)} weight file(s) did not fit this call's 64 MiB: run "
            "train_lab.py --export-only pending in a follow-up call",
            flush=True,
        )
    return {
        "keep": tag,
        "encoding": ENCODING,
        "files": files,
        "sent": [e["file"] for e in sent],
        "pending": [e["file"] for e in pending],
        "bytes": sum(e["bytes"] for e in files),
    }


def export_only(args: argparse.Namespace, log: dict) -> dict:
    """A follow-up call: weights an earlier run left in --work into --out, with its log.

    ``pending``: the files that did not fit the training call; ``best`` / ``last``: that run's
    kept (best.weights.h5) or last-epoch checkpoint weights, encoded and delivered the same way."""
    work, out, pack = Path(args.work), Path(args.out), Path(args.pack)
    previous = json.loads((work / LOG_NAME).read_text())
    exported = previous.get("exported") or {}
    if args.export_only == "pending":
        staging = work / f"export-{exported.get('keep')}"
        waiting = [e for e in exported.get("files", []) if e["file"] in exported.get("pending", [])]
        sent, pending = deliver(waiting, staging, out)
        exported["sent"] = exported.get("sent", []) + [e["file"] for e in sent]
        exported["pending"] = [e["file"] for e in pending]
    else:
        manifest = select_model(read_manifest(pack), previous.get("arch") or args.arch)
        ckpt_dir = work / "runs" / previous["run_id"] / "checkpoints"
        if args.export_only == "best":
            source = ckpt_dir / "best.weights.h5"
        else:
            source = ckpt_dir / read_json(ckpt_dir / "latest.json")["folder"] / "model.weights.h5"
        model = build_model(pack, manifest)
        model.load_weights(source)
        base = export_base(pack, manifest, model)
        previous["exported"] = export(
            stored_arrays(model.get_weights()), base, args.export_only, work, out
        )
        previous.pop("probe", None)  # it described other weights
        previous.pop("exported_val", None)
    previous.setdefault("follow_up_calls", []).append(log)
    return previous


def reference_check(manifest: dict, files: list[str], probs: np.ndarray) -> dict:
    """These clean probabilities against the ones pack.py computed with TensorFlow on the CPU
    for the same first validation images: the weights, the decoding and the backend agree."""
    reference = manifest.get("reference") or {}
    ref_files = reference.get("files") or []
    if not ref_files or files[: len(ref_files)] != ref_files or len(probs) < len(ref_files):
        return {"images": 0}
    ref, got = np.asarray(reference["probabilities"]), probs[: len(ref_files)]
    return {
        "images": len(ref_files),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "argmax_agree": int((got.argmax(1) == ref.argmax(1)).sum()),
    }


def check(args: argparse.Namespace, log: dict) -> dict:
    """Which pack files are here (each present one verified); with --check-model and the model
    complete, its clean predictions on the first validation images against the CPU reference."""
    pack = Path(args.pack)
    manifest = read_manifest(pack)
    if args.check_model or args.arch:
        manifest = select_model(manifest, args.arch)
    missing = check_pack_files(pack, manifest)
    kinds = {e["path"]: e["kind"] for e in manifest["files"]}
    log["missing"] = {k: sum(kinds[p] == k for p in missing) for k in sorted(set(kinds.values()))}
    print(f"pack files missing, by kind: {log['missing']}", flush=True)
    if not args.check_model or any(kinds[p] in ("model", "weights") for p in missing):
        return log
    count = args.limit_val or len((manifest.get("reference") or {}).get("files") or []) or 32
    x_val, y_val, files = load_split(pack, manifest, "val", args.workers, count)
    tick = time.monotonic()
    model = build_model(pack, manifest, args.precision)
    probs = predict_probs(model, x_val, args.eval_batch_size)
    log["check"] = {
        "val_images": len(x_val),
        **scores(probs, y_val),
        "reference": reference_check(manifest, files, probs),
    }
    log["timings"]["check_predict_s"] = round(time.monotonic() - tick, 2)
    print(json.dumps(log["check"]), flush=True)
    return log


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pack", default="gpu_pack", help="the pack folder (merged call folders)")
    p.add_argument("--arch", default=None, help="which of a from-scratch pack's architectures")
    p.add_argument("--work", default="/tmp/bcgpu/work", help="checkpoints, outside $OUT")
    p.add_argument("--out", default=os.environ.get("OUT", "out"), help="what comes back ($OUT)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check-env", action="store_true")
    mode.add_argument("--check", action="store_true", help="verify the pack files present")
    mode.add_argument(
        "--check-model",
        action="store_true",
        help="--check, then the model's clean predictions against the CPU reference",
    )
    mode.add_argument("--export-only", choices=("pending", "best", "last"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4, help="peak Adam rate (cosine decay per step)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--clean-fraction",
        type=float,
        default=0.2,
        help="share of each batch given only a flip/rotation (unaltered PBC views)",
    )
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    p.add_argument("--freeze-bn", action="store_true", help="batch norm in inference mode")
    p.add_argument(
        "--jit",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: jit_compile=True under JAX, Keras's choice elsewhere",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--keep",
        choices=("last", "best"),
        default="last",
        help="weights exported: the last epoch (as train --keep-weights last for the "
        "lab preset: validation is the source lab's) or the best on validation",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="bound on this whole process; training stops early to keep it",
    )
    p.add_argument(
        "--reserve-seconds",
        type=float,
        default=45.0,
        help="kept for the last validation, export and log at the end",
    )
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap (tests)")
    p.add_argument("--limit-train", type=int, default=None, help="first N images (tests)")
    p.add_argument("--limit-val", type=int, default=None, help="first N images (tests)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --work from its checkpoint"
    )
    p.add_argument("--run-id", default=None, help="default: <stamp>-<arch>-<size>px[-cropNN]-lab")
    p.add_argument("--note", default=None, help="default: what the run is (preset, scratch)")
    p.add_argument(
        "--no-backend-cache",
        dest="backend_cache",
        action="store_false",
        help="no persistent JAX compilation cache under --work",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = _Clock(args.max_seconds)
    out = Path(args.out)
    log: dict = {
        "script": "scripts/gpu/train_lab.py",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "started": _now(),
        "config": vars(args),
        "timings": {},
    }
    checking = args.check_env or args.check or args.check_model
    try:
        if not checking:
            out.mkdir(parents=True, exist_ok=True)
            Path(args.work).mkdir(parents=True, exist_ok=True)
        if args.check or args.check_model:
            log = check(args, log)
        elif args.export_only:
            log = export_only(args, log)
        elif not args.check_env:
            log = train(args, log, clock)
        if not args.check:  # a file check needs no Keras (and imports none)
            log["versions"] = backend_versions()
    except BaseException as exc:
        log["error"] = f"{type(exc).__name__}: {exc}"
        log["traceback"] = traceback.format_exc()[-4000:]
        if not checking:  # the log comes back even when the run fails
            _write_json(out / LOG_NAME, _finish(log, clock))
        raise
    log = _finish(log, clock)
    if checking:
        print(json.dumps(log.get("versions", {}), indent=1), flush=True)
        return 0
    _write_json(out / LOG_NAME, log)
    _write_json(Path(args.work) / LOG_NAME, log)
    files = [p for p in out.iterdir() if p.is_file()]
    too_big = [p.name for p in files if p.stat().st_size > OUT_FILE_BYTES]
    if len(files) > OUT_MAX_FILES or too_big:
        print(
            f"WARNING: {len(files)} files in {out} (at most {OUT_MAX_FILES} come back); "
            f"over 16 MiB: {too_big}",
            flush=True,
        )
        return 1
    print(
        f"wrote {len(files)} files to {out} in {log['timings']['total_s']} s: "
        f"{log.get('stop_reason')}, {log.get('epochs_done')} epochs, "
        f"exported val {log.get('exported_val')}",
        flush=True,
    )
    return 0


def _finish(log: dict, clock: _Clock) -> dict:
    log["finished"] = _now()
    log["timings"]["total_s"] = round(clock.elapsed(), 2)
    return log


if __name__ == "__main__":
    # Set here, not on import: the tests import this module under TensorFlow, and their
    # subprocesses must not inherit it. The lent machine has no TensorFlow.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main())
