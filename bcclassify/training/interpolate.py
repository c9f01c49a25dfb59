"""A fine-tuned run mixed in weight space with the weights it started from (issue 21).

Robust fine-tuning by weight interpolation (WiSE-FT; Wortsman et al., "Robust fine-tuning of
zero-shot models", CVPR 2022): a network fine-tuned from another lies in the same basin, so
``(1 - alpha) * start + alpha * tuned`` is itself a good network, and on shifted data often better
than either end. Here the start is the run's ``--init-from`` (the shipped hybrid) and the tuned end
a run continued from it with a harder augmentation (``--augment-preset defocus``).

:func:`interpolate_run` records the mixture as a run of its own, ``<run>-wiseNN``: the source
run's configuration with an ``interpolation`` entry, its history, the mixed weights as the
last checkpoint, then ``train --resume``'s own code scores the test split and saves model.keras,
as for a run imported from a GPU (``scripts/gpu/import_run.py``). So it is listed, browsed and
promoted like any other run.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bcclassify.storage.runs import RunRecord, utc_now
from bcclassify.storage.store import models_dir, runs_dir, sha256_file, write_json
from bcclassify.training.loop import save_best, save_checkpoint

__all__ = ["interpolated_run_id", "interpolated_weights", "interpolate_run"]


def interpolated_weights(
    start: Sequence[np.ndarray], tuned: Sequence[np.ndarray], alpha: float
) -> list[np.ndarray]:
    """``(1 - alpha) * start + alpha * tuned``, array by array, in each tuned array's dtype.

    Batch-norm moving statistics are mixed like the rest (they are floats among the weights).
    A non-float array (a counter, a seed) is taken from the tuned model as it is."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    if len(start) != len(tuned):
        raise ValueError(f"{len(start)} arrays to mix with {len(tuned)}: not the same network")
    mixed = []
    for index, (a, b) in enumerate(zip(start, tuned)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"array {index}: shape {a.shape} against {b.shape}")
        if np.issubdtype(b.dtype, np.floating):
            mix = (1.0 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)
            mixed.append(mix.astype(b.dtype))
        else:
            mixed.append(b.copy())
    return mixed


def interpolated_run_id(run_id: str, alpha: float) -> str:
    return f"{run_id}-wise{round(alpha * 100):02d}"


def interpolate_run(
    run_id: str, alpha: float, new_run_id: str | None = None, start: str | None = None
) -> Path:
    """Record ``(1 - alpha) * start + alpha * run`` as a new, scored run.

    ``start``: a run id or ``model:NAME``; by default the run's ``--init-from``. A run trained on
    a lent GPU records its start only in its ``gpu`` section, so it is named here."""
    import keras

    from bcclassify.data.datasets import (
        cached_pixels,
        scan_dataset,
        subsample,
        thinned_train,
        train_subset_seed,
        train_val_test_split,
    )
    from bcclassify.training.runs import environment_info, parent_model, resume

    source = RunRecord.of(run_id)
    config = source.config()
    if not config:
        raise FileNotFoundError(f"no run {run_id!r} under {runs_dir()}")
    if source.read().get("status") != "finished":
        raise ValueError(f"run {run_id} has not finished; interpolate a finished run")
    if config.get("folds"):
        raise ValueError(f"run {run_id} is a cross-validation run: it keeps no single model")
    init_from = start or config.get("init_from")
    if not init_from:
        raise ValueError(
            f"run {run_id} started from no other weights (--init-from); name its start "
            "(--start model:NAME or RUN_ID)"
        )
    tuned_file = source.folder / "model.keras"
    if not tuned_file.is_file():
        raise FileNotFoundError(
            f"{tuned_file}: a run's weights stay on the machine that trained it; interpolate "
            "there, or move its model.keras back"
        )
    new_id = new_run_id or interpolated_run_id(run_id, alpha)
    run_dir = runs_dir() / new_id
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists; choose another run id")

    start = parent_model(init_from)
    tuned = keras.models.load_model(tuned_file, safe_mode=True)
    tuned.set_weights(interpolated_weights(start.get_weights(), tuned.get_weights(), alpha))

    # The validation accuracy of the mixed weights, as a trained epoch's checkpoint carries.
    dataset = subsample(scan_dataset(config["data"]), config.get("limit_per_class"), config["seed"])
    if dataset.manifest_hash() != config["data_manifest_sha256"]:
        raise ValueError(f"{config['data']}: data differs from the data run {run_id} trained on")
    split = thinned_train(
        train_val_test_split(dataset.labels, dataset.hashes, config["seed"]),
        dataset.labels,
        config.get("train_per_class"),
        train_subset_seed(config),
    )
    cache = config.get("cache_dir")
    pixels, _ = cached_pixels(
        dataset, int(config["image_size"]), Path(cache) / "pixels" if cache else None
    )
    val_accuracy = None  # a dataset too small for a validation part
    if len(split.val):
        predicted = tuned.predict(pixels[split.val].astype(np.float32), batch_size=32, verbose=0)
        val_accuracy = round(float((predicted.argmax(1) == dataset.labels[split.val]).mean()), 6)

    epochs = int(config["epochs"])
    interpolation = {
        "method": "WiSE-FT weight interpolation (Wortsman et al. 2022)",
        "alpha": alpha,
        "start": init_from,
        "tuned_run": run_id,
        "tuned_model_sha256": sha256_file(tuned_file),
        "val_accuracy": val_accuracy,
        "made": utc_now(),
    }
    if init_from.startswith("model:"):
        card = models_dir() / init_from.split(":", 1)[1] / "card.json"
        interpolation["start_card_sha256"] = sha256_file(card)
    # Staged beside runs/, not in it: a half-written folder must not be listed as a run.
    staging = runs_dir().parent / f".{new_id}.interpolating"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        record = RunRecord(staging)
        record.write_config(
            {
                **config,
                "run_id": new_id,
                "note": f"{alpha:g} x {run_id} + {1 - alpha:g} x {init_from} (WiSE-FT)",
                "interpolation": interpolation,
                "command": " ".join(sys.argv),
            }
        )
        record.write_environment(environment_info())
        (staging / "history.csv").write_bytes((source.folder / "history.csv").read_bytes())
        write_json(
            staging / "run.json",
            {
                "run_id": new_id,
                "arch": config["arch"],
                "status": "running",
                "created": utc_now(),
                "epochs_done": epochs,
                "interpolated_from": run_id,
            },
        )
        state = {"epoch": epochs - 1, "best_val_accuracy": val_accuracy, "best_epoch": epochs}
        save_checkpoint(staging / "checkpoints", epochs - 1, tuned, None, state)
        save_best(staging / "checkpoints", tuned)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # train's own last step: no epochs are left, so resume scores the test split and writes
    # metrics.json, predictions.csv and model.keras, and marks the run finished.
    return resume(new_id)
