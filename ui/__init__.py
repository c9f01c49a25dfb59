"""The app's presentation layer: Streamlit and plotly are used only here, never in the library.

One module per page (``classify`` and ``review``, ``runs``, ``confusion``, ``metrics``,
``comparison``, ``adapt``), each a set of regions that draw widgets and return the user's choices,
plus what several pages share: ``login`` (who is reviewing), ``session`` (secrets, model caches,
per-session caches, table sizing) and ``figures`` (plotly figures). The data they show is shaped in
``bcclassify.presentation``; pages import what they use from these modules.
"""

__all__ = [
    "adapt",
    "classify",
    "comparison",
    "confusion",
    "figures",
    "login",
    "metrics",
    "review",
    "runs",
    "session",
]
