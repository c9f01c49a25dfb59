"""Bounded handling of images uploaded to the app: pixel and file caps, one working copy each.

A small file can hold a huge image (a 120 kB PNG of 36 megapixels), so uploads are held to a pixel
cap read from the header before any decoding, each image is decoded once (by the one loader,
``imaging.load_image``) into a working copy no larger than ``WORKING_PX`` on its long side, and the
full-size pixels are dropped. The classifier, the Grad-CAM maps and the display all use the working
copy; an image already within ``WORKING_PX`` (every PBC crop) is classified from its own bytes, so
the app answers exactly as ``predict`` does. Per-session caches are LRUs of a fixed size.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from bcclassify.data.imaging import (
    REFUSED_TOO_LARGE,
    RESAMPLE,
    DecoderBusyError,
    ImageLoadError,
    load_bounded,
)
from bcclassify.serving.classifier import Prediction

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_FILE_MB",
    "DEFAULT_MAX_PIXELS",
    "LRU",
    "MAX_FILES_ENV",
    "MAX_FILE_MB_ENV",
    "MAX_PIXELS_ENV",
    "THUMB_PX",
    "UploadLimits",
    "WORKING_PX",
    "WorkingCopy",
    "admit_uploads",
    "check_byte_cap",
    "check_pixel_cap",
    "classify_uploads",
    "explain_copy",
    "thumbnail",
    "working_copy",
]

MAX_PIXELS_ENV = "BCCLASSIFY_MAX_UPLOAD_PIXELS"
MAX_FILES_ENV = "BCCLASSIFY_MAX_FILES"
MAX_FILE_MB_ENV = "BCCLASSIFY_MAX_FILE_MB"
DEFAULT_MAX_PIXELS = 25_000_000  # well under the loader's 90 MP; a whole smear field is ~5-20 MP
DEFAULT_MAX_FILES = 200
DEFAULT_MAX_FILE_MB = 5  # a PBC crop is ~20 kB, a whole field of view as JPEG a few MB
WORKING_PX = 1024  # long side of the working copy: 3 MB of RGB at most
THUMB_PX = 96


@dataclass(frozen=True)
class UploadLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = DEFAULT_MAX_FILES
    working_px: int = WORKING_PX
    max_file_mb: int = DEFAULT_MAX_FILE_MB  # per image file; the uploader's max_upload_size too

    @property
    def max_bytes(self) -> int:
        """The per-image cap in bytes (the app's uploaders and the HTTP API alike)."""
        return self.max_file_mb * 2**20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UploadLimits:
        """Caps from $BCCLASSIFY_MAX_UPLOAD_PIXELS, $BCCLASSIFY_MAX_FILES and
        $BCCLASSIFY_MAX_FILE_MB (positive integers; anything else leaves the default)."""
        env = os.environ if environ is None else environ

        def number(key: str, default: int) -> int:
            try:
                value = int(env.get(key, "") or default)
            except ValueError:
                return default
            return value if value > 0 else default

        return cls(
            max_pixels=number(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS),
            max_files=number(MAX_FILES_ENV, DEFAULT_MAX_FILES),
            max_file_mb=number(MAX_FILE_MB_ENV, DEFAULT_MAX_FILE_MB),
        )


@dataclass(frozen=True)
class WorkingCopy:
    """One decoded upload, bounded in size: what the page shows, explains and classifies."""

    name: str
    pixels: np.ndarray = field(repr=False)  # (H, W, 3) uint8, long side <= working_px
    source: bytes = field(repr=False)  # the upload itself, or a lossless PNG of ``pixels``
    original_size: tuple[int, int]  # (width, height) as uploaded

    @property
    def downscaled(self) -> bool:
        return self.pixels.shape[1::-1] != self.original_size


def check_byte_cap(name: str, size: int, max_bytes: int) -> None:
    """Refuse a file over ``max_bytes`` before it is read any further."""
    if size > max_bytes:
        raise ImageLoadError(name, _too_large(size, max_bytes), REFUSED_TOO_LARGE)


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"{size / 2**20:.1f} MB is over this app's limit of {max_bytes / 2**20:g} MB per image "
        f"(set by {MAX_FILE_MB_ENV}); crop the cell first"
    )


def admit_uploads(
    files: Sequence, limits: UploadLimits, room: int | None = None
) -> tuple[list, list, list[tuple[str, str]]]:
    """Which uploaded files to read, decided from their names and sizes alone (nothing read).

    ``files`` have ``name`` and ``size`` (bytes), like Streamlit's UploadedFile; ``room`` is how
    many more images the batch takes (default ``limits.max_files``). Returns (admitted, beyond
    the count cap, refused as (name, reason)): files over ``limits.max_file_mb`` are refused by
    name, the first ``room`` of the rest admitted in order, and the others left unread. The
    browser holds uploads to the same size (the uploader's ``max_upload_size``), but a client
    can skip that check, so it is made here again.
    """
    room = limits.max_files if room is None else max(0, room)
    cap = limits.max_file_mb * 2**20
    refused = [(f.name, _too_large(f.size, cap)) for f in files if f.size > cap]
    fitting = [f for f in files if f.size <= cap]
    return fitting[:room], fitting[room:], refused


def check_pixel_cap(name: str, data: bytes, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` from its header alone (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - not an image at all: load_image names the reason
        return
    if width * height > max_pixels:
        raise ImageLoadError(
            name,
            f"{width}x{height} px is over this app's limit of {max_pixels / 1e6:g} million "
            f"pixels (set by {MAX_PIXELS_ENV}); crop the cell first",
            REFUSED_TOO_LARGE,
        )


def working_copy(name: str, data: bytes, limits: UploadLimits) -> WorkingCopy:
    """Decode ``data`` once and keep a copy at most ``limits.working_px`` on its long side.

    The image is shrunk before it becomes an array (``imaging.load_bounded``), so an upload at
    the pixel cap costs a couple of full-size 8-bit Pillow images at most, whatever its bit
    depth; the pixels are those of ``load_image`` resized with Lanczos, as before.
    """
    check_pixel_cap(name, data, limits.max_pixels)
    pixels, (width, height) = load_bounded(data, limits.working_px, name=name)
    if pixels.shape[1::-1] == (width, height):
        return WorkingCopy(name, pixels, data, (width, height))
    buffer = io.BytesIO()
    # Lossless: the classifier sees exactly these pixels.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return WorkingCopy(name, pixels, buffer.getvalue(), (width, height))


def thumbnail(pixels: np.ndarray, px: int = THUMB_PX) -> np.ndarray:
    """A copy that fits in ``px`` x ``px``, aspect kept."""
    image = Image.fromarray(pixels)
    image.thumbnail((px, px), RESAMPLE)
    return np.asarray(image)


class LRU:
    """A dict-like cache that keeps only the ``max_entries`` most recently used entries."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, int(max_entries))
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, default=None):
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def __getitem__(self, key: Hashable):
        if key not in self._items:
            raise KeyError(key)
        return self.get(key)

    def __setitem__(self, key: Hashable, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def values(self) -> list:
        return list(self._items.values())


def classify_uploads(
    classifier,
    uploads: Sequence,
    limits: UploadLimits,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    keep: LRU | None = None,
) -> list[tuple[Prediction, np.ndarray | None]]:
    """Classify uploads (objects with ``name``, ``data``, ``sha256``) from their working copies.

    Returns ``(prediction, thumbnail)`` per upload, in order; a refused upload gets an error
    prediction and no thumbnail. Working copies go into ``keep`` (keyed by sha256) and are
    otherwise dropped once their batch is done, so memory is bounded by a batch, not by the
    number of uploads. ``DecoderBusyError`` (every decode slot taken for too long) is raised,
    not turned into rows: it says nothing about the files.
    """
    out: list[tuple[Prediction, np.ndarray | None]] = []
    for start in range(0, len(uploads), batch_size):
        chunk = uploads[start : start + batch_size]
        copies: list[WorkingCopy | ImageLoadError] = []
        for item in chunk:
            try:
                copy = working_copy(item.name, item.data, limits)
            except DecoderBusyError:
                raise  # the server is busy, not the file bad: nothing is cached, retry later
            except ImageLoadError as exc:
                copies.append(exc)
                continue
            copies.append(copy)
            if keep is not None:
                keep[item.sha256] = copy
        decoded = [c for c in copies if isinstance(c, WorkingCopy)]
        predictions = iter(
            classifier.classify([(c.name, c.source) for c in decoded], batch_size=batch_size)
        )
        for copy in copies:
            if isinstance(copy, WorkingCopy):
                out.append((next(predictions), thumbnail(copy.pixels)))
            else:
                refused = Prediction(
                    copy.name,
                    error=str(copy),
                    threshold=classifier.threshold,
                    class_names=classifier.class_names,
                )
                out.append((refused, None))
        if progress is not None:
            progress(start + len(chunk))
    return out


def explain_copy(
    classifier, explainer, copy: WorkingCopy, method: str, target: str | None, probabilities
):
    """Grad-CAM maps for a working copy, at the working copy's size (never the original's)."""
    return explainer.explain_pixels(
        classifier.load(copy.source, name=copy.name),
        method=method,
        target=target,
        output_size=copy.pixels.shape[:2],
        probabilities=probabilities,
    )
