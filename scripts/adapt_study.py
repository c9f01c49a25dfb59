"""Zero-shot vs adapted on another lab's cells, and adapt's learning curve (issues 12 and 21).

For each cells-a-class K and each seed: ``adapt --from MODEL --cells DIR --per-class K --seed S
--evaluate`` into a temporary store that links the installed source model (nothing is added to
model_store/), then the before/after figures on the lab's cells that were not taken. Each draw
is appended to the JSON file as soon as it is done, so a stopped study resumes where it was:
draws already there for the same source weights are not run again.

    .venv/bin/python scripts/adapt_study.py --cells ../shared/data/ext-tecom \\
        --per-class 5 10 20 50 --seeds 0 1 2 3 4 --out docs/adapt-curve-ext-tecom.json

``--write-card`` then puts the curve's summary into the source model's card (``adaptation_curve``
section, through the card writer), which the Adapt page shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def read_study(
    path: Path, model: str, weights: str, cells: str, bank: str, mid_weight: float
) -> list[dict]:
    """The draws already in ``path`` for this source model's weights, these cells, adapt's
    novelty bank and mid-level weight (files from before it was recorded: 0, the head alone)."""
    if not path.exists():
        return []
    study = json.loads(path.read_text())
    key = (study.get("weights_id"), study.get("cells"), study.get("novelty_bank"))
    if key != (weights, cells, bank) or study.get("mid_weight", 0.0) != mid_weight:
        return []  # another model, set or method: start again (the file is rewritten)
    return [row for row in study.get("runs", []) if study.get("model") == model]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hybrid")
    parser.add_argument("--cells", default=str(REPO.parent / "shared/data/ext-tecom"))
    parser.add_argument("--per-class", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=str(REPO / "docs/adapt-curve-ext-tecom.json"))
    parser.add_argument(
        "--mid-weight",
        type=float,
        default=None,
        help="adapt's mid_weight (default: adapt's own; 0: the head's features only)",
    )
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="write the summary into the source model's card (after the draws)",
    )
    args = parser.parse_args()

    from bcclassify.lab.curve import record_curve, summarise_curve
    from bcclassify.serving.quiet_tensorflow import import_tensorflow_quietly
    from bcclassify.storage.cards import load_card, weights_id
    from bcclassify.storage.store import atomic_write_bytes, models_dir

    source = models_dir() / args.model
    weights = weights_id(load_card(source))
    cells_name = Path(args.cells).name
    out = Path(args.out)
    from bcclassify.lab.adapt import NOVELTY_BANK
    from bcclassify.lab.mid_level import DEFAULT_MID_WEIGHT

    mid_weight = DEFAULT_MID_WEIGHT if args.mid_weight is None else args.mid_weight
    results = read_study(out, args.model, weights, cells_name, NOVELTY_BANK, mid_weight)
    done = {(row["per_class"], row["seed"]) for row in results}

    def save() -> dict:
        study = {
            "model": args.model,
            "weights_id": weights,
            "cells": cells_name,
            "novelty_bank": NOVELTY_BANK,
            "mid_weight": mid_weight,
            "runs": sorted(results, key=lambda r: (r["per_class"], r["seed"])),
        }
        atomic_write_bytes(out, (json.dumps(study, indent=2) + "\n").encode())
        return study

    todo = [(k, s) for k in args.per_class for s in args.seeds if (k, s) not in done]
    if todo:
        import_tensorflow_quietly()
        from bcclassify.lab.adapt import AdaptConfig, adapt, choose_cells, scan_cells

        scanned = scan_cells(Path(args.cells))
        with tempfile.TemporaryDirectory() as tmp:
            # A temporary store in which the installed models (the source and the second
            # opinion its card names) are links: the adapted copies and their run records go
            # away with it.
            (Path(tmp) / "models").mkdir()
            for folder in models_dir().iterdir():
                if not folder.name.startswith("."):
                    (Path(tmp) / "models" / folder.name).symlink_to(folder.resolve())
            os.environ["BCCLASSIFY_STORE"] = tmp
            for per_class, seed in todo:
                adapted = adapt(
                    AdaptConfig(
                        source=args.model,
                        cells=args.cells,
                        name=f"{args.model}-study-{per_class}-{seed}",
                        per_class=per_class,
                        seed=seed,
                        mid_weight=mid_weight,
                        evaluate=True,
                    )
                )
                _, rest = choose_cells(scanned, per_class, seed)
                row = {
                    "per_class": per_class,
                    "seed": seed,
                    "taken": adapted.taken,
                    "held_back": adapted.held_back,
                    "held_back_by_class": dict(Counter(name for _, name in rest)),
                    "adapt_seconds": adapted.fit_seconds,
                    "seconds_with_evaluation": adapted.seconds,
                    "temperature": adapted.card["calibration"]["temperature"],
                    **adapted.figures,
                }
                print(json.dumps(row), flush=True)
                results.append(row)
                save()
                # Out of the temporary store again: the adapted-model quota counts installs.
                shutil.rmtree(Path(tmp) / "models" / adapted.name)
    study = save()
    summary = summarise_curve(study["runs"])
    print(json.dumps(summary, indent=2))
    if args.write_card:
        command = shlex.join(["python", "scripts/adapt_study.py", *sys.argv[1:]])
        record_curve(source, summary, cells=cells_name, study=out.name, command=command)
        print(f"written into {source / 'card.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
