"""The lab preset's stain, illuminant, zoom and camera operations (issue 12)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from bcclassify.data.augment import AugmentConfig, augment_batch, preset  # noqa: E402

# Everything of the standard preset switched off, so one operation can be looked at alone.
NOTHING = AugmentConfig(max_scale=0, max_shift=0, brightness=0, contrast=0, saturation=0, hue=0)


def _cell(size: int = 64, radius: int = 10) -> np.ndarray:
    """A white frame with a purple disc in the middle."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < radius**2
    image = np.full((size, size, 3), 255, np.uint8)
    image[disc] = (120, 60, 160)
    return np.stack([image] * 4)


def _run(images, cfg, seed=0):
    return augment_batch(images, tf.random.Generator.from_seed(seed), cfg).numpy()


def test_lab_preset_is_seeded_bounded_and_differs_from_standard():
    images = _cell()
    a, b = _run(images, preset("lab"), 3), _run(images, preset("lab"), 3)
    assert a.shape == images.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 255
    assert np.abs(a - _run(images, preset("standard"), 3)).mean() > 5
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        preset("other")


def test_wide_preset_widens_every_lab_to_lab_range_and_spreads_colours_further():
    lab, wide = preset("lab"), preset("wide")
    for name in ("hue", "saturation", "contrast", "stain", "white_balance", "blur"):
        assert getattr(wide, name) > getattr(lab, name), name
    assert wide.resolution < lab.resolution
    assert (wide.zoom, wide.jpeg_quality, wide.noise) == (lab.zoom, lab.jpeg_quality, lab.noise)
    # On the same seeds, the disc's mean colour varies more between draws under "wide"
    images = np.concatenate([_cell()] * 8)
    spread = {}
    for name in ("lab", "wide"):
        out = np.concatenate([_run(images, preset(name), seed) for seed in range(4)])
        spread[name] = out[:, 28:36, 28:36].reshape(len(out), -1, 3).mean(axis=1).std(axis=0).mean()
    assert spread["wide"] > spread["lab"]


def test_defocus_preset_is_wide_with_heavier_blur_that_reaches_the_images():
    wide, heavy = preset("wide"), preset("defocus")
    assert heavy.blur == 7.0 > wide.blur
    assert dataclasses.replace(heavy, blur=wide.blur) == wide
    # Blur alone (one sigma per batch, on a random half): over the same seeds the softest
    # disc edge is softer with the defocus preset's range than with the wide one's.

    def softest_edge(sigma: float) -> float:
        config = dataclasses.replace(NOTHING, blur=sigma)
        steps = [np.abs(np.diff(_run(_cell(), config, seed), axis=2)) for seed in range(6)]
        return min(float(step.max(axis=(1, 2, 3)).min()) for step in steps)

    assert softest_edge(heavy.blur) < 0.8 * softest_edge(wide.blur)


def test_stain_mixing_changes_the_stain_but_not_the_white_background():
    out = _run(_cell(), dataclasses.replace(NOTHING, stain=0.3))
    assert np.abs(out[:, :8, :8] - 255).max() < 1e-3  # zero optical density stays zero
    centre = out[:, 30:34, 30:34].reshape(4, -1, 3).mean(axis=1)
    assert np.abs(centre - (120, 60, 160)).max() > 5  # the stained disc changed colour
    assert np.ptp(centre, axis=0).max() > 1  # each image its own stain


def test_white_balance_tints_the_background_and_keeps_its_brightest_channel():
    flat = np.full((4, 16, 16, 3), 200, np.uint8)
    out = _run(flat, dataclasses.replace(NOTHING, white_balance=0.2))
    pixel = out[:, 0, 0]
    np.testing.assert_allclose(pixel.max(axis=1), 200, atol=1e-3)
    assert (np.ptp(pixel, axis=1) > 1).all()  # a colour cast, not a grey


def test_zoom_makes_the_cell_fill_more_of_the_frame():
    images = _cell()
    dark = lambda x: (x.mean(axis=-1) < 200).mean(axis=(1, 2))  # noqa: E731
    zoomed = _run(images, dataclasses.replace(NOTHING, zoom=(2.5, 2.5)))
    ratio = dark(zoomed) / dark(images.astype(np.float32))
    np.testing.assert_allclose(ratio, 2.5**2, rtol=0.15)


def test_camera_blur_noise_and_jpeg_keep_shape_and_range():
    cfg = dataclasses.replace(NOTHING, blur=1.5, noise=0.05, resolution=0.5, jpeg_quality=40)
    images = _cell()
    out = _run(images, cfg)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 255
    assert np.abs(out - images).mean() > 0.5


def test_defocus_grey_preset_takes_the_colour_out_of_its_share_of_the_views():
    assert dataclasses.replace(preset("defocus-grey"), grey=0.0) == preset("defocus")
    images = np.concatenate([_cell()] * 16)  # 64 purple discs
    every = _run(images, dataclasses.replace(NOTHING, grey=1.0))
    np.testing.assert_array_equal(every[..., 0], every[..., 1])
    np.testing.assert_array_equal(every[..., 1], every[..., 2])
    some = _run(images, dataclasses.replace(NOTHING, grey=0.3), seed=5)
    colourless = (some.max(axis=-1) - some.min(axis=-1)).max(axis=(1, 2)) < 1e-3
    assert 0.1 < colourless.mean() < 0.5  # about 30% of 64
    # a view that keeps its colour is untouched by the draw
    np.testing.assert_allclose(some[~colourless], images[~colourless], atol=0.01)


def test_a_run_records_its_preset():
    from bcclassify.training.runs import TrainConfig, augment_description

    lab = augment_description(TrainConfig(arch="cnn", data=".", augment_preset="lab"))
    standard = augment_description(TrainConfig(arch="cnn", data="."))
    assert lab["preset"] == "lab" and lab["stain"] > 0 and tuple(lab["zoom"]) == (0.8, 3.0)
    assert standard["preset"] == "standard" and standard["stain"] == 0
    grey = augment_description(TrainConfig(arch="cnn", data=".", augment_preset="defocus-grey"))
    assert grey["grey"] == 0.3 and "greyscale views" in grey["ops"]
    assert lab["grey"] == 0 and "greyscale" not in lab["ops"]


def test_train_offers_every_preset_and_only_those():
    from bcclassify.data.augment import PRESETS
    from bcclassify.training.config import TrainConfig

    offered = TrainConfig.__dataclass_fields__["augment_preset"].metadata["choices"]
    assert tuple(offered) == tuple(PRESETS)
