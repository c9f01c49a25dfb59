"""Installed models as served: load with checksums, classify (compiled graph or Keras),
calibrate, flag, benchmark."""

__all__ = [
    "acquisition",
    "bench",
    "classifier",
    "compiled",
    "folding",
    "quiet_tensorflow",
    "second_opinion",
    "trust",
    "uploads",
]
