"""Adapt an installed model to another lab from a few labelled cells (issue 12).

What is adapted, and why only that: the classifier head (the Dense layer ``predictions``) is
refitted on the source model's pooled features of at most K cells a class (all 8 symmetries and
DEFAULT_AUGMENTED_VIEWS augmented views of each), by cross-entropy with an L2 pull toward the
source head; for architectures that name ``adapt_layers`` (the hybrid) the fit also reads pooled
activations of a few mid-level blocks, through a new linear read-out pulled toward zero
(bcclassify/lab/mid_level.py). The trunk is left as it is: with ~10 cells a class it cannot
be trained without overfitting, and the novelty detector's feature bank stays valid only while
the features do not change. The pull keeps classes absent from the lab's folders (and the lab's
classes away from its few cells) close to the source behaviour. Measured on ext-tecom
(scripts/adapt_study.py, README "Using it in your lab").

The adapted model is installed like any other: the source's architecture and trunk weights, the
new head, a temperature fitted on cross-fitted (out-of-fold) probabilities of the taken cells,
and the source's novelty detector with the taken cells' features added to its k-NN bank, so the
lab's cells stop looking unlike "the training cells"; likewise the acquisition range
(acquisition.py) is widened to hold the taken cells' stain and camera. Its card names the
source model (and the sha256 of its card), the adaptation run in ``model_store/runs/`` and the
sha256 of every cell used; cells of the folder that were not taken are never read (unless
``evaluate`` scores them).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bcclassify import CLASS_NAMES
from bcclassify.access.roles import Identity, command_line_identity, require
from bcclassify.lab.mid_level import DEFAULT_MID_WEIGHT
from bcclassify.serving.blood_prior import CARD_KEY as UNIDENTIFIED_PRIOR_KEY
from bcclassify.serving.colour_check import CARD_KEY as COLOUR_CHECK_KEY
from bcclassify.serving.floors import CARD_KEY as FLOORS_KEY
from bcclassify.serving.floors import LOW_CONFIDENCE_KEY
from bcclassify.storage.cards import ModelCard, installed_cards, write_card
from bcclassify.storage.runs import RunRecord, utc_now
from bcclassify.storage.store import models_dir, run_is_alive, runs_dir

log = logging.getLogger(__name__)

DEFAULT_PER_CLASS = 10
DEFAULT_PULL = 0.01  # L2 weight toward the source head (per mean cross-entropy); see module doc
# Matched whole (fullmatch): "$" would also accept a name ending in a newline.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CROSS_FIT_FOLDS = 5
# Besides the 8 symmetries of each taken cell, this many views drawn by the standard training
# augmentation: on ext-tecom (5 draws of 10 cells a class) the head fitted on the 4 served views
# scored 88.6% on the remaining cells (worst draw 84.2%), on 8 symmetries + 8 augmented views
# 89.5% (worst 88.0%); fitting only, the model still serves its card's views.
DEFAULT_AUGMENTED_VIEWS = 8
# Adapted models installed at once, at most: each is a full copy of its source (86 MB for the
# hybrid), installed from the app by an admin; past it, one must be uninstalled first.
MAX_ADAPTED_MODELS = 10
UNINSTALLED_DIR = ".uninstalled"  # under models/: hidden, so never listed or loaded
# Each adaptation stages its model in a folder of its own run, models/.adapting-<run-id>, so two
# adaptations under one name never share (or install) each other's files.
STAGING_PREFIX = ".adapting-"
# A staged adaptation whose process is gone (the app restarted: nobody can install it any more),
# or that nobody installed or discarded within this, is abandoned: its ~100 MB copy is removed.
STALE_STAGING_S = 6 * 3600
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700  # an adaptation's run record names people and files

# What adapt adds to the source's novelty k-NN bank; studies of adapt record it, so that draws
# made with another bank are not mixed with new ones.
NOVELTY_BANK = "the 8 symmetries of each taken cell"


class AdaptError(ValueError):
    """Bad input to an adaptation: the message says which file or folder, and why."""


@dataclass
class AdaptConfig:
    """Every argument of an adaptation; saved whole in the run's config.json."""

    # metadata: the command line's help and flags (bcclassify/cli/from_config.py).
    source: str = field(metadata={"flag": "--from", "metavar": "MODEL", "help": "installed model"})
    cells: str = field(
        metadata={"metavar": "DIR", "help": "class folders (any of the 8 class names)"}
    )
    name: str = field(metadata={"help": "name of the adapted model to install"})
    per_class: int = field(
        default=DEFAULT_PER_CLASS, metadata={"metavar": "K", "help": "cells a class (%(default)s)"}
    )
    seed: int = field(default=0, metadata={"help": "which cells are taken (default %(default)s)"})
    pull: float = DEFAULT_PULL
    augmented_views: int = DEFAULT_AUGMENTED_VIEWS
    mid_weight: float = field(
        default=DEFAULT_MID_WEIGHT,
        metadata={
            "metavar": "W",
            "help": "scale of the mid-level blocks' features against the head's, where the "
            "architecture names blocks (default %(default)s; 0: the head's features only)",
        },
    )
    evaluate: bool = field(
        default=False,
        metadata={"help": "also score the source and the adapted model on the cells not taken"},
    )
    run_id: str | None = None
    requested_by: str | None = None  # the logged-in reviewer, when run from the app


# ----------------------------------------------------------------------------- choosing cells


def scan_cells(root: Path) -> dict[str, list[Path]]:
    """The image files of each class folder of ``root`` (sorted), refusing what is not one.

    Every entry of ``root`` must be a folder named after a class (hidden entries skipped); files
    are taken from the folder itself (no deeper). Empty class folders are allowed as long as some
    class has files.
    """
    root = Path(root)
    if not root.is_dir():
        raise AdaptError(f"{root}: not a folder")
    found: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise AdaptError(
                f"{entry}: not a class folder; put each cell in a folder named after its class "
                f"({', '.join(CLASS_NAMES)})"
            )
        if entry.name not in CLASS_NAMES:
            raise AdaptError(
                f"{entry}: unknown class folder {entry.name!r}; class folders are named "
                + ", ".join(CLASS_NAMES)
            )
        found[entry.name] = sorted(
            p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")
        )
    if not any(found.values()):
        raise AdaptError(f"{root}: no cells (expected class folders of images)")
    return found


def choose_cells(
    cells: dict[str, list], per_class: int, seed: int
) -> tuple[list[tuple[object, str]], list[tuple[object, str]]]:
    """At most ``per_class`` of each class (all of a smaller one), chosen by ``seed``.

    Returns (taken, rest) as (item, class name) pairs in class order; the draw for a class
    depends only on the seed, the class and its sorted files, not on the other folders.
    """
    if per_class < 1:
        raise AdaptError("--per-class must be at least 1")
    taken, rest = [], []
    for name in CLASS_NAMES:
        items = list(cells.get(name) or [])
        if not items:
            continue
        order = np.random.default_rng([seed, CLASS_NAMES.index(name)]).permutation(len(items))
        chosen = set(order[:per_class].tolist())
        taken += [(items[i], name) for i in sorted(chosen)]
        rest += [(items[i], name) for i in range(len(items)) if i not in chosen]
    if not taken:
        raise AdaptError("no cells taken")
    return taken, rest


# ----------------------------------------------------------------------------- the head


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_head(
    features: np.ndarray, labels: np.ndarray, w0: np.ndarray, b0: np.ndarray, pull: float
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax head minimising mean cross-entropy + pull/2 * ||W - W0||^2, from (W0, b0).

    ``features``: (views, cells, D), each view of a cell a training example (the views the
    model averages at test time, so the head learns what it will be asked). L-BFGS in float64:
    a convex problem with a unique optimum, so no seed and no epochs to choose.
    """
    from scipy.optimize import minimize

    x = np.asarray(features, dtype=np.float64).reshape(-1, features.shape[-1])
    y = np.tile(np.asarray(labels, dtype=np.int64), features.shape[0])
    w0 = np.asarray(w0, dtype=np.float64)
    b0 = np.asarray(b0, dtype=np.float64)
    n, d = x.shape
    c = w0.shape[1]
    rows = np.arange(n)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        dw = theta[: d * c].reshape(d, c)
        p = _softmax(x @ (w0 + dw) + b0 + theta[d * c :])
        loss = -np.mean(np.log(p[rows, y] + 1e-12)) + 0.5 * pull * np.sum(dw * dw)
        g = p
        g[rows, y] -= 1.0
        g /= n
        return loss, np.concatenate([(x.T @ g + pull * dw).ravel(), g.sum(axis=0)])

    best = minimize(
        objective, np.zeros(d * c + c), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return w0 + best.x[: d * c].reshape(d, c), b0 + best.x[d * c :]


def served(features: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """View-averaged probabilities of a softmax head, as the installed model serves them."""
    return _softmax(np.asarray(features, dtype=np.float64) @ w + b).mean(axis=0)


def cross_fitted(
    features: np.ndarray,
    labels: np.ndarray,
    w0: np.ndarray,
    b0: np.ndarray,
    pull: float,
    seed: int,
    served_features: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold served probabilities of the taken cells (stratified folds).

    Each fold's head is fitted on ``features`` of the other folds and scored on
    ``served_features`` (default ``features``): the views the model averages when serving.

    What the temperature is fitted on: the head's probabilities on its own training cells are
    overconfident by construction, and there are too few cells to hold any back for good.
    """
    labels = np.asarray(labels)
    folds = np.zeros(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = np.arange(len(members)) % CROSS_FIT_FOLDS
    out = np.zeros((len(labels), w0.shape[1]))
    for k in range(CROSS_FIT_FOLDS):
        held = folds == k
        if not held.any() or held.all():
            continue
        w, b = fit_head(features[:, ~held], labels[~held], w0, b0, pull)
        out[held] = served(
            (features if served_features is None else served_features)[:, held], w, b
        )
    return out


# ----------------------------------------------------------------------------- features


def view_features(
    classifier,
    items: list,
    desc: str,
    progress: Callable[[int, int], None] | None = None,
    views: tuple[str, ...] | None = None,
    augmented: int = 0,
    seed: int = 0,
    forward: Callable | None = None,
) -> np.ndarray:
    """Head features of views of each image: (views, cells, D), the image as given first.

    ``views``: named symmetries (default: the ones the card serves), then ``augmented`` views
    drawn by the standard training augmentation (seeded by ``seed``, so a rerun is identical).
    ``items`` are paths or (name, bytes) sources; a file that cannot be read as an image is an
    :class:`AdaptError` naming it. Progress goes to a tqdm bar on stderr and to ``progress``.
    ``forward``: pixels -> (features, probabilities) to use instead of the model's own (the
    mid-level one, whose features extend the head's).
    """
    from tqdm import tqdm

    from bcclassify.data.imaging import DecoderBusyError, ImageLoadError
    from bcclassify.serving.classifier import VIEW_TRANSFORMS

    forward = forward or classifier.feature_forward()
    named = _view_order(classifier, views)
    generator = None
    if augmented:
        import tensorflow as tf

        from bcclassify.data.augment import augment_batch, preset

        generator = tf.random.Generator.from_seed(seed)
    chunks = []
    bar = tqdm(total=len(items), desc=desc, unit="cell", disable=None, file=sys.stderr)
    for start in range(0, len(items), 16):
        batch = []
        for item in items[start : start + 16]:
            name, source = _name_and_source(item)
            try:
                batch.append(classifier.load(source, name=name))
            except DecoderBusyError as exc:
                raise AdaptError(str(exc)) from None
            except ImageLoadError as exc:
                raise AdaptError(f"unreadable image: {exc}") from None
        pixels = np.stack(batch).astype(np.float32)
        # One view at a time: a batch of 16 views x 16 cells at full size would be gigabytes.
        shown = [np.ascontiguousarray(VIEW_TRANSFORMS[v](pixels)) for v in named]
        shown += [
            augment_batch(pixels, generator, preset("standard")).numpy() for _ in range(augmented)
        ]
        chunks.append(np.stack([np.asarray(forward(x)[0], dtype=np.float32) for x in shown]))
        bar.update(len(batch))
        if progress is not None:
            progress(start + len(batch), len(items))
    bar.close()
    return np.concatenate(chunks, axis=1)


def acquisition_numbers(classifier, items: list) -> np.ndarray:
    """acquisition.summaries of each image as the model is given it (items as view_features)."""
    from bcclassify.serving.acquisition import summaries

    pixels = [classifier.load(source, name=name) for name, source in map(_name_and_source, items)]
    return summaries(np.stack(pixels)) if pixels else np.zeros((0, 4))


def _name_and_source(item) -> tuple[str, object]:
    """(name, source) of a path or of an uploaded (name, bytes) pair."""
    return item if isinstance(item, tuple) else (str(item), item)


def _view_order(classifier, views: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The named views view_features computes: identity first, then the others in order."""
    chosen = classifier.test_time_views if views is None else views
    return ("identity",) + tuple(v for v in chosen if v != "identity")


def served_views(classifier, features: np.ndarray, views: tuple[str, ...] | None = None):
    """Features of the views the card serves, from view_features(..., views=views)."""
    order = _view_order(classifier, views)
    return features[[order.index(v) for v in classifier.test_time_views]]


def mid_forward(classifier, blocks: tuple[str, ...]):
    """The forward view_features uses: head features and the pooled ``blocks`` (None: the
    model's own, when there are no blocks)."""
    if not blocks:
        return None
    from bcclassify.lab.mid_level import feature_forward_with_mid

    return feature_forward_with_mid(classifier.model, blocks)


def installed_kernel(keras_model, layer: str) -> np.ndarray:
    """A Dense layer's kernel as the installed model will hold it (export_model's precision)."""
    from bcclassify.serving.classifier import as_stored

    return as_stored(keras_model.get_layer(layer).get_weights()[0]).astype(np.float64)


# ----------------------------------------------------------------------------- adapting


@dataclass
class Adapted:
    """What :func:`adapt` did: the installed card, the run folder and (with evaluate) figures."""

    name: str
    card: ModelCard
    run_dir: Path
    taken: int
    held_back: int
    figures: dict | None
    seconds: float  # all of it, evaluation included
    fit_seconds: float  # up to the installed model (what `adapt` costs without --evaluate)


def _item_digest(item, root: Path | None) -> tuple[str, str]:
    """(relative name, sha256) of a path under ``root`` or of a (name, bytes) upload."""
    from bcclassify.storage.store import sha256_bytes, sha256_file

    if isinstance(item, tuple):
        return item[0], sha256_bytes(item[1])
    return item.relative_to(root).as_posix(), sha256_file(item)


def adapt(
    config: AdaptConfig,
    cells: dict[str, list] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    install: bool = True,
    identity: Identity | None = None,
) -> Adapted:
    """Adapt ``config.source`` to the cells of ``config.cells`` and install ``config.name``.

    ``cells``: the class -> items mapping to use instead of scanning ``config.cells`` (the app
    passes uploaded (name, bytes) pairs, so nothing is written to disk). ``progress(stage, done,
    total)`` reports feature extraction. With ``install`` False the model is left staged
    (unlisted) until :func:`install_staged` or :func:`discard_staged`: the app shows the
    before/after figures first. ``identity``: who adapts (and installs), which must be allowed
    to (default :func:`~bcclassify.access.roles.command_line_identity`); an install records it
    in the card. Raises :class:`AdaptError` on bad input or a full quota, ``AccessDenied`` (before
    any work) for a role that may not.
    """
    identity = require(identity or command_line_identity(), "adapt")
    if install:
        require(identity, "install_model")
        check_quota()
    from bcclassify.lab.mid_level import (
        MID_LOGITS_LAYER,
        block_scales,
        block_sizes,
        mid_layers,
        source_mid_kernel,
        with_mid_head,
    )
    from bcclassify.serving.classifier import (
        NOVELTY_FILE,
        VIEW_TRANSFORMS,
        ModelIntegrityError,
        ModelNotFoundError,
        export_model,
        installed_model_names,
        load_model,
    )
    from bcclassify.serving.trust import (
        HEAD_LAYER,
        atomic_savez,
        fit_temperature,
    )
    from bcclassify.storage.store import sha256_file
    from bcclassify.training.runs import environment_info

    started = time.time()
    fit_views = tuple(VIEW_TRANSFORMS)  # all 8 symmetries: a cell has no orientation
    if config.augmented_views < 0:
        raise AdaptError("augmented_views must be 0 or more")
    if not NAME_PATTERN.fullmatch(config.name):
        raise AdaptError(
            f"--name {config.name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
        )
    if config.name in installed_model_names():
        raise AdaptError(f"a model named {config.name!r} is already installed; choose another")
    root = None if cells is not None else Path(config.cells)
    if cells is None:
        cells = scan_cells(root)
    taken, rest = choose_cells(cells, config.per_class, config.seed)
    try:
        source = load_model(config.source, fold_batch_norm=False)  # it is written back out
    except (ModelNotFoundError, ModelIntegrityError) as exc:
        raise AdaptError(str(exc)) from None
    names = list(source.class_names)
    labels = np.asarray([names.index(c) for _, c in taken])
    if config.mid_weight < 0:
        raise AdaptError("mid_weight must be 0 or more")
    blocks = mid_layers(source) if config.mid_weight > 0 else ()
    if not blocks and source_mid_kernel(source.model, None) is not None:
        raise AdaptError(
            f"{config.source!r} was adapted with mid-level blocks; adapt it with a mid_weight "
            "above 0 (or adapt its own source)"
        )

    clean_stale_staging()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    # A random suffix: two adaptations under one name in the same second are two runs.
    run_id = config.run_id or f"{stamp}-adapt-{config.name}-{secrets.token_hex(3)}"
    config.run_id = run_id
    run_dir = runs_dir() / run_id
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        raise AdaptError(f"run {run_id} exists already; choose another run id") from None
    os.chmod(run_dir, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    cells_sha256 = dict(_item_digest(item, root) for item, _ in taken)
    record = RunRecord(run_dir, mode=PRIVATE_FILE)
    record.write_config(
        {
            **asdict(config),
            "kind": "adaptation",
            "arch": source.architecture,
            "image_size": source.image_size,
            "center_crop": source.card.get("center_crop", 1.0),
            "source_card_sha256": sha256_file(source.folder / "card.json"),
            "class_counts": {c: len(v) for c, v in cells.items()},
            "taken_counts": {c: int(np.sum([n == c for _, n in taken])) for c in cells},
            "cells_sha256": cells_sha256,
            "command": " ".join(sys.argv),
        },
    )
    record.write_environment(environment_info())
    record.start(source.architecture, kind="adaptation", model=config.name)
    staging = staging_folder(run_id)
    try:

        def report(stage: str) -> Callable[[int, int], None] | None:
            return None if progress is None else (lambda d, t: progress(stage, d, t))

        forward = mid_forward(source, blocks)
        feats = view_features(
            source,
            [i for i, _ in taken],
            "lab cells",
            report("features of the taken cells"),
            views=fit_views,
            augmented=config.augmented_views,
            seed=config.seed,
            forward=forward,
        )
        head = source.model.get_layer(HEAD_LAYER)
        head_dim = int(head.input.shape[-1])
        w0, b0 = (np.asarray(a, dtype=np.float64) for a in head.get_weights())
        scales = np.ones(head_dim)
        w0_fit = w0
        sizes = block_sizes(source.model, blocks)
        if blocks:
            # Fitted on scaled blocks (one pull suits them all), served with the scales folded
            # into the read-out's kernel; the source's own read-out, if any, is the start.
            scales = block_scales(feats, head_dim, sizes, config.mid_weight)
            mid0 = source_mid_kernel(source.model, sum(sizes))
            mid0 = np.zeros((sum(sizes), w0.shape[1])) if mid0 is None else mid0
            w0_fit = np.concatenate([w0, mid0 / scales[head_dim:, None]])
        scaled = feats * scales
        on_served = served_views(source, scaled, fit_views)
        w, b = fit_head(scaled, labels, w0_fit, b0, config.pull)
        w = w * scales[:, None]  # on raw features, as the installed model computes
        oof = cross_fitted(scaled, labels, w0_fit, b0, config.pull, config.seed, on_served)
        temperature = fit_temperature(oof, labels) if len(np.unique(labels)) > 1 else 1.0
        if blocks:
            adapted_model = with_mid_head(source.model, blocks, w, b)
        else:
            head.set_weights([w.astype(np.float32), b.astype(np.float32)])
            adapted_model = source.model
        # Installed weights this size are stored in float16: score what will be served.
        w = np.concatenate(
            [installed_kernel(adapted_model, name) for name in (HEAD_LAYER, MID_LOGITS_LAYER)]
            if blocks
            else [installed_kernel(adapted_model, HEAD_LAYER)]
        )

        card = {
            k: v
            for k, v in source.card.items()
            if k
            not in (
                "files_sha256",
                "calibration",
                "novelty",
                "test_metrics",
                "single_view_test_metrics",
                "exported",
                "installed",
                # The source's figures on other sets and its learning curve describe the source.
                "evaluations",
                "adaptation_curve",
                # Chosen on the source's validation split at the source's temperature.
                FLOORS_KEY,
                COLOUR_CHECK_KEY,
                LOW_CONFIDENCE_KEY,
                # Weighed against the source's training mix; the adapted head trained on another.
                UNIDENTIFIED_PRIOR_KEY,
            )
        }
        # The source's global threshold was lowered to make room, within the flag budget, for
        # its floors, which an adapted model does not keep: it takes the one chosen without them.
        budgeted = source.card.get(LOW_CONFIDENCE_KEY) or {}
        if "before" in budgeted:
            card["low_confidence_threshold"] = float(budgeted["before"])
        card.update(
            name=config.name,
            description=f"{source.card.get('description', source.architecture)}; head adapted "
            f"to a lab from {len(taken)} labelled cells",
            source_model={
                "name": source.name,
                "card_sha256": sha256_file(source.folder / "card.json"),
                "test_metrics": source.card.get("test_metrics"),
            },
            adaptation_run=run_id,
            adaptation={
                "adapted": "classifier head (Dense 'predictions')"
                + (
                    f" and a new linear read-out ('{MID_LOGITS_LAYER}') of {len(blocks)} "
                    "globally pooled mid-level blocks"
                    if blocks
                    else ""
                )
                + "; trunk unchanged",
                "method": "softmax head fitted by cross-entropy on the 8 symmetries and "
                f"{config.augmented_views} standard-augmented views of each taken cell, plus "
                f"{config.pull} / 2 * ||W - W_source||^2, from the source head"
                + (
                    " (the read-out from the source's, zero when it has none); each block "
                    "scaled to "
                    f"{config.mid_weight} x the head features' mean norm on the taken cells "
                    "while fitting, the scales folded into the read-out"
                    if blocks
                    else ""
                ),
                "mid_layers": list(blocks),
                "mid_weight": config.mid_weight if blocks else 0.0,
                "mid_scales": [
                    float(scales[head_dim + start]) for start in np.cumsum([0, *sizes])[:-1]
                ],
                "augmented_views": config.augmented_views,
                "per_class": config.per_class,
                "seed": config.seed,
                "pull": config.pull,
                "taken_counts": {c: int(np.sum(labels == names.index(c))) for c in cells},
                "cells_sha256": cells_sha256,
                "not_taken": len(rest),
            },
            test_metrics={},
        )
        if source.acquisition is not None:
            # The lab's cells were taken with its own stain and camera: widen the range to hold
            # them, or every cell of the lab would stay unidentified.
            card["acquisition"] = source.acquisition.widened_to(
                acquisition_numbers(source, [i for i, _ in taken]),
                f"the {len(taken)} taken lab cells (adapt)",
            ).to_card()
        card["calibration"] = {
            "method": f"temperature on {CROSS_FIT_FOLDS}-fold cross-fitted probabilities of the "
            "taken cells (negative log-likelihood)",
            "temperature": float(temperature),
        }
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        card = export_model(adapted_model, staging, card)
        if source.novelty is not None:
            # The lab's cells join the bank of "training cells"; scales, outlier-exposure part and
            # threshold stay the source's. A larger bank can only lower k-NN distances, so the
            # source's validation cells keep at most the flagged share the threshold was set for.
            # All 8 symmetries of each taken cell go in: with only the image as given, a new
            # cell of the lab is rarely within k neighbours of it and stays "unidentified"
            # (docs/adapt-bank-study-ext-tecom.json: 82% of held-back cells over the threshold
            # with one view a cell, 10% with eight).
            symmetries = feats[: len(fit_views), :, :head_dim]  # NOVELTY_BANK
            detector = source.novelty.with_bank(symmetries.reshape(-1, symmetries.shape[-1]))
            staged = staging / f".{NOVELTY_FILE}"
            atomic_savez(staged, detector.to_arrays())
            digest = sha256_file(staged)
            file_name = f"{Path(NOVELTY_FILE).stem}-{digest[:12]}.npz"
            staged.replace(staging / file_name)
            source_section = source.card.get("novelty") or {}
            novelty = {
                "method": detector.method,
                "k": detector.k,
                "features": source_section.get("features"),
                "fitted_on": f"{source_section.get('fitted_on', 'the source training cells')}; "
                f"plus the 8 symmetries of the {len(taken)} taken lab cells in the k-NN bank",
                "threshold": detector.threshold,
                "threshold_rule": f"the source model's ({source_section.get('threshold_rule')})",
                "file": file_name,
            }
            files = dict(sorted({**card.files_sha256, file_name: digest}.items()))
            card = write_card(staging, card.updated(novelty=novelty, files_sha256=files))
        if install:
            staging.replace(models_dir() / config.name)
            record_install(models_dir() / config.name, identity)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        record.update(status="failed", error=f"{exc}")
        raise

    fit_seconds = round(time.time() - started, 1)
    figures = None
    if config.evaluate and rest:
        adapted_folder = models_dir() / config.name if install else staging
        try:
            figures = evaluate_rest(
                source,
                adapted_folder,
                rest,
                (w0_fit * scales[:, None], b0),  # as the source serves: raw features
                (w, b),
                report("held-back cells"),
                forward,
            )
        except BaseException as exc:
            if not install:  # nobody will install what could not be scored
                shutil.rmtree(staging, ignore_errors=True)
            record.update(status="failed", error=f"{exc}")
            raise
    seconds = round(time.time() - started, 1)
    metrics = {
        "kind": "adaptation",
        "taken": len(taken),
        "held_back": len(rest),
        "temperature": float(temperature),
        "cross_fitted_accuracy": float(np.mean(oof.argmax(axis=1) == labels)),
        "held_back_figures": figures,
        "fit_seconds": fit_seconds,
        "duration_s": seconds,
    }
    record.write_metrics(metrics)
    # "finished" with ``staging`` set: staged whole, awaiting install_staged or discard_staged.
    record.update(
        status="finished",
        finished=utc_now(),
        duration_s=seconds,
        model=config.name,
        staging=None if install else staging.name,
        installed=utc_now() if install else None,
    )
    return Adapted(config.name, card, run_dir, len(taken), len(rest), figures, seconds, fit_seconds)


def evaluate_rest(
    source,
    adapted_folder: Path,
    rest: list,
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    progress=None,
    forward=None,
) -> dict:
    """Before/after figures on the lab cells that were not taken (trust.trust_figures).

    The two models share the trunk, so one feature pass serves both: the source head
    (``before``, on the head's features) and the adapted head as installed (``after``, on them
    and the pooled blocks ``forward`` adds, if any) on the same features, each with its model's
    temperature, novelty detector and low-confidence threshold.
    """
    from bcclassify.serving.classifier import load_model_folder
    from bcclassify.serving.trust import temper, trust_figures

    adapted = load_model_folder(adapted_folder, ModelCard.read(adapted_folder).name)
    names = list(source.class_names)
    labels = np.asarray([names.index(c) for _, c in rest])
    from bcclassify.serving.trust import HEAD_LAYER

    feats = view_features(
        source, [i for i, _ in rest], "held-back cells", progress, forward=forward
    )
    on_views = served_views(source, feats)
    head_dim = int(source.model.get_layer(HEAD_LAYER).input.shape[-1])
    numbers = acquisition_numbers(source, [i for i, _ in rest])
    out: dict = {"num_cells": int(len(labels))}
    for key, model, (w, b) in (("before", source, before), ("after", adapted, after)):
        probs = temper(served(on_views, w, b), model.temperature)
        if model.novelty is not None:
            novelty = model.novelty.score(feats[0][:, :head_dim])
        else:
            novelty = np.full(len(labels), -np.inf)
        if model.acquisition is not None:  # as serving: outside the range is unidentified
            novelty = model.acquisition.gate(novelty, numbers)
        out[key] = trust_figures(
            labels, probs, novelty, model.unidentified_threshold, model.class_thresholds
        )
    return out


def staging_folder(run_id: str) -> Path:
    """Where adaptation run ``run_id`` stages its model (hidden: never taken for an installed
    model)."""
    if Path(run_id).name != run_id or run_id in ("", ".", ".."):
        raise AdaptError(f"{run_id!r} is not a run id")
    return models_dir() / f"{STAGING_PREFIX}{run_id}"


def install_staged(run_id: str, name: str, identity: Identity | None) -> Path:
    """Install the model that adaptation run ``run_id`` left staged (``adapt(..., install=False)``)
    as ``name``, as ``identity``.

    Refused (``AccessDenied``) unless the identity may install models, and (:class:`AdaptError`)
    past :data:`MAX_ADAPTED_MODELS`. Who, when and from which run is written into the card.

    Installed only when the run finished staging exactly that model: its run record says so, the
    staged card names the run and the name, and every file matches the card's checksums. So a
    session installs its own adaptation, never another one's under the same name nor a
    half-written one.
    """
    from bcclassify.serving.classifier import (
        ModelIntegrityError,
        installed_model_names,
        verify_model_folder,
    )

    require(identity, "install_model")
    staged = staging_folder(run_id)
    record = _same_mode(RunRecord.of(run_id))
    run = record.read()
    if not staged.is_dir():
        raise AdaptError(
            f"the adaptation {name!r} (run {run_id}) is no longer staged: it was discarded, or "
            "removed as abandoned; adapt again"
        )
    if run.get("status") != "finished" or run.get("model") != name or not run.get("staging"):
        raise AdaptError(
            f"run {run_id} has not finished staging {name!r} (status {run.get('status')!r}); "
            "nothing installed"
        )
    try:
        card = verify_model_folder(staged)
    except ModelIntegrityError as exc:
        raise AdaptError(f"the staged model is incomplete or damaged: {exc}") from None
    if card.get("adaptation_run") != run_id or card.get("name") != name:
        raise AdaptError(
            f"{staged / 'card.json'}: the staged card is not run {run_id}'s model {name!r}; "
            "nothing installed"
        )
    if name in installed_model_names():
        raise AdaptError(f"a model named {name!r} is already installed; choose another")
    check_quota()
    target = models_dir() / name
    try:
        staged.rename(target)  # fails, rather than merging, if the name appeared meanwhile
    except OSError as exc:
        raise AdaptError(f"{target}: not installed ({exc.strerror or exc})") from None
    record.update(staging=None, installed=utc_now())
    record_install(target, identity)
    return target


def record_install(folder: Path, identity: Identity) -> None:
    """Write who installed the model, when and from which run into its card (``installed``).

    Written through ``write_card``, which reseals the card (card.sha256); the card before the
    record is kept in the card history like any other change."""
    card = ModelCard.read(folder)
    if card is None:
        raise AdaptError(f"{folder / 'card.json'}: missing or unreadable; not installed")
    installed = {
        "by": identity.name,
        "key": identity.key,
        "role": str(identity.role),
        "at": utc_now(),
        "from_run": card.get("adaptation_run") or card.training_run,
    }
    write_card(folder, card.updated(installed=installed))


def adapted_models() -> list[str]:
    """Installed models made by ``adapt`` (their card names an adaptation run), by name."""
    return sorted(n for n, c in installed_cards().items() if c.get("adaptation_run"))


def check_quota() -> None:
    """Refuse another adapted model when :data:`MAX_ADAPTED_MODELS` are installed."""
    installed = adapted_models()
    if len(installed) >= MAX_ADAPTED_MODELS:
        raise AdaptError(
            f"{len(installed)} adapted models are installed, the most this server allows "
            f"({MAX_ADAPTED_MODELS}); uninstall one first (the Adapt page, or "
            "python -m bcclassify models uninstall NAME)"
        )


def uninstall_adapted(name: str, identity: Identity | None) -> Path:
    """Take the adapted model ``name`` out of service, as ``identity``; returns where it went.

    Only models made by ``adapt``, never the default model nor a model another card names as its
    second opinion. The folder is moved whole (one rename) under ``models/.uninstalled/``, with
    an ``uninstalled`` record in its card, so the step can be undone by moving it back."""
    from bcclassify.storage.store import default_model_name, models_dir

    require(identity, "uninstall_model")
    cards = installed_cards()
    card = cards.get(name)
    if card is None:
        raise AdaptError(f"no installed model named {name!r}")
    if name == default_model_name():
        raise AdaptError(f"{name!r} is the default model; it is never uninstalled here")
    if not card.get("adaptation_run"):
        raise AdaptError(
            f"{name!r} was not made by adapt; only adapted models are uninstalled here "
            f"(adapted: {', '.join(adapted_models()) or 'none'})"
        )
    users = [n for n, c in cards.items() if (c.get("second_opinion") or {}).get("model") == name]
    if users:
        raise AdaptError(f"{name!r} is the second opinion of {', '.join(users)}; not uninstalled")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = models_dir() / UNINSTALLED_DIR / f"{name}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    (models_dir() / name).replace(target)
    moved = ModelCard.read(target) or card
    record = {"by": identity.name, "key": identity.key, "at": utc_now()}  # type: ignore[union-attr]
    write_card(target, moved.updated(uninstalled=record))
    return target


def discard_staged(run_id: str) -> None:
    """Remove run ``run_id``'s staged model and record the run as discarded."""
    shutil.rmtree(staging_folder(run_id), ignore_errors=True)
    record = _same_mode(RunRecord.of(run_id))
    run = record.read()
    if run and not run.get("installed") and run.get("status") in ("running", "finished"):
        record.update(status="discarded", staging=None, discarded=utc_now())


def clean_stale_staging(max_age_s: float = STALE_STAGING_S) -> list[str]:
    """Remove abandoned staged adaptations and mark their runs ``abandoned``; returns the run ids.

    A staging folder is kept while its run's process is alive and the folder is younger than
    ``max_age_s`` (an adaptation in progress, or staged and awaiting Install in a session).
    Otherwise nobody can install it any more: the folder (about 115 MB for the hybrid) goes.
    Adaptation runs still recorded as running whose process is gone are marked abandoned too.
    """
    cleaned: list[str] = []
    root = models_dir()
    staged = sorted(root.glob(f"{STAGING_PREFIX}*")) if root.is_dir() else []
    for folder in staged:
        run_id = folder.name[len(STAGING_PREFIX) :]
        record = _same_mode(RunRecord.of(run_id))
        run = record.read()
        try:
            age = time.time() - folder.stat().st_mtime
        except FileNotFoundError:
            continue  # installed or discarded meanwhile
        if run and run_is_alive(run) and age < max_age_s:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if run and not run.get("installed"):
            record.update(status="abandoned", staging=None, abandoned=utc_now())
        cleaned.append(run_id)
        log.info("removed abandoned staged adaptation %s", folder)
    # Left by older versions (one folder per name): no run to ask, so by age alone.
    for folder in sorted(root.glob(".*.adapting")) if root.is_dir() else []:
        if time.time() - folder.stat().st_mtime >= max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
    for folder in sorted(runs_dir().iterdir()) if runs_dir().is_dir() else []:
        record = _same_mode(RunRecord(folder))
        run = record.read()
        running = run.get("kind") == "adaptation" and run.get("status") == "running"
        if running and not run_is_alive(run):
            record.update(status="abandoned", abandoned=utc_now())
            cleaned.append(folder.name)
    return cleaned


def _same_mode(record: RunRecord) -> RunRecord:
    """The record, writing files as private as its folder (an adaptation's stays 0600)."""
    try:
        private = record.folder.stat().st_mode & 0o077 == 0
    except FileNotFoundError:
        return record
    return RunRecord(record.folder, mode=PRIVATE_FILE if private else 0o644)


# ----------------------------------------------------------------------------- uploads

MAX_ZIP_BYTES = 50 * 1024 * 1024  # as server.maxUploadSize; also the uncompressed total
MAX_ZIP_FILES = 2000  # entries of any kind: hidden, __MACOSX and folders count too
_LISTED = 10  # problems named in one message; the rest are counted


def _skipped(parts: list[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _listed(problems: list[str]) -> str:
    more = len(problems) - _LISTED
    return "\n".join(problems[:_LISTED] + ([f"... and {more} more"] if more > 0 else []))


def read_zip_cells(
    data: bytes, max_bytes: int = MAX_ZIP_BYTES, max_pixels: int | None = None
) -> dict[str, list[tuple]]:
    """Class folders of a zip, in memory: class -> [("class/file", bytes)], sorted.

    Entries are ``class/file`` or ``top/class/file`` (a zipped folder); hidden entries and
    ``__MACOSX`` are skipped (but count toward ``MAX_ZIP_FILES``, like folders). The zip's
    directory is parsed once and each member read once. Refused with an :class:`AdaptError`:
    more than ``MAX_ZIP_FILES`` entries or more than ``max_bytes`` (compressed or
    uncompressed), a file outside a class folder or in an unknown one, a name given twice, and
    members that cannot be used: damaged (bad CRC), encrypted, compressed with a method this
    Python cannot read, or over ``max_pixels`` (the app's per-upload cap, default from
    $BCCLASSIFY_MAX_UPLOAD_PIXELS) from the image header alone; every such member is named in
    one message. Nothing is written to disk.
    """
    import io
    import zipfile
    import zlib

    from bcclassify.data.imaging import ImageLoadError
    from bcclassify.serving.uploads import UploadLimits, check_pixel_cap

    if max_pixels is None:
        max_pixels = UploadLimits.from_env().max_pixels
    if len(data) > max_bytes:
        raise AdaptError(f"the zip is larger than {max_bytes // 2**20} MB")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise AdaptError(f"not a readable zip file ({exc})") from None
    entries = archive.infolist()
    if len(entries) > MAX_ZIP_FILES:
        raise AdaptError(
            f"the zip holds {len(entries)} entries, more than {MAX_ZIP_FILES} (hidden files, "
            "__MACOSX and folders count too)"
        )
    kept = [
        (entry, parts)
        for entry in entries
        if not entry.is_dir() and not _skipped(parts := [p for p in entry.filename.split("/") if p])
    ]
    if sum(entry.file_size for entry, _ in kept) > max_bytes:
        raise AdaptError(f"the zip unpacks to more than {max_bytes // 2**20} MB")
    tops = {parts[0] for _, parts in kept}
    # A zipped folder adds one level (lab/neutrophil/x.png): drop it when it is the only one.
    strip = len(tops) == 1 and next(iter(tops)) not in CLASS_NAMES
    named = []
    for entry, parts in kept:
        path = parts[1:] if strip else parts
        if len(path) != 2:
            raise AdaptError(
                f"{entry.filename}: not in a class folder; the zip holds folders named after "
                f"classes ({', '.join(CLASS_NAMES)}) with the cells inside"
            )
        if path[0] not in CLASS_NAMES:
            raise AdaptError(
                f"{entry.filename}: unknown class folder {path[0]!r}; class folders are named "
                + ", ".join(CLASS_NAMES)
            )
        named.append((entry, "/".join(path)))
    counts = Counter(name for _, name in named)
    twice = sorted(name for name, n in counts.items() if n > 1)
    if twice:
        raise AdaptError(
            f"the zip holds {len(twice)} name(s) more than once, each cell must have its own "
            f"name:\n{_listed(twice)}"
        )
    cells: dict[str, list[tuple]] = {}
    problems = []
    for entry, name in named:
        try:
            member = archive.read(entry)
            check_pixel_cap(name, member, max_pixels)
        except NotImplementedError:  # before RuntimeError, its base class
            problems.append(
                f"{entry.filename}: compressed with a method this server cannot read (method "
                f"{entry.compress_type}); zip it with the usual method (deflate)"
            )
        except RuntimeError:  # zipfile's word for a member that needs a password
            problems.append(f"{entry.filename}: encrypted; zip the cells without a password")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            problems.append(f"{entry.filename}: damaged in the zip ({exc})")
        except ImageLoadError as exc:
            problems.append(f"{entry.filename}: {exc.reason}")
        else:
            cells.setdefault(name.split("/")[0], []).append((name, member))
    if problems:
        raise AdaptError(f"{len(problems)} file(s) in the zip cannot be used:\n{_listed(problems)}")
    if not any(cells.values()):
        raise AdaptError("the zip holds no cells (expected class folders of images)")
    return {c: sorted(v) for c, v in sorted(cells.items())}


def keep_cells(cells: list[tuple], folder: Path) -> int:
    """Write (name, bytes) cells under ``folder`` (opt-in in the app); returns how many.

    Private as the kept cells: folders 0700, files 0600 (they are a lab's patients' cells)."""
    from bcclassify.lab.kept import write_private_bytes
    from bcclassify.review.reviews import make_private_dir

    make_private_dir(folder.parent)  # lab-cells/ itself: mkdir's parents take the umask
    for name, data in cells:
        target = folder / name
        if not target.resolve().is_relative_to(folder.resolve()):
            raise AdaptError(f"{name}: not a plain relative name")
        for parent in reversed(target.relative_to(folder).parents):
            make_private_dir(folder / parent)  # lab-cells/, lab-cells/NAME/, NAME/<class>/
        write_private_bytes(target, data)
    return len(cells)
