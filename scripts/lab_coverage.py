"""How much of another lab's look an augmentation preset spans (issue 12).

Each image is summarised by bcclassify.serving.acquisition.summaries: its background chromaticity
(r and g of the brightest fifth of its pixels, normalised to r + g + b = 1), its background
brightness and the share of the frame darker than 80% of the background. A lab's image is "covered"
by a preset when each of its four numbers lies between the 1st and 99th percentiles of the same
number over augmented PBC images (one augmented copy of each sampled image). Prints JSON: the
covered share per preset and per number.

    .venv/bin/python scripts/lab_coverage.py --lab ../shared/data/ext-tecom --pbc-sample 1200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default=str(REPO.parent / "shared/data/ext-tecom"))
    parser.add_argument("--pbc", default=str(REPO.parent / "shared/data/pbc224"))
    parser.add_argument("--pbc-sample", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf

    from bcclassify.data.augment import augment_batch, preset
    from bcclassify.data.imaging import load_image
    from bcclassify.serving.acquisition import STATISTICS, summaries

    rng = np.random.default_rng(args.seed)
    pbc_files = sorted(Path(args.pbc).rglob("*.jpg"))
    pbc_files = [pbc_files[i] for i in rng.choice(len(pbc_files), args.pbc_sample, replace=False)]
    lab_files = sorted(p for p in Path(args.lab).rglob("*") if p.is_file())
    pbc = np.stack([load_image(p, 224) for p in pbc_files])
    lab = summaries(np.stack([load_image(p, 224) for p in lab_files]))
    result = {"lab_folder": Path(args.lab).name, "lab_images": len(lab), "pbc_images": len(pbc)}
    for name in ("none", "standard", "lab"):
        generator = tf.random.Generator.from_seed(args.seed)
        augmented = (
            pbc
            if name == "none"
            else np.concatenate(
                [
                    augment_batch(pbc[i : i + 64], generator, preset(name)).numpy()
                    for i in range(0, len(pbc), 64)
                ]
            )
        )
        numbers = summaries(augmented)
        low, high = np.percentile(numbers, [1, 99], axis=0)
        inside = (lab >= low) & (lab <= high)
        result[name] = {
            "covered": round(float(inside.all(axis=1).mean()), 3),
            "per_number": dict(zip(STATISTICS, inside.mean(axis=0).round(3).tolist())),
        }
    plain = summaries(pbc)
    result["lab_median_summary"] = np.median(lab, axis=0).round(3).tolist()
    result["pbc_median_summary"] = np.median(plain, axis=0).round(3).tolist()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
