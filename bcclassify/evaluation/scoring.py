"""Re-scoring runs and installed models, and promoting a run's model into the store."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bcclassify import CLASS_NAMES, DATASET_CREDIT
from bcclassify.data.datasets import load_pixels, scan_dataset, subsample, train_val_test_split
from bcclassify.evaluation.metrics import classification_metrics, confidence_coverage
from bcclassify.serving.classifier import (
    DEFAULT_THRESHOLD,
    SINGLE_VIEW,
    ClassifierModel,
    check_views,
    export_model,
    load_model,
    load_model_folder,
    predict_with_views,
)
from bcclassify.storage.cards import ModelCard, write_card
from bcclassify.storage.runs import RunRecord, headline
from bcclassify.storage.store import (
    default_model_name,
    models_dir,
    runs_dir,
    set_default_model,
    sha256_file,
)


def _run_record(run_id: str) -> RunRecord:
    record = RunRecord.of(run_id)
    if not (record.folder / "config.json").is_file():
        raise FileNotFoundError(f"no run {run_id!r} under {runs_dir()}")
    return record


def split_scope(dataset, manifest: str | None, seed: int, limit: int | None):
    """The run's test split when ``dataset`` is its training data, else every image."""
    candidate = subsample(dataset, limit, seed)
    if manifest and candidate.manifest_hash() == manifest:
        split = train_val_test_split(candidate.labels, candidate.hashes, seed)
        return candidate, split.test, "the run's test split"
    return dataset, np.arange(len(dataset)), "every image in the folder"


HELD_OUT_SCOPE = "the images in the folder outside the model's training split (by content)"


def training_split_hashes(card) -> set[str]:
    """Content hashes of an installed model's training split, recomputed from its card (the
    data it names, the manifest it checks, the seed): what it may have learnt by heart."""
    trained_on = card.get("training_data") or {}
    root = trained_on.get("path")
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(
            f"the model's training data {root!r} is not here, so its training split cannot be "
            "recomputed"
        )
    dataset = scan_dataset(root)
    if dataset.manifest_hash() != trained_on.get("manifest_sha256"):
        raise ValueError(f"{root}: not the data the model was trained on (manifest differs)")
    seed = int((card.get("training_config") or {}).get("seed", 42))
    split = train_val_test_split(dataset.labels, dataset.hashes, seed)
    return {dataset.hashes[i] for i in split.train}


def held_out_scope(dataset, exclude: set[str]):
    """Every image of ``dataset`` whose content is not in ``exclude`` (a training split's)."""
    keep = np.array([i for i, h in enumerate(dataset.hashes) if h not in exclude], dtype=np.int64)
    if not len(keep):
        raise ValueError(f"{dataset.root}: every image is in the model's training split")
    return dataset, keep, HELD_OUT_SCOPE


def evaluate(
    run_id: str | None = None,
    model_name: str | None = None,
    data: str | Path = "",
    batch_size: int = 32,
    views: Sequence[str] | None = None,
    held_out: bool = False,
) -> dict:
    """Recompute the test metrics of a run (its model.keras) or of an installed model.

    ``views``: test-time views whose probabilities are averaged (default: for a run, the image
    as given; for an installed model, its card's). ``held_out`` (installed models): score only
    the images whose content the model's training split does not hold.
    """
    if run_id:
        import keras

        record = _run_record(run_id)
        folder, config = record.folder, record.config()
        if config.get("folds"):
            raise ValueError(f"{run_id} is a cross-validation run: its folds are its record")
        if not (folder / "model.keras").is_file():
            raise FileNotFoundError(f"{run_id} has no model.keras (unfinished, or not kept)")
        model = keras.models.load_model(folder / "model.keras", safe_mode=True)
        views = check_views(views)

        def predict(pixels):
            return predict_with_views(
                lambda x: model.predict(x, batch_size=batch_size, verbose=0), pixels, views
            )

        split_of = (
            config.get("data_manifest_sha256"),
            config.get("seed", 42),
            config.get("limit_per_class"),
        )
        return _score(predict, int(config["image_size"]), split_of, data, run_id, views)[0]
    return evaluate_installed(load_model(model_name), data, batch_size, views, held_out=held_out)


def evaluate_installed(
    classifier: ClassifierModel,
    data: str | Path,
    batch_size: int = 32,
    views: Sequence[str] | None = None,
    predictions_to: Path | None = None,
    held_out: bool = False,
) -> dict:
    """Metrics of a loaded installed model: its run's test split when ``data`` is its data.

    ``predictions_to``: also write each image's probabilities there (predictions.csv format).
    ``held_out``: only the images of ``data`` outside the model's training split (by content),
    such as the analyser's originals of cells whose copies it did not train on.
    """
    views = classifier.test_time_views if views is None else check_views(views)
    trained_on = classifier.card.get("training_data") or {}
    train_cfg = classifier.card.get("training_config") or {}
    split_of = (trained_on.get("manifest_sha256"), train_cfg.get("seed", 42), None)

    novelty: list[np.ndarray] = []
    disputed: list[np.ndarray] = []  # second opinion or colour check, when the card has one
    assess = views == classifier.test_time_views and (
        classifier.novelty is not None or classifier.acquisition is not None
    )

    def predict(pixels):
        parts = []
        for i in range(0, len(pixels), batch_size):
            batch = pixels[i : i + batch_size]
            if assess:  # the served answer: calibrated probabilities and novelty scores
                probs, scores = classifier.assess_pixels(batch)
                novelty.append(scores)
                batch_disputed = classifier.disputed(batch, probs)
                if batch_disputed is not None:
                    disputed.append(batch_disputed)
            else:
                probs = classifier.predict_pixels(batch, views=views)
            parts.append(probs)
        return np.concatenate(parts)

    exclude = training_split_hashes(classifier.card) if held_out else None
    metrics, labels, probabilities = _score(
        predict,
        classifier.image_size,
        split_of,
        data,
        classifier.name,
        views,
        predictions_to,
        exclude,
    )
    if assess:
        from bcclassify.evaluation.metrics import (
            brier_score,
            ece_noise_floor,
            expected_calibration_error,
        )
        from bcclassify.serving.trust import trust_figures

        metrics["trust"] = {
            **trust_figures(
                labels,
                probabilities,
                np.concatenate(novelty),
                classifier.unidentified_threshold,
                classifier.class_thresholds,
                disputed=np.concatenate(disputed) if disputed else None,
            ),
            "ece": expected_calibration_error(labels, probabilities),
            # What a perfectly calibrated model would show on this many cells: ECE on a few
            # hundred cells is mostly sampling noise when nearly every answer is confident.
            "ece_noise_floor": ece_noise_floor(probabilities),
            "brier": brier_score(labels, probabilities),
        }
    return metrics


def evaluate_ood(classifier: ClassifierModel, folder: str | Path, batch_size: int = 32) -> dict:
    """How much of a folder of images that are NOT blood cells the model flags.

    Every file counts: a refused file (not an image) is as good as flagged, and is reported as
    such; by sub-folder when the folder has them.
    """
    from bcclassify.data.imaging import collect_image_paths
    from bcclassify.serving.classifier import iter_sources

    root = Path(folder)
    paths = collect_image_paths([root])
    if not paths:
        raise FileNotFoundError(f"{folder}: no files found")
    predictions = classifier.classify(iter_sources(paths), batch_size=batch_size)
    groups: dict[str, list] = {}
    for path, pred in zip(paths, predictions):
        rel = path.relative_to(root).parts
        groups.setdefault(rel[0] if len(rel) > 1 else ".", []).append(pred.flag)

    def share(flags: list[str]) -> dict:
        n = len(flags)
        return {
            "num_images": n,
            "unidentified_fraction": flags.count("unidentified") / n,
            "disputed_fraction": flags.count("disputed") / n,
            "low_confidence_fraction": flags.count("low_confidence") / n,
            "refused_fraction": flags.count("error") / n,
            "flagged_fraction": sum(f != "" for f in flags) / n,
        }

    every = [f for flags in groups.values() for f in flags]
    return {
        "source": classifier.name,
        "data": str(folder),
        **share(every),
        "by_folder": {k: share(v) for k, v in sorted(groups.items())} if len(groups) > 1 else {},
    }


def _score(
    predict,
    image_size: int,
    split_of: tuple,
    data,
    source: str,
    views,
    predictions_to=None,
    exclude: set[str] | None = None,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics, and the true labels and probabilities they come from (``exclude``: content
    hashes to leave out, a model's training split, instead of the usual scope)."""
    from bcclassify.data.datasets import write_predictions

    if exclude is not None:
        dataset, indices, scope = held_out_scope(scan_dataset(data), exclude)
    else:
        dataset, indices, scope = split_scope(scan_dataset(data), *split_of)
    pixels, kept = load_pixels([dataset.paths[i] for i in indices], image_size, progress=True)
    probabilities = predict(pixels)
    labels = dataset.labels[indices][kept]
    if predictions_to is not None:
        write_predictions(predictions_to, dataset, indices[kept], probabilities)
    metrics = classification_metrics(labels, probabilities.argmax(axis=1), dataset.class_names)
    metrics.update(
        scope=scope,
        source=source,
        data=str(data),
        test_time_views=list(views),
        by_confidence=confidence_coverage(labels, probabilities),
    )
    return metrics, labels, probabilities


# The installed model's own test predictions, written when they differ from its run's.
SERVED_PREDICTIONS = "test_predictions.csv"
SERVED_METRICS = (
    "accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "weighted_f1",
    "per_class",
    "num_samples",
    "test_time_views",
    "by_confidence",
)


def promote(
    run_id: str,
    name: str,
    make_default: bool = False,
    threshold: float | None = None,
    views: Sequence[str] | None = None,
) -> ModelCard:
    """Install a finished run's model as ``model_store/models/<name>/`` with its card.

    With test-time ``views``, the exported model (float16 weights and all) is scored on the
    run's test split with them before it is installed, so the card's test metrics describe what
    the installed model serves; the run's own single-view metrics stay in the card as
    ``single_view_test_metrics``.
    """
    import keras

    record = _run_record(run_id)
    folder, run = record.folder, record.summary()
    status = run.status if run else None
    if status != "finished":
        raise ValueError(f"{run_id} is {status!r}, not finished")
    if not (folder / "model.keras").is_file():
        raise FileNotFoundError(f"{run_id} has no model.keras to promote")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"model name {name!r}: use letters, digits, '-' and '_'")
    views = check_views(views)
    model = keras.models.load_model(folder / "model.keras", safe_mode=True)
    card = card_for_run(folder, name, DEFAULT_THRESHOLD if threshold is None else threshold)
    if views != SINGLE_VIEW:
        card["test_time_views"] = list(views)
    target = models_dir() / name
    staging = models_dir() / f".{name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    card = export_model(model, staging, card)
    if views != SINGLE_VIEW:
        served = evaluate_installed(
            load_model_folder(staging, name),
            record.config()["data"],
            predictions_to=staging / SERVED_PREDICTIONS,
        )
        files = {**card.files_sha256, SERVED_PREDICTIONS: sha256_file(staging / SERVED_PREDICTIONS)}
        card = write_card(
            staging,
            card.updated(
                single_view_test_metrics=card.test_metrics,
                test_metrics={key: served[key] for key in SERVED_METRICS},
                files_sha256=files,
            ),
        )
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    if make_default or not default_model_name():
        set_default_model(name)
    return card


# What a card keeps of its run's configuration and headline figures.
TRAINING_CONFIG_KEYS = (
    "epochs", "batch_size", "optimizer", "lr", "augment", "smote", "class_weights", "shuffle",
    "seed", "freeze_until", "freeze_bn", "center_crop", "aug_copies",
)  # fmt: skip
HEADLINE_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1")


def card_for_run(run_dir: Path, name: str, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The card fields that come from the training run record (``promote`` adds the rest)."""
    from bcclassify.models.registry import TRUNKS, get_architecture

    record = RunRecord(run_dir)
    config, metrics, run = record.config(), record.metrics() or {}, record.read()
    arch = get_architecture(config["arch"])
    figures = headline(metrics)
    return {
        "name": name,
        "architecture": arch.name,
        "description": arch.description,
        "image_size": config["image_size"],
        "center_crop": config.get("center_crop", 1.0),
        "input": "RGB pixels 0-255, float32, shape (N, S, S, 3); scaling (and any centre crop) "
        "is inside the model",
        "preprocessing": {t: TRUNKS[t].scaling for t in arch.trunks}
        or {"model": "x / 127.5 - 1 (range [-1, 1])"},
        "resize": "Lanczos to S x S (bcclassify.data.imaging.load_image)",
        "class_names": config.get("class_names", list(CLASS_NAMES)),
        "explain_layers": list(arch.explain_layers),
        "low_confidence_threshold": threshold,
        "training_run": run_dir.name,
        "initialisation": run.get("initialisation"),
        "training_data": {
            "path": config.get("data"),
            "manifest_sha256": config.get("data_manifest_sha256"),
            "num_images": config.get("num_images"),
            "split_sizes": config.get("split_sizes"),
        },
        "training_config": {k: config.get(k) for k in TRAINING_CONFIG_KEYS},
        "test_metrics": {
            **{key: figures.get(key) for key in HEADLINE_METRICS},
            "per_class": metrics.get("per_class"),
            "num_samples": metrics.get("num_samples"),
        },
        "dataset_credit": DATASET_CREDIT,
    }


EVALUATIONS_KEY = "evaluations"  # the card's figures on other sets, by the set's folder name


def record_evaluation(name: str, metrics: dict, manifest: str | None = None) -> dict:
    """Write ``evaluate``'s figures for installed model ``name`` into its card.

    Under ``evaluations``, keyed by the data folder's name (ext-tecom, pbc-originals, …; with
    " (held out)" added when only the images outside the training split were scored): the
    accuracy and macro-F1, and, for the model as served, the reviewer-facing figures (flagged,
    unidentified, wrong and not flagged, ECE); with the scope, the views, the data manifest's
    sha256 and the command that reproduces it. Returns the section written.
    """
    from bcclassify.storage.cards import load_card
    from bcclassify.storage.runs import utc_now

    data = Path(metrics["data"])
    held_out = metrics["scope"] == HELD_OUT_SCOPE
    key = f"{data.name} (held out)" if held_out else data.name
    flag = " --held-out" if held_out else ""
    entry = {
        "data": data.name,
        "data_manifest_sha256": manifest,
        "scope": metrics["scope"],
        "num_samples": metrics["num_samples"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "test_time_views": metrics["test_time_views"],
        "trust": metrics.get("trust"),
        "evaluated": utc_now(),
        "command": f"python -m bcclassify evaluate --model {name} --data {data}{flag} --record",
    }
    folder = models_dir() / name
    card = load_card(folder)
    section = {**(card.get(EVALUATIONS_KEY) or {}), key: entry}
    write_card(folder, card.updated(**{EVALUATIONS_KEY: section}))
    return entry
