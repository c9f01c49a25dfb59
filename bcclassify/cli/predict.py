"""``predict``: classify image files or folders; CSV (or JSON) on stdout (README, "The predict
contract")."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from bcclassify.cli.common import EXIT_OK, EXIT_REFUSED, SubParsers, UsageError, load_classifier
from bcclassify.data.imaging import collect_image_paths
from bcclassify.review.report import batch_shift_notice
from bcclassify.serving.classifier import iter_sources, prediction_json

__all__ = ["add_predict", "prediction_json", "run_predict"]


def add_predict(sub: SubParsers) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files or folders; CSV (or JSON) on stdout",
        description="Classify cell images. Folders are searched recursively (hidden files "
        "skipped); one row per file, sorted by path; CSV rows are written (and flushed) batch by "
        "batch, so an interrupted run keeps its finished rows; JSON is written at the end. A "
        "progress bar goes to stderr when it is a terminal. Exit 0: all classified; 1: some "
        "files or folders refused (each named on stderr and in its row); 2: usage error or a "
        "model that fails its integrity check; 3: internal error.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    p.add_argument("--model", help="installed model name (default: the default model)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--batch-size", type=int, default=32)


def run_predict(args: argparse.Namespace) -> int:
    # pandas (1.5 s) at start-up: paid by predict only, not by every command and --help.
    from bcclassify.presentation.tables import prediction_rows, write_prediction_csv

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not args.paths:
        raise UsageError("no inputs: give one or more image files or folders")
    paths = collect_image_paths(args.paths)  # sorted: rows can be written as soon as final
    if not paths:
        raise UsageError(f"no files found in {', '.join(args.paths)}")
    classifier = load_classifier(args.model)
    names = classifier.class_names
    csv_out = args.format == "csv"
    if csv_out:
        write_prediction_csv([], names, sys.stdout)
        sys.stdout.flush()
    payload: list[dict] = []
    refused = classified = unidentified = 0
    # On a terminal only (disable=None): a log or pipe keeps exactly one line per refused input.
    bar = tqdm(
        total=len(paths),
        desc="classifying",
        unit="image",
        file=sys.stderr,
        disable=None if len(paths) > 1 else True,
    )
    with bar:
        for start in range(0, len(paths), args.batch_size):
            batch = paths[start : start + args.batch_size]
            predictions = classifier.classify(iter_sources(batch), batch_size=args.batch_size)
            if csv_out:
                # Flushed per batch, so a killed run leaves every finished row behind it.
                write_prediction_csv(
                    prediction_rows(predictions, names), names, sys.stdout, header=False
                )
                sys.stdout.flush()
            else:
                payload.extend(prediction_json(pred, names) for pred in predictions)
            for pred in predictions:
                if not pred.ok:
                    refused += 1
                    bar.write(f"refused: {' '.join(pred.error.split())}", file=sys.stderr)
                else:
                    classified += 1
                    unidentified += pred.flag == "unidentified"
            bar.update(len(batch))
    if not csv_out:
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    notice = batch_shift_notice(classified, unidentified)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    return EXIT_REFUSED if refused else EXIT_OK
