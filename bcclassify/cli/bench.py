"""``bench``: measure an installed model's load, predict and explain speed."""

from __future__ import annotations

import argparse
import json

from bcclassify.cli.common import EXIT_OK, SubParsers, load_classifier
from bcclassify.serving.bench import run_benchmark
from bcclassify.storage.store import models_dir, write_json

__all__ = ["add_bench", "run_bench"]


def add_bench(sub: SubParsers) -> None:
    p = sub.add_parser("bench", help="measure load, predict and explain speed")
    p.add_argument("--model", help="installed model name (default: the default model)")
    p.add_argument("--repeats", type=int, default=20, help="single-image calls to time")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.add_argument("--save", action="store_true", help="also write bench.json beside the model")
    p.add_argument(
        "--keras",
        action="store_true",
        help="answer with the Keras model even where a compiled graph is cached (to compare)",
    )


def run_bench(args: argparse.Namespace) -> int:
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
