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
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

__all__ = [
    "ACCEPTED",
    "ALPHA_MODES",
    "DECODE_SLOTS",
    "DECODE_SLOTS_ENV",
    "DECODE_WAIT_S",
    "DecoderBusyError",
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
    "bounded_size",
    "collect_image_paths",
    "cropped_size",
    "decode_slot",
    "input_label",
    "is_hidden",
    "load_bounded",
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

# Wide samples are scaled to 8 bits a strip of rows at a time, about this many samples each, so
# the float temporaries stay a few MB whatever the image's size (a 25 MP 16-bit RGB image in one
# piece took ~2 GB of float64).
_STRIP_SAMPLES = 1 << 20

# At most this many images are decoded at once in the process, whichever session asks: each
# decode may hold a few hundred MB at the pixel cap, so N sessions uploading together cannot
# multiply that without bound. A decode waits at most DECODE_WAIT_S for a slot, then is refused
# as busy (DecoderBusyError: try again), never queued without end.
DECODE_SLOTS_ENV = "BCCLASSIFY_DECODE_SLOTS"


def _slots_from_env() -> int:
    try:
        return max(1, int(os.environ.get(DECODE_SLOTS_ENV, "") or 2))
    except ValueError:
        return 2


DECODE_SLOTS = _slots_from_env()
DECODE_WAIT_S = 30.0
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


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


class DecoderBusyError(ImageLoadError):
    """Every decode slot stayed taken for DECODE_WAIT_S: nothing is wrong with the file."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        ValueError.__init__(self, f"{name}: {reason}")


@contextmanager
def decode_slot(name: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold one of the process's DECODE_SLOTS while decoding; DecoderBusyError after ``wait_s``
    (default DECODE_WAIT_S) without a free slot."""
    wait = DECODE_WAIT_S if wait_s is None else wait_s
    if not _decode_slots.acquire(timeout=wait):
        raise DecoderBusyError(
            name,
            f"the server is busy decoding other images ({DECODE_SLOTS} at a time, waited "
            f"{wait:g} s); nothing is wrong with the file: try again in a minute",
        )
    try:
        yield
    finally:
        _decode_slots.release()


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
    return _range_of(_top(values))


def _top(values: np.ndarray) -> float:
    """The largest sample, NaN ignored (0 when there is none)."""
    if not values.size:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN strip
        top = float(np.nanmax(values))
    return 0.0 if np.isnan(top) else top


def _range_of(top: float) -> float:
    bits = max(8, int(max(top, 0.0)).bit_length())
    return float(2 ** (bits + bits % 2) - 1)


def _to_eight_bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    scaled = np.nan_to_num(values.astype(np.float64)) * (255.0 / full_scale)
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _row_strips(img: Image.Image, channels: int) -> list[tuple[int, int, int, int]]:
    """Boxes of whole rows, about _STRIP_SAMPLES samples each, covering ``img`` top to bottom."""
    width, height = img.size
    rows = max(1, _STRIP_SAMPLES // max(1, width * channels))
    return [(0, top, width, min(top + rows, height)) for top in range(0, height, rows)]


def _grey_to_eight_bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale as 8-bit ``L``, the same rule for every format.

    Two passes over strips of rows (the brightest sample, then the scaling), so no full-size
    float copy is made; the result is the same as scaling the whole image at once.
    """
    strips = _row_strips(img, 1)
    top = max(_top(np.asarray(img.crop(box), dtype=np.float64)) for box in strips)
    full_scale = 1.0 if img.mode == "F" and top <= 1.0 else _range_of(top)  # floats in [0, 1]
    grey = Image.new("L", img.size)
    for box in strips:
        values = np.asarray(img.crop(box), dtype=np.float64)
        grey.paste(Image.fromarray(_to_eight_bit(values, full_scale), "L"), box[:2])
    grey.info = dict(img.info)
    return grey


def _sixteen_bit_tiles(tiles: list) -> tuple[list, list] | None:
    """Tiles that decode the high and the low bytes of 16-bit-per-channel colour, else None.

    Pillow has no 16-bit colour mode and keeps only the high byte of each sample (12-bit data
    comes out at 0-15). Decoding the same tiles a second time with the opposite byte order
    yields the low bytes, so a sample is ``high * 256 + low``. 16-bit grey+alpha (which Pillow
    opens as RGBA) is read once as four 8-bit bytes per pixel (no low tiles). ``tiles`` are the
    image's own, read before it is loaded. ValueError for 16-bit colour other than RGB(A).
    """
    high_tiles, low_tiles = [], []
    for tile in tiles:
        args = tile.args
        if tile.codec_name == "ppm" and isinstance(args, tuple) and args[1:2] and args[1] > 255:
            # 16-bit binary PPM: Pillow scales by the declared maxval; read the samples raw.
            args, tile = (f"{args[0]};16B", 0, 1), tile._replace(codec_name="raw")
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) else ""
        if not isinstance(rawmode, str) or rawmode[-3:] not in _SWAPPED_16:
            return None
        if rawmode == "LA;16B":  # grey high, grey low, alpha high, alpha low
            high_tiles.append(tile._replace(args=_with_rawmode(args, "RGBA")))
            continue
        swapped = rawmode[:-3] + _SWAPPED_16[rawmode[-3:]]
        high_tiles.append(tile._replace(args=_with_rawmode(args, rawmode)))
        low_tiles.append(tile._replace(args=_with_rawmode(args, swapped)))
    return (high_tiles, low_tiles) if high_tiles else None


def _decoded_with(data: bytes, tiles: list) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.tile = tiles  # no seek(0) before loading: a PNG's seek would restore the original tiles
    img.load()
    return img


def _with_rawmode(args, rawmode: str):
    return rawmode if isinstance(args, str) else (rawmode, *args[1:])


def _sixteen_bit_strip(high: Image.Image, low: Image.Image | None, box) -> np.ndarray:
    """The ``(h, w, C)`` uint16 samples of one strip of rows (C = 3 or 4)."""
    b = np.asarray(high.crop(box), dtype=np.uint16)
    if low is None:
        grey, alpha = b[..., 0] * 256 + b[..., 1], b[..., 2] * 256 + b[..., 3]
        return np.dstack([grey, grey, grey, alpha])
    return b * 256 + np.asarray(low.crop(box), dtype=np.uint16)


def _at_full_depth(img: Image.Image, data: bytes, label: str, tiles: list) -> Image.Image:
    """The decoded image ready for :func:`_to_rgb_array`: 16-bit colour read at full depth and
    scaled by its real range (:func:`real_range`); modes that cannot be converted faithfully
    refused with a message. ``tiles``: ``img``'s tiles before it was loaded.

    16-bit colour is scaled a strip of rows at a time and written back over the high bytes, so
    it costs two 8-bit decodes and no full-size uint16 or float copy.
    """
    if img.mode not in KNOWN_MODES:
        raise ImageLoadError(label, f"colour mode {img.mode} is not supported", REFUSED_UNSUPPORTED)
    if img.mode in WIDE_GREY_MODES or img.format not in ("PNG", "TIFF", "PPM"):
        return img  # greyscale is scaled later; other formats have no 16-bit colour
    try:
        plan = _sixteen_bit_tiles(tiles)
        if plan is None:
            return img
        if img.mode not in ("RGB", "RGBA"):
            raise ValueError(f"16-bit {img.mode} is not supported")
        high_tiles, low_tiles = plan
        info, exif = dict(img.info), img.getexif()
        if high_tiles == tiles:
            high = img  # the image as loaded holds the high bytes already
        else:
            img.close()  # its pixels are not needed: free them before the next decode
            high = _decoded_with(data, high_tiles)
        low = _decoded_with(data, low_tiles) if low_tiles else None
        strips = _row_strips(high, 4)
        top = max(_top(_sixteen_bit_strip(high, low, box)[..., :3]) for box in strips)
        for box in strips:
            samples = _sixteen_bit_strip(high, low, box)
            pixels = _to_eight_bit(samples[..., :3], _range_of(top))
            if high.mode == "RGBA":  # alpha is a fraction of 65535, not a measurement
                pixels = np.dstack([pixels, _to_eight_bit(samples[..., 3], 65535.0)])
            high.paste(Image.fromarray(pixels, high.mode), box[:2])
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(
            label,
            f"16-bit colour in this file cannot be read at full depth ({exc}); save it with 8 "
            "bits per channel or as a 16-bit PNG",
            REFUSED_UNSUPPORTED,
        ) from None
    high.info = info
    if exif:  # TIFF keeps its orientation in tags, not in info: carry it for exif_transpose
        high.info["exif"] = exif.tobytes()
    return high


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


def _composited_on_white(img: Image.Image) -> Image.Image:
    """Transparency composited on opaque white, a strip of rows at a time (no full-size RGBA
    copies); grey+alpha stays grey. Pixel for pixel what one ``alpha_composite`` gives."""
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    grey = img.mode in ("LA", "La")
    flat = Image.new("L" if grey else "RGB", img.size)
    for box in _row_strips(rgba, 4):
        part = rgba.crop(box)
        white = Image.new("RGBA", part.size, (255, 255, 255, 255))
        done = Image.alpha_composite(white, part).convert("RGB")
        flat.paste(done.convert("L") if grey else done, box[:2])
    return flat


def _to_rgb_image(img: Image.Image) -> Image.Image:
    """Convert a Pillow image to 8-bit sRGB (mode ``RGB``).

    Wide greyscale is scaled by its real range, transparency is composited on white and an
    embedded ICC profile is applied (:func:`_to_srgb`).
    """
    icc = img.info.get("icc_profile")
    if img.mode in WIDE_GREY_MODES:
        img = _grey_to_eight_bit(img)
    has_alpha = img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        img = _composited_on_white(img)
    elif img.mode in ("1", "P"):
        img = img.convert("RGB" if img.mode == "P" else "L")
    elif img.mode not in ("L", "RGB", "CMYK", "LAB"):
        img = img.convert("RGB")  # RGBX, YCbCr, HSV
    img = _to_srgb(img, icc)
    return img if img.mode == "RGB" else img.convert("RGB")


def _decode(source: ImageSource, label: str) -> Image.Image:
    """The whole decode of one image to 8-bit sRGB, as a Pillow image (see load_image)."""
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
            tiles = list(img.tile)  # what 16-bit colour is read with (_at_full_depth)
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
    img = _at_full_depth(img, data, label, tiles)
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not refuse the pixels
        pass
    if min(img.size) < MIN_SIDE_PX:
        raise ImageLoadError(label, f"{img.size[0]}x{img.size[1]} px is too small")
    return _to_rgb_image(img)


def _label(source: ImageSource, name: str | None) -> str:
    return name or (str(source) if isinstance(source, (str, Path)) else "upload")


def load_image(source: ImageSource, size: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode one cell image to an ``(H, W, 3)`` uint8 RGB array, resized to ``size`` if given.

    ``source`` is a path, raw bytes or a binary file object; ``name`` is what error messages call
    it (defaults to the path). Raises :class:`ImageLoadError` for anything not accepted, and
    :class:`DecoderBusyError` when the process's decode slots stay taken (:func:`decode_slot`).
    """
    label = _label(source, name)
    with decode_slot(label):
        img = _decode(source, label)
        if size is None:
            return np.ascontiguousarray(np.asarray(img))
        rgb = _training_copy(img)
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), RESAMPLE))
    return np.ascontiguousarray(rgb)


def bounded_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the long side is ``max_side`` (unchanged when within it)."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_bounded(
    source: ImageSource, max_side: int, name: str | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode like :func:`load_image`, at most ``max_side`` px on the long side (Lanczos).

    The image is shrunk while still a Pillow image, so no full-size array is ever made; the
    pixels are those of ``load_image`` resized the same way. Returns the pixels and the decoded
    image's full (width, height).
    """
    label = _label(source, name)
    with decode_slot(label):
        img = _decode(source, label)
        full = img.size
        small = bounded_size(*full, max_side)
        if small != full:
            img = img.resize(small, RESAMPLE)
        return np.ascontiguousarray(np.asarray(img)), full


def _training_copy(img: Image.Image) -> np.ndarray:
    """as_training_copy of a decoded RGB image, without an array of it at full size."""
    if img.size == (TRAINING_COPY_PX, TRAINING_COPY_PX):
        return np.asarray(img)
    copy = img.resize((TRAINING_COPY_PX, TRAINING_COPY_PX), RESAMPLE)
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=TRAINING_COPY_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


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
    return _training_copy(Image.fromarray(rgb))


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
