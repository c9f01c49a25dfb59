"""Images in: the one image loader, dataset folders and splits, training augmentation."""

__all__ = ["augment", "datasets", "imaging"]
