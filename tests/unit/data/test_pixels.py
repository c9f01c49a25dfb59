"""Pixels that used to come out silently wrong: 16-bit data, ICC profiles, odd colour modes,
and folders that cannot be read. Every image is built in memory."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, png16, pnm16, tiff16
from PIL import Image

from bcclassify.data.imaging import ImageLoadError, collect_image_paths, load_image, real_range

CELL = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[0]


def _cell_rgb(size=(64, 60)) -> np.ndarray:
    return np.asarray(Image.open(CELL).convert("RGB").resize(size))


def _cell_grey(size=(64, 60)) -> np.ndarray:
    return np.asarray(Image.open(CELL).convert("L").resize(size))


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _close(pixels: np.ndarray, expected: np.ndarray, tolerance: int = 1) -> bool:
    return (
        pixels.shape == expected.shape
        and np.abs(pixels.astype(int) - expected.astype(int)).max() <= tolerance
    )


# ----------------------------------------------------------------------------- 16-bit data


def test_real_range_is_the_smallest_even_bit_depth_holding_the_data():
    assert real_range(np.array([0, 255])) == 255  # 8-bit data in a 16-bit container
    assert real_range(np.array([300])) == 1023
    assert real_range(np.array([4095])) == 4095
    assert real_range(np.array([4096])) == 16383
    assert real_range(np.array([65535])) == 65535


@pytest.mark.parametrize("container", ["png", "tiff", "ppm"])
def test_twelve_bit_rgb_comes_out_like_the_eight_bit_image(container):
    cell = _cell_rgb()
    twelve = cell.astype(np.uint16) * 16  # what a 12-bit camera stores in a 16-bit file
    data = {"png": png16, "tiff": tiff16, "ppm": pnm16}[container](twelve)
    pixels = load_image(data, name=f"cell.{container}")
    assert _close(pixels, cell), "12-bit data must not come out nearly black"


def test_full_range_sixteen_bit_rgb_and_rgba_png():
    cell = _cell_rgb()
    full = cell.astype(np.uint16) * 257
    assert _close(load_image(png16(full)), cell)
    opaque = np.dstack([full, np.full(full.shape[:2], 65535, np.uint16)])
    assert _close(load_image(png16(opaque)), cell)
    clear = np.dstack([full, np.zeros(full.shape[:2], np.uint16)])
    assert (load_image(png16(clear)) == 255).all()  # transparent: white, as for 8-bit


def test_sixteen_bit_rgb_keeps_its_orientation_tag():
    red = np.zeros((40, 80, 3), np.uint16)
    red[:, :40] = (4095, 0, 0)  # red on the left half, 12-bit
    red[:, 40:] = 4095
    data = tiff16(red, extra_tags=[(274, 3, 1, 6)])  # "rotate 90 CW to display"
    pixels = load_image(data)
    assert pixels.shape[:2] == (80, 40)
    assert pixels[:35, :, 0].mean() > 200 and pixels[:35, :, 1].mean() < 60


@pytest.mark.parametrize(
    "container",
    ["png (I;16)", "tiff (I;16)", "pgm maxval 65535", "pgm maxval 4095", "png grey+alpha"],
)
def test_twelve_bit_greyscale_scales_the_same_in_every_format(container):
    grey = _cell_grey()
    twelve = grey.astype(np.uint16) * 16
    data = {
        "png (I;16)": lambda: _save(Image.fromarray(twelve), "PNG"),
        "tiff (I;16)": lambda: _save(Image.fromarray(twelve), "TIFF"),
        "pgm maxval 65535": lambda: pnm16(twelve),
        "pgm maxval 4095": lambda: pnm16(twelve, maxval=4095),
        "png grey+alpha": lambda: png16(np.dstack([twelve, np.full_like(twelve, 65535)])),
    }[container]()
    pixels = load_image(data, name=container)
    assert _close(pixels, np.repeat(grey[..., None], 3, axis=2))


def test_eight_bit_values_in_a_sixteen_bit_container_stay_as_they_are():
    grey = _cell_grey()
    pixels = load_image(_save(Image.fromarray(grey.astype(np.uint16)), "PNG"))
    assert _close(pixels, np.repeat(grey[..., None], 3, axis=2), tolerance=0)


def test_sixteen_bit_cmyk_is_refused_with_a_message():
    cmyk = np.full((40, 40, 4), 1000, np.uint16)
    with pytest.raises(ImageLoadError, match="cmyk.tif: 16-bit colour .*16-bit CMYK"):
        load_image(tiff16(cmyk, photometric=5), name="cmyk.tif")


# ----------------------------------------------------------------------------- colour


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def linear_light_profile() -> bytes:
    """An ICC v2 RGB display profile: sRGB's primaries and white, but a linear tone curve.

    Pixels tagged with it are linear light; in sRGB a linear 64 is about 137.
    """
    text = b"linear-light sRGB primaries\0"
    description = (
        b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    )
    linear = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0100) + b"\0\0"  # gamma 1.0
    tags = [
        (b"desc", description),
        (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz_tag(0.4361, 0.2225, 0.0139)),  # sRGB primaries adapted to D50
        (b"gXYZ", _xyz_tag(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", _xyz_tag(0.1431, 0.0606, 0.7141)),
        (b"rTRC", linear),
        (b"gTRC", linear),
        (b"bTRC", linear),
    ]
    start = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", start + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", start + len(body))
        + b"none"
        + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 28
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + table + body


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    v = linear / 255.0
    return 255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def _patches() -> np.ndarray:
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :20] = 64
    pixels[:, 20:40] = (200, 60, 120)
    pixels[:, 40:] = (20, 150, 230)
    return pixels


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_icc_tagged_images_are_converted_to_srgb(fmt):
    linear = _patches()
    data = _save(Image.fromarray(linear), fmt, icc_profile=linear_light_profile(), quality=100)
    pixels = load_image(data, name=f"tagged.{fmt}")
    tolerance = 4 if fmt == "JPEG" else 2
    assert _close(pixels[5:35, 5:15], np.full((30, 10, 3), _srgb_encode(np.float64(64))), tolerance)
    assert _close(
        pixels[5:35, 25:35], np.broadcast_to(_srgb_encode(linear[0, 25]), (30, 10, 3)), tolerance
    )
    assert _close(
        pixels[5:35, 45:55], np.broadcast_to(_srgb_encode(linear[0, 45]), (30, 10, 3)), tolerance
    )


def test_an_unparsable_icc_profile_leaves_the_pixels_as_they_are():
    pixels = _patches()
    data = _save(Image.fromarray(pixels), "PNG", icc_profile=b"not an ICC profile" * 8)
    assert _close(load_image(data), pixels, tolerance=0)


def test_an_srgb_profile_changes_nothing_visible():
    from PIL import ImageCms

    pixels = _patches()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = _save(Image.fromarray(pixels), "PNG", icc_profile=srgb)
    assert _close(load_image(data), pixels, tolerance=1)


def test_cielab_tiff_comes_out_in_its_true_colours():
    # L* 53.7 a* 0 b* 0 is sRGB grey 128; L* 50.2 a* 60 b* 40 is about (214, 61, 56).
    lab = np.zeros((40, 40, 3), np.uint8)
    lab[:20] = (137, 0, 0)
    lab[20:] = (128, 60, 40)  # a* and b* are signed bytes in a CIELAB TIFF
    pixels = load_image(tiff16(lab, photometric=8))
    assert _close(pixels[:20], np.full((20, 40, 3), 128), tolerance=2)
    assert _close(pixels[20:], np.broadcast_to([214, 61, 56], (20, 40, 3)), tolerance=3)


def test_ycbcr_tiff_is_converted():
    cell = _cell_rgb()
    ycbcr = np.asarray(Image.fromarray(cell).convert("YCbCr"))
    pixels = load_image(tiff16(ycbcr, photometric=6))
    assert _close(pixels, cell, tolerance=4)


# ----------------------------------------------------------------------------- folders


@pytest.fixture()
def locked_folder(tmp_path, monkeypatch):
    """A folder the operating system refuses to list, even to root (who ignores chmod)."""
    (tmp_path / "a.png").write_bytes(b"x")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "hidden-by-permissions.png").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)) == locked:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return locked


def test_an_unreadable_folder_is_listed_and_refused_with_its_reason(tmp_path, locked_folder):
    found = collect_image_paths([tmp_path])
    assert found == [tmp_path / "a.png", locked_folder]
    with pytest.raises(ImageLoadError, match="locked: a folder that cannot be read"):
        load_image(locked_folder)


def test_an_unreadable_folder_given_directly_is_listed(locked_folder):
    assert collect_image_paths([locked_folder]) == [locked_folder]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_a_folder_without_read_permission_is_listed(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "cell.png").write_bytes(b"x")
    locked.chmod(0)
    try:
        assert collect_image_paths([tmp_path]) == [locked]
        with pytest.raises(ImageLoadError, match="Permission denied"):
            load_image(locked)
    finally:
        locked.chmod(0o700)
