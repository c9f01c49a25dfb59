"""``train``: train a model and record the run under model_store/runs (or resume one).

Its options are TrainConfig's fields (bcclassify/training/runs.py), generated with their help,
choices and defaults; only ``--resume`` is not a setting of the run.
"""

from __future__ import annotations

import argparse

from bcclassify import ARCHITECTURES
from bcclassify.cli.common import EXIT_OK, SubParsers, UsageError, start_tensorflow
from bcclassify.cli.from_config import add_config_options, config_from_args
from bcclassify.training.runs import TrainConfig, resume, train

__all__ = ["add_interpolate", "add_train", "run_interpolate", "run_train"]


def add_train(sub: SubParsers) -> None:
    p = sub.add_parser("train", help="train a model and record the run under model_store/runs")
    # Not required here: --resume RUN_ID needs neither --arch nor --data; run_train checks.
    add_config_options(p, TrainConfig, choices={"arch": ARCHITECTURES}, optional=True)
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")


def run_train(args: argparse.Namespace) -> int:
    if not args.resume and (not args.arch or not args.data):
        raise UsageError("train needs --arch and --data (or --resume RUN_ID)")
    start_tensorflow()
    run_dir = resume(args.resume) if args.resume else train(config_from_args(TrainConfig, args))
    print(run_dir.name)
    return EXIT_OK


def add_interpolate(sub: SubParsers) -> None:
    p = sub.add_parser(
        "interpolate",
        help="record a fine-tuned run mixed in weight space with the weights it started from "
        "(WiSE-FT) as a new run",
    )
    p.add_argument(
        "run_id", metavar="RUN_ID", help="a finished run (trained with --init-from, or see --start)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="share of the fine-tuned weights, 0-1 (default 0.5; 0 gives back the start)",
    )
    p.add_argument("--run-id", dest="new_run_id", help="the new run's id (default RUN_ID-wiseNN)")
    p.add_argument(
        "--start",
        metavar="FROM",
        help="the weights to mix with: model:NAME or a run id (default: the run's --init-from; "
        "name it for a run imported from a GPU)",
    )


def run_interpolate(args: argparse.Namespace) -> int:
    from bcclassify.training.interpolate import interpolate_run

    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must lie between 0 and 1, not {args.alpha}")
    start_tensorflow()
    print(interpolate_run(args.run_id, args.alpha, args.new_run_id, args.start).name)
    return EXIT_OK
