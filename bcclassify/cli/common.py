"""What every command shares: exit statuses, the usage error, TensorFlow on demand, model loading.

Exit statuses (README, "Exit statuses"): 1 is only ever "some inputs refused", so a script can
tell it from a crash (3) or a mistake in the call, an unknown or unverifiable model (2).
"""

from __future__ import annotations

import argparse

from bcclassify.serving.classifier import (
    ClassifierModel,
    ModelIntegrityError,
    ModelNotFoundError,
    check_views,
    load_model,
)
from bcclassify.serving.quiet_tensorflow import import_tensorflow_quietly

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "SubParsers",
    "UsageError",
    "load_classifier",
    "start_tensorflow",
    "view_list",
]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

# What ``ArgumentParser.add_subparsers`` returns; argparse does not name the class publicly.
SubParsers = argparse._SubParsersAction


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""


def start_tensorflow() -> None:
    """Import TensorFlow (muted) once a command's arguments are known to be valid.

    Commands call this after their own checks, so a usage error answers in a second instead of
    paying the TensorFlow start-up first.
    """
    import_tensorflow_quietly()


def load_classifier(name: str | None, compiled: bool = True) -> ClassifierModel:
    """The installed model ``name`` (None: the default); unknown or damaged: a usage error.

    TensorFlow is imported (muted) only if the model has no compiled graph to answer from.
    """
    try:
        return load_model(name, compiled=compiled)
    except (ModelNotFoundError, ModelIntegrityError) as exc:
        raise UsageError(str(exc)) from None


def view_list(text: str) -> list[str]:
    """``--views``: comma-separated test-time views, each checked against the known ones."""
    try:
        return list(check_views([v.strip() for v in text.split(",") if v.strip()]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
