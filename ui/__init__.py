"""The app's presentation layer: what ``app.py`` and ``pages/`` call as ``ui.<name>``.

Streamlit and plotly are used only in this package (``session``: secrets, model caches, table
sizing; ``figures``: plotly figures). The data shaping it hands to the pages lives in the
library (``bcclassify.app_support`` and ``bcclassify.tables``) and is gathered here so a page
has one namespace to read; the library and the command line never import this package.
"""

from __future__ import annotations

from bcclassify.app_support import (
    BENCH_HINT,
    EXAMPLE_CREDIT,
    EXAMPLES_DIR,
    PROMOTE_HINT,
    TRAIN_HINT,
    CellInput,
    RunRecord,
    card_sha256,
    configured_data_dir,
    example_images,
    example_label,
    figure_sources,
    figures_caption,
    fold_table,
    learning_curves,
    load_figures,
    load_run,
    model_cards,
    oidc_providers,
    oidc_reviewer,
    per_class_table,
    results_csv,
    run_confusion,
    run_predictions,
    run_progress,
    store_description,
    trust_summary,
    unique_inputs,
    without_machine_paths,
)
from bcclassify.tables import (
    MISSING,
    class_label,
    leaderboard,
    percent,
    reference_table,
    runs_table,
)

from .figures import (
    confusion_figure,
    count_figure,
    learning_curve_figure,
    per_class_comparison_figure,
    probability_figure,
    reliability_figure,
)
from .session import app_secrets, cached_explainer, cached_model, table_height

__all__ = [
    "BENCH_HINT",
    "EXAMPLE_CREDIT",
    "EXAMPLES_DIR",
    "MISSING",
    "PROMOTE_HINT",
    "TRAIN_HINT",
    "CellInput",
    "RunRecord",
    "app_secrets",
    "cached_explainer",
    "cached_model",
    "card_sha256",
    "class_label",
    "configured_data_dir",
    "confusion_figure",
    "count_figure",
    "example_images",
    "example_label",
    "figure_sources",
    "figures_caption",
    "fold_table",
    "leaderboard",
    "learning_curve_figure",
    "learning_curves",
    "load_figures",
    "load_run",
    "model_cards",
    "oidc_providers",
    "oidc_reviewer",
    "per_class_comparison_figure",
    "per_class_table",
    "percent",
    "probability_figure",
    "reference_table",
    "reliability_figure",
    "results_csv",
    "run_confusion",
    "run_predictions",
    "run_progress",
    "runs_table",
    "store_description",
    "table_height",
    "trust_summary",
    "unique_inputs",
    "without_machine_paths",
]
