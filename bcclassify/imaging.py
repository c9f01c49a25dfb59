"""The one image-loading function of the project.

Predict, explain, evaluate, training and the app all go through :func:`load_image`, so a cell is
decoded, oriented, converted to RGB and resized the same way everywhere.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE_PX = 32
# Refused before decoding: a small file can declare enormous dimensions (a decompression bomb).
MAX_PIXELS = 90_000_000
ACCEPTED = (
    "accepted: raster images that Pillow decodes (JPEG, PNG, TIFF, BMP, GIF first frame, WebP), "
    f"at least {MIN_SIDE_PX} px on each side and at most {MAX_PIXELS // 1_000_000} million pixels"
)
# Lanczos matches how the 224 px training images were derived from the 360x363 originals.
RESAMPLE = Image.Resampling.LANCZOS
# How the training images (../shared/data/pbc224) were made from the originals.
TRAINING_COPY_PX = 224
TRAINING_COPY_JPEG_QUALITY = 90

ImageSource = str | Path | bytes | BinaryIO


def cropped_size(image_size: int, center_crop: float) -> int:
    """Side of the central square a model with ``center_crop`` sees of an ``image_size`` input."""
    return int(round(image_size * center_crop))


def input_label(image_size: int | None, center_crop: float | None = 1.0) -> str:
    """How tables show a model's input: ``128``, or ``171 (centre 128)`` for a cropping model."""
    if not image_size:
        return "-"
    if center_crop and center_crop < 1.0:
        return f"{image_size} (centre {cropped_size(image_size, center_crop)})"
    return str(image_size)


class ImageLoadError(ValueError):
    """An input that is not an acceptable cell image. The message names the file and the rule."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}; {ACCEPTED}")


def _read_bytes(source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return source.read()


def _sniff_non_raster(head: bytes) -> str | None:
    stripped = head.lstrip()
    if stripped.startswith(b"%PDF"):
        return "PDF documents are not images"
    lowered = stripped[:512].lower()
    if lowered.startswith(b"<?xml") or b"<svg" in lowered:
        return "SVG is a vector format, not a raster image"
    return None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            values = values / 257.0
        elif mode == "F" and values.size and np.nanmax(values) <= 1.0:
            values = values * 255.0
        elif mode == "I" and values.size and values.max() > 255:
            values = values / 257.0
        gray = np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image(source: ImageSource, size: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode one cell image to an ``(H, W, 3)`` uint8 RGB array, resized to ``size`` if given.

    ``source`` is a path, raw bytes or a binary file object; ``name`` is what error messages call
    it (defaults to the path). Raises :class:`ImageLoadError` for anything not accepted.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "upload")
    try:
        data = _read_bytes(source)
    except OSError as exc:
        raise ImageLoadError(label, f"cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise ImageLoadError(label, "the file is empty")
    non_raster = _sniff_non_raster(data[:1024])
    if non_raster:
        raise ImageLoadError(label, non_raster)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageLoadError(
                    label, f"{width}x{height} px is too large (a possible decompression bomb)"
                )
            img.seek(0)  # first frame of animations
            img.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(label, "too many pixels (a possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not a recognised raster image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageLoadError(label, f"the image data is damaged or truncated ({reason})") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not refuse the pixels
        pass
    if min(img.size) < MIN_SIDE_PX:
        raise ImageLoadError(label, f"{img.size[0]}x{img.size[1]} px is too small")
    rgb = _to_rgb_array(img)
    if size is not None:
        rgb = as_training_copy(rgb)
        if rgb.shape[:2] != (size, size):
            rgb = np.asarray(Image.fromarray(rgb).resize((size, size), RESAMPLE))
    return np.ascontiguousarray(rgb)


def as_training_copy(rgb: np.ndarray) -> np.ndarray:
    """Bring a decoded image to the form the training images had before the model's resize.

    The models train on 224 px copies of the analyser's 360x363 originals, made with Lanczos
    and saved as JPEG quality 90. An input of any other size goes through the same two steps, so
    an original and its training copy reach the model as the same pixels (Pillow reproduces the
    copies bit for bit) and a model's answer does not depend on which one a user uploads.
    An image already at 224 px is taken as such a copy and left alone.
    """
    if rgb.shape[:2] == (TRAINING_COPY_PX, TRAINING_COPY_PX):
        return rgb
    copy = Image.fromarray(rgb).resize((TRAINING_COPY_PX, TRAINING_COPY_PX), RESAMPLE)
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=TRAINING_COPY_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def is_hidden(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts if part not in (".", ".."))


def collect_image_paths(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, hidden entries skipped) into a sorted path list."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in path.rglob("*"):
                if child.is_file() and not is_hidden(child.relative_to(path)):
                    found.add(child)
        else:
            found.add(path)
    return sorted(found, key=lambda p: str(p))
