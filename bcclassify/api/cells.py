"""Uploaded cells through the app's bounds and the served model, answered as ``predict`` answers.

No web framework here: uploads come in as ``(name, size, read)`` and leave as the JSON rows of
``predict --format json`` (``serving.classifier.prediction_json``), each with the HTTP status of its
outcome (200, or 413/415/422 for a refusal) and the image's sha256. Each upload is held to the
app's caps (``serving.uploads``: bytes, then pixels from the header) before it is decoded, by the
one loader, into a bounded working copy; one refused file never stops the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bcclassify.data.imaging import (
    ACCEPTED,
    REFUSED_TOO_LARGE,
    REFUSED_UNSUPPORTED,
    DecoderBusyError,
    ImageLoadError,
)
from bcclassify.serving.classifier import Prediction, prediction_json
from bcclassify.serving.uploads import UploadLimits, check_byte_cap, working_copy
from bcclassify.storage.store import sha256_bytes

__all__ = ["BATCH", "STATUS", "Upload", "classify_cells", "refusal_status"]

BATCH = 16  # working copies held at once: memory is bounded by a batch, not by the request
# Refusal kind -> HTTP status: too large, not a supported image, an image that cannot be used.
STATUS = {REFUSED_TOO_LARGE: 413, REFUSED_UNSUPPORTED: 415}
_model_lock = threading.Lock()  # one batch through the model at a time: bounded memory and cores


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name, its size in bytes as received, and how to read it."""

    name: str
    size: int
    read: Callable[[], bytes]


def refusal_status(exc: ImageLoadError) -> int:
    return STATUS.get(getattr(exc, "kind", ""), 422)


def _refused(exc: ImageLoadError, classifier) -> dict:
    pred = Prediction(
        exc.name, error=str(exc), threshold=classifier.threshold, class_names=classifier.class_names
    )
    row = prediction_json(pred, classifier.class_names)
    row.update(status=refusal_status(exc), accepted=ACCEPTED, image_sha256=None)
    return row


def classify_cells(classifier, uploads: Sequence[Upload], limits: UploadLimits) -> list[dict]:
    """One JSON row per upload, in order, as ``predict --format json`` writes it, plus
    ``status`` and ``image_sha256`` (and ``accepted`` for a refusal)."""
    rows: list[dict] = []
    for start in range(0, len(uploads), BATCH):
        pending: list[tuple[int, object, str]] = []
        for upload in uploads[start : start + BATCH]:
            try:
                check_byte_cap(upload.name, upload.size, limits.max_bytes)  # before reading
                data = upload.read()
                copy = working_copy(upload.name, data, limits)
            except DecoderBusyError:
                raise  # the server is busy, not the file wrong: the whole request gets 503
            except ImageLoadError as exc:
                rows.append(_refused(exc, classifier))
                continue
            pending.append((len(rows), copy, sha256_bytes(data)))
            rows.append({})
        with _model_lock:
            predictions = classifier.classify(
                [(copy.name, copy.source) for _, copy, _ in pending], batch_size=BATCH
            )
        for (index, _, digest), pred in zip(pending, predictions):
            row = prediction_json(pred, classifier.class_names)
            row.update(status=200 if pred.ok else 422, image_sha256=digest)
            rows[index] = row
    return rows
