"""The one image loader: every accepted kind decodes to RGB; every refused kind says why."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import ACCEPTED, REFUSED, encode_image
from PIL import Image

from bcclassify.data.imaging import ImageLoadError, collect_image_paths, load_image


@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_accepted_kinds_decode_to_rgb(kind):
    pixels = load_image(ACCEPTED[kind](), size=48, name=f"cell.{kind}")
    assert pixels.shape == (48, 48, 3) and pixels.dtype == np.uint8
    assert 20 < pixels.mean() < 250  # real content, not a blank or saturated image


def test_sixteen_bit_and_float_scale_like_eight_bit():
    eight = load_image(ACCEPTED["grayscale"]()).astype(int)
    assert np.abs(load_image(ACCEPTED["16-bit"]()).astype(int) - eight).max() <= 1
    assert np.abs(load_image(ACCEPTED["float"]()).astype(int) - eight).max() <= 1


def test_alpha_is_composited_on_white():
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # fully transparent black
    pixels = load_image(encode_image(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (pixels == 255).all()


def test_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((200, 0, 0), (0, 0, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixels = load_image(buffer.getvalue())
    assert pixels[..., 0].mean() > 150 and pixels[..., 2].mean() < 50


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), "white")
    img.paste((255, 0, 0), (0, 0, 40, 40))  # red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    pixels = load_image(encode_image(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert pixels.shape[:2] == (80, 40)  # portrait once oriented
    # Rotating 90 degrees clockwise brings the red left half to the top.
    assert pixels[:35, :, 0].mean() > 200 and pixels[:35, :, 1].mean() < 60
    assert pixels[45:, :, 1].mean() > 200


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_refused_kinds_name_the_file_and_what_is_accepted(kind):
    data, reason = REFUSED[kind]
    with pytest.raises(ImageLoadError) as info:
        load_image(data, name=f"cell-{kind}.img")
    message = str(info.value)
    assert message.startswith(f"cell-{kind}.img: ")
    assert reason in message
    assert "accepted:" in message and "\n" not in message


def test_collect_paths_recurses_sorts_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/2.png", "a.png", ".hidden/x.png", "b/.dot.png"):
        (tmp_path / rel).write_bytes(b"x")
    found = collect_image_paths([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "b/2.png"]


def test_input_label_names_the_centre_a_cropping_model_sees():
    from bcclassify.data.imaging import cropped_size, input_label

    assert input_label(128) == "128" and input_label(128, 1.0) == "128"
    assert cropped_size(171, 0.75) == 128
    assert input_label(171, 0.75) == "171 (centre 128)"
    assert input_label(None) == "-"


@pytest.mark.parametrize(
    "case, kind",
    [
        ("svg", "unsupported"),
        ("pdf", "unsupported"),
        ("undecodable", "unsupported"),
        ("bomb", "too_large"),
        ("empty", "invalid"),
        ("truncated", "invalid"),
        ("tiny", "invalid"),
    ],
)
def test_each_refusal_says_what_kind_it_is(case, kind):
    """The HTTP API answers 415 / 413 / 422 from the kind, not from the message's words."""
    with pytest.raises(ImageLoadError) as refused:
        load_image(REFUSED[case][0], name=f"{case}.bin")
    assert refused.value.kind == kind
