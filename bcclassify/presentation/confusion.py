"""What the Confusion matrices page decides, as data: the fold choices and the cell a reader
sees first (no Streamlit here; ``ui.confusion`` draws it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALL_FOLDS = "all folds (summed)"


def fold_choices(folds: Sequence[int]) -> list[str]:
    return [ALL_FOLDS, *[f"fold {k}" for k in folds]]


def chosen_fold(choice: str) -> int | None:
    """The fold a choice of :func:`fold_choices` names; None for all folds summed."""
    return None if choice == ALL_FOLDS else int(choice.split()[-1])


def most_confused(matrix: np.ndarray) -> tuple[int, int]:
    """(true, predicted) indices of the largest off-diagonal cell: usually the first a reader
    wants to see."""
    off_diagonal = matrix - np.diag(np.diag(matrix))
    true_index, pred_index = np.unravel_index(np.argmax(off_diagonal), matrix.shape)
    return int(true_index), int(pred_index)
