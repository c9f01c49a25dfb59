"""bcclassify: peripheral blood cell classification with Grad-CAM explanations.

The library does all the work (data, models, training, evaluation, explanation, storage, CLI);
the Streamlit app in ``app.py`` and ``pages/`` only presents it.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# Where the package and its checkout live: model_store/ and the example cells are found from here.
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
EXAMPLES_DIR = PACKAGE_DIR / "examples" / "pbc"  # two PBC images a class (credit in its README)

# Canonical class order: the folder names of the PBC dataset. Every probability vector, confusion
# matrix and CSV column in the project follows this order.
CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)


# Human-readable names for the app and reports.
CLASS_LABELS: dict[str, str] = {
    "basophil": "Basophil",
    "eosinophil": "Eosinophil",
    "erythroblast": "Erythroblast",
    "ig": "Immature granulocyte",
    "lymphocyte": "Lymphocyte",
    "monocyte": "Monocyte",
    "neutrophil": "Neutrophil",
    "platelet": "Platelet",
}

DATASET_CREDIT = (
    "PBC dataset: Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J., "
    '"A dataset of microscopic peripheral blood cell images for development of automatic '
    'recognition systems", Data in Brief 30 (2020) 105474, doi:10.1016/j.dib.2020.105474. '
    "Hospital Clinic of Barcelona. Licensed CC BY 4.0."
)

# Every registered architecture, in the order the comparison pages list them. Declared only: the
# value comes from the registry (models.py) on first use, see __getattr__.
ARCHITECTURES: tuple[str, ...]


def __getattr__(name: str):
    # Read on first use so that importing the package stays cheap; the registry imports Keras
    # only to build.
    if name == "ARCHITECTURES":
        from bcclassify.models.registry import architecture_names

        globals()["ARCHITECTURES"] = names = architecture_names()
        return names
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
