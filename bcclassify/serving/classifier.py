"""Installed models: export with a card, load with checksum verification, classify in batches.

An installed model lives in ``model_store/models/<name>/``:
- ``model.json``: the Keras architecture (preprocessing layers included; no custom code);
- ``weights-NNN.npz``: the weights, float32 arrays over 4096 values stored as float16 so the
  hybrid fits the 95 MB per-file limit; they load back as float32. Shards stay under 90 MB;
- ``card.json``: what it is, how it was trained, how it scored, and the sha256 of every file.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bcclassify import CLASS_NAMES
from bcclassify.data.imaging import DecoderBusyError, ImageLoadError, ImageSource, load_image
from bcclassify.serving.acquisition import AcquisitionRange, summaries
from bcclassify.serving.blood_prior import UnidentifiedPrior
from bcclassify.serving.colour_check import ColourCheck, colour_disputed_mask
from bcclassify.serving.compiled import CompiledForward, load_compiled
from bcclassify.serving.floors import floors_from_card, thresholds_by_class
from bcclassify.serving.folding import fold_batch_norm as fold_batch_norm_layers
from bcclassify.serving.quiet_tensorflow import import_tensorflow_quietly
from bcclassify.serving.second_opinion import CARD_KEY as SECOND_OPINION_KEY
from bcclassify.serving.second_opinion import SecondOpinion, SecondOpinionConfig, mixed_in
from bcclassify.storage.cards import (
    CardError,
    ModelCard,
    card_seal_problem,
    load_card,
    write_card,
)
from bcclassify.storage.store import default_model_name, models_dir, sha256_file

__all__ = [
    "ClassifierModel",
    "DEFAULT_THRESHOLD",
    "HALF_PRECISION_MIN_SIZE",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "NOVELTY_FILE",
    "Prediction",
    "REINSTALL",
    "SHARD_BYTES",
    "SINGLE_VIEW",
    "VIEW_TRANSFORMS",
    "WEIGHT_FILES",
    "as_stored",
    "check_views",
    "export_model",
    "installed_model_names",
    "iter_sources",
    "listed_files",
    "load_model",
    "load_model_folder",
    "predict_with_views",
    "prediction_json",
    "read_card",
    "resolve_model_name",
    "verify_files",
    "verify_model_files",
    "verify_model_folder",
    "zero_initialisers",
]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.60  # below this top probability a cell is flagged low_confidence
NOVELTY_FILE = "novelty.npz"  # the novelty detector and its threshold (bcclassify.serving.trust)
SHARD_BYTES = 80 * 1024 * 1024
HALF_PRECISION_MIN_SIZE = 4096

# The symmetries of the square, on (N, H, W, C) batches. A cell has no up, down, left or right,
# and training augments with all eight; a model card may name some of them as test-time views,
# whose class probabilities are averaged (``test_time_views``; default: the image as given).
VIEW_TRANSFORMS = {
    "identity": lambda b: b,
    "flip_lr": lambda b: b[:, :, ::-1],
    "flip_ud": lambda b: b[:, ::-1],
    "rot180": lambda b: b[:, ::-1, ::-1],
    "transpose": lambda b: b.transpose(0, 2, 1, 3),
    "rot90": lambda b: b.transpose(0, 2, 1, 3)[:, ::-1],
    "rot270": lambda b: b.transpose(0, 2, 1, 3)[:, :, ::-1],
    "anti_transpose": lambda b: b.transpose(0, 2, 1, 3)[:, ::-1, ::-1],
}
SINGLE_VIEW = ("identity",)


def check_views(views: Iterable[str] | None) -> tuple[str, ...]:
    """Validated test-time view names (None or empty: the image as given)."""
    chosen = tuple(views or SINGLE_VIEW)
    unknown = [v for v in chosen if v not in VIEW_TRANSFORMS]
    if unknown:
        raise ValueError(
            f"unknown test-time view(s) {', '.join(unknown)}; choose from "
            + ", ".join(VIEW_TRANSFORMS)
        )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"test-time views repeat: {', '.join(chosen)}")
    return chosen


def predict_with_views(forward, pixels: np.ndarray, views: Sequence[str]) -> np.ndarray:
    """Mean class probabilities of ``forward`` over the given views of each image."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if tuple(views) == SINGLE_VIEW:
        return np.asarray(forward(pixels), dtype=np.float64)
    stacked = np.concatenate([VIEW_TRANSFORMS[v](pixels) for v in views])
    probs = np.asarray(forward(stacked), dtype=np.float64)
    return probs.reshape(len(views), len(pixels), -1).mean(axis=0)


class ModelNotFoundError(LookupError):
    pass


class ModelIntegrityError(RuntimeError):
    pass


def as_stored(array: np.ndarray) -> np.ndarray:
    """A weight array as export_model stores it: float16 when float32 and this large."""
    large = array.dtype == np.float32 and array.size >= HALF_PRECISION_MIN_SIZE
    return array.astype(np.float16) if large else array


def export_model(model, folder: Path, card: Mapping) -> ModelCard:
    """Write ``model`` to ``folder`` in the installed format; returns the completed card."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("weights-*.npz"):
        stale.unlink()
    (folder / "model.json").write_text(model.to_json())
    arrays = model.get_weights()
    stored = [as_stored(a) for a in arrays]
    shards: list[list[int]] = [[]]
    size = 0
    for i, array in enumerate(stored):
        if size + array.nbytes > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += array.nbytes
    files = {}
    for n, members in enumerate(shards):
        path = folder / f"weights-{n:03d}.npz"
        np.savez(path, **{f"w{i:05d}": stored[i] for i in members})
        files[path.name] = None
    files["model.json"] = None
    card = {
        **card,
        "format": "model.json (Keras config) + weights-*.npz (float16 for large arrays)",
        "num_weight_arrays": len(arrays),
        "parameters": int(model.count_params()),
        "size_mb": round(sum((folder / f).stat().st_size for f in files) / 1e6, 1),
        "files_sha256": {name: sha256_file(folder / name) for name in sorted(files)},
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return write_card(folder, card)


WEIGHT_FILES = "weights-*.npz"
REINSTALL = "reinstall the model with `python -m bcclassify promote RUN_ID --name NAME`"
RESEAL = (
    REINSTALL + ", or rerun the tool that last wrote the card (calibrate, faithfulness, adapt); "
    "an administrator who has checked the card may run `python -m bcclassify seal NAME`"
)


def read_card(folder: Path) -> ModelCard:
    """``folder/card.json``, or :class:`ModelIntegrityError` saying why it is unusable."""
    try:
        return load_card(folder)
    except CardError as exc:
        raise ModelIntegrityError(f"{exc}; {REINSTALL}") from None


def listed_files(folder: Path, card: Mapping, sealed: bool = True) -> dict[str, str]:
    """The card's ``files_sha256``, checked to describe this folder completely.

    The card is the only list of what makes up the model: a card without checksums, a name that
    is not a plain file name, a missing ``model.json`` or weight file, or a ``weights-*.npz`` in
    the folder that the card does not list (an extra shard would silently change the weights)
    is refused with :class:`ModelIntegrityError`; so is (unless ``sealed`` is False: only for
    ``seal``) a card that does not match its own checksum, ``card.sha256``.
    """
    card_path = folder / "card.json"
    files = card.get("files_sha256")
    if not isinstance(files, dict) or not files:
        raise ModelIntegrityError(
            f"{card_path}: no files_sha256 checksums, so the model files cannot be verified; "
            + REINSTALL
        )
    for name, digest in files.items():
        if Path(name).name != name or name in ("", ".", "..") or not isinstance(digest, str):
            raise ModelIntegrityError(
                f"{card_path}: files_sha256 entry {name!r} is not a plain file name with a "
                f"checksum; {REINSTALL}"
            )
    if "model.json" not in files or not any(Path(n).match(WEIGHT_FILES) for n in files):
        raise ModelIntegrityError(
            f"{card_path}: files_sha256 must list model.json and the weights-*.npz files; "
            + REINSTALL
        )
    unlisted = sorted(p.name for p in folder.glob(WEIGHT_FILES) if p.name not in files)
    if unlisted:
        raise ModelIntegrityError(
            f"{folder / unlisted[0]}: weight file not listed in {card_path} "
            f"({len(unlisted)} unlisted); remove it or {REINSTALL}"
        )
    problem = card_seal_problem(folder) if sealed else None  # cheap: checked on every load
    if problem is not None:
        raise ModelIntegrityError(f"{card_path}: {problem}; {RESEAL}")
    return files


def _verify(folder: Path, card: Mapping) -> None:
    """Every file the card lists exists and matches its sha256 (see :func:`listed_files`)."""
    verify_files(folder, listed_files(folder, card))


def verify_files(folder: Path, files: dict[str, str]) -> None:
    """Each of ``files`` (name -> sha256) is in ``folder`` with that sha256."""
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ModelIntegrityError(f"{path}: missing (listed in {folder / 'card.json'})")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelIntegrityError(
                f"{path}: sha256 {actual[:12]}… does not match the card's {expected[:12]}…; "
                "the file is damaged or was replaced - reinstall the model with `promote`"
            )


def verify_model_folder(folder: Path) -> ModelCard:
    """Check every file of the model in ``folder`` (installed or staged) against its card;
    returns the card, or raises :class:`ModelIntegrityError`."""
    card = read_card(folder)
    _verify(folder, card)
    return card


def verify_model_files(name: str | None = None) -> ModelCard:
    """Check every file of an installed model against its card; returns the card."""
    folder = models_dir() / resolve_model_name(name)
    card = read_card(folder)
    _verify(folder, card)
    return card


def installed_model_names() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if (p / "card.json").is_file() and not p.name.startswith(".")  # skip promote's staging
    )


def resolve_model_name(name: str | None) -> str:
    names = installed_model_names()
    chosen = name or default_model_name() or (names[0] if names else None)
    if chosen is None:
        raise ModelNotFoundError(
            f"no model installed under {models_dir()}; train one and run "
            "`python -m bcclassify promote RUN_ID --name NAME --default`"
        )
    if chosen not in names:
        raise ModelNotFoundError(
            f"unknown model {chosen!r}; installed: {', '.join(names) or 'none'}"
        )
    return chosen


@dataclass
class Prediction:
    """One file's outcome: probabilities in class order, or an error message."""

    path: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    class_names: tuple[str, ...] = CLASS_NAMES
    # How unlike the training cells the image is, and where "unidentified" starts (the card's).
    novelty: float | None = None
    novelty_threshold: float = float("inf")
    # The second model's probability of this answer, and the floor under which it disputes it
    # (the card's second_opinion; second_opinion.py). None: no second opinion was asked.
    second_support: float | None = None
    min_support: float = 0.0
    # The colour check (colour_check.py): the greyscale view's probability of the rival class
    # and where it disputes the answer. None: this answer was not checked.
    colour_rival: float | None = None
    colour_check: ColourCheck | None = None
    # Unidentified, and its probabilities the guess for another lab's cell, not the model's
    # own (ClassifierModel.guess_unidentified).
    guessed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return None if self.probabilities is None else self.class_names[int(self.top_index)]

    @property
    def top_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else float(np.max(self.probabilities))

    @property
    def flag(self) -> str:
        if self.error:
            return "error"
        if self.unidentified:
            return "unidentified"
        if self.disputed:
            return "disputed"
        return "low_confidence" if self.confidence < self.threshold else ""

    @property
    def disputed(self) -> bool:
        """A second, independently trained model gives this answer little probability, or the
        same model shown the cell without its colour gives the check's rival class at least
        its ``min_rival`` (colour_check.py)."""
        return self.disputed_by_second_model or self.disputed_by_colour

    @property
    def disputed_by_second_model(self) -> bool:
        return self.second_support is not None and self.second_support < self.min_support

    @property
    def disputed_by_colour(self) -> bool:
        return (
            self.colour_rival is not None
            and self.colour_check is not None
            and self.colour_rival >= self.colour_check.min_rival
        )

    @property
    def taken_unlike_training(self) -> bool:
        """Unidentified by the acquisition range (background colour, brightness, darker share)
        rather than by the features: serving scores such an image +inf (acquisition.py)."""
        return self.novelty is not None and self.novelty == float("inf")

    @property
    def unidentified(self) -> bool:
        """Not like the cells the model was trained on: no class should be shown as its answer."""
        return self.novelty is not None and self.novelty > self.novelty_threshold


def prediction_json(pred: Prediction, names: Sequence[str]) -> dict:
    """One prediction as ``predict --format json`` writes it and the HTTP API answers it
    (probabilities None when refused)."""
    return {
        "path": pred.path,
        "label": pred.label,
        "confidence": pred.confidence,
        "flag": pred.flag,
        "error": pred.error,
        "probabilities": None
        if not pred.ok
        else {c: float(p) for c, p in zip(names, pred.probabilities)},
    }


@dataclass
class ClassifierModel:
    """An installed model, loaded once, ready to classify batches of images.

    The answers come from ``compiled`` (ONNX Runtime, :mod:`bcclassify.serving.compiled`) when
    the model has a compiled graph, else from the Keras model. The Keras model (``model``) is
    built when first asked for (Grad-CAM, ``adapt``) if it was not built at load.
    """

    name: str
    folder: Path
    card: ModelCard
    keras_model: object | None  # None until ``model`` first builds it (see build_keras)
    class_names: tuple[str, ...] = CLASS_NAMES
    _forward: object = field(default=None, repr=False)
    _feature_forward: object = field(default=None, repr=False)
    novelty: object = None  # trust.NoveltyDetector when the card has one (novelty.npz)
    acquisition: object = None  # acquisition.AcquisitionRange when the card has one
    second_opinion: SecondOpinion | None = None  # when the card names one (second_opinion.py)
    colour_check: ColourCheck | None = None  # when the card has one (colour_check.py)
    # Re-weights the guess for another lab's unidentified cell (blood_prior.py), if carded.
    unidentified_prior: UnidentifiedPrior | None = None
    # Stricter low-confidence thresholds by class name (floors.py); {} for none.
    class_floors: dict = field(default_factory=dict)
    compiled: CompiledForward | None = None
    build_keras: Callable[[], object] | None = field(default=None, repr=False)
    _keras_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self):
        """The Keras model, built on first use when the answers come from the compiled graph."""
        if self.keras_model is None:
            with self._keras_lock:  # the app's preload and a page may both ask at once
                if self.keras_model is None:
                    if self.build_keras is None:
                        raise RuntimeError(f"model {self.name!r} has no Keras model to build")
                    import tensorflow as tf  # lazy: only a Keras build gets here

                    # Eagerly, even when first asked for inside a tf.function's trace: built in
                    # the trace's graph, the weights' loading never ran and the model answered
                    # from its initial weights (a uniform 1/8 for the hybrid).
                    with tf.init_scope():
                        self.keras_model = self.build_keras()
        return self.keras_model

    def feature_forward(self):
        """The pixels -> (head features, probabilities) function, built once: the compiled
        graph when there is one, else the Keras model traced by TensorFlow."""
        if self._feature_forward is None:
            if self.compiled is not None:
                self._feature_forward = self.compiled
            else:
                # lazy: trust imports this module
                from bcclassify.serving.trust import feature_forward

                self._feature_forward = feature_forward(self.model)
        return self._feature_forward

    @property
    def image_size(self) -> int:
        return int(self.card.image_size)

    @property
    def threshold(self) -> float:
        """The card's low-confidence threshold (answers of a class with a floor use that)."""
        return float(self.card.get("low_confidence_threshold", DEFAULT_THRESHOLD))

    @property
    def class_thresholds(self) -> np.ndarray:
        """The low-confidence threshold of an answer of each class, in class order."""
        return thresholds_by_class(self.threshold, self.class_floors, self.class_names)

    @property
    def architecture(self) -> str:
        return self.card.get("architecture", "")

    @property
    def test_time_views(self) -> tuple[str, ...]:
        return check_views(self.card.get("test_time_views"))

    @property
    def temperature(self) -> float:
        """The calibration temperature of the card (1.0: probabilities served as computed)."""
        return float((self.card.get("calibration") or {}).get("temperature", 1.0))

    def predict_pixels(self, pixels: np.ndarray, views: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities for a uint8/float batch ``(N, S, S, 3)`` already at the input size.

        Averaged over the card's test-time views, or over ``views`` when given.
        """
        views = self.test_time_views if views is None else check_views(views)
        return self._calibrated(predict_with_views(self._probabilities_forward(), pixels, views))

    def _probabilities_forward(self):
        """pixels -> probabilities: the compiled graph's, else the Keras model traced once."""
        if self._forward is None:
            if self.compiled is not None:
                compiled = self.compiled
                self._forward = lambda x: compiled(x)[1]
            else:
                # lazy: TensorFlow takes seconds; predict refuses bad files first
                import tensorflow as tf

                traced = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
                self._forward = lambda x: traced(tf.convert_to_tensor(x))
        return self._forward

    def _calibrated(self, probs: np.ndarray) -> np.ndarray:
        from bcclassify.serving.trust import temper  # lazy: trust imports this module

        if self.temperature != 1.0:
            probs = temper(probs, self.temperature)
        return probs / probs.sum(axis=1, keepdims=True)  # exact sum to 1 after float32 softmax

    def assess_pixels(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities over the card's views and each image's novelty score (None
        without a novelty detector or acquisition range); one forward pass serves both.

        An image outside the card's acquisition range scores +inf: unidentified whatever its
        features (acquisition.py), and its probabilities are a guess (:meth:`guess_unidentified`).
        Compare scores with :attr:`unidentified_threshold`.
        """
        if self.novelty is None:
            probabilities, scores = self.predict_pixels(pixels), None
        else:
            # lazy: trust imports this module
            from bcclassify.serving.trust import features_and_probabilities

            features, _, served = features_and_probabilities(self, pixels)
            probabilities, scores = self._calibrated(served), self.novelty.score(features)
        if self.acquisition is not None:
            base = np.full(len(pixels), -np.inf) if scores is None else scores
            scores = self.acquisition.gate(base, summaries(pixels))
        if scores is not None:
            probabilities = self.guess_unidentified(
                pixels, probabilities, self.guess_strengths(scores)
            )
        return probabilities, scores

    def guessed(self, scores: np.ndarray | None) -> np.ndarray | None:
        """Which cells of these novelty scores get the guess (:meth:`guess_unidentified`): those
        outside the acquisition range and, if the card says so, those whose features score
        above every validation-split cell's (the whole guess above every test-split cell's too;
        blood_prior.py); unidentified cells only. None without scores."""
        strengths = self.guess_strengths(scores)
        return None if strengths is None else strengths > 0

    def guess_strengths(self, scores: np.ndarray | None) -> np.ndarray | None:
        """How much of the guess each cell of these novelty scores gets, 0 to 1 (:meth:`guessed`
        are those above 0): all of it outside the acquisition range; with the card's prior,
        what ``UnidentifiedPrior.strengths`` gives; unidentified cells only. None without
        scores."""
        if scores is None:
            return None
        if self.unidentified_prior is None:
            return np.isposinf(scores).astype(np.float64)
        unidentified = np.asarray(scores) > self.unidentified_threshold
        return self.unidentified_prior.strengths(scores) * unidentified

    def guess_unidentified(
        self, pixels: np.ndarray, probabilities: np.ndarray, strengths: np.ndarray
    ) -> np.ndarray:
        """The probabilities written for the cells with ``strengths`` above 0
        (:meth:`guess_strengths`: unidentified cells from another lab's smear, their label only
        a guess): mixed with the second opinion's probabilities where the card's prior gives
        it a share (blood_prior.py), then an answer the colour check disputes is taken from the
        greyscale view instead (colour_check.py), then re-weighted to the blood's class mix,
        each by its share of the guess. The other rows as they were.

        Only those: a cell outside the acquisition range, or further from the training cells
        than any validation or test cell, comes from another lab's smear, whose mix is the
        blood's. A cell merely unidentified by its features, taken like PBC's, is as often an
        unusual cell of PBC's own mix: re-weighting all of those made the held-out originals'
        ECE 0.98% -> 1.32%, and those above every validation cell's score 0.98% -> 1.03% (a
        right erythroblast at 0.91 written at 0.56); fading the guess in between the validation
        split's highest score and the test split's left it at 0.98%."""
        strengths = np.asarray(strengths, dtype=np.float64)
        rows = strengths > 0
        prior = self.unidentified_prior
        if prior is not None and prior.second_opinion_share and self.second_opinion is not None:
            picked = np.flatnonzero(rows)
            if len(picked):
                probabilities = np.array(probabilities, dtype=np.float64, copy=True)
                second = self.second_opinion.probabilities(pixels[picked])
                shares = prior.second_opinion_share * strengths[picked]
                probabilities[picked] = mixed_in(probabilities[picked], second, shares)
        if self.colour_check is not None and np.any(rows):
            probabilities = self.colour_check.regrey_guesses(self, pixels, probabilities, rows)
        if self.unidentified_prior is not None:
            probabilities = self.unidentified_prior.apply(probabilities, rows, strengths)
        return probabilities

    def second_support(self, pixels: np.ndarray, probabilities: np.ndarray) -> np.ndarray | None:
        """The second opinion's probability of each served class (None without one)."""
        if self.second_opinion is None:
            return None
        return self.second_opinion.support(pixels, np.argmax(probabilities, axis=1))

    def colour_rival(self, pixels: np.ndarray, probabilities: np.ndarray) -> np.ndarray | None:
        """The colour check's rival probability for each answer it checks, NaN for the others
        (None without a colour check)."""
        if self.colour_check is None:
            return None
        return self.colour_check.rival_probability(self, pixels, probabilities)

    def disputed(self, pixels: np.ndarray, probabilities: np.ndarray) -> np.ndarray | None:
        """Which served answers the second opinion or the colour check disputes (None without
        either); what ``Prediction.disputed`` says, for a batch."""
        support = self.second_support(pixels, probabilities)
        rival = self.colour_rival(pixels, probabilities)
        if support is None and rival is None:
            return None
        disputed = np.zeros(len(pixels), dtype=bool)
        if support is not None:
            disputed |= support < self.second_opinion.min_support
        if rival is not None:
            disputed |= colour_disputed_mask(rival, self.colour_check.min_rival)
        return disputed

    @property
    def unidentified_threshold(self) -> float:
        """The novelty score above which a cell is unidentified (the detector's, else 0)."""
        return float(self.novelty.threshold) if self.novelty is not None else 0.0

    def load(self, source: ImageSource, name: str | None = None) -> np.ndarray:
        return load_image(source, self.image_size, name=name)

    def classify_pixels(self, pixels: np.ndarray, names: Sequence[str]) -> list[Prediction]:
        """The served answer for a batch already loaded (:meth:`load`): calibrated
        probabilities, novelty, the second opinion's support and the colour check, one
        Prediction per image."""
        probs, novelty = self.assess_pixels(pixels)
        guessed = self.guessed(novelty)
        support = self.second_support(pixels, probs)
        rival = self.colour_rival(pixels, probs)
        thresholds = self.class_thresholds
        rows = []
        for n, (name, row) in enumerate(zip(names, probs)):
            threshold = float(thresholds[int(np.argmax(row))])
            prediction = Prediction(name, row, threshold=threshold, class_names=self.class_names)
            if novelty is not None:
                prediction.novelty = float(novelty[n])
                prediction.novelty_threshold = self.unidentified_threshold
                prediction.guessed = bool(guessed[n])
            if support is not None:
                prediction.second_support = float(support[n])
                prediction.min_support = self.second_opinion.min_support
            if rival is not None and not np.isnan(rival[n]):
                prediction.colour_rival = float(rival[n])
                prediction.colour_check = self.colour_check
            rows.append(prediction)
        return rows

    def classify(
        self,
        sources: Sequence[tuple[str, ImageSource]],
        batch_size: int = 32,
        progress=None,
    ) -> list[Prediction]:
        """Classify ``(name, source)`` pairs in batches; refused files become error rows."""
        results: list[Prediction] = []
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            pixels = np.stack([p for _, p in pending])
            rows = self.classify_pixels(pixels, [results[i].path for i, _ in pending])
            for (index, _), row in zip(pending, rows):
                results[index] = row
            pending.clear()

        for done, (label, source) in enumerate(sources, start=1):
            results.append(
                Prediction(label, threshold=self.threshold, class_names=self.class_names)
            )
            try:
                pending.append((len(results) - 1, self.load(source, name=label)))
            except DecoderBusyError:
                raise  # the server is busy, not the file bad: the caller retries the batch
            except ImageLoadError as exc:
                results[-1].error = str(exc)
            if len(pending) >= batch_size:
                flush()
            if progress is not None:
                progress(done)
        flush()
        return results


def load_model(
    name: str | None = None,
    verify: bool = True,
    fold_batch_norm: bool = True,
    compiled: bool = True,
) -> ClassifierModel:
    """Load an installed model (the default when ``name`` is None), checking every checksum.

    ``fold_batch_norm``: build the graph with each batch normalisation folded into its
    convolution (:mod:`bcclassify.serving.folding`), the same function with fewer layers to
    build at start-up. Code that writes the model back out (``adapt``) passes False, so that
    what it installs has the architecture that was trained.

    ``compiled``: answer from the compiled graph of these weights when the cache has one
    (:mod:`bcclassify.serving.compiled`); the Keras model, and the check of its weight files,
    then wait until something first needs them (Grad-CAM). Only with ``fold_batch_norm``.
    """
    chosen = resolve_model_name(name)
    return load_model_folder(models_dir() / chosen, chosen, verify, fold_batch_norm, compiled)


def load_model_folder(
    folder: Path,
    name: str,
    verify: bool = True,
    fold_batch_norm: bool = True,
    compiled: bool = True,
) -> ClassifierModel:
    """Load the exported model in ``folder`` (installed or being installed) as ``name``."""
    card = read_card(folder)
    files = listed_files(folder, card)  # always: only the card's files are ever loaded
    runtime = load_compiled(card) if compiled and fold_batch_norm else None
    weight_files = {n: d for n, d in files.items() if Path(n).match(WEIGHT_FILES)}
    if verify:  # the weights are checked when the Keras model is built
        verify_files(folder, {n: d for n, d in files.items() if n not in weight_files})
    build = functools.partial(
        _build_keras_model, folder, card, files, weight_files if verify else {}, fold_batch_norm
    )
    # The novelty file is read while Keras imports and builds (or the compiled graph opens).
    with ThreadPoolExecutor(max_workers=1) as pool:
        novelty = pool.submit(_load_novelty, folder, card, files)
        classifier = ClassifierModel(
            name,
            folder,
            card,
            None if runtime is not None else build(),
            tuple(card.get("class_names", CLASS_NAMES)),
            compiled=runtime,
            build_keras=build,
        )
        classifier.novelty = novelty.result()
    classifier.acquisition = AcquisitionRange.from_card(card.get("acquisition"))
    classifier.class_floors = floors_from_card(card)
    classifier.colour_check = ColourCheck.from_card(card)
    classifier.unidentified_prior = UnidentifiedPrior.from_card(card, classifier.class_names)
    second = SecondOpinionConfig.from_card(card.get(SECOND_OPINION_KEY))
    if second is not None and second.model != name:
        classifier.second_opinion = SecondOpinion(
            load_model(second.model, verify, fold_batch_norm, compiled), second.min_support
        )
    elif second is not None:  # a model as its own second opinion (tests): no second load
        classifier.second_opinion = SecondOpinion(classifier, second.min_support)
    return classifier


def _build_keras_model(
    folder: Path,
    card: ModelCard,
    files: dict[str, str],
    to_verify: dict[str, str],
    fold_batch_norm: bool,
    on_keras_import: Callable[[], None] | None = None,
):
    """The Keras model of the installed files, after checking ``to_verify``'s checksums.

    ``on_keras_import``: called once Keras is imported, before the model is built (the app
    patches Keras there)."""
    architecture = json.loads((folder / "model.json").read_text())
    # Serving never trains: compiling from the saved config would build the optimizer's
    # variables (Adam: two per weight), 1.5 s of a 2.5 s build, for nothing.
    architecture.pop("compile_config", None)
    # Only batch-normalisation layers go; any the card reads by name (Grad-CAM's) stay.
    keep = tuple(card.get("explain_layers", ())) if fold_batch_norm else None
    # Checking, reading (and folding) the arrays overlaps importing Keras: hashing and numpy
    # release the GIL, so on 2 cores this hides most of it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        graph = pool.submit(_read_graph, folder, files, architecture, keep, to_verify)
        import_tensorflow_quietly()
        import keras  # lazy: seconds to load, overlapping the weights read above

        if on_keras_import is not None:
            on_keras_import()

        config, weights = graph.result()
        model = keras.models.model_from_json(json.dumps(zero_initialisers(config)))
    if isinstance(weights, dict):  # by layer name: a rebuilt graph orders its weights anew
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(weights.pop(layer.name))
    else:
        model.set_weights(weights)
    return model


def _read_graph(
    folder: Path,
    files: dict[str, str],
    architecture: dict,
    keep: Sequence[str] | None,
    to_verify: dict[str, str],
) -> tuple[dict, list[np.ndarray] | dict[str, list[np.ndarray]]]:
    """The architecture and its weights, batch normalisation folded unless ``keep`` is None,
    after checking ``to_verify``'s checksums (ModelIntegrityError)."""
    verify_files(folder, to_verify)
    weights = _read_weights(folder, files)
    folded = None if keep is None else fold_batch_norm_layers(architecture, weights, keep)
    return folded if folded is not None else (architecture, weights)


def _read_weights(folder: Path, files: dict[str, str]) -> list[np.ndarray]:
    """The card's weight shards as float32 arrays, in ``model.weights`` order."""
    arrays: dict[str, np.ndarray] = {}
    for shard in sorted(folder / n for n in files if Path(n).match(WEIGHT_FILES)):
        with np.load(shard) as stored:
            arrays.update({key: stored[key] for key in stored.files})
    return [
        arrays[key].astype(np.float32) if arrays[key].dtype == np.float16 else arrays[key]
        for key in sorted(arrays)
    ]


def zero_initialisers(config):
    """The architecture with every initializer replaced by zeros.

    The stored weights overwrite every variable straight after the build, so drawing random
    initial values (glorot for each kernel) is wasted work: a third of the load time.
    """
    if isinstance(config, dict):
        return {
            key: (
                {"module": "keras.initializers", "class_name": "Zeros", "config": {}}
                if key.endswith("_initializer") and isinstance(value, dict)
                else zero_initialisers(value)
            )
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [zero_initialisers(value) for value in config]
    return config


def _load_novelty(folder: Path, card: Mapping, files: dict[str, str]):
    """The card's novelty detector (``unidentified`` flag), from a file the card checksums."""
    from bcclassify.serving.trust import NoveltyDetector  # lazy: trust imports this module

    section = card.get("novelty")
    if not section:
        return None
    file_name = section.get("file", NOVELTY_FILE)
    if file_name not in files:
        raise ModelIntegrityError(
            f"{folder / 'card.json'}: the novelty detector {file_name} is not in files_sha256; "
            + REINSTALL
        )
    with np.load(folder / file_name, allow_pickle=False) as stored:
        detector = NoveltyDetector.from_arrays(stored)
    detector.threshold = float(section["threshold"])  # the card is what a reader sees
    return detector


def iter_sources(paths: Iterable[Path]) -> list[tuple[str, ImageSource]]:
    return [(str(p), p) for p in paths]
