"""``python -m bcclassify``: the parser of every command, and the exit status of a run.

Each command lives in its own module (train, predict, evaluate, models, explain, bench, users,
reviews, adapt, api) as ``add_<command>(sub)``, which declares its options, and
``run_<command>(args)``, which returns its exit status. Here they are put together, and
whatever a command raises becomes one line on stderr and a status (README, "Exit statuses").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable

from bcclassify.cli import (
    adapt,
    api,
    bench,
    evaluate,
    explain,
    models,
    predict,
    reviews,
    train,
    users,
)
from bcclassify.cli.common import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    UsageError,
)
from bcclassify.cli.models import markdown_tables
from bcclassify.serving.classifier import ModelIntegrityError

__all__ = [
    "COMMANDS",
    "DEBUG_ENV",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "markdown_tables",
]

DEBUG_ENV = "BCCLASSIFY_DEBUG"  # set to 1 (or pass --debug) for the traceback of an internal error

# In the order --help lists them.
PARSERS = (
    train.add_train,
    train.add_interpolate,
    evaluate.add_evaluate,
    models.add_promote,
    models.add_list,
    models.add_models,
    predict.add_predict,
    explain.add_explain,
    bench.add_bench,
    explain.add_faithfulness,
    users.add_users,
    reviews.add_reviews,
    models.add_calibrate,
    models.add_seal,
    models.add_compile,
    adapt.add_adapt,
    api.add_serve_api,
    api.add_api_tokens,
)

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": train.run_train,
    "interpolate": train.run_interpolate,
    "evaluate": evaluate.run_evaluate,
    "promote": models.run_promote,
    "list": models.run_list,
    "models": models.run_models,
    "predict": predict.run_predict,
    "explain": explain.run_explain,
    "bench": bench.run_bench,
    "faithfulness": explain.run_faithfulness,
    "users": users.run_users,
    "reviews": reviews.run_reviews,
    "calibrate": models.run_calibrate,
    "seal": models.run_seal,
    "compile": models.run_compile,
    "adapt": adapt.run_adapt,
    "serve-api": api.run_serve_api,
    "api-tokens": api.run_api_tokens,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcclassify",
        description="Peripheral blood cell classification (PBC classes) with Grad-CAM.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of an internal error (exit 3); also {DEBUG_ENV}=1",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status (0 ok, 1 refused inputs, 2 usage, 3 internal).

    An unexpected exception is reported in one line on stderr and exits 3; its traceback is
    printed only with ``--debug`` or ``BCCLASSIFY_DEBUG=1``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error of ours; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns a crash into a status
        if isinstance(exc, ModelIntegrityError):  # however a command reached the model
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return _internal_error(exc, args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"))


def _internal_error(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    detail = " ".join(str(exc).split()) or "no message"
    hint = "" if debug else f"; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    print(f"internal error: {type(exc).__name__}: {detail}{hint}", file=sys.stderr)
    return EXIT_INTERNAL


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "train":
        logging.getLogger("bcclassify").setLevel(logging.INFO)
    if not args.verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before any command imports TensorFlow
    return COMMANDS[args.command](args)
