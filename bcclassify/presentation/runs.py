"""What the Training runs page shows, as data: the runs table filtered, and what a stopped run
needs to continue (no Streamlit here; ``ui.runs`` draws it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bcclassify.presentation.pages import without_machine_paths
from bcclassify.storage.store import can_resume

RUN_OPTIONS = ["SMOTE", "augmentation", "shuffle"]  # boolean columns of the runs table
# What a run record says about people and their files: who asked for an adaptation, the upload's
# name, each cell's file name, errors quoting them. Shown to logged-in users only.
PRIVATE_RUN_KEYS = ("requested_by", "cells", "cells_sha256", "error")
HIDDEN = "(hidden: log in to see)"


def filter_runs(
    table: pd.DataFrame,
    architectures: Sequence[str] = (),
    statuses: Sequence[str] = (),
    options: Sequence[str] = (),
    text: str = "",
) -> pd.DataFrame:
    """The runs that match every filter given: an empty filter keeps all; ``text`` is looked for
    in the run id and the note, case-insensitively."""
    if architectures:
        table = table[table["architecture"].isin(architectures)]
    if statuses:
        table = table[table["status"].isin(statuses)]
    for option in options:
        table = table[table[option]]
    if text:
        mask = table["run id"].str.contains(text, case=False, regex=False)
        table = table[mask | table["note"].str.contains(text, case=False, regex=False)]
    return table


def stopped_note(run: dict) -> str | None:
    """For a run whose process is gone before it finished: how to continue it (None otherwise)."""
    if can_resume(run):
        return (
            f"{run['run_id']} stopped before finishing (its process is gone). Continue it "
            f"with `python -m bcclassify train --resume {run['run_id']}`."
        )
    if run.get("interrupted"):
        return (
            f"{run['run_id']} stopped before finishing (its process is gone); resuming it "
            f"needs its training data, `{without_machine_paths(run.get('data'))}`, "
            "on this machine."
        )
    return None


def for_viewer(record: Mapping[str, Any], signed_in: bool) -> dict[str, Any]:
    """A run's config.json or run.json as a page shows it: whole to a logged-in user; to anyone
    else, the values naming people or files replaced by :data:`HIDDEN` (an adaptation's command
    line names its cells too)."""
    if signed_in:
        return dict(record)
    private = set(PRIVATE_RUN_KEYS)
    if record.get("kind") == "adaptation":
        private.add("command")
    return {key: HIDDEN if key in private else value for key, value in record.items()}


def curve_defaults(ids: Sequence[str], running: Sequence[str]) -> list[str]:
    """The run whose curves open first: the first shown that is not still running."""
    return [r for r in ids if r not in running][:1] or list(ids[:1])
