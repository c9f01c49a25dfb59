"""Build the non-cell image sets of the trust study from what installs here.

Two disjoint sets, written as PNG/JPEG files under ``cache/noncell/{fit,dev}/<kind>/``:

- ``dev``: the development set the novelty figures are reported on. Never used to fit or to
  choose a threshold.
- ``fit``: other sources of the same kinds, the only non-cell images a detector may be fitted on.

Kinds: everyday photographs (sample pictures shipped in scikit-image and scikit-learn, cropped at
several scales), red cells only (corners of PBC images with no stained nucleus or platelet:
``dev`` from the test split, ``fit`` from the training split), blank stained background, noise,
text, and icons/diagrams (image files that ship with the system's packages).

Needs scikit-image for its sample pictures (``pip install scikit-image``; not a runtime
dependency). Deterministic: ``python scripts/make_noncell_sets.py`` rebuilds the same files.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bcclassify.data.datasets import scan_dataset, train_val_test_split  # noqa: E402

OUT = REPO / "cache" / "noncell"
PBC = REPO.parent / "shared" / "data" / "pbc224"

# Which sample pictures go where: the two sets share no source picture.
PHOTOS = {
    "dev": [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "hubble_deep_field.jpg",
        "ihc.png",
        "retina.jpg",
    ],
    "fit": [
        "brick.png",
        "grass.png",
        "gravel.png",
        "camera.png",
        "coins.png",
        "moon.png",
        "color.png",
        "logo.png",
        "sklearn:china.jpg",
        "sklearn:flower.jpg",
        "cell.png",
        "microaneurysms.png",
    ],
}
WORDS = (
    "blood smear report patient sample lymphocyte neutrophil platelet count result stain "
    "microscope hospital laboratory invoice meeting agenda hello world 1234 5678"
).split()


def _sample_picture(name: str) -> Image.Image:
    if name.startswith("sklearn:"):
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        return Image.open(folder / name.split(":", 1)[1]).convert("RGB")
    import skimage

    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


def _save(img: Image.Image, folder: Path, stem: str, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if rng.random() < 0.5:
        img.save(folder / f"{stem}.png")
    else:
        img.save(folder / f"{stem}.jpg", quality=int(rng.integers(70, 96)))


def photos(split: str, rng, per_picture: int) -> None:
    for name in PHOTOS[split]:
        pic = _sample_picture(name)
        w, h = pic.size
        for k in range(per_picture):
            side = int(min(w, h) * rng.uniform(0.3, 1.0))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            crop = pic.crop((x, y, x + side, y + side)).resize((224, 224), Image.LANCZOS)
            _save(crop, OUT / split / "photo", f"{Path(name.split(':')[-1]).stem}-{k}", rng)


def _stained_fraction(rgb: np.ndarray) -> float:
    """Share of pixels coloured like a stained nucleus or platelet (violet: blue over green)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return float(np.mean((b - g > 45) & (r - g > 10) & (g < 150)))


def red_cells(split: str, rng, count: int) -> None:
    dataset = scan_dataset(PBC)
    parts = train_val_test_split(dataset.labels, dataset.hashes, 42)
    pool = parts.test if split == "dev" else parts.train
    made = 0
    for i in rng.permutation(pool):
        rgb = np.asarray(Image.open(dataset.paths[i]).convert("RGB"))
        side = int(rng.integers(70, 100))
        corner = int(rng.integers(4))
        y = 0 if corner < 2 else 224 - side
        x = 0 if corner % 2 == 0 else 224 - side
        patch = rgb[y : y + side, x : x + side]
        if _stained_fraction(patch) > 0.002:
            continue
        img = Image.fromarray(patch).resize((224, 224), Image.LANCZOS)
        _save(img, OUT / split / "red_cells", f"{dataset.paths[i].stem}-c{corner}", rng)
        made += 1
        if made >= count:
            return


def blank_stain(split: str, rng, count: int) -> None:
    for k in range(count):
        base = np.array([rng.uniform(200, 245), rng.uniform(180, 230), rng.uniform(170, 225)])
        yy, xx = np.mgrid[0:224, 0:224] / 224.0
        tilt = rng.normal(0, 8, size=(2, 3))
        rgb = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
        rgb += rng.normal(0, rng.uniform(1, 6), size=rgb.shape)
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        _save(
            img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 2))),
            OUT / split / "blank",
            f"blank-{k}",
            rng,
        )


def noise(split: str, rng, count: int) -> None:
    for k in range(count):
        kind = k % 4
        if kind == 0:
            rgb = rng.integers(0, 256, size=(224, 224, 3))
        elif kind == 1:
            rgb = rng.normal(128, rng.uniform(20, 80), size=(224, 224, 3))
        elif kind == 2:  # smooth coloured blobs
            small = rng.integers(0, 256, size=(int(rng.integers(4, 16)),) * 2 + (3,))
            rgb = np.asarray(
                Image.fromarray(small.astype(np.uint8)).resize((224, 224), Image.BICUBIC)
            )
        else:  # salt and pepper on grey
            rgb = np.full((224, 224, 3), rng.uniform(60, 200))
            mask = rng.random((224, 224)) < 0.1
            rgb[mask] = rng.choice([0, 255], size=(int(mask.sum()), 1))
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        _save(img, OUT / split / "noise", f"noise-{k}", rng)


def text(split: str, rng, count: int) -> None:
    for k in range(count):
        bg = tuple(int(v) for v in rng.integers(180, 256, size=3))
        img = Image.new("RGB", (224, 224), bg)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=float(rng.integers(14, 40)))
        y = int(rng.integers(0, 30))
        while y < 210:
            line = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            fill = tuple(int(v) for v in rng.integers(0, 120, size=3))
            draw.text((int(rng.integers(0, 40)), y), line, fill=fill, font=font)
            y += int(rng.integers(20, 50))
        _save(img, OUT / split / "text", f"text-{k}", rng)


def icons(split: str, rng, count: int) -> None:
    roots = {
        "dev": [Path("/usr/share/icons/Adwaita")],
        "fit": [Path("/usr/share/doc"), Path("/root/.rustup")],
    }[split]
    files = sorted(
        p
        for root in roots
        if root.exists()
        for p in root.rglob("*.png")
        if p.stat().st_size > 15_000
    )
    for k, path in enumerate(rng.permutation(files)[:count]):
        with Image.open(path) as img:
            img.load()
            rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        buffer = io.BytesIO()
        flat.save(buffer, format="PNG")
        _save(Image.open(buffer), OUT / split / "icon", f"icon-{k}", rng)


def main() -> None:
    for split, seed in (("dev", 1), ("fit", 2)):
        rng = np.random.default_rng(seed)
        photos(split, rng, per_picture=8 if split == "dev" else 6)
        red_cells(split, rng, 60)
        blank_stain(split, rng, 25)
        noise(split, rng, 30)
        text(split, rng, 25)
        icons(split, rng, 25)
        for kind in sorted((OUT / split).iterdir()):
            print(split, kind.name, len(list(kind.iterdir())))


if __name__ == "__main__":
    main()
