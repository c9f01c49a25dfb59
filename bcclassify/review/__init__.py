"""What reviewers decide: the append-only review log and the differential count."""

__all__ = ["report", "reviews"]
