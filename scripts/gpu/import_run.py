"""Turn what ``train_lab.py`` sent back from a GPU into a run record here (issue 12).

Runs here (bcclassify, TensorFlow). Reads the returned folder(s) (``weights-*.npz``: the
float16 weights, encoded losslessly against the packed ones; ``train_log.json``) and the pack
it was trained from, and writes ``model_store/runs/<run-id>/`` as ``bcclassify train`` would:

- ``model.keras``: the pack's model.json with the returned weights (what ``evaluate --run`` and
  ``promote`` load);
- ``config.json``: ``TrainConfig``'s fields (arch, data, image size, crop, seed, lr, epochs,
  batch size, ``augment_preset: lab``, ``keep_weights``...) plus the data's manifest hash and
  split sizes, so ``evaluate --run`` finds the same test split; how the GPU run differed from a
  CPU run (backend, subsets, clean share, precision) is under ``gpu``;
- ``environment.json``: the device's Python, packages (keras, jax, numpy, pillow) and GPU;
- ``run.json``: status finished, the device's timings, initialised from the model's run;
- ``history.csv``: per epoch, the GPU's train and validation loss and accuracy;
- ``metrics.json`` and ``predictions.csv`` (unless --no-score): the run's test split scored
  here, as training's last step does (the hybrid: about 12 minutes on 2 cores);
- ``gpu_train_log.json``: the device's log, unchanged.

Before writing, the returned weights are checked: checksums from the log, one array per model
weight, and this machine's probabilities for the log's probe images against the GPU's.

Usage: python scripts/gpu/import_run.py RETURNED_DIR [RETURNED_DIR2] [--pack gpu_pack] [--run-id ID]
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_lab import (  # noqa: E402  (numpy/PIL only at import)
    LOG_NAME,
    as_float32,
    check_pack_files,
    read_export,
    read_stored_weights,
    sha256_file,
)

PROBE_TOLERANCE = 0.05  # |p_here - p_gpu|: float16 weights, TF32 convolutions on the GPU


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_returned(returned: list[Path]) -> dict:
    """The device's log: the newest of the returned folders' (a follow-up call's log lists what
    every call delivered). Refused when the run failed or weights are still pending."""
    logs = [json.loads((d / LOG_NAME).read_text()) for d in returned if (d / LOG_NAME).is_file()]
    if not logs:
        raise FileNotFoundError(f"no {LOG_NAME} in {', '.join(map(str, returned))}")
    log = max(logs, key=lambda item: item.get("finished") or "")
    if log.get("error"):
        raise ValueError(f"the GPU run failed: {log['error']}")
    exported = log.get("exported") or {}
    if not exported.get("files"):
        raise ValueError("the log lists no exported weights")
    if exported.get("pending"):
        raise ValueError(
            f"{len(exported['pending'])} weight file(s) still on the device: fetch them with "
            "train_lab.py --export-only pending, then pass both returned folders"
        )
    return log


def read_weights_back(returned: list[Path], log: dict, merged: Path, manifest: dict):
    """The returned weights, checked against the log's checksums and decoded against the
    pack's (starting) weights, as float32 in model order."""
    files = log["exported"]["files"]
    for entry in files:
        path = next((d / entry["file"] for d in returned if (d / entry["file"]).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{entry['file']}: not in the returned folders")
        if sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 differs from the log's (damaged transfer)")
    base = read_stored_weights(merged, manifest)
    return as_float32(read_export(returned, [e["file"] for e in files], base))


def read_pack(pack: Path, log: dict) -> tuple[Path, dict]:
    """The merged pack folder and its manifest, which must be the one the GPU trained from."""
    merged = pack / "all" if (pack / "all" / "manifest.json").is_file() else pack
    manifest_path = merged / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no pack manifest")
    expected = (log.get("pack") or {}).get("manifest_sha256")
    if expected and sha256_file(manifest_path) != expected:
        raise ValueError(f"{manifest_path}: not the pack the GPU run trained from (sha256)")
    manifest = json.loads(manifest_path.read_text())
    check_pack_files(merged, manifest, require={"model", "weights"})
    return merged, manifest


def build_model(merged: Path, manifest: dict, weights: list[np.ndarray]):
    """The installed architecture (model.json as packed, float32) with the returned weights."""
    import keras

    entry = next(e for e in manifest["files"] if e["kind"] == "model")
    model = keras.models.model_from_json((merged / entry["path"]).read_text())
    if len(weights) != len(model.weights):
        raise ValueError(f"{len(weights)} returned arrays for {len(model.weights)} model weights")
    for variable, array in zip(model.weights, weights):
        if tuple(variable.shape) != array.shape:
            raise ValueError(f"{variable.path}: shape {array.shape}, expected {variable.shape}")
    model.set_weights(weights)
    return model


def probe_check(model, log: dict, data_root: Path, image_size: int) -> dict:
    """This machine's probabilities for the log's probe images against the GPU's: the weights
    are in the right order and both sides decode and compute alike."""
    from bcclassify.data.imaging import load_image

    probe = log.get("probe") or {}
    if not probe.get("files"):
        return {"images": 0}
    pixels = np.stack([load_image(data_root / f, image_size) for f in probe["files"]])
    here = np.asarray(model.predict(pixels.astype(np.float32), verbose=0), dtype=np.float64)
    gpu = np.asarray(probe["probabilities"])
    return {
        "images": len(gpu),
        "max_abs_diff": float(np.abs(here - gpu).max()),
        "argmax_agree": int((here.argmax(1) == gpu.argmax(1)).sum()),
    }


def run_config(log: dict, manifest: dict, run_id: str, note: str) -> dict:
    """config.json: TrainConfig's fields as ``train`` writes them, plus the GPU specifics."""
    from bcclassify.data.augment import preset
    from bcclassify.training.runs import TrainConfig

    args, data, model = log["config"], manifest["data"], manifest["model"]
    config = TrainConfig(
        arch=model["architecture"],
        data=data["path"],
        image_size=model["image_size"],
        epochs=args["epochs"],
        batch_size=args["batch_size"],
        optimizer="adam",
        lr=args["lr"],
        augment=True,
        augment_preset="lab",
        keep_weights=log["exported"]["keep"],
        seed=args["seed"],
        freeze_until=None,  # end to end: every layer trained, stem included
        freeze_bn=args["freeze_bn"],
        center_crop=model["center_crop"],
        limit_per_class=data["limit_per_class"],  # the split's; the subsets are under "gpu"
        aug_copies=0,  # fresh views every step, none cached
        init_from=None,  # the source is an installed model, not a run folder: see "gpu"
        cache_dir=None,
        note=note,
        run_id=run_id,
    )
    lab = preset("lab").to_dict()
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
            "preset": "lab",
            **lab,
            "implementation": "keras.ops port (scripts/gpu/lab_ops.py) inside the jitted step; "
            "JPEG simulated in-graph (DCT quantisation, 4:2:0)",
            "clean_fraction": args["clean_fraction"],
            "as_run": manifest.get("augmentation"),
        },
        "smote_space": None,
        "command": log.get("command"),
        "gpu": {
            "script": "scripts/gpu/train_lab.py",
            "backend": (log.get("versions") or {}).get("backend"),
            "devices": (log.get("versions") or {}).get("devices"),
            "precision": args["precision"],
            "label_smoothing": args["label_smoothing"],
            "warmup_steps": log.get("schedule", {}).get("warmup"),
            "schedule": log.get("schedule"),
            "max_seconds": args["max_seconds"],
            "stop_reason": log.get("stop_reason"),
            "train_subset": data["train"],
            "val_subset": data["val"],
            "initialised_from": {
                "model": model["name"],
                "training_run": model["training_run"],
                "card_sha256": model["card_sha256"],
            },
            "pack_manifest_sha256": (log.get("pack") or {}).get("manifest_sha256"),
        },
    }


def environment(log: dict) -> dict:
    """environment.json with environment_info's keys, describing the device."""
    versions = log.get("versions") or {}
    return {
        "python": versions.get("python"),
        "platform": versions.get("platform"),
        "packages": {
            "tensorflow": None,
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


def history_rows(log: dict) -> list[dict]:
    return [{**row, "stage": "supervised"} for row in log.get("history") or []]


def score_test_split(model, config: dict, run_dir: Path, log: dict, batch_size: int) -> dict:
    """The run's test split scored here, as training's last step: metrics.json's content and
    predictions.csv."""
    from bcclassify.data.datasets import (
        load_pixels,
        scan_dataset,
        subsample,
        train_val_test_split,
        write_predictions,
    )
    from bcclassify.evaluation.metrics import classification_metrics, confidence_coverage

    dataset = subsample(scan_dataset(config["data"]), config["limit_per_class"], config["seed"])
    if dataset.manifest_hash() != config["data_manifest_sha256"]:
        raise ValueError(f"{config['data']}: not the data the pack was made from")
    split = train_val_test_split(dataset.labels, dataset.hashes, config["seed"])
    pixels, kept = load_pixels(
        [dataset.paths[i] for i in split.test], config["image_size"], progress=True
    )
    if len(kept) != len(split.test):
        raise ValueError(f"{len(split.test) - len(kept)} test images failed to decode")
    probs = np.asarray(
        model.predict(pixels.astype(np.float32), batch_size=batch_size, verbose=0),
        dtype=np.float64,
    )
    labels = dataset.labels[split.test]
    metrics = classification_metrics(labels, probs.argmax(axis=1), dataset.class_names)
    metrics.update(
        best_epoch=log.get("best_epoch"),
        best_val_accuracy=log.get("best_val_accuracy"),
        split_sizes=split.sizes(),
        by_confidence=confidence_coverage(labels, probs),
    )
    write_predictions(run_dir / "predictions.csv", dataset, split.test, probs)
    return metrics


def _store_is_shrunk() -> bool:
    """Whether the repository's own store is left out by tree.sh shrink (sparse checkout)."""
    if os.environ.get("BCCLASSIFY_STORE"):
        return False
    result = subprocess.run(
        ["git", "config", "--get", "core.sparseCheckout"], cwd=REPO, capture_output=True, text=True
    )
    return result.stdout.strip() == "true"


def import_run(args: argparse.Namespace) -> Path:
    from bcclassify.storage.store import runs_dir, write_json
    from bcclassify.training.runs import RunRecord

    if _store_is_shrunk():
        raise RuntimeError(
            "model_store/ is left out (scripts/gpu/tree.sh shrink): restore it first"
        )
    returned = [Path(r) for r in args.returned]
    log = read_returned(returned)
    merged, manifest = read_pack(Path(args.pack), log)
    model = build_model(merged, manifest, read_weights_back(returned, log, merged, manifest))
    image_size = int(manifest["model"]["image_size"])
    probe = probe_check(model, log, Path(manifest["data"]["path"]), image_size)
    print(f"probe: {probe}")
    if probe["images"] and (
        probe["max_abs_diff"] > PROBE_TOLERANCE or probe["argmax_agree"] < probe["images"] - 1
    ):
        if not args.force:
            raise ValueError(f"probe disagrees with the GPU's probabilities: {probe} (--force)")

    started = log.get("started") or _now()
    stamp = dt.datetime.fromisoformat(started).strftime("%Y%m%d-%H%M%S")
    crop = manifest["model"]["center_crop"]
    suffix = f"-crop{round(crop * 100)}" if crop < 1.0 else ""
    arch = manifest["model"]["architecture"]
    run_id = args.run_id or f"{stamp}-{arch}-{image_size}px{suffix}-lab"
    run_dir = runs_dir() / run_id
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists; choose another --run-id")
    # Staged beside runs/, not in it: a half-written folder must not be listed as a run.
    staging = runs_dir().parent / f".{run_id}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        config = run_config(log, manifest, run_id, args.note)
        write_json(staging / "config.json", config)
        write_json(staging / "environment.json", environment(log))
        write_json(staging / "gpu_train_log.json", log)
        record = RunRecord(staging)
        record.write_history(history_rows(log))
        model.save(staging / "model.keras")
        duration = (log.get("timings") or {}).get("total_s")
        if args.score:
            metrics = score_test_split(model, config, staging, log, args.batch_size)
            metrics["duration_s"] = duration
            record.write_metrics(metrics)
        run = {
            "run_id": run_id,
            "arch": arch,
            "status": "finished",
            "created": started,
            "host": (log.get("versions") or {}).get("hostname"),
            "epochs_done": log.get("epochs_done"),
            "initialisation": manifest["model"].get("initialisation"),
            "init_from": manifest["model"].get("training_run"),
            "duration_s": duration,
            "finished": log.get("finished"),
            "imported": _now(),
            "imported_by": "scripts/gpu/import_run.py",
            "probe": probe,
        }
        record.create(**run)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "returned",
        nargs="+",
        help="the folder(s) the $OUT files came back to (two when a follow-up call was needed)",
    )
    p.add_argument("--pack", default=str(REPO / "gpu_pack"), help="the pack it trained from")
    p.add_argument("--run-id", default=None)
    p.add_argument("--note", default="lab preset, every layer fine-tuned on a GPU (issue 12)")
    p.add_argument(
        "--no-score",
        dest="score",
        action="store_false",
        help="skip scoring the test split (no metrics.json: score before promote)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--force", action="store_true", help="import even if the probe disagrees")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = import_run(args)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if args.score else {}
    print(
        json.dumps(
            {
                "run_id": run_dir.name,
                "folder": str(run_dir),
                "test_accuracy": metrics.get("accuracy"),
                "macro_f1": metrics.get("macro_f1"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
