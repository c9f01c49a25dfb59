"""Training runs: reproducible, resumable, recorded under ``model_store/runs/<run-id>/``.

A run trains in the stages its architecture supplies (``models.Stage``: one classification stage,
or supcon's contrastive stage then its classifier), each with its own cosine learning-rate cycle,
all in one epoch loop that checkpoints every epoch. Two modes feed it (``feeds``):
- end to end: the whole model trains on (augmented) pixels;
- cached (``--freeze-until``): the model is cut at boundary layers; the frozen stem runs once per
  image (and once per augmented copy) and its activations are cached on disk, then only the top
  blocks and the head train. On a 2-core CPU this is what makes fine-tuning the hybrid possible
  (see ../shared/docs/compute.md). The top shares its layers with the full model, so the saved
  model is the complete network, preprocessing included.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcclassify.models.norm_transfer import calibration_indices
from bcclassify.storage.runs import RunRecord
from bcclassify.storage.store import runs_dir
from bcclassify.training.config import TrainConfig, new_run_id  # noqa: F401 (re-exported)
from bcclassify.training.feeds import Feeds, activation_cache, make_feeds
from bcclassify.training.loop import (  # noqa: F401  (keeps_epoch: runs' public name)
    Epoch,
    cosine_lr,
    fit_logs,
    keeps_epoch,
    run_epochs,
)

if TYPE_CHECKING:
    from bcclassify.data.datasets import Dataset, Split
    from bcclassify.models.registry import Architecture, Stage

log = logging.getLogger(__name__)


def environment_info() -> dict:
    """Package versions, CPU, GPUs and threads: enough to reproduce or explain a run's speed."""
    import tensorflow as tf

    packages = {}
    for name in (
        "tensorflow",
        "keras",
        "numpy",
        "scikit-learn",
        "imbalanced-learn",
        "pillow",
        "tf-keras-vis",
        "streamlit",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    from bcclassify.serving.bench import cpu_info

    cpu = cpu_info()["name"]
    if cpu == "unknown":  # no /proc/cpuinfo (not Linux)
        cpu = platform.processor() or platform.machine()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "hostname": platform.node(),
    }


def _distribution_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        # Hosts and this worker's index come from the TF_CONFIG environment variable.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose auto, mirrored or multiworker")


def _make_optimizer(name: str, lr: float):
    import keras

    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, sgd or rmsprop")


def _class_weight(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


# ----------------------------------------------------------------------------- one split


@dataclass
class _Parts:
    """The networks of one split, assembled for training."""

    model: Any  # the complete classifier: what is saved
    trainable: Any  # what fits: the model, its top above a frozen stem, or the arch's trainer
    stem: Any | None  # frozen layers whose activations are cached; None: train on pixels
    optimizer: Any
    init_record: dict
    boundaries: tuple[str, ...]
    image_size: int
    staged: bool  # the architecture's trainer runs the stages (and augments its own views)
    started: bool = False  # --init-from's weights are already in the model


def _fit_one_split(
    record: RunRecord,
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    pixels: np.ndarray,
) -> dict:
    """Train, checkpoint each epoch, evaluate on the test part; writes the record's folder."""
    from bcclassify.models.registry import get_architecture

    finished = record.metrics()
    if finished:
        return finished  # a finished fold of a resumed run
    arch = get_architecture(config.arch)
    stages = arch.stages(config)
    resuming = (record.folder / "checkpoints" / "latest.json").is_file()
    calibration = None
    if config.norm == "group" and config.norm_fit_images and not resuming:
        picked = calibration_indices(
            dataset.labels[split.train], config.norm_fit_images, config.seed
        )
        calibration = pixels[split.train[picked]]
    parts = _assemble(config, arch, len(dataset.class_names), calibration)
    if config.init_from and not parts.started:
        _start_from_run(config.init_from, parts)
    initialisation = inherited_initialisation(record.read(), parts.init_record)
    if resuming:  # what the run started from (and how it was fitted) was recorded then
        initialisation = record.read().get("initialisation") or initialisation
    record.update(
        initialisation=initialisation,
        init_from=config.init_from,
        boundaries=list(parts.boundaries),
    )
    cache_root = (
        activation_cache(config, dataset, parts.image_size, parts.boundaries, parts.init_record)
        if parts.stem is not None
        else None
    )
    feeds = make_feeds(config, dataset, split, pixels, parts.stem, cache_root, parts.staged)
    state = _run_stages(record, config, stages, parts, feeds, dataset, split)
    return _evaluate(record, parts, feeds, state, dataset, split)


def _assemble(
    config: TrainConfig,
    arch: Architecture,
    num_classes: int,
    calibration: np.ndarray | None = None,
) -> _Parts:
    """Build the model (seeded), cut it at the frozen boundaries or wrap it in the architecture's
    trainer, and compile it with a fresh optimizer.

    ``calibration``: training images on which a group-norm model's norms are fitted to the
    batch norms they replace (:func:`_as_group_norm`); None keeps the batch norms'
    scale and offset (a resumed run: its checkpoint has the weights)."""
    import keras

    from bcclassify.models.registry import boundary_tensor, build, split_model

    image_size = config.image_size or arch.default_image_size
    strategy = _distribution_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    init_record: dict = {}
    started = False
    with strategy.scope():
        # Group norm from pretrained or parent weights: built with batch norm, converted here.
        convert = config.norm == "group" and (calibration is not None or config.init_from)
        model = build(
            config.arch,
            image_size,
            num_classes,
            config.backbone_weights,
            init_record,
            center_crop=config.center_crop,
            norm="batch" if convert else config.norm,
        )
        if convert:
            model, started = _as_group_norm(model, config, init_record, calibration)
        if config.freeze_bn:
            freeze_pretrained_batch_norm(model, init_record)
        boundaries = _boundaries(config, arch)
        if boundaries:
            stem, trainable = split_model(model, boundaries)
            if arch.trainer is not None:
                tensors = [boundary_tensor(model, spec) for spec in boundaries]
                trainable = arch.trainer(trainable, config.seed, image_size, tensors)
        elif arch.trainer is not None:
            stem, trainable = None, arch.trainer(model, config.seed, image_size)
        else:
            stem, trainable = None, model
        if started and stem is not None:  # cached activations are keyed on the stem's weights
            init_record["stem_weights_sha256"] = _weights_digest(stem)
        optimizer = _make_optimizer(config.optimizer, config.lr)
        trainable.compile(
            optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
    return _Parts(
        model=model,
        trainable=trainable,
        stem=stem,
        optimizer=optimizer,
        init_record=init_record,
        boundaries=boundaries,
        image_size=image_size,
        staged=arch.trainer is not None,
        started=started,
    )


def _as_group_norm(
    model, config: TrainConfig, init_record: dict, calibration: np.ndarray | None
) -> tuple[Any, bool]:
    """``model`` (batch norm) with group norm in its place, and whether ``--init-from`` is
    already in it.

    A batch-norm parent's weights go into the batch-norm model first, so that the fit starts
    from them; a group-norm parent's go into the converted model, unfitted. The norms are
    fitted on ``calibration`` (None: not fitted; a resumed run's checkpoint has its weights)
    only when every trunk is pretrained or continued: random batch norms are nothing to
    imitate."""

    from bcclassify.models.norm_transfer import fit_group_norm_affine
    from bcclassify.models.registry import with_group_norm
    from bcclassify.storage.store import initialisation_summary

    parent = None
    if config.init_from:
        parent = parent_model(config.init_from)
        note_installed_parent(config.init_from, init_record)
        if _has_group_norm(parent):
            converted = with_group_norm(model, init_record)
            converted.set_weights(parent.get_weights())
            return converted, True
        model.set_weights(parent.get_weights())
    converted = with_group_norm(model, init_record)
    pretrained = initialisation_summary(init_record) == "pretrained"
    if calibration is not None and (parent is not None or pretrained):
        init_record["group_norm_fit"] = fit_group_norm_affine(model, converted, calibration)
        init_record["normalisation"] += (
            f", each fitted to its batch norm's outputs on {len(calibration)} training images"
        )
    return converted, parent is not None


def _has_group_norm(model) -> bool:
    import keras

    return any(isinstance(layer, keras.layers.GroupNormalization) for layer in model.layers)


def _start_from_run(run_id: str, parts: _Parts) -> None:
    """Continue from another run's final model (same architecture).

    The input size may differ: every architecture here pools globally before its head, so no
    weight depends on it. That is progressive resizing (issue 25): a from-scratch network learns
    most of what it will at a quarter of the pixels, then a few epochs at the full size adapt it
    (and its batch-norm statistics) to the larger view."""

    stem = parts.stem
    stem_before = _weights_digest(stem) if stem is not None else None
    parts.model.set_weights(parent_model(run_id).get_weights())
    note_installed_parent(run_id, parts.init_record)
    if stem is not None and _weights_digest(stem) != stem_before:
        # Different frozen layers give different cached activations: key the cache on them.
        parts.init_record["stem_weights_sha256"] = _weights_digest(stem)


INSTALLED_PREFIX = "model:"


def parent_model(init_from: str):
    """The Keras model ``--init-from`` names: a run's final model, or with ``model:NAME`` an
    installed model's, as trained (batch norm unfolded). A run's weights stay on the machine
    that trained it; an installed model's are in the repository, so any machine can continue
    the shipped default."""
    import keras

    if init_from.startswith(INSTALLED_PREFIX):
        from bcclassify.serving.classifier import load_model

        name = init_from[len(INSTALLED_PREFIX) :]
        return load_model(name, fold_batch_norm=False, compiled=False).model
    source = runs_dir() / init_from / "model.keras"
    if not source.is_file():
        raise FileNotFoundError(
            f"--init-from {init_from}: no {source} (a run's weights stay on the machine that "
            f"trained it; git keeps its record only). Train that run again here (delete its "
            f"folder first), continue another, or start from an installed model "
            f"({INSTALLED_PREFIX}NAME)"
        )
    return keras.models.load_model(source, safe_mode=True)


def note_installed_parent(init_from: str, init_record: dict) -> None:
    """Each trunk of a run continued from an installed model says so, with the card's
    checksum (the model's files may later be replaced by a promote)."""
    if not init_from.startswith(INSTALLED_PREFIX):
        return
    from bcclassify.storage.store import models_dir, sha256_file, trunk_initialisation

    name = init_from[len(INSTALLED_PREFIX) :]
    card = models_dir() / name / "card.json"
    source = f"installed model {name} (card.json sha256 {sha256_file(card)[:12]})"
    for trunk, start in trunk_initialisation(init_record).items():
        init_record[trunk] = f"{start}, then continued from {source}"


def inherited_initialisation(run: dict, built: dict) -> dict:
    """The per-trunk initialisation a run records: what the build loaded, unless the run was
    started elsewhere from another run's weights (a device run imported here, whose rebuild loads
    nothing): then the parent run's, marked as continued from it."""
    parent = run.get("started_from_run")
    if not parent:
        return built
    inherited = RunRecord(runs_dir() / parent).read().get("initialisation") or {}
    trunks = inherited or built
    return {
        trunk: f"{inherited.get(trunk, 'unrecorded')} (continued from run {parent})"
        for trunk in trunks
    }


def _schedule(stages: tuple[Stage, ...]) -> Iterator[tuple[int, Stage, int]]:
    """(epoch of the run, its stage, epoch within that stage), in training order."""
    epoch = 0
    for stage in stages:
        for stage_epoch in range(stage.epochs):
            yield epoch, stage, stage_epoch
            epoch += 1


def _run_stages(
    record: RunRecord,
    config: TrainConfig,
    stages: tuple[Stage, ...],
    parts: _Parts,
    feeds: Feeds,
    dataset: Dataset,
    split: Split,
) -> dict:
    """The epoch loop from the last checkpoint on; returns the checkpoint state at the end."""
    trainable = parts.trainable
    y_train = dataset.labels[split.train]
    class_weight = (
        _class_weight(y_train, len(dataset.class_names)) if config.class_weights else None
    )
    schedule = [
        Epoch(
            index=epoch,
            stage=stage.history_label,
            lr=cosine_lr(stage.lr, stage_epoch, stage.epochs),  # each stage has its own cycle
            validated=stage.validated,
            before=(lambda name=stage.name: trainable.set_stage(name)) if parts.staged else None,
        )
        for epoch, stage, stage_epoch in _schedule(stages)
    ]
    validated = {e.index for e in schedule if e.validated}

    def fit_epoch(epoch: int) -> dict:
        return fit_logs(
            trainable.fit(
                feeds.train.epoch(epoch),
                validation_data=feeds.val if len(split.val) and epoch in validated else None,
                epochs=epoch + 1,
                initial_epoch=epoch,
                class_weight=class_weight,
                verbose=1 if sys.stderr.isatty() else 2,
            )
        )

    return run_epochs(
        record,
        record.folder / "checkpoints",
        trainable,
        parts.optimizer,
        schedule,
        fit_epoch,
        config.keep_weights,
    )


def _evaluate(
    record: RunRecord, parts: _Parts, feeds: Feeds, state: dict, dataset: Dataset, split: Split
) -> dict:
    """The best epoch's weights on the test part: metrics, predictions and the saved model."""
    from bcclassify.data.datasets import write_predictions
    from bcclassify.evaluation.metrics import classification_metrics, confidence_coverage

    best = record.folder / "checkpoints" / "best.weights.h5"
    if best.is_file():
        parts.trainable.load_weights(best)
    probabilities = _predict_probabilities(parts.trainable, feeds.test)
    y_test = dataset.labels[split.test]
    metrics = classification_metrics(y_test, probabilities.argmax(axis=1), dataset.class_names)
    metrics.update(
        best_epoch=state["best_epoch"],
        best_val_accuracy=state["best_val_accuracy"],
        split_sizes=split.sizes(),
        by_confidence=confidence_coverage(y_test, probabilities),
    )
    write_predictions(record.folder / "predictions.csv", dataset, split.test, probabilities)
    parts.model.save(record.folder / "model.keras")
    record.write_metrics(metrics)
    return metrics


def _predict_probabilities(model, feed_inputs) -> np.ndarray:
    return np.asarray(model.predict(feed_inputs, verbose=0), dtype=np.float64)


def freeze_pretrained_batch_norm(model, init_record: dict) -> None:
    """Keep the batch-norm layers of ImageNet-initialised trunks in inference mode.

    Fine-tuning with batch 32 moves the running statistics away from the weights' (MobileNetV2 at
    lr 1e-3: 96% training vs 84% validation accuracy). Use it with a small learning rate: with the
    statistics fixed, lr 1e-3 wrecked the trunk (chance level) and 1e-4 reached 95%. Layers trained
    from scratch keep learning their statistics.
    """
    import keras

    if not init_record or not all(str(v).startswith("pretrained") for v in init_record.values()):
        return
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _boundaries(config: TrainConfig, arch) -> tuple[str, ...]:
    if not config.freeze_until:
        return ()
    if config.freeze_until == "auto":
        if not arch.finetune_boundaries:
            raise ValueError(f"{arch.name} has no default --freeze-until boundary; name a layer")
        return arch.finetune_boundaries
    return tuple(s.strip() for s in config.freeze_until.split(",") if s.strip())


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.asarray(variable).tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- runs


def train(config: TrainConfig) -> Path:
    """Start a new run (or continue ``config.run_id``); returns the run folder."""
    from bcclassify.data.datasets import (
        cached_pixels,
        kfold_splits,
        scan_dataset,
        subsample,
        thinned_train,
        train_subset_seed,
        train_val_test_split,
    )
    from bcclassify.evaluation.metrics import summarize_folds
    from bcclassify.models.registry import get_architecture

    arch = get_architecture(config.arch)
    image_size = config.image_size or arch.default_image_size
    config.image_size = image_size
    if config.run_id and RunRecord(runs_dir() / config.run_id).read().get("status") == "finished":
        # A finished record is final: training it "again" would only add time to its clock (and
        # the data need not be scanned to say so).
        run_dir = runs_dir() / config.run_id
        weights = "" if (run_dir / "model.keras").is_file() else " (its weights are not here)"
        log.info("run %s has finished%s; nothing to train", config.run_id, weights)
        return run_dir
    dataset = subsample(scan_dataset(config.data), config.limit_per_class, config.seed)
    if len(dataset) == 0:
        raise ValueError(f"{config.data}: no images found")
    run_id = config.run_id or new_run_id(config, image_size)
    config.run_id = run_id
    run_dir = runs_dir() / run_id
    record = RunRecord(run_dir)
    resuming = (run_dir / "config.json").is_file()
    if config.folds:
        splits = kfold_splits(dataset.labels, dataset.hashes, config.folds, config.seed)
    else:
        splits = [train_val_test_split(dataset.labels, dataset.hashes, config.seed)]
    subset_seed = train_subset_seed(asdict(config))
    splits = [thinned_train(s, dataset.labels, config.train_per_class, subset_seed) for s in splits]
    if resuming:
        stored = record.config()
        if stored["data_manifest_sha256"] != dataset.manifest_hash():
            raise ValueError(f"{config.data}: data differs from the data run {run_id} started on")
        record.resume()
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write_config(
            {
                **asdict(config),
                "data_manifest_sha256": dataset.manifest_hash(),
                "num_images": len(dataset),
                "class_counts": dataset.class_counts(),
                "skipped_files": dataset.skipped,
                "split_sizes": [s.sizes() for s in splits],
                "class_names": list(dataset.class_names),
                "augmentation": augment_description(config),
                "smote_space": _smote_space(config),
                "command": " ".join(sys.argv),
            },
        )
        record.write_environment(environment_info())
        record.start(config.arch, epochs_done=0)
    try:
        pixels, kept = cached_pixels(
            dataset, image_size, Path(config.cache_dir) / "pixels" if config.cache_dir else None
        )
        if len(kept) != len(dataset):
            raise ValueError(
                f"{len(dataset) - len(kept)} images failed to decode after scanning; "
                "remove them and start a new run"
            )
        if config.folds:
            fold_metrics = []
            for k, split in enumerate(splits):
                record.update(current_fold=k + 1)
                fold = RunRecord(run_dir / f"fold-{k + 1}")
                fold_metrics.append(_fit_one_split(fold, config, dataset, split, pixels))
            metrics = {
                "summary": summarize_folds(fold_metrics),
                "folds": [
                    {"fold": k + 1, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                    for k, m in enumerate(fold_metrics)
                ],
                "class_names": list(dataset.class_names),
                "confusion_matrix": np.sum(
                    [m["confusion_matrix"] for m in fold_metrics], axis=0
                ).tolist(),
            }
        else:
            metrics = _fit_one_split(record, config, dataset, splits[0], pixels)
        record.finish(metrics)
    except BaseException as exc:
        record.fail(exc)
        raise
    return run_dir


def resume(run_id: str, **overrides) -> Path:
    """Continue an interrupted run from its last checkpoint, with the same split and config."""
    stored = RunRecord.of(run_id).config()
    if not stored:
        raise FileNotFoundError(f"no run {run_id!r} under {runs_dir()}")
    fields = {k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return train(TrainConfig(**fields))


def augment_description(config: TrainConfig) -> dict | None:
    from bcclassify.data.augment import preset

    if not config.augment:
        return None
    ops = "dihedral flips/rotations, scale, shift, HSV + brightness/contrast jitter"
    if config.augment_preset != "standard":
        ops += "; OD stain mixing, white balance, zoom, blur, noise, resolution, JPEG"
    if preset(config.augment_preset).grey > 0:
        ops += "; greyscale views"
    return {"ops": ops, "preset": config.augment_preset, **preset(config.augment_preset).to_dict()}


def _smote_space(config: TrainConfig) -> str | None:
    if not config.smote:
        return None
    return "stem activations (trunk embeddings)" if config.freeze_until else "pixels"
