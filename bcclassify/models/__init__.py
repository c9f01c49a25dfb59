"""The registry of architectures behind one build(), and supervised contrastive learning."""

__all__ = ["registry", "supcon"]
