"""App uploads stay bounded: pixel cap from the header, one small working copy, LRU caches."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
from helpers import REPO, encode_image, png16, tiff16
from PIL import Image

from bcclassify.data import imaging
from bcclassify.data.imaging import DecoderBusyError, ImageLoadError, decode_slot, load_image
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


def test_the_per_image_byte_cap_is_one_setting_for_the_app_and_the_api():
    from bcclassify.data.imaging import REFUSED_TOO_LARGE
    from bcclassify.serving.uploads import DEFAULT_MAX_FILE_MB, MAX_FILE_MB_ENV, check_byte_cap

    assert UploadLimits.from_env({MAX_FILE_MB_ENV: "2"}).max_bytes == 2 * MB
    assert UploadLimits.from_env({MAX_FILE_MB_ENV: "zero"}).max_bytes == DEFAULT_MAX_FILE_MB * MB
    check_byte_cap("cell.png", MB, MB)
    with pytest.raises(
        ImageLoadError, match=r"cell.png: 1.0 MB is over this app's limit of 1 MB"
    ) as refused:
        check_byte_cap("cell.png", MB + 1, MB)
    assert refused.value.kind == REFUSED_TOO_LARGE


# ----------------------------------------------------------------------------- wide samples


def _field16(side: int, channels: int = 3) -> np.ndarray:
    """A smooth full-range 16-bit field of view (it compresses like a real one)."""
    ramp = np.linspace(0, 65535, side).astype(np.uint16)
    plane = np.broadcast_to(ramp, (side, side))
    return np.stack([plane] * channels, axis=-1) if channels > 1 else np.array(plane)


@pytest.mark.parametrize("kind", ["16-bit RGB PNG", "16-bit grey PNG", "16-bit RGB TIFF"])
def test_sixteen_bit_uploads_make_no_full_size_float_copies(kind):
    """A 9 MP 16-bit image used to take ~650 MB (RGB) of float64 copies; now a few strips."""
    side = 3000
    data = {
        "16-bit RGB PNG": lambda: png16(_field16(side)),
        "16-bit grey PNG": lambda: encode_image(Image.fromarray(_field16(side, 1)), "PNG"),
        "16-bit RGB TIFF": lambda: tiff16(_field16(side)),
    }[kind]()
    tracemalloc.start()
    try:
        copy = working_copy("field", data, UploadLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * MB, f"{kind}: {peak / MB:.0f} MB of arrays traced"
    assert copy.pixels.shape == (WORKING_PX, WORKING_PX, 3) and copy.original_size == (side, side)
    assert copy.pixels[:, 0].max() <= 1 and copy.pixels[:, -1].min() >= 254  # full range kept


def test_the_working_copy_is_the_full_decode_resized(big_png):
    """Shrinking before the array is made changes no pixel: predictions stay as they were."""
    limits = UploadLimits(max_pixels=40_000_000, working_px=700)
    full = Image.fromarray(load_image(big_png))
    expected = np.asarray(full.resize((700, 700), imaging.RESAMPLE))
    assert np.array_equal(working_copy("field.png", big_png, limits).pixels, expected)


@pytest.mark.slow
def test_every_kind_of_upload_at_the_pixel_cap_stays_under_300_mb():
    """Peak resident memory of one decode at 5000x5000 (25 MP, the default cap), per kind, each
    in a fresh process (scripts/upload_memory.py; the README's table)."""
    out = subprocess.run(
        [sys.executable, "scripts/upload_memory.py", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=600,
    )
    rows = json.loads(out.stdout)
    assert len(rows) == 7
    for kind, row in rows.items():
        assert row["extra_rss"] < 300 * MB, f"{kind}: {row['extra_rss'] / MB:.0f} MB"
        assert row["shape"] == [WORKING_PX, WORKING_PX, 3]


# ----------------------------------------------------------------------------- decode slots


def _hold_every_slot(release: threading.Event, held: threading.Barrier) -> list[threading.Thread]:
    def hold():
        with decode_slot("holder"):
            held.wait()
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(imaging.DECODE_SLOTS)]
    for thread in threads:
        thread.start()
    return threads


def test_a_decode_waits_for_a_slot_and_is_refused_as_busy_after_the_bound(monkeypatch):
    monkeypatch.setattr(imaging, "DECODE_WAIT_S", 0.2)
    release, held = threading.Event(), threading.Barrier(imaging.DECODE_SLOTS + 1)
    threads = _hold_every_slot(release, held)
    held.wait()
    data = encode_image(Image.new("RGB", (64, 64)), "PNG")
    try:
        start = time.monotonic()
        with pytest.raises(DecoderBusyError, match="cell.png: the server is busy .* try again"):
            working_copy("cell.png", data, UploadLimits())
        assert 0.15 < time.monotonic() - start < 2
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert working_copy("cell.png", data, UploadLimits()).pixels.shape == (64, 64, 3)


def test_a_decode_goes_ahead_when_a_slot_frees_within_the_bound(monkeypatch):
    monkeypatch.setattr(imaging, "DECODE_WAIT_S", 5.0)
    release, held = threading.Event(), threading.Barrier(imaging.DECODE_SLOTS + 1)
    threads = _hold_every_slot(release, held)
    held.wait()
    threading.Timer(0.3, release.set).start()
    try:
        pixels = load_image(encode_image(Image.new("RGB", (64, 64)), "PNG"))
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert pixels.shape == (64, 64, 3)


def test_concurrent_decodes_never_exceed_the_slots(monkeypatch):
    """Eight sessions uploading at once: at most DECODE_SLOTS decodes run together."""
    running, most, lock = 0, 0, threading.Lock()
    decode = imaging._decode

    def counted(source, label):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)
            return decode(source, label)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(imaging, "_decode", counted)
    data = encode_image(Image.new("RGB", (64, 64)), "PNG")
    threads = [
        threading.Thread(target=working_copy, args=(f"{i}.png", data, UploadLimits()))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == imaging.DECODE_SLOTS
