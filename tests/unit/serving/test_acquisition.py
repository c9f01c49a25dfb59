"""The acquisition gate on "unidentified" (issue 12): an image taken unlike the training lab's
(background colour, brightness, darker share) is unidentified whatever the model's features say."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from helpers import FIXTURE_IMAGES, variants_store
from PIL import Image

from bcclassify.serving.acquisition import STATISTICS, AcquisitionRange, fit_range, summaries
from bcclassify.storage.cards import write_card


def _disc(background=(230, 225, 228), ink=(90, 40, 120), radius=20, size=64) -> np.ndarray:
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    yy, xx = np.mgrid[:size, :size]
    image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2] = ink
    return image


def _yellowed(image: np.ndarray) -> np.ndarray:
    """Another lab's illuminant: blue down, red up (as ext-tecom's yellowish backgrounds)."""
    return np.clip(image.astype(np.float32) * [1.08, 1.02, 0.80], 0, 255).astype(np.uint8)


def test_summaries_read_the_background_and_the_darker_share():
    numbers = summaries(np.stack([_disc(), _disc(radius=28)]))
    assert numbers.shape == (2, len(STATISTICS))
    r, g, brightness, darker = numbers[0]
    assert r == pytest.approx(230 / 683, abs=1e-3) and g == pytest.approx(225 / 683, abs=1e-3)
    assert brightness == pytest.approx(683 / 3 / 255, abs=1e-3)
    assert darker == pytest.approx(np.pi * 20**2 / 64**2, abs=0.02)
    assert numbers[1, 3] > numbers[0, 3]  # a cell filling more of the frame
    assert summaries(_yellowed(_disc())[None])[0, 0] > r + 0.01


def test_the_range_keeps_its_own_images_and_refuses_another_labs():
    rng = np.random.default_rng(0)
    images = [_disc(tuple(int(v) for v in rng.normal(228, 3, 3)), radius=rng.integers(14, 24))]
    images += [_disc(tuple(int(v) for v in rng.normal(228, 3, 3)), radius=r) for r in range(14, 24)]
    numbers = summaries(np.stack(images))
    fitted = fit_range(numbers, "test")
    assert not fitted.outside(numbers).any()
    assert fitted.outside(summaries(_yellowed(_disc())[None])).all()
    # widened to another lab's cells, it holds them and still everything it held
    lab = summaries(np.stack([_yellowed(_disc(radius=r)) for r in (15, 20)]))
    wider = fitted.widened_to(lab, "two lab cells")
    assert not wider.outside(np.concatenate([numbers, lab])).any()
    assert "two lab cells" in wider.fitted_on
    # the card round trip, and a card it does not understand
    again = AcquisitionRange.from_card(json.loads(json.dumps(wider.to_card())))
    np.testing.assert_allclose(again.low, wider.low, atol=1e-6)
    np.testing.assert_allclose(again.high, wider.high, atol=1e-6)
    assert AcquisitionRange.from_card(None) is None
    with pytest.raises(ValueError, match="not understood"):
        AcquisitionRange.from_card({**wider.to_card(), "statistics": ["hue"]})


def test_calibrate_fits_the_range_and_predict_flags_images_outside_it(tmp_path, cli):

    store, data = variants_store(tmp_path)
    result = cli(
        ["calibrate", "--model", "tiny-cnn", "--data", data, "--acquisition-only"], store=store
    )
    assert result.returncode == 0, result.stderr
    card = json.loads((store / "models" / "tiny-cnn" / "card.json").read_text())
    section = card["acquisition"]
    assert section["statistics"] == list(STATISTICS) and "training-split" in section["fitted_on"]
    assert set(section["outside_fraction"]) == {"validation", "test"}

    tinted = tmp_path / "other-lab"
    tinted.mkdir()
    for path in sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:4]:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(_yellowed(pixels)).save(tinted / f"{path.stem}.png")
    predicted = cli(["predict", "--model", "tiny-cnn", tinted, FIXTURE_IMAGES], store=store)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    flags = {r["path"]: r["flag"] for r in rows}
    assert all(flags[p] == "unidentified" for p in flags if str(tinted) in p)
    own = [flags[p] for p in flags if str(FIXTURE_IMAGES) in p]
    assert len(own) == 16 and own.count("unidentified") <= 1  # the training lab's cells pass

    # data the model was not trained on is one line and exit 2
    other = cli(
        ["calibrate", "--model", "tiny-cnn", "--data", FIXTURE_IMAGES, "--acquisition-only"],
        store=store,
    )
    assert other.returncode == 2 and "manifest differs" in other.stderr


def test_adapt_widens_the_range_to_the_labs_cells(tmp_path, cli, tiny_store, monkeypatch):
    from bcclassify.serving.classifier import load_model

    root = tmp_path / "store"
    shutil.copytree(tiny_store / "models" / "tiny-cnn", root / "models" / "tiny-cnn")
    folder = root / "models" / "tiny-cnn"
    own = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((32, 32)))
            for p in FIXTURE_IMAGES.rglob("*.jpg")
        ]
    )
    card = json.loads((folder / "card.json").read_text())
    card["acquisition"] = fit_range(summaries(own), "fixture cells").to_card()
    write_card(folder, card)
    lab = tmp_path / "lab"
    for path in sorted(FIXTURE_IMAGES.rglob("*.jpg")):
        (lab / path.parent.name).mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(_yellowed(pixels)).save(lab / path.parent.name / f"{path.stem}.png")
    args = ["adapt", "--from", "tiny-cnn", "--cells", lab, "--name", "tiny-yellow"]
    cli([*args, "--per-class", "1"], store=root, check=True)
    monkeypatch.setenv("BCCLASSIFY_STORE", str(root))
    source, adapted = load_model("tiny-cnn"), load_model("tiny-yellow")
    lab_cells = [(p.name, p) for p in sorted(lab.rglob("*.png"))]
    assert all(r.flag == "unidentified" for r in source.classify(lab_cells))
    assert not any(r.flag == "unidentified" for r in adapted.classify(lab_cells))
    assert "taken lab cells" in adapted.card["acquisition"]["fitted_on"]
