"""``reviews``: checks on the review log (``reviews verify``: its hash chain is unbroken)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bcclassify.cli.common import EXIT_OK, EXIT_REFUSED, SubParsers, UsageError

__all__ = ["add_reviews", "run_reviews"]


def add_reviews(sub: SubParsers) -> None:
    p = sub.add_parser(
        "reviews",
        help="check the review log (verify its hash chain)",
        description="The review log is append-only and hash-chained: each row stores the sha256 "
        "of its content and of the previous row's hash. verify recomputes the chain read-only "
        "and names the first broken row (exit 1), or says how many rows are intact (exit 0).",
    )
    actions = p.add_subparsers(dest="reviews_command", required=True)
    verify = actions.add_parser("verify", help="recompute the hash chain; report the first break")
    verify.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="PATH",
        help="the review log (default: reviews.sqlite3 in $BCCLASSIFY_DATA_DIR or ~/.bcclassify)",
    )


def run_reviews(args: argparse.Namespace) -> int:
    from bcclassify.review.reviews import (
        LOG_NAME,
        ReviewLogUnavailable,
        default_data_dir,
        verify_chain,
    )

    path = args.db or default_data_dir() / LOG_NAME
    try:
        report = verify_chain(path)
    except ReviewLogUnavailable as exc:
        raise UsageError(str(exc)) from None
    if report.intact:
        print(f"{path}: {report.rows} row(s), hash chain intact")
        return EXIT_OK
    print(f"{path}: hash chain broken at row id {report.broken_id}: {report.reason}")
    print(f"{path}: row {report.broken_id} is not as written", file=sys.stderr)
    return EXIT_REFUSED
