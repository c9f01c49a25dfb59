"""``adapt``: fit an installed model to another lab from a few labelled cells, and install it.

Its options are AdaptConfig's fields (bcclassify/lab/adapt.py), generated with their help and
defaults; the fields the app or the study set (the pull, the augmented views, the run id, the
reviewer) are not options.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bcclassify.cli.common import EXIT_OK, SubParsers, UsageError, start_tensorflow
from bcclassify.cli.from_config import add_config_options, config_from_args
from bcclassify.lab.adapt import AdaptConfig, AdaptError, adapt, choose_cells, scan_cells

__all__ = ["add_adapt", "run_adapt"]

NOT_OPTIONS = ("pull", "augmented_views", "run_id", "requested_by")


def add_adapt(sub: SubParsers) -> None:
    p = sub.add_parser(
        "adapt",
        help="fit an installed model to another lab from a few labelled cells; install it",
        description="Refit the classifier head of --from on at most --per-class cells of each "
        "class folder of --cells (chosen by --seed; the others are not used), pulled toward the "
        "source head, with a new read-out of pooled mid-level blocks beside it where the "
        "architecture names them (the hybrid); refit the temperature on cross-fitted "
        "probabilities and add the taken cells to the novelty detector's bank; install the "
        "result as --name. The card lists "
        "the sha256 of every cell used; the run is recorded under model_store/runs/. Exit 2 on "
        "bad input (missing or empty folder, unknown class folder, unreadable image).",
    )
    add_config_options(p, AdaptConfig, skip=NOT_OPTIONS)


def run_adapt(args: argparse.Namespace) -> int:
    config = config_from_args(AdaptConfig, args)
    try:
        # The folder's faults answer before TensorFlow's start-up is paid.
        choose_cells(scan_cells(Path(config.cells)), config.per_class, config.seed)
        start_tensorflow()
        done = adapt(config)
    except AdaptError as exc:
        raise UsageError(str(exc)) from None
    summary = {
        "name": done.name,
        "source_model": done.card["source_model"]["name"],
        "adaptation_run": done.run_dir.name,
        "taken": done.taken,
        "held_back": done.held_back,
        "temperature": done.card["calibration"]["temperature"],
        "seconds": done.seconds,
    }
    if done.figures is not None:
        summary["held_back_figures"] = done.figures
    print(json.dumps(summary, indent=2))
    return EXIT_OK
