"""``bench``: measure an installed model's load, predict and explain speed, or what a run's
architecture costs (``--run``)."""

from __future__ import annotations

import argparse
import json

from bcclassify.cli.common import EXIT_OK, SubParsers, UsageError, load_classifier
from bcclassify.serving.bench import architecture_cost, run_benchmark
from bcclassify.storage.runs import RunRecord, run_summaries
from bcclassify.storage.store import models_dir, runs_dir, write_json

__all__ = ["add_bench", "run_bench"]


def add_bench(sub: SubParsers) -> None:
    p = sub.add_parser("bench", help="measure load, predict and explain speed")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--model", help="installed model name (default: the default model)")
    target.add_argument(
        "--run",
        nargs="+",
        metavar="RUN_ID",
        help="instead: each run's architecture at its input size (parameters, FLOPs, one "
        "forward pass), saved as the run's cost.json for the comparison page; 'all' for every "
        "finished run without one",
    )
    p.add_argument("--repeats", type=int, default=20, help="single-image calls to time")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.add_argument("--save", action="store_true", help="also write bench.json beside the model")
    p.add_argument(
        "--keras",
        action="store_true",
        help="answer with the Keras model even where a compiled graph is cached (to compare)",
    )


def _bench_runs(args: argparse.Namespace) -> int:
    if args.run == ["all"]:
        ids = [r.run_id for r in run_summaries() if r.finished and r.parameters is None]
    else:
        ids = args.run
    odd = [i for i in ids if not i or "/" in i or "\\" in i or i.startswith(".")]
    if odd:
        raise UsageError(f"{odd[0]!r} is not a run id (a folder name under {runs_dir()})")
    records = [RunRecord.of(run_id) for run_id in ids]
    for record in records:  # all named runs checked before any is measured
        if record.summary() is None:
            raise UsageError(f"no run {record.run_id!r} in {runs_dir()}")
    for record in records:
        summary = record.summary()
        cost = architecture_cost(
            summary.arch,
            summary.image_size,
            summary.center_crop or 1.0,
            max(args.repeats, 5),
            norm=record.config().get("norm", "batch"),
        )
        record.write_cost(cost)
        if args.json:
            print(json.dumps({"run_id": record.run_id, **cost}))
        else:
            print(
                f"{record.run_id}: {cost['parameters']:,} parameters, "
                f"{1000 * cost['forward_single_s']:.0f} ms a forward pass"
            )
    return EXIT_OK


def run_bench(args: argparse.Namespace) -> int:
    if args.run:
        return _bench_runs(args)
    name = load_classifier(args.model).name
    result = run_benchmark(name, repeats=max(args.repeats, 20), compiled=not args.keras)
    if args.save:
        write_json(models_dir() / name / "bench.json", result)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return EXIT_OK
