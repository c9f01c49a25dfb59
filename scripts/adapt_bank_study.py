"""Which part of the novelty score keeps a lab's cells "unidentified" after ``adapt`` (issue 21).

``adapt`` used to add the taken cells' features (the image as given) to the source model's k-NN
bank, keeping its outlier-exposure part and threshold; since this study it adds all 8 symmetries
(``NOVELTY_BANK`` in ``bcclassify/lab/adapt.py``). This study takes ``adapt``'s own draws of the
lab's cells, builds the first bank, and reports for the cells not taken the share over the threshold
by each part of the score (k-NN distance, outlier exposure, either), and the same with all 8
symmetries of each taken cell in the bank instead, and with the 8 augmented views (what the head is
fitted on) as well. Features come from the cache of
``scripts/adapt_head_study.py`` (16 views a cell; views 0-7 are the 8 symmetries, 0 the image as
given), computed there once per model weights. The acquisition range is not part of it.

    .venv/bin/python scripts/adapt_bank_study.py --cells ../shared/data/ext-tecom \\
        --out docs/adapt-bank-study-ext-tecom.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bcclassify import CLASS_NAMES  # noqa: E402
from bcclassify.lab.adapt import choose_cells, scan_cells  # noqa: E402
from scripts.adapt_head_study import (  # noqa: E402
    cached_features,
    cached_mid_features,
    served_index,
)

SYMMETRIES = 8


def over_threshold(detector, bank_extra: np.ndarray, query: np.ndarray) -> dict[str, float]:
    """Shares of ``query`` over the detector's threshold with ``bank_extra`` added to its bank."""
    parts = detector.with_bank(bank_extra).scaled_components(query)
    knn, oe = parts["knn"] > detector.threshold, parts["oe"] > detector.threshold
    return {"knn": float(knn.mean()), "oe": float(oe.mean()), "either": float((knn | oe).mean())}


def served_figures(f, m, taken, rest, labels, seed, detector, banks: dict, low_confidence: float):
    """What a reviewer meets on the cells not taken, for each bank in ``banks``: ``adapt``'s fit
    (head and mid-level read-out, temperature on cross-fitted probabilities) served with the
    detector grown by that bank (trust.trust_figures; the acquisition range left out)."""
    from bcclassify.lab.adapt import DEFAULT_PULL, cross_fitted, fit_head, served
    from bcclassify.lab.mid_level import DEFAULT_MID_WEIGHT, block_scales
    from bcclassify.serving.trust import fit_temperature, temper, trust_figures

    head_dim = f["feats"].shape[-1]
    on_taken = np.concatenate([f["feats"][:, taken], m["mid"][:, taken]], axis=-1)
    scales = block_scales(on_taken, head_dim, list(m["sizes"]), DEFAULT_MID_WEIGHT)
    on_taken *= scales
    views = served_index(f)
    on_rest = np.concatenate([f["feats"][views][:, rest], m["mid"][views][:, rest]], -1) * scales
    w0 = np.concatenate([f["w0"], np.zeros((len(scales) - head_dim, f["w0"].shape[1]))])
    w, b = fit_head(on_taken, labels[taken], w0, f["b0"], DEFAULT_PULL)
    oof = cross_fitted(on_taken, labels[taken], w0, f["b0"], DEFAULT_PULL, seed, on_taken[views])
    probs = temper(served(on_rest, w, b), fit_temperature(oof, labels[taken]))
    as_given = f["feats"][0, rest].astype(np.float32)
    return {
        name: trust_figures(
            labels[rest],
            probs,
            detector.with_bank(bank).score(as_given),
            detector.threshold,
            low_confidence,
        )
        for name, bank in banks.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hybrid")
    parser.add_argument("--cells", default=str(REPO.parent / "shared/data/ext-tecom"))
    parser.add_argument("--per-class", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--cache", default=str(REPO / "cache" / "adapt-head-study"))
    parser.add_argument("--out", default=None, help="also write the table here (JSON)")
    parser.add_argument(
        "--served",
        action="store_true",
        help="also fit adapt's head per draw and report what is served with each bank "
        "(accuracy, flagged, wrong and unflagged)",
    )
    args = parser.parse_args()

    from bcclassify.serving.trust import NoveltyDetector
    from bcclassify.storage.cards import load_card, weights_id
    from bcclassify.storage.store import models_dir

    folder = models_dir() / args.model
    with np.load(folder / load_card(folder)["novelty"]["file"]) as stored:
        detector = NoveltyDetector.from_arrays(stored)
    cells = scan_cells(Path(args.cells))
    items = [p for c in CLASS_NAMES for p in cells.get(c, [])]
    index = {p: i for i, p in enumerate(items)}
    f = cached_features(args.model, items, Path(args.cache))
    feats = f["feats"].astype(np.float32)
    as_given = feats[0]
    if args.served:
        m = cached_mid_features(args.model, items, Path(args.cache))
        labels = np.asarray([CLASS_NAMES.index(p.parent.name) for p in items])
        low_confidence = float(load_card(folder).get("low_confidence_threshold", 0.7))
    rows = []
    for k in args.per_class:
        for seed in args.seeds:
            taken_items, rest_items = choose_cells(cells, k, seed)
            taken = np.asarray([index[p] for p, _ in taken_items])
            rest = np.asarray([index[p] for p, _ in rest_items])
            row = {
                "per_class": k,
                "seed": seed,
                "taken": len(taken),
                "held_back": len(rest),
                "source bank": over_threshold(detector, as_given[:0], as_given[rest]),
                "taken cells as given (adapt until 2026-12-04)": over_threshold(
                    detector, as_given[taken], as_given[rest]
                ),
                "all 8 symmetries of the taken cells (adapt now)": over_threshold(
                    detector, feats[:SYMMETRIES, taken].reshape(-1, feats.shape[-1]), as_given[rest]
                ),
                "8 symmetries and 8 augmented views of the taken cells": over_threshold(
                    detector, feats[:, taken].reshape(-1, feats.shape[-1]), as_given[rest]
                ),
            }
            if args.served:
                banks = {
                    "all 8 symmetries of the taken cells (adapt now)": feats[:SYMMETRIES, taken],
                    "8 symmetries and 8 augmented views of the taken cells": feats[:, taken],
                }
                banks = {name: bank.reshape(-1, feats.shape[-1]) for name, bank in banks.items()}
                row["served"] = served_figures(
                    f, m, taken, rest, labels, seed, detector, banks, low_confidence
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        summary = {
            bank: {
                part: float(np.mean([row[bank][part] for row in rows]))
                for part in ("knn", "oe", "either")
            }
            for bank in [key for key in rows[0] if isinstance(rows[0][key], dict)]
            if bank != "served"
        }
        if args.served:
            summary["served"] = {
                bank: {
                    f"{key}_{how.__name__}": float(how([row["served"][bank][key] for row in rows]))
                    for key in (
                        "accuracy",
                        "flagged_fraction",
                        "unidentified_fraction",
                        "wrong_and_unflagged_fraction",
                    )
                    for how in (np.mean, np.min, np.max)
                }
                for bank in rows[0]["served"]
            }
        Path(args.out).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "weights_id": weights_id(load_card(folder)),
                    "cells": Path(args.cells).name,
                    "threshold": detector.threshold,
                    "mean_over_draws": summary,
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
