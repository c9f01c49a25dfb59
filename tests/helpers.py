"""What the tests share besides fixtures: the repository's paths and the command line in a fresh
process. ``tests/`` is on ``sys.path`` (pyproject's ``pythonpath``), so a test imports these as
``from helpers import ...``; the fixtures live in ``conftest.py``."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
# The example cells shipped with the library (bcclassify/examples/README.md credits them).
FIXTURE_IMAGES = REPO / "bcclassify" / "examples" / "pbc"
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "pbc224"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(args: list[str], env: dict, check: bool = False):
    """``python -m bcclassify ARGS`` in a subprocess from the repository root."""
    result = subprocess.run(
        [sys.executable, "-m", "bcclassify", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def needs_shared_data():
    return pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/pbc224 not present")


# Images of every kind the loader accepts, and of every kind it refuses with the reason it gives.
CELL = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[0]


def sample_cell(mode="RGB", size=(64, 60)) -> Image.Image:
    return Image.open(CELL).convert("RGB").resize(size).convert(mode)


def encode_image(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring huge dimensions, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


ACCEPTED = {
    "jpeg": lambda: encode_image(sample_cell(), "JPEG"),
    "png": lambda: encode_image(sample_cell(), "PNG"),
    "tiff": lambda: encode_image(sample_cell(), "TIFF"),
    "bmp": lambda: encode_image(sample_cell(), "BMP"),
    "gif": lambda: encode_image(sample_cell("P"), "GIF"),
    "webp": lambda: encode_image(sample_cell(), "WEBP"),
    "grayscale": lambda: encode_image(sample_cell("L"), "PNG"),
    "palette": lambda: encode_image(sample_cell().quantize(64), "PNG"),
    "16-bit": lambda: encode_image(
        Image.fromarray(np.asarray(sample_cell("L"), dtype=np.uint16) * 257), "PNG"
    ),
    "float": lambda: encode_image(
        Image.fromarray(np.asarray(sample_cell("L"), dtype=np.float32) / 255.0, mode="F"), "TIFF"
    ),
    "cmyk": lambda: encode_image(sample_cell("CMYK"), "JPEG"),
    "alpha": lambda: encode_image(sample_cell("RGBA"), "PNG"),
}


REFUSED = {
    "empty": (b"", "empty"),
    "truncated": (encode_image(sample_cell(size=(200, 200)), "JPEG")[:600], "truncated"),
    "undecodable": (b"this is plain text, not pixels" * 10, "not a recognised raster image"),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    "pdf": (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF", "PDF"),
    "tiny": (encode_image(sample_cell(size=(31, 64)), "PNG"), "too small"),
    "bomb": (huge_png_header(20_000, 20_000), "decompression bomb"),
}


# 16-bit images Pillow cannot write itself, built by hand (test_pixels, the upload memory checks).
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count), big-endian samples."""
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = samples.reshape(height, width * channels).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def tiff16(samples: np.ndarray, photometric: int = 2, extra_tags=()) -> bytes:
    """An uncompressed little-endian TIFF, one strip; 16 bits per sample unless uint8 is given."""
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    bits = 8 if samples.dtype == np.uint8 else 16
    pixels = samples.astype("<u2" if bits == 16 else np.uint8).tobytes()
    bits_block = struct.pack(f"<{channels}H", *[bits] * channels) if channels > 2 else b""
    pixel_offset = 8 + len(bits_block)
    ifd_offset = pixel_offset + len(pixels) + len(pixels) % 2
    short, long = 3, 4
    tags = [
        (256, long, 1, width),
        (257, long, 1, height),
        (258, short, channels, 8 if channels > 2 else bits),  # offset of the list, or the value
        (259, short, 1, 1),
        (262, short, 1, photometric),
        (273, long, 1, pixel_offset),
        (277, short, 1, channels),
        (278, long, 1, height),
        (279, long, 1, len(pixels)),
        (284, short, 1, 1),
        *extra_tags,
    ]
    entries = b"".join(
        struct.pack("<HHIHH", tag, kind, count, value, 0)
        if kind == short and count == 1
        else struct.pack("<HHII", tag, kind, count, value)
        for tag, kind, count, value in sorted(tags)
    )
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    header = b"II*\x00" + struct.pack("<I", ifd_offset)
    return header + bits_block + pixels + b"\0" * (len(pixels) % 2) + ifd


def pnm16(samples: np.ndarray, maxval: int = 65535) -> bytes:
    """Binary PGM (grey) or PPM (RGB) with 16-bit big-endian samples."""
    height, width = samples.shape[:2]
    magic = b"P5" if samples.ndim == 2 else b"P6"
    return magic + f"\n{width} {height}\n{maxval}\n".encode() + samples.astype(">u2").tobytes()


def variants_store(tmp_path: Path) -> tuple[Path, Path]:
    """A store with an untrained 32 px CNN 'trained on' 64 distinct cells made from the fixture
    images (mirrored and rotated), so the split has training, validation and test cells."""
    from bcclassify import CLASS_NAMES
    from bcclassify.data.datasets import scan_dataset
    from bcclassify.models.registry import build
    from bcclassify.serving.classifier import export_model

    data = tmp_path / "cells"
    for path in FIXTURE_IMAGES.rglob("*.jpg"):
        (data / path.parent.name).mkdir(parents=True, exist_ok=True)
        img = Image.open(path).convert("RGB")
        for k, view in enumerate(
            [img, img.transpose(Image.FLIP_LEFT_RIGHT), img.rotate(90), img.rotate(270)]
        ):
            view.save(data / path.parent.name / f"{path.stem}-{k}.png")
    store = tmp_path / "store"
    card = {
        "name": "tiny-cnn",
        "architecture": "cnn",
        "image_size": 32,
        "class_names": list(CLASS_NAMES),
        "training_data": {"manifest_sha256": scan_dataset(data).manifest_hash()},
        "training_config": {"seed": 42},
    }
    export_model(
        build("cnn", 32, len(CLASS_NAMES), weights="none"), store / "models" / "tiny-cnn", card
    )
    return store, data


def assert_fine_maps_equal_plain(explainer, plain, pixels, layers, method, targets) -> None:
    """The fast explain view's maps, unnormalised (the caller patches ``normalize_map``), equal
    plain tf-keras-vis's (``plain``, built on the whole model) for each target class, and some
    of them are real maps: an untrained trunk's map is empty for some classes (every weight
    negative), so several targets are tried."""
    from tf_keras_vis.utils.scores import CategoricalScore

    batch = np.asarray(pixels, dtype=np.float32)[None]
    compared = dict.fromkeys(layers, 0)
    for target in targets:
        fast = explainer.explain_pixels(pixels, method, target=target)
        assert list(fast.maps) == [*layers, "fused"]
        for layer in layers:
            cam = plain(
                CategoricalScore([target]),
                batch,
                penultimate_layer=layer,
                seek_penultimate_conv_layer=False,
                normalize_cam=False,
            )[0]
            scale = float(cam.max()) or 1.0
            np.testing.assert_allclose(fast.maps[layer] / scale, cam / scale, atol=2e-3)
            compared[layer] += bool(cam.max() > 0)
    assert explainer.joint_channels == [768, 728]  # the fast path was taken
    assert all(compared.values()), compared  # real maps among them, not only empty ones
