"""Training runs: reproducible, resumable, recorded under ``model_store/runs/<run-id>/``.

Two modes share one epoch loop:
- end to end: the whole model trains on (augmented) pixels;
- cached (``--freeze-until``): the model is cut at boundary layers; the frozen stem runs once per
  image (and once per augmented copy) and its activations are cached on disk, then only the top
  blocks and the head train. On a 2-core CPU this is what makes fine-tuning the hybrid possible
  (see ../shared/docs/compute.md). The top shares its layers with the full model, so the saved
  model is the complete network, preprocessing included.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from .data import Dataset, Split, cached_pixels, kfold_splits, scan_dataset, train_val_test_split
from .metrics import classification_metrics, confidence_coverage, summarize_folds
from .store import read_json, runs_dir, write_csv, write_json

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
    "stage",
]


@dataclass
class TrainConfig:
    """Every argument of a run; saved whole in config.json."""

    arch: str
    data: str
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    augment: bool = True
    smote: bool = False
    class_weights: bool = False
    folds: int = 0
    shuffle: bool = True
    seed: int = 42
    freeze_until: str | None = None
    freeze_bn: bool = False
    center_crop: float = 1.0
    strategy: str = "auto"
    backbone_weights: str | None = None
    limit_per_class: int | None = None
    aug_copies: int = 2
    init_from: str | None = None
    head_epochs: int = 3
    head_lr: float | None = None  # supcon classifier stage; None: the same as lr
    cache_dir: str | None = "cache"
    note: str = ""
    run_id: str | None = None
    extra: dict = field(default_factory=dict)


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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# run folder -> (duration recorded by earlier processes, this process's start): every update
# refreshes duration_s, so a run killed with kill -9 still accounts for its time up to then.
_CLOCKS: dict[str, tuple[float, float]] = {}


def _elapsed(run_dir: Path) -> float:
    before, started = _CLOCKS[str(run_dir)]
    return round(before + time.time() - started, 1)


def _update_run(run_dir: Path, **changes) -> dict:
    run = read_json(run_dir / "run.json", {}) or {}
    if str(run_dir) in _CLOCKS and "duration_s" not in changes:
        changes["duration_s"] = _elapsed(run_dir)
    run.update(changes, updated=_now())
    write_json(run_dir / "run.json", run)
    return run


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


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay by epoch, so a resumed run gets exactly the rate it would have had."""
    return 0.5 * base * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


def _subsample(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if not limit:
        return dataset
    rng = np.random.default_rng(seed)
    keep = []
    for label in range(len(dataset.class_names)):
        members = np.flatnonzero(dataset.labels == label)
        keep.extend(rng.permutation(members)[:limit])
    return dataset.subset(np.sort(np.asarray(keep, dtype=np.int64)))


def _epoch_order(labels: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Training order: shuffled per epoch, or in class order (the reference's 'unshuffled')."""
    if shuffle:
        return np.random.default_rng([seed, epoch]).permutation(len(labels))
    return np.argsort(labels, kind="stable")


def _class_weight(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def apply_smote(
    features: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE (imbalanced-learn) on flattened samples; returns (features, labels) incl. synthetic."""
    from imblearn.over_sampling import SMOTE

    shape = features.shape[1:]
    flat = features.reshape(len(features), -1).astype(np.float32)
    k = int(min(5, np.bincount(labels).min() - 1))
    if k < 1:
        log.warning("SMOTE skipped: a class has fewer than 2 training samples")
        return features, labels
    resampled, new_labels = SMOTE(k_neighbors=k, random_state=seed).fit_resample(flat, labels)
    resampled = resampled.reshape((-1, *shape))
    if features.dtype == np.uint8:
        resampled = np.clip(np.rint(resampled), 0, 255)
    return resampled.astype(features.dtype), new_labels


# ----------------------------------------------------------------------------- checkpoints


def _save_checkpoint(ckpt_dir: Path, epoch: int, model, optimizer, state: dict) -> None:
    """One folder per epoch, then an atomic pointer: a kill at any moment leaves a whole one."""
    folder = ckpt_dir / f"epoch-{epoch:04d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_weights(folder / "model.weights.h5")
    np.savez(folder / "optimizer.npz", *[v.numpy() for v in optimizer.variables])
    write_json(folder / "state.json", state)
    write_json(ckpt_dir / "latest.json", {"folder": folder.name, "epoch": epoch})
    for old in ckpt_dir.glob("epoch-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def _restore_checkpoint(ckpt_dir: Path, model, optimizer) -> dict | None:
    pointer = read_json(ckpt_dir / "latest.json")
    if not pointer:
        return None
    folder = ckpt_dir / pointer["folder"]
    model.load_weights(folder / "model.weights.h5")
    optimizer.build(model.trainable_variables)
    with np.load(folder / "optimizer.npz") as stored:
        values = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)
    return read_json(folder / "state.json")


# ----------------------------------------------------------------------------- data feeds


class _PixelFeed:
    """Training data as pixels, augmented on the fly."""

    def __init__(self, pixels, labels, config: TrainConfig):
        self.pixels, self.labels, self.config = pixels, labels, config
        if config.smote:
            self.pixels, self.labels = apply_smote(pixels, labels, config.seed)

    def epoch(self, epoch: int):
        import tensorflow as tf

        from .augment import augment_batch

        order = _epoch_order(self.labels, self.config.shuffle, self.config.seed, epoch)
        ds = tf.data.Dataset.from_tensor_slices((self.pixels[order], self.labels[order]))
        ds = ds.batch(self.config.batch_size)
        if self.config.augment:
            generator = tf.random.Generator.from_seed(self.config.seed * 100_003 + epoch)
            ds = ds.map(lambda x, y: (augment_batch(x, generator), y))
        else:
            ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
        return ds.prefetch(2)

    @staticmethod
    def inputs(pixels, batch_size: int, labels=None):
        """Evaluation feed: elements (x, y) with labels, else (x,) for predict."""
        import tensorflow as tf

        if labels is None:
            ds = tf.data.Dataset.from_tensor_slices(pixels).batch(batch_size)
            return ds.map(lambda x: (tf.cast(x, tf.float32),)).prefetch(2)
        ds = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(batch_size)
        return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)


class _ActivationFeed:
    """Training data as cached stem activations: one identity copy and K augmented copies."""

    def __init__(self, copies: list[list[np.ndarray]], labels: np.ndarray, config: TrainConfig):
        self.copies, self.labels, self.config = copies, labels, config
        self._smoted: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}

    def _copy(self, index: int) -> tuple[list[np.ndarray], np.ndarray]:
        arrays = self.copies[index]
        if not self.config.smote:
            return arrays, self.labels
        if index not in self._smoted:
            # SMOTE here interpolates stem activations (trunk embeddings), not pixels.
            sizes = [int(np.prod(a.shape[1:])) for a in arrays]
            joined = np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)
            joined, labels = apply_smote(joined, self.labels, self.config.seed + index)
            parts = np.split(joined, np.cumsum(sizes)[:-1], axis=1)
            self._smoted[index] = (
                [p.reshape((-1, *a.shape[1:])) for p, a in zip(parts, arrays)],
                labels,
            )
        return self._smoted[index]

    def epoch(self, epoch: int):
        import tensorflow as tf

        arrays, labels = self._copy(epoch % len(self.copies))
        order = _epoch_order(labels, self.config.shuffle, self.config.seed, epoch)
        ds = tf.data.Dataset.from_tensor_slices((tuple(a[order] for a in arrays), labels[order]))
        ds = ds.batch(self.config.batch_size)
        return ds.map(lambda x, y: (tuple(tf.cast(t, tf.float32) for t in x), y)).prefetch(2)

    @staticmethod
    def inputs(arrays: list[np.ndarray], batch_size: int, labels=None):
        """Evaluation feed: elements (x, y) with labels, else (x,) for predict."""
        import tensorflow as tf

        def cast(x):
            return tuple(tf.cast(t, tf.float32) for t in x)

        if labels is None:
            ds = tf.data.Dataset.from_tensor_slices(tuple(arrays)).batch(batch_size)
            return ds.map(lambda *x: (cast(x),)).prefetch(2)
        ds = tf.data.Dataset.from_tensor_slices((tuple(arrays), labels)).batch(batch_size)
        return ds.map(lambda x, y: (cast(x), y)).prefetch(2)


def _stem_activations(
    stem, pixels: np.ndarray, batch_size: int, cache: Path | None, augment_seed: int | None
) -> list[np.ndarray]:
    """Run the frozen stem over pixels in chunks, caching each chunk (float16) on disk.

    A killed extraction resumes at the first missing chunk.
    """
    import tensorflow as tf
    from tqdm import tqdm

    from .augment import augment_batch

    chunk = 256
    outputs: list[list[np.ndarray]] = []
    generator = tf.random.Generator.from_seed(augment_seed) if augment_seed is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    desc = "stem activations" + (" (augmented)" if generator is not None else "")
    for start in tqdm(range(0, len(pixels), chunk), desc=desc, unit="chunk"):
        target = cache / f"chunk-{start:07d}.npz" if cache else None
        batch = pixels[start : start + chunk]
        if generator is not None:
            # Consumed even when the chunk is cached, so resumed extraction draws the same numbers.
            batch = augment_batch(batch, generator).numpy()
        if target is not None and target.is_file():
            with np.load(target) as stored:
                outputs.append([stored[f"arr_{i}"] for i in range(len(stored.files))])
            continue
        result = stem.predict(batch.astype(np.float32), batch_size=batch_size, verbose=0)
        result = [result] if not isinstance(result, list) else result
        parts = [np.asarray(r, dtype=np.float16) for r in result]
        if target is not None:
            partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npz")
            np.savez(partial, *parts)
            partial.replace(target)
        outputs.append(parts)
    return [np.concatenate([o[i] for o in outputs]) for i in range(len(outputs[0]))]


# ----------------------------------------------------------------------------- one split


def _predict_probabilities(model, feed_inputs) -> np.ndarray:
    return np.asarray(model.predict(feed_inputs, verbose=0), dtype=np.float64)


def _fit_one_split(
    run_dir: Path,
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    pixels: np.ndarray,
) -> dict:
    """Train, checkpoint each epoch, evaluate on the test part; writes the record into run_dir."""
    import keras

    from .models import build, get_architecture, split_model

    if read_json(run_dir / "metrics.json"):
        return read_json(run_dir / "metrics.json")  # finished fold of a resumed run
    arch = get_architecture(config.arch)
    image_size = config.image_size or arch.default_image_size
    strategy = _distribution_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    init_record: dict = {}
    with strategy.scope():
        model = build(
            config.arch,
            image_size,
            len(dataset.class_names),
            config.backbone_weights,
            init_record,
            center_crop=config.center_crop,
        )
        if config.freeze_bn:
            _freeze_pretrained_batch_norm(model, init_record)
        boundaries = _boundaries(config, arch)
        if boundaries:
            stem, trainable = split_model(model, boundaries)
        elif config.arch == "supcon":
            from .supcon import SupConTrainer

            stem, trainable = None, SupConTrainer(model, seed=config.seed)
            trainable.build_all(image_size)
        else:
            stem, trainable = None, model
        optimizer = _make_optimizer(config.optimizer, config.lr)
        trainable.compile(
            optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        if config.arch == "supcon":
            optimizer.build(trainable.trainable_variables)
    if config.init_from:
        # Continue from another run's final model (same architecture and input size).
        source = runs_dir() / config.init_from / "model.keras"
        if not source.is_file():
            raise FileNotFoundError(f"--init-from {config.init_from}: no {source}")
        stem_before = _weights_digest(stem) if stem is not None else None
        model.set_weights(keras.models.load_model(source, safe_mode=True).get_weights())
        if stem is not None and _weights_digest(stem) != stem_before:
            # Different frozen layers give different cached activations: key the cache on them.
            init_record["stem_weights_sha256"] = _weights_digest(stem)
    _update_run(
        run_dir,
        initialisation=init_record,
        init_from=config.init_from,
        boundaries=list(boundaries),
    )

    y_train, y_val, y_test = (dataset.labels[s] for s in (split.train, split.val, split.test))
    # SupCon augments inside its train step (two views per image), so its feed stays raw.
    supcon = config.arch == "supcon"
    total_epochs = config.epochs + (config.head_epochs if supcon else 0)
    if stem is None:
        feed_config = TrainConfig(**{**asdict(config), "augment": False}) if supcon else config
        feed = _PixelFeed(pixels[split.train], y_train, feed_config)
        val_set = _PixelFeed.inputs(pixels[split.val], config.batch_size, y_val)
        test_inputs = _PixelFeed.inputs(pixels[split.test], config.batch_size)
    else:
        cache_root = _activation_cache(config, dataset, image_size, boundaries, init_record)
        every = _stem_activations(stem, pixels, config.batch_size, cache_root / "identity", None)
        copies = [[a[split.train] for a in every]]
        if config.augment:
            for k in range(1, config.aug_copies + 1):
                copies.append(
                    _stem_activations(
                        stem,
                        pixels[split.train],
                        config.batch_size,
                        cache_root / f"augmented-{k}-{_indices_key(split.train)}",
                        augment_seed=config.seed * 1000 + k,
                    )
                )
        feed = _ActivationFeed(copies, y_train, config)
        val_set = _ActivationFeed.inputs([a[split.val] for a in every], config.batch_size, y_val)
        test_inputs = _ActivationFeed.inputs([a[split.test] for a in every], config.batch_size)
        del every

    ckpt_dir = run_dir / "checkpoints"
    state = _restore_checkpoint(ckpt_dir, trainable, optimizer) or {
        "epoch": -1,
        "best_val_accuracy": -1.0,
        "best_epoch": -1,
    }
    history = _read_history(run_dir)[: state["epoch"] + 1]
    class_weight = (
        _class_weight(y_train, len(dataset.class_names)) if config.class_weights else None
    )
    started, first_epoch = time.time(), state["epoch"] + 1
    for epoch in range(first_epoch, total_epochs):
        in_contrastive_stage = supcon and epoch < config.epochs
        if supcon:
            trainable.set_stage("contrastive" if in_contrastive_stage else "classifier")
            # each stage gets its own cosine cycle
            stage_epoch, stage_len, stage_lr = (
                (epoch, config.epochs, config.lr)
                if in_contrastive_stage
                else (epoch - config.epochs, config.head_epochs, config.head_lr or config.lr)
            )
            lr = cosine_lr(stage_lr, stage_epoch, stage_len)
        else:
            lr = cosine_lr(config.lr, epoch, config.epochs)
        optimizer.learning_rate.assign(lr)
        tick = time.time()
        log.info("epoch %d/%d (lr %.2e)", epoch + 1, total_epochs, lr)
        fitted = trainable.fit(
            feed.epoch(epoch),
            validation_data=val_set if len(split.val) and not in_contrastive_stage else None,
            epochs=epoch + 1,
            initial_epoch=epoch,
            class_weight=class_weight,
            verbose=1 if sys.stderr.isatty() else 2,
        )
        logs = {k: float(v[-1]) for k, v in fitted.history.items()}
        seconds = time.time() - tick
        history.append(
            {
                "epoch": epoch + 1,
                "loss": logs.get("loss"),
                "accuracy": logs.get("accuracy"),
                "val_loss": logs.get("val_loss"),
                "val_accuracy": logs.get("val_accuracy"),
                "learning_rate": lr,
                "seconds": round(seconds, 2),
                "stage": "contrastive" if in_contrastive_stage else "supervised",
            }
        )
        write_csv(
            run_dir / "history.csv",
            HISTORY_COLUMNS,
            [[row.get(c, "") for c in HISTORY_COLUMNS] for row in history],
        )
        # Without a validation part (tiny datasets) the latest epoch counts as the best;
        # contrastive epochs have no classifier to validate yet.
        val_accuracy = logs.get("val_accuracy", float(epoch))
        if not in_contrastive_stage and val_accuracy > state["best_val_accuracy"]:
            state.update(best_val_accuracy=val_accuracy, best_epoch=epoch + 1)
            best = ckpt_dir / "best.weights.h5"
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            trainable.save_weights(ckpt_dir / "best.tmp.weights.h5")
            (ckpt_dir / "best.tmp.weights.h5").replace(best)
        state["epoch"] = epoch
        _save_checkpoint(ckpt_dir, epoch, trainable, optimizer, state)
        per_epoch = (time.time() - started) / (epoch + 1 - first_epoch)
        remaining = per_epoch * (total_epochs - epoch - 1)
        _update_run(run_dir, epochs_done=epoch + 1, eta_s=round(remaining, 1))

    if (ckpt_dir / "best.weights.h5").is_file():
        trainable.load_weights(ckpt_dir / "best.weights.h5")
    probabilities = _predict_probabilities(trainable, test_inputs)
    predicted = probabilities.argmax(axis=1)
    metrics = classification_metrics(y_test, predicted, dataset.class_names)
    metrics.update(
        best_epoch=state["best_epoch"],
        best_val_accuracy=state["best_val_accuracy"],
        split_sizes=split.sizes(),
        by_confidence=confidence_coverage(y_test, probabilities),
    )
    write_predictions(run_dir / "predictions.csv", dataset, split.test, probabilities)
    model.save(run_dir / "model.keras")
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _freeze_pretrained_batch_norm(model, init_record: dict) -> None:
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


def _indices_key(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:12]


def _activation_cache(config, dataset, image_size, boundaries, init_record) -> Path:
    parts = [config.arch, image_size, list(boundaries), init_record, dataset.manifest_hash()]
    if config.center_crop < 1.0:  # appended only when set, so existing caches keep their keys
        parts.append(config.center_crop)
    key = json.dumps(parts, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(config.cache_dir or "cache") / "activations" / f"{config.arch}-{digest}"
    return root


def _read_history(run_dir: Path) -> list[dict]:
    from .store import read_csv

    def parse(key: str, value: str):
        if key == "stage" or value in ("", None):
            return value or None
        return float(value)

    return [{k: parse(k, v) for k, v in r.items()} for r in read_csv(run_dir / "history.csv")]


def write_predictions(path: Path, dataset: Dataset, indices, probabilities) -> None:
    """predictions.csv: file (relative to the data folder), true, predicted, probabilities."""
    names = dataset.class_names
    rows = []
    for i, probs in zip(indices, probabilities):
        rows.append(
            [
                dataset.relative_paths[i],
                names[dataset.labels[i]],
                names[int(np.argmax(probs))],
                *[f"{p:.6f}" for p in probs],
            ]
        )
    write_csv(path, ["file", "true", "predicted", *names], rows)


# ----------------------------------------------------------------------------- runs


def new_run_id(config: TrainConfig, image_size: int) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    crop = f"-crop{round(config.center_crop * 100)}" if config.center_crop < 1.0 else ""
    return f"{stamp}-{config.arch}-{image_size}px{crop}"


def train(config: TrainConfig) -> Path:
    """Start a new run (or continue ``config.run_id``); returns the run folder."""
    from .models import get_architecture

    arch = get_architecture(config.arch)
    image_size = config.image_size or arch.default_image_size
    config.image_size = image_size
    dataset = _subsample(scan_dataset(config.data), config.limit_per_class, config.seed)
    if len(dataset) == 0:
        raise ValueError(f"{config.data}: no images found")
    run_id = config.run_id or new_run_id(config, image_size)
    config.run_id = run_id
    run_dir = runs_dir() / run_id
    resuming = (run_dir / "config.json").is_file()
    if config.folds:
        splits = kfold_splits(dataset.labels, dataset.hashes, config.folds, config.seed)
    else:
        splits = [train_val_test_split(dataset.labels, dataset.hashes, config.seed)]
    if resuming:
        stored = read_json(run_dir / "config.json")
        if stored["data_manifest_sha256"] != dataset.manifest_hash():
            raise ValueError(f"{config.data}: data differs from the data run {run_id} started on")
        _update_run(run_dir, status="running", pid=os.getpid(), host=platform.node())
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            run_dir / "config.json",
            {
                **asdict(config),
                "data_manifest_sha256": dataset.manifest_hash(),
                "num_images": len(dataset),
                "class_counts": dataset.class_counts(),
                "skipped_files": dataset.skipped,
                "split_sizes": [s.sizes() for s in splits],
                "class_names": list(dataset.class_names),
                "augmentation": _augment_description(config),
                "smote_space": _smote_space(config),
                "command": " ".join(sys.argv),
            },
        )
        write_json(run_dir / "environment.json", environment_info())
        write_json(
            run_dir / "run.json",
            {
                "run_id": run_id,
                "arch": config.arch,
                "status": "running",
                "created": _now(),
                "pid": os.getpid(),
                "host": platform.node(),
                "epochs_done": 0,
            },
        )
    previous = (read_json(run_dir / "run.json", {}) or {}).get("duration_s", 0.0) or 0.0
    _CLOCKS[str(run_dir)] = (float(previous), time.time())
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
                fold_dir = run_dir / f"fold-{k + 1}"
                _update_run(run_dir, current_fold=k + 1)
                fold_metrics.append(_fit_one_split(fold_dir, config, dataset, split, pixels))
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
            metrics = _fit_one_split(run_dir, config, dataset, splits[0], pixels)
        metrics["duration_s"] = _elapsed(run_dir)
        write_json(run_dir / "metrics.json", metrics)
        # the same figure in both records (re-reading the clock here could differ by 0.1 s)
        _update_run(run_dir, status="finished", finished=_now(), duration_s=metrics["duration_s"])
    except BaseException as exc:
        _update_run(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return run_dir


def resume(run_id: str, **overrides) -> Path:
    """Continue an interrupted run from its last checkpoint, with the same split and config."""
    stored = read_json(runs_dir() / run_id / "config.json")
    if not stored:
        raise FileNotFoundError(f"no run {run_id!r} under {runs_dir()}")
    fields = {k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return train(TrainConfig(**fields))


def _augment_description(config: TrainConfig) -> dict | None:
    from .augment import AugmentConfig

    if not config.augment:
        return None
    return {
        "ops": "dihedral flips/rotations, scale, shift, HSV + brightness/contrast jitter",
        **AugmentConfig().to_dict(),
    }


def _smote_space(config: TrainConfig) -> str | None:
    if not config.smote:
        return None
    return "stem activations (trunk embeddings)" if config.freeze_until else "pixels"
