"""App uploads stay bounded: pixel cap from the header, one small working copy, LRU caches."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from bcclassify.data.imaging import ImageLoadError, load_image
from bcclassify.serving.uploads import (
    LRU,
    WORKING_PX,
    UploadLimits,
    check_pixel_cap,
    thumbnail,
    working_copy,
)

MB = 1024 * 1024


def _big_png(side: int = 6000) -> bytes:
    """A 36-megapixel PNG of a few hundred kB (smooth, so it compresses like the issue's 120 kB)."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    image = Image.fromarray(np.stack([np.broadcast_to(ramp, (side, side))] * 3, axis=-1))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return _big_png()


def test_a_6000px_upload_is_refused_from_its_header_by_default(big_png):
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError, match="over this app's limit of 25 million"):
            working_copy("field.png", big_png, UploadLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * MB, f"{peak / MB:.0f} MB traced to refuse a header"


def test_a_6000px_upload_under_a_raised_cap_stays_within_a_few_hundred_mb(big_png):
    limits = UploadLimits(max_pixels=40_000_000)
    tracemalloc.start()
    try:
        copy = working_copy("field.png", big_png, limits)
        thumb = thumbnail(copy.pixels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"6000x6000 upload: traced peak {peak / MB:.0f} MB")
    assert peak < 300 * MB, f"{peak / MB:.0f} MB traced"
    assert copy.pixels.shape == (WORKING_PX, WORKING_PX, 3) and copy.downscaled
    assert copy.original_size == (6000, 6000)
    assert thumb.shape == (96, 96, 3)
    # The classifier reads the working copy losslessly.
    assert np.array_equal(load_image(copy.source), copy.pixels)


def test_a_small_crop_is_classified_from_its_own_bytes(fixture_images):
    path = next(fixture_images.glob("*/*.jpg"))
    data = path.read_bytes()
    copy = working_copy(path.name, data, UploadLimits())
    assert copy.source is data and not copy.downscaled
    assert np.array_equal(copy.pixels, load_image(data))


def test_pixel_cap_ignores_what_is_not_an_image():
    check_pixel_cap("x.png", b"not an image", 10)  # load_image gives the real reason later


def test_limits_come_from_the_environment():
    limits = UploadLimits.from_env(
        {"BCCLASSIFY_MAX_UPLOAD_PIXELS": "1000000", "BCCLASSIFY_MAX_FILES": "5"}
    )
    assert (limits.max_pixels, limits.max_files) == (1_000_000, 5)
    assert UploadLimits.from_env({"BCCLASSIFY_MAX_FILES": "lots"}).max_files == 200
    assert UploadLimits.from_env({}).max_pixels == 25_000_000


def test_lru_keeps_the_most_recently_used():
    cache = LRU(2)
    cache["a"], cache["b"] = 1, 2
    assert cache.get("a") == 1  # "a" is now the most recent
    cache["c"] = 3
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2


def test_the_per_file_byte_cap_is_the_apps_upload_limit_and_refuses_before_decoding():
    import tomllib

    from helpers import REPO

    from bcclassify.data.imaging import REFUSED_TOO_LARGE
    from bcclassify.serving.uploads import DEFAULT_MAX_BYTES, MAX_BYTES_ENV, check_byte_cap

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert DEFAULT_MAX_BYTES == config["server"]["maxUploadSize"] * MB  # one limit, two servers
    assert UploadLimits.from_env({MAX_BYTES_ENV: "2"}).max_bytes == 2 * MB
    assert UploadLimits.from_env({MAX_BYTES_ENV: "zero"}).max_bytes == DEFAULT_MAX_BYTES
    check_byte_cap("cell.png", MB, MB)
    with pytest.raises(ImageLoadError, match=r"cell.png: 1.0 MB is over this app's limit of 1 MB"):
        check_byte_cap("cell.png", MB + 1, MB)
    with pytest.raises(ImageLoadError) as refused:
        working_copy("noise.bin", b"\0" * (MB + 1), UploadLimits(max_bytes=MB))
    assert refused.value.kind == REFUSED_TOO_LARGE
