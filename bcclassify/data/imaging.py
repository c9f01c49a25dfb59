"""The one image-loading function of the project.

Predict, explain, evaluate, training and the app all go through :func:`load_image`, so a cell is
decoded, oriented, converted to RGB and resized the same way everywhere.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

__all__ = [
    "ACCEPTED",
    "ALPHA_MODES",
    "ICC_SPACES",
    "IMAGE_TYPES",
    "ImageLoadError",
    "ImageSource",
    "KNOWN_MODES",
    "MAX_PIXELS",
    "MIN_SIDE_PX",
    "REFUSED_INVALID",
    "REFUSED_TOO_LARGE",
    "REFUSED_UNSUPPORTED",
    "RESAMPLE",
    "TRAINING_COPY_JPEG_QUALITY",
    "TRAINING_COPY_PX",
    "WIDE_GREY_MODES",
    "as_training_copy",
    "collect_image_paths",
    "cropped_size",
    "input_label",
    "is_hidden",
    "load_image",
    "real_range",
]

log = logging.getLogger(__name__)

MIN_SIDE_PX = 32
# Refused before decoding: a small file can declare enormous dimensions (a decompression bomb).
MAX_PIXELS = 90_000_000
ACCEPTED = (
    "accepted: raster images that Pillow decodes (JPEG, PNG, TIFF, BMP, GIF first frame, WebP), "
    f"at least {MIN_SIDE_PX} px on each side and at most {MAX_PIXELS // 1_000_000} million pixels"
)
# File name extensions of the formats ACCEPTED names: what the app's uploaders take.
IMAGE_TYPES = ("jpg", "jpeg", "png", "tif", "tiff", "bmp", "gif", "webp")
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


# What kind of refusal an ImageLoadError is, for callers that answer with a status (the HTTP API:
# 413 too large, 415 not a supported image, 422 an image that cannot be used).
REFUSED_INVALID, REFUSED_UNSUPPORTED, REFUSED_TOO_LARGE = "invalid", "unsupported", "too_large"


class ImageLoadError(ValueError):
    """An input that is not an acceptable cell image. The message names the file and the rule;
    ``kind`` says which sort of rule (``REFUSED_*``)."""

    def __init__(self, name: str, reason: str, kind: str = REFUSED_INVALID) -> None:
        self.name = name
        self.reason = reason
        self.kind = kind
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


# Modes Pillow decodes files to that convert faithfully; anything else is refused by name.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
KNOWN_MODES = (
    ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV") + ALPHA_MODES + WIDE_GREY_MODES
)
# The colour space an embedded ICC profile describes -> the Pillow mode its transform reads.
ICC_SPACES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK", "LAB": "LAB"}
_SWAPPED_16 = {"16B": "16L", "16L": "16B", "16N": "16B" if sys.byteorder == "little" else "16L"}


def real_range(values: np.ndarray) -> float:
    """Full scale of samples wider than 8 bits, read from the data: ``2**bits - 1`` for the
    smallest even bit depth (8, 10, 12, 14, 16, ...) that holds the brightest sample.

    Cameras store 10-, 12- and 14-bit data in 16-bit containers and few files say so (PNG's
    sBIT is optional, TIFF has no common tag), so scaling by the container (65535) would make
    12-bit cells nearly black; scaling by the image's own maximum would stretch every image's
    contrast. 8-bit data in a 16-bit container (nothing above 255) stays as it is.
    """
    top = float(np.nanmax(values)) if values.size else 0.0
    bits = max(8, int(max(top, 0.0)).bit_length())
    return float(2 ** (bits + bits % 2) - 1)


def _to_eight_bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    scaled = np.nan_to_num(values.astype(np.float64)) * (255.0 / full_scale)
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _grey_to_eight_bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale as 8-bit ``L``, the same rule for every format."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and values.size and np.nanmax(values) <= 1.0:
        full_scale = 1.0  # floats in [0, 1]
    else:
        full_scale = real_range(values)
    grey = Image.fromarray(_to_eight_bit(values, full_scale), "L")
    grey.info = dict(img.info)
    return grey


def _sixteen_bit_samples(data: bytes) -> np.ndarray | None:
    """The full ``(H, W, C)`` uint16 samples of a 16-bit-per-channel colour image, else None.

    Pillow has no 16-bit colour mode and keeps only the high byte of each sample (12-bit data
    comes out at 0-15). Decoding the same tiles a second time with the opposite byte order
    yields the low bytes, so a sample is ``high * 256 + low``. 16-bit grey+alpha (which Pillow
    opens as RGBA) is read once as four 8-bit bytes per pixel. ValueError for 16-bit colour
    other than RGB(A) (CMYK, say).
    """
    high, low = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(data))
    high_tiles, low_tiles = [], []
    for tile in high.tile:
        args = tile.args
        if tile.codec_name == "ppm" and isinstance(args, tuple) and args[1:2] and args[1] > 255:
            # 16-bit binary PPM: Pillow scales by the declared maxval; read the samples raw.
            args, tile = (f"{high.mode};16B", 0, 1), tile._replace(codec_name="raw")
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) else ""
        if not isinstance(rawmode, str) or rawmode[-3:] not in _SWAPPED_16:
            return None
        if high.mode not in ("RGB", "RGBA"):
            raise ValueError(f"16-bit {high.mode} is not supported")
        if rawmode == "LA;16B":  # grey high, grey low, alpha high, alpha low
            high_tiles.append(tile._replace(args=_with_rawmode(args, "RGBA")))
            continue
        swapped = rawmode[:-3] + _SWAPPED_16[rawmode[-3:]]
        high_tiles.append(tile._replace(args=_with_rawmode(args, rawmode)))
        low_tiles.append(tile._replace(args=_with_rawmode(args, swapped)))
    if not high_tiles:
        return None
    # No seek(0) before loading: a PNG's seek would restore the original tiles.
    high.tile = high_tiles
    high.load()
    if not low_tiles:
        b = np.asarray(high, dtype=np.uint16)
        grey, alpha = b[..., 0] * 256 + b[..., 1], b[..., 2] * 256 + b[..., 3]
        return np.dstack([grey, grey, grey, alpha])
    low.tile = low_tiles
    low.load()
    return np.asarray(high, dtype=np.uint16) * 256 + np.asarray(low, dtype=np.uint16)


def _with_rawmode(args, rawmode: str):
    return rawmode if isinstance(args, str) else (rawmode, *args[1:])


def _at_full_depth(img: Image.Image, data: bytes, label: str) -> Image.Image:
    """The decoded image ready for :func:`_to_rgb_array`: 16-bit colour read at full depth and
    scaled by its real range (:func:`real_range`); modes that cannot be converted faithfully
    refused with a message."""
    if img.mode not in KNOWN_MODES:
        raise ImageLoadError(label, f"colour mode {img.mode} is not supported", REFUSED_UNSUPPORTED)
    if img.mode in WIDE_GREY_MODES or img.format not in ("PNG", "TIFF", "PPM"):
        return img  # greyscale is scaled later; other formats have no 16-bit colour
    try:
        samples = _sixteen_bit_samples(data)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(
            label,
            f"16-bit colour in this file cannot be read at full depth ({exc}); save it with 8 "
            "bits per channel or as a 16-bit PNG",
            REFUSED_UNSUPPORTED,
        ) from None
    if samples is None:
        return img
    colour = samples[..., :3]
    pixels = _to_eight_bit(colour, real_range(colour))
    if img.mode == "RGBA":  # alpha is a fraction of 65535, not a measurement
        pixels = np.dstack([pixels, _to_eight_bit(samples[..., 3], 65535.0)])
    full = Image.fromarray(pixels, img.mode)
    full.info = dict(img.info)
    exif = img.getexif()
    if exif:  # TIFF keeps its orientation in tags, not in info: carry it for exif_transpose
        full.info["exif"] = exif.tobytes()
    return full


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=16)
def _transform_to_srgb(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        _srgb_profile(),
        mode,
        "RGB",
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
    )


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Apply an embedded ICC profile, so the pixels are sRGB like the training images.

    A profile that cannot be parsed or does not fit the pixels (a grey profile on colour data,
    say) is ignored and the pixels are taken as they are: such files are common, their pixels
    are nearly always sRGB-like, and refusing them would turn away good images.
    """
    if not icc:
        return img
    try:
        space = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip().upper()
        wanted = ICC_SPACES.get(space)
        if wanted == "RGB" and img.mode == "L":
            img = img.convert("RGB")
        if wanted != img.mode:
            raise ValueError(f"a {space} profile on {img.mode} pixels")
        return ImageCms.applyTransform(img, _transform_to_srgb(bytes(icc), img.mode))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.info("ICC profile ignored, pixels taken as sRGB (%s)", exc)
        return img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a Pillow image to 8-bit sRGB.

    Wide greyscale is scaled by its real range, transparency is composited on white and an
    embedded ICC profile is applied (:func:`_to_srgb`).
    """
    icc = img.info.get("icc_profile")
    if img.mode in WIDE_GREY_MODES:
        img = _grey_to_eight_bit(img)
    has_alpha = img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        img = flat.convert("L") if img.mode in ("LA", "La") else flat  # grey stays grey
    elif img.mode in ("1", "P"):
        img = img.convert("RGB" if img.mode == "P" else "L")
    elif img.mode not in ("L", "RGB", "CMYK", "LAB"):
        img = img.convert("RGB")  # RGBX, YCbCr, HSV
    return np.asarray(_to_srgb(img, icc).convert("RGB"))


def load_image(source: ImageSource, size: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode one cell image to an ``(H, W, 3)`` uint8 RGB array, resized to ``size`` if given.

    ``source`` is a path, raw bytes or a binary file object; ``name`` is what error messages call
    it (defaults to the path). Raises :class:`ImageLoadError` for anything not accepted.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "upload")
    try:
        data = _read_bytes(source)
    except OSError as exc:
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            raise ImageLoadError(label, _folder_problem(Path(source))) from None
        raise ImageLoadError(label, f"cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise ImageLoadError(label, "the file is empty")
    non_raster = _sniff_non_raster(data[:1024])
    if non_raster:
        raise ImageLoadError(label, non_raster, REFUSED_UNSUPPORTED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageLoadError(
                    label,
                    f"{width}x{height} px is too large (a possible decompression bomb)",
                    REFUSED_TOO_LARGE,
                )
            img.seek(0)  # first frame of animations
            img.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(
            label, "too many pixels (a possible decompression bomb)", REFUSED_TOO_LARGE
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not a recognised raster image", REFUSED_UNSUPPORTED) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageLoadError(label, f"the image data is damaged or truncated ({reason})") from None
    img = _at_full_depth(img, data, label)
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


def _folder_problem(path: Path) -> str:
    try:
        os.scandir(path).close()
    except OSError as exc:
        return f"a folder that cannot be read ({exc.strerror or exc})"
    return "a folder, not an image file"


def collect_image_paths(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, hidden entries skipped) into a sorted path list.

    A folder that cannot be listed (permission denied, say) is kept in the list as itself, so
    it becomes an error row (:func:`load_image` says why) instead of silently missing files.
    """
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            found.add(path)
            continue

        def unreadable(exc: OSError, top: Path = path) -> None:
            found.add(Path(exc.filename) if exc.filename else top)

        for folder, subfolders, files in os.walk(path, onerror=unreadable):
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            for file_name in files:
                child = Path(folder) / file_name
                if not file_name.startswith(".") and child.is_file():
                    found.add(child)
    return sorted(found, key=lambda p: str(p))
