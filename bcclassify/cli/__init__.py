"""The command line, ``python -m bcclassify``."""

__all__ = ["main", "quiet_tensorflow"]
