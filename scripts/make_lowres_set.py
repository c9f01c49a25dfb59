"""A low-resolution copy of another lab's cells, for #21's adaptation figures.

No low-resolution set from another microscope can be downloaded here, so this one is simulated:
each ext-tecom crop (120 px, Motic camera, Rapid WBC stain) shrunk to half its side with a
Lanczos filter and saved as JPEG at quality 70, as a cheaper camera or a lower magnification with
lossy export would give. It is the same lab and microscope as ext-tecom, so it measures what
resolution and compression cost, not another microscope's optics; report it as simulated.

    .venv/bin/python scripts/make_lowres_set.py [--scale 0.5] [--quality 70]

Writes ``cache/ext-tecom-lowres/<class>/<name>.jpg`` (deterministic; never shipped: the source
images are not ours to redistribute).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bcclassify.data.datasets import scan_dataset  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=str(REPO.parent / "shared" / "data" / "ext-tecom"))
    parser.add_argument("--out", default=str(REPO / "cache" / "ext-tecom-lowres"))
    parser.add_argument("--scale", type=float, default=0.5, help="side of the copy / original")
    parser.add_argument("--quality", type=int, default=70, help="JPEG quality of the copy")
    args = parser.parse_args()

    cells = scan_dataset(Path(args.cells))
    out = Path(args.out)
    for path, index in zip(cells.paths, cells.labels):
        label = cells.class_names[int(index)]
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        size = (max(1, round(rgb.width * args.scale)), max(1, round(rgb.height * args.scale)))
        target = out / label / f"{Path(path).stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        rgb.resize(size, Image.LANCZOS).save(target, "JPEG", quality=args.quality)
    print(f"wrote {len(cells)} cells to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
