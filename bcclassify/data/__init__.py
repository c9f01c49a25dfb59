"""Images in: the one image loader, dataset folders and splits, training augmentation."""

__all__ = ["augment", "augment_ops", "datasets", "imaging"]
