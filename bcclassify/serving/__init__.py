"""Installed models as served: load with checksums, classify, calibrate, flag, benchmark."""

__all__ = ["acquisition", "bench", "classifier", "second_opinion", "trust", "uploads"]
