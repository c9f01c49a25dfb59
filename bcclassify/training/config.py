"""A run's configuration: ``TrainConfig``, every argument of a run, saved whole in config.json.

Its own module, importing only the standard library, so that where there is no TensorFlow (the
lent GPU machine, ``scripts/gpu/train_lab.py``) a run is configured with the same class as
``python -m bcclassify train``. ``bcclassify.training.runs`` re-exports both names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "new_run_id"]


@dataclass
class TrainConfig:
    """Every argument of a run; saved whole in config.json."""

    # metadata: the command line's help, choices and flags (bcclassify/cli/from_config.py).
    arch: str = field(metadata={"help": "architecture (required unless --resume)"})
    data: str = field(metadata={"help": "image-folder dataset: one sub-folder per class"})
    image_size: int | None = field(
        default=None, metadata={"help": "input side in px (default: per architecture)"}
    )
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = field(default="adam", metadata={"choices": ("adam", "sgd", "rmsprop")})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (cosine decay)"})
    augment: bool = True
    augment_preset: str = field(  # lab/wide/defocus: stain, illuminant, zoom, camera (issue 21)
        default="standard",
        metadata={
            "choices": ("standard", "lab", "wide", "defocus", "defocus-grey"),
            "help": "lab: also stain (OD), white balance, zoom up to 3x, blur, noise, JPEG "
            "(other labs); wide: lab with larger hue, stain, illuminant and defocus ranges; "
            "defocus: wide with blur up to sigma 7 px; defocus-grey: defocus with the colour "
            "taken out of 30%% of the views",
        },
    )
    keep_weights: str = field(  # "best": best validation epoch; "last": the final epoch
        default="best",
        metadata={
            "choices": ("best", "last"),
            "help": "the epoch whose weights the run keeps: best validation accuracy, or the last",
        },
    )
    smote: bool = field(default=False, metadata={"help": "SMOTE-oversample the training part"})
    class_weights: bool = field(default=False, metadata={"help": "weight the loss by class rarity"})
    folds: int = field(default=0, metadata={"help": "stratified K-fold cross-validation"})
    shuffle: bool = field(
        default=True, metadata={"flag": "--no-shuffle", "help": "training batches in class order"}
    )
    seed: int = 42
    freeze_until: str | None = field(
        default=None,
        metadata={
            "help": "freeze up to these layers (comma list; 'layer:input' cuts before a layer; "
            "'auto' uses the architecture's default) and train the rest on cached activations"
        },
    )
    freeze_bn: bool = field(
        default=False,
        metadata={
            "help": "keep pretrained trunks' batch-norm statistics fixed (use a small --lr, "
            "e.g. 1e-4)"
        },
    )
    norm: str = field(
        default="batch",
        metadata={
            "choices": ("batch", "group"),
            "help": "group: GroupNormalization in place of every batch norm (per-image "
            "statistics, none carried from the training lab; issue 21)",
        },
    )
    norm_fit_images: int = field(
        default=32,
        metadata={
            "metavar": "N",
            "help": "with --norm group and pretrained trunks: fit each group norm's scale and "
            "offset to the batch norm it replaces on N training images a class (0: keep the "
            "batch norm's scale and offset)",
        },
    )
    center_crop: float = field(
        default=1.0,
        metadata={
            "metavar": "FRACTION",
            "help": "the network sees only the central FRACTION of its input (a layer in the "
            "model; PBC crops centre the cell, so 0.75 gives it more pixels at the same cost)",
        },
    )
    strategy: str = field(default="auto", metadata={"choices": ("auto", "mirrored", "multiworker")})
    backbone_weights: str | None = field(
        default=None, metadata={"metavar": "DIR", "help": "folder of ImageNet-derived weights"}
    )
    limit_per_class: int | None = field(
        default=None, metadata={"help": "use at most N images per class"}
    )
    train_per_class: int | None = field(
        default=None,
        metadata={
            "metavar": "N",
            "help": "train on at most N cells a class of the training split; validation and "
            "test stay whole (unlike --limit-per-class, which thins before splitting), so a "
            "model continued with --init-from keeps its held-out cells held out",
        },
    )
    train_subset_seed: int | None = field(
        default=None,
        metadata={
            "metavar": "SEED",
            "help": "draw --train-per-class's cells with this seed instead of --seed (the split "
            "stays --seed's), so a further round of fine-tuning sees other cells without its "
            "held-out cells changing",
        },
    )
    aug_copies: int = field(default=2, metadata={"help": "augmented copies (cached mode)"})
    init_from: str | None = field(
        default=None,
        metadata={
            "metavar": "RUN_ID",
            "help": "start from another run's final weights, or an installed model's with "
            "model:NAME (fine-tune)",
        },
    )
    # The classifier stage of an architecture that trains in two stages (supcon).
    head_epochs: int = field(default=3, metadata={"help": "supcon: classifier epochs"})
    head_lr: float | None = field(  # None: the same as lr
        default=None,
        metadata={
            "help": "supcon: peak learning rate of the linear classifier on the frozen embedding "
            "(default: --lr; a linear probe wants a larger one than the encoder)"
        },
    )
    cache_dir: str | None = field(
        default="cache", metadata={"help": "where decoded pixels/activations go"}
    )
    note: str = field(default="", metadata={"help": "free text kept in the run record"})
    run_id: str | None = field(
        default=None, metadata={"help": "name for the run folder (default: time-arch-size)"}
    )


def new_run_id(config: TrainConfig, image_size: int) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    crop = f"-crop{round(config.center_crop * 100)}" if config.center_crop < 1.0 else ""
    norm = "-gn" if config.norm == "group" else ""
    return f"{stamp}-{config.arch}-{image_size}px{crop}{norm}"
