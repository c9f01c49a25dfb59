"""The model store on disk: atomic writes, checksums, run records and model cards."""

__all__ = ["cards", "runs", "store"]
