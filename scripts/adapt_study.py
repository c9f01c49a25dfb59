"""Zero-shot vs adapted on another lab's cells (issue 12): reruns the README's figures.

For each seed: ``adapt --from MODEL --cells DIR --per-class K --seed S --evaluate`` into a
temporary store that links the installed source model (nothing is added to model_store/), then
the before/after figures on the lab's cells that were not taken. Writes a JSON summary.

    .venv/bin/python scripts/adapt_study.py --cells ../shared/data/ext-tecom \\
        --seeds 0 1 2 --out docs/adapt-ext-tecom.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hybrid")
    parser.add_argument("--cells", default=str(REPO.parent / "shared/data/ext-tecom"))
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=str(REPO / "docs/adapt-ext-tecom.json"))
    args = parser.parse_args()

    from bcclassify.cli.quiet_tensorflow import import_tensorflow_quietly
    from bcclassify.storage.store import models_dir

    source = models_dir() / args.model
    import_tensorflow_quietly()
    from bcclassify.lab.adapt import AdaptConfig, adapt

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # A temporary store in which the source model is a link: the adapted copies (and their
        # run records) go away with it.
        (Path(tmp) / "models").mkdir()
        (Path(tmp) / "models" / args.model).symlink_to(source.resolve())
        os.environ["BCCLASSIFY_STORE"] = tmp
        for seed in args.seeds:
            done = adapt(
                AdaptConfig(
                    source=args.model,
                    cells=args.cells,
                    name=f"{args.model}-study-{seed}",
                    per_class=args.per_class,
                    seed=seed,
                    evaluate=True,
                )
            )
            row = {
                "seed": seed,
                "taken": done.taken,
                "held_back": done.held_back,
                "adapt_seconds": done.fit_seconds,
                "seconds_with_evaluation": done.seconds,
                "temperature": done.card["calibration"]["temperature"],
                **done.figures,
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    summary = {
        "model": args.model,
        "cells": Path(args.cells).name,
        "per_class": args.per_class,
        "runs": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
