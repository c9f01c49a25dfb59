"""Bring back a run that ``train_lab.py`` trained on a GPU (issue 12): weights in compact form.

Runs here (bcclassify, TensorFlow). The device ran the library's own loop (``bcclassify.training
.loop``) on a run folder in the library's format, with ``TrainConfig``; what could not come back
whole is the weights (82 MiB float16, 64 MiB return per call) and the test split (never packed).
So this script only:

- checks the returned ``weights-*.npz`` against the log's checksums and decodes them against the
  pack's (starting) weights (lossless ulp differences, see train_lab.py);
- checks the probe images' probabilities here against the GPU's, and the registry's build of
  the architecture against the packed model;
- writes ``model_store/runs/<run-id>/``: the device's config.json, environment.json, run.json
  and history.csv (carried in ``train_log.json``), the log itself as ``gpu_train_log.json``, and
  the weights as a (weights-only) checkpoint of the last epoch and as ``best.weights.h5``;
- unless --no-score, finishes it with ``bcclassify.training.runs.resume`` (what
  ``python -m bcclassify train --resume RUN_ID`` runs): no epochs are left, so training's last
  step scores the test split and writes metrics.json, predictions.csv and model.keras.

Usage: python scripts/gpu/import_run.py RETURNED_DIR [RETURNED_DIR2] [--pack gpu_pack] [--run-id ID]
"""

from __future__ import annotations

import argparse
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
    export_base,
    read_export,
    select_model,
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
    pack's (starting) weights, or zeros from scratch, as float32 in model order."""
    files = log["exported"]["files"]
    for entry in files:
        path = next((d / entry["file"] for d in returned if (d / entry["file"]).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{entry['file']}: not in the returned folders")
        if sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 differs from the log's (damaged transfer)")
    base = export_base(merged, manifest)
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
    manifest = select_model(json.loads(manifest_path.read_text()), log.get("arch"))
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


def probe_check(model, log: dict, data_root: Path, image_size: int, reference=None) -> dict:
    """This machine's probabilities for the log's probe images against the GPU's (or, given a
    ``reference`` model, against its): the weights are in the right order and both sides decode
    and compute alike."""
    from bcclassify.data.imaging import load_image

    probe = log.get("probe") or {}
    if not probe.get("files"):
        return {"images": 0}
    pixels = np.stack([load_image(data_root / f, image_size) for f in probe["files"]])
    here = np.asarray(model.predict(pixels.astype(np.float32), verbose=0), dtype=np.float64)
    if reference is not None:
        gpu = np.asarray(reference.predict(pixels.astype(np.float32), verbose=0), np.float64)
    else:
        gpu = np.asarray(probe["probabilities"])
    return {
        "images": len(gpu),
        "max_abs_diff": float(np.abs(here - gpu).max()),
        "argmax_agree": int((here.argmax(1) == gpu.argmax(1)).sum()),
    }


def _store_is_shrunk() -> bool:
    """Whether the repository's own store is left out by tree.sh shrink (sparse checkout)."""
    if os.environ.get("BCCLASSIFY_STORE"):
        return False
    result = subprocess.run(
        ["git", "config", "--get", "core.sparseCheckout"], cwd=REPO, capture_output=True, text=True
    )
    return result.stdout.strip() == "true"


def registry_model(config: dict, weights: list[np.ndarray]):
    """The model as ``train --resume`` builds it (the registry), holding the returned weights:
    the checkpoint is saved from the network the run's evaluation will load it into."""
    from bcclassify.models.registry import build

    model = build(
        config["arch"],
        config["image_size"],
        len(config["class_names"]),
        "none",  # overwritten at once
        center_crop=config["center_crop"],
        norm=config.get("norm", "batch"),
    )
    if len(weights) != len(model.weights):
        raise ValueError(
            f"{len(weights)} returned arrays for {len(model.weights)} in the registry's"
        )
    for variable, array in zip(model.weights, weights):
        if tuple(variable.shape) != array.shape:
            raise ValueError(f"{variable.path}: shape {array.shape}, expected {variable.shape}")
    model.set_weights(weights)
    return model


def write_run(staging: Path, log: dict, run_id: str, model) -> dict:
    """The device's run folder, as ``train`` left it there, with the returned weights as its
    (weights-only) checkpoint: ``train --resume`` continues from it like from any run."""
    from bcclassify.storage.store import write_json
    from bcclassify.training.loop import save_best, save_checkpoint

    files = log.get("run_files") or {}
    missing = [name for name in ("config.json", "run.json", "history.csv") if name not in files]
    if missing:
        raise ValueError(f"the log carries no {', '.join(missing)} (an older train_lab.py?)")
    config = {**files["config.json"], "run_id": run_id}
    epochs_done = int(log["epochs_done"])
    if epochs_done < config["epochs"]:
        # Stopped early (--max-seconds): the run is what was trained, not 40 CPU hours more.
        config["gpu"]["epochs_planned"] = config["epochs"]
        config["epochs"] = epochs_done
    write_json(staging / "config.json", config)
    if "environment.json" in files:
        write_json(staging / "environment.json", files["environment.json"])
    (staging / "history.csv").write_text(files["history.csv"])
    write_json(staging / "gpu_train_log.json", log)
    write_json(
        staging / "run.json",
        {
            **files["run.json"],
            "run_id": run_id,
            "imported": _now(),
            "imported_by": "scripts/gpu/import_run.py",
        },
    )
    if epochs_done:
        state = {
            "epoch": epochs_done - 1,
            "best_val_accuracy": log["best_val_accuracy"],
            "best_epoch": log["best_epoch"],
        }
        # The exported weights are the kept ones (best.weights.h5 on the device).
        save_checkpoint(staging / "checkpoints", epochs_done - 1, model, None, state)
        save_best(staging / "checkpoints", model)
    return config


def import_run(args: argparse.Namespace) -> Path:
    from bcclassify.storage.store import runs_dir
    from bcclassify.training.runs import resume

    if _store_is_shrunk():
        raise RuntimeError(
            "model_store/ is left out (scripts/gpu/tree.sh shrink): restore it first"
        )
    returned = [Path(r) for r in args.returned]
    log = read_returned(returned)
    merged, manifest = read_pack(Path(args.pack), log)
    weights = read_weights_back(returned, log, merged, manifest)
    packed = build_model(merged, manifest, weights)
    image_size = int(manifest["model"]["image_size"])
    data_root = Path(manifest["data"]["path"])
    probe = probe_check(packed, log, data_root, image_size)
    print(f"probe: {probe}")
    if probe["images"] and (
        probe["max_abs_diff"] > PROBE_TOLERANCE or probe["argmax_agree"] < probe["images"] - 1
    ):
        if not args.force:
            raise ValueError(f"probe disagrees with the GPU's probabilities: {probe} (--force)")

    run_id = args.run_id or log["run_id"]
    run_dir = runs_dir() / run_id
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists; choose another --run-id")
    config = (log.get("run_files") or {}).get("config.json") or {}
    model = registry_model(config, weights)
    # The registry's build must compute what the installed model does, or the run's evaluation
    # would score another network.
    same = probe_check(
        model,
        {"probe": {**log.get("probe", {}), "probabilities": None}},
        data_root,
        image_size,
        reference=packed,
    )
    if same["images"] and same["max_abs_diff"] > 1e-4:
        raise ValueError(f"the registry's {config['arch']} differs from the packed model: {same}")
    # Staged beside runs/, not in it: a half-written folder must not be listed as a run.
    staging = runs_dir().parent / f".{run_id}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_run(staging, log, run_id, model)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if args.score:
        # train's own last step: no epochs are left, so resume scores the test split and writes
        # metrics.json, predictions.csv and model.keras, and marks the run finished.
        resume(run_id)
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
    p.add_argument(
        "--no-score",
        dest="score",
        action="store_false",
        help="leave the run unscored (then: python -m bcclassify train --resume RUN_ID)",
    )
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
