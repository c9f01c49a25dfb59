"""Pure metric functions, and scoring runs and installed models (promote included)."""

__all__ = ["metrics", "scoring"]
