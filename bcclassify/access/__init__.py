"""Who may do what: local reviewer accounts."""

__all__ = ["accounts"]
