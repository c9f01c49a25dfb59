"""Saliency maps through tf-keras-vis, and how faithful they are."""

__all__ = ["faithfulness", "maps"]
