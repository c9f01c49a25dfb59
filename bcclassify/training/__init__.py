"""Reproducible, resumable training runs and what they train on (pixel and activation feeds)."""

__all__ = ["config", "feeds", "loop", "runs"]
