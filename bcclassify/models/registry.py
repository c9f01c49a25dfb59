"""A registry of architectures behind one :func:`build`: the one list of what can be trained.

Every model takes raw RGB pixels (0-255, float32) named ``pixels`` and scales them inside the graph
with real layers, each trunk the way its weights expect, so a saved model is self-contained and
training and serving cannot disagree on preprocessing.

Each entry also says how it trains (its :class:`Stage` s), whether its head pools the explained
maps, and how its maps are titled. Keras is imported inside the builders only, so the registry can
be read (architecture names for the command line, the package's ``ARCHITECTURES``) without
starting TensorFlow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bcclassify import CLASS_NAMES, REPO_ROOT
from bcclassify.data.imaging import cropped_size

if TYPE_CHECKING:
    import keras

    from bcclassify.training.runs import TrainConfig

__all__ = [
    "Architecture",
    "CENTER_CROP_LAYER",
    "CROSS_ENTROPY",
    "DEFAULT_WEIGHTS_DIRS",
    "REGISTRY",
    "SCALE_0_1",
    "SCALE_MINUS1_1",
    "SUPCON_LOSS",
    "Stage",
    "TRUNKS",
    "NORMS",
    "Trunk",
    "WEIGHTS_ENV",
    "architecture_names",
    "boundary_tensor",
    "build",
    "classifier_stages",
    "get_architecture",
    "group_count",
    "register",
    "resolve_weights_dir",
    "split_model",
    "supcon_stages",
    "with_group_norm",
]

log = logging.getLogger(__name__)

WEIGHTS_ENV = "BCCLASSIFY_WEIGHTS"
DEFAULT_WEIGHTS_DIRS = (REPO_ROOT.parent / "shared" / "weights",)

# Input scalings, by the convention each trunk's weights were trained with.
SCALE_MINUS1_1 = "x / 127.5 - 1  (range [-1, 1])"
SCALE_0_1 = "x / 255  (range [0, 1])"


@dataclass(frozen=True)
class Trunk:
    """One pretrained-capable backbone inside a model."""

    name: str  # keras.applications constructor name
    weights_file: str | None  # file name under the backbone-weights folder
    scaling: str
    explain_layer: str  # last conv activation used for Grad-CAM, stated explicitly
    min_size: int = 32


TRUNKS = {
    "inceptionv3": Trunk(
        "InceptionV3", "inception_v3_nsfwjs_notop.weights.h5", SCALE_0_1, "mixed10", 75
    ),
    "xception": Trunk(
        "Xception", "xception_imagenet_notop.weights.h5", SCALE_MINUS1_1, "block14_sepconv2_act", 71
    ),
    "mobilenetv2": Trunk(
        "MobileNetV2", "mobilenet_v2_imagenet_notop.weights.h5", SCALE_MINUS1_1, "out_relu", 32
    ),
    "resnet50": Trunk("ResNet50", None, SCALE_MINUS1_1, "conv5_block3_out", 32),
    "densenet201": Trunk("DenseNet201", None, SCALE_MINUS1_1, "relu", 32),
    "vgg16": Trunk("VGG16", None, SCALE_MINUS1_1, "block5_pool", 32),
}


CROSS_ENTROPY = "crossentropy"
SUPCON_LOSS = "supcon"


@dataclass(frozen=True)
class Stage:
    """One phase of a run: its own epochs and its own cosine cycle from ``lr``."""

    name: str  # the trainer's stage: "classifier" or "contrastive"
    epochs: int
    lr: float
    loss: str = CROSS_ENTROPY  # SUPCON_LOSS: contrastive loss on the encoder, no classifier yet

    @property
    def validated(self) -> bool:
        """Whether the stage fits the classifier, so validation accuracy (and the best epoch) means
        something; a contrastive stage has no classifier to validate yet."""
        return self.loss == CROSS_ENTROPY

    @property
    def history_label(self) -> str:
        """The ``stage`` column of history.csv."""
        return "supervised" if self.validated else "contrastive"


def classifier_stages(config: TrainConfig) -> tuple[Stage, ...]:
    """The default: the whole model learns the classes for ``config.epochs``."""
    return (Stage("classifier", config.epochs, config.lr),)


def supcon_stages(config: TrainConfig) -> tuple[Stage, ...]:
    """Contrastive encoder first, then the linear classifier on the frozen embedding."""
    return (
        Stage("contrastive", config.epochs, config.lr, loss=SUPCON_LOSS),
        Stage("classifier", config.head_epochs, config.head_lr or config.lr),
    )


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    default_image_size: int
    builder: Callable[..., keras.Model]
    trunks: tuple[str, ...] = ()
    # Grad-CAM target layers (one per trunk, or the model's own last conv block).
    explain_layers: tuple[str, ...] = ()
    # Where training on cached activations cuts the graph: "layer" (its output) or "layer:input".
    finetune_boundaries: tuple[str, ...] = ()
    # Blocks whose pooled activations ``adapt`` fits on besides the head's features (same specs
    # as finetune_boundaries); () for head-only adaptation. See bcclassify/lab/mid_level.py.
    adapt_layers: tuple[str, ...] = ()
    # The training stages a config asks for.
    stages: Callable[[TrainConfig], tuple[Stage, ...]] = classifier_stages
    # Wraps the built model for stages other than plain classification: (model, seed, image size,
    # boundary tensors when the model is the top of a cut) -> a keras.Model with
    # ``set_stage(name)``. On pixels a trainer augments inside its own train step, so its pixel
    # feed stays raw; None: the model trains itself.
    trainer: Callable[..., keras.Model] | None = None
    # Head is Dense(concat(GAP(map) for each explained map)): explain.py's fast view applies.
    pooled_head: bool = False
    # (layer-name prefix, title) for the maps of a model with several trunks.
    map_titles: tuple[tuple[str, str], ...] = ()
    # Another architecture whose frozen stem is layer for layer the same as this one's: cached
    # activations are shared with it (supcon-xception trains on Xception's cache).
    shares_stem_with: str | None = None

    @property
    def cache_family(self) -> str:
        """The name cached stem activations are keyed and filed under."""
        return self.shares_stem_with or self.name

    @property
    def min_size(self) -> int:
        return max([TRUNKS[t].min_size for t in self.trunks] + [32])


REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    REGISTRY[arch.name] = arch
    return arch


def resolve_weights_dir(weights: str | Path | None) -> Path | None:
    """The backbone-weights folder: an explicit path, else $BCCLASSIFY_WEIGHTS, else ../shared."""
    if weights == "none":
        return None
    candidates = [Path(weights)] if weights else []
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]))
    candidates += [Path.cwd().parent / "shared" / "weights", *DEFAULT_WEIGHTS_DIRS]
    for folder in candidates:
        if folder.is_dir():
            return folder
    return None


def _scale(inputs, scaling: str, name: str):
    from keras import layers  # lazy: the registry is read without TensorFlow (tests check)

    if scaling == SCALE_0_1:
        return layers.Rescaling(1.0 / 255.0, name=name)(inputs)
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)(inputs)


def _trunk(key: str, inputs, weights_dir: Path | None, init_record: dict):
    """Build a keras.applications trunk on ``inputs`` (pixels), scaled as its weights expect."""
    import keras  # lazy: the registry is read without TensorFlow (tests check)

    spec = TRUNKS[key]
    scaled = _scale(inputs, spec.scaling, f"{key}_scale")
    constructor = getattr(keras.applications, spec.name)
    trunk = constructor(include_top=False, weights=None, input_tensor=scaled)
    source = weights_dir / spec.weights_file if (weights_dir and spec.weights_file) else None
    if source is not None and source.is_file():
        trunk.load_weights(source)
        init_record[key] = f"pretrained: {source.name}"
    else:
        init_record[key] = "from scratch (no ImageNet weights available here)"
        log.info("%s: no pretrained weights found, initialising from scratch", key)
    return trunk.output


CENTER_CROP_LAYER = "center_crop"


def _inputs(image_size: int, center_crop: float):
    """The ``pixels`` input and the tensor the network sees.

    With ``center_crop`` < 1 the network sees only the central square: PBC crops centre the cell,
    so at the same compute the cell gets more pixels (0.75 of a 171 px input gives the cell the
    detail of a 171 px image for the cost of a 128 px one). The crop is a layer, so serving feeds
    whole images exactly as training did.
    """
    import keras  # lazy: the registry is read without TensorFlow (tests check)
    from keras import layers

    pixels = keras.Input((image_size, image_size, 3), name="pixels", dtype="float32")
    if center_crop >= 1.0:
        return pixels, pixels
    side = cropped_size(image_size, center_crop)
    return pixels, layers.CenterCrop(side, side, name=CENTER_CROP_LAYER)(pixels)


def _classifier(features, num_classes: int, dropout: float):
    from keras import layers  # lazy: the registry is read without TensorFlow (tests check)

    x = layers.Dropout(dropout, name="head_dropout")(features)
    return layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32")(x)


def _single_trunk_builder(key: str):
    def build_single(image_size, num_classes, weights_dir, init_record, center_crop, dropout=0.3):
        import keras  # lazy: the registry is read without TensorFlow (tests check)
        from keras import layers

        pixels, seen = _inputs(image_size, center_crop)
        features = layers.GlobalAveragePooling2D(name=f"{key}_pool")(
            _trunk(key, seen, weights_dir, init_record)
        )
        return keras.Model(pixels, _classifier(features, num_classes, dropout), name=key)

    return build_single


def _build_hybrid(image_size, num_classes, weights_dir, init_record, center_crop, dropout=0.4):
    """InceptionV3 and Xception on ONE shared input in one flat graph; pooled features joined."""
    import keras  # lazy: the registry is read without TensorFlow (tests check)
    from keras import layers

    pixels, seen = _inputs(image_size, center_crop)
    inception = layers.GlobalAveragePooling2D(name="inceptionv3_pool")(
        _trunk("inceptionv3", seen, weights_dir, init_record)
    )
    xception = layers.GlobalAveragePooling2D(name="xception_pool")(
        _trunk("xception", seen, weights_dir, init_record)
    )
    features = layers.Concatenate(name="hybrid_features")([inception, xception])
    return keras.Model(pixels, _classifier(features, num_classes, dropout), name="hybrid")


def _conv_block(x, filters: int, name: str):
    from keras import layers  # lazy: the registry is read without TensorFlow (tests check)

    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _build_cnn(image_size, num_classes, weights_dir, init_record, center_crop, dropout=0.3):
    """A compact custom CNN: four conv blocks (32-256 filters), global pooling, softmax."""
    import keras  # lazy: the registry is read without TensorFlow (tests check)
    from keras import layers

    pixels, seen = _inputs(image_size, center_crop)
    x = _scale(seen, SCALE_MINUS1_1, "cnn_scale")
    for i, filters in enumerate((32, 64, 128, 256), start=1):
        x = _conv_block(x, filters, f"cnn_block{i}")
        if i < 4:
            x = layers.MaxPooling2D(name=f"cnn_pool{i}")(x)
    init_record["cnn"] = "from scratch"
    features = layers.GlobalAveragePooling2D(name="cnn_gap")(x)
    return keras.Model(pixels, _classifier(features, num_classes, dropout), name="cnn")


def _build_unet(image_size, num_classes, weights_dir, init_record, center_crop, dropout=0.3):
    """U-Net-style encoder-decoder; bottleneck and decoder features feed the classifier."""
    import keras  # lazy: the registry is read without TensorFlow (tests check)
    from keras import layers

    pixels, seen = _inputs(image_size, center_crop)
    x = _scale(seen, SCALE_MINUS1_1, "unet_scale")
    skips = []
    for i, filters in enumerate((32, 64, 128), start=1):
        x = _conv_block(x, filters, f"unet_down{i}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"unet_pool{i}")(x)
    bottleneck = _conv_block(x, 256, "unet_bottleneck")
    x = bottleneck
    for i, (filters, skip) in enumerate(zip((128, 64, 32), reversed(skips)), start=1):
        x = layers.UpSampling2D(name=f"unet_up{i}")(x)
        x = layers.Concatenate(name=f"unet_skip{i}")([x, skip])
        x = _conv_block(x, filters, f"unet_dec{i}")
    init_record["unet"] = "from scratch"
    features = layers.Concatenate(name="unet_features")(
        [
            layers.GlobalAveragePooling2D(name="unet_bottleneck_gap")(bottleneck),
            layers.GlobalAveragePooling2D(name="unet_decoder_gap")(x),
        ]
    )
    return keras.Model(pixels, _classifier(features, num_classes, dropout), name="unet")


def _supcon_builder(key: str, model_name: str):
    """Supervised-contrastive encoder (``key`` trunk + embedding) with a linear classifier.

    Training (``supcon.SupConTrainer``) first fits the encoder with a supervised contrastive loss
    on a projection of ``supcon_embedding``, then fits ``predictions`` on the frozen embedding.
    """

    def build_supcon(
        image_size, num_classes, weights_dir, init_record, center_crop, dropout=0.0, embed_dim=128
    ):
        import keras  # lazy: the registry is read without TensorFlow (tests check)
        from keras import layers

        pixels, seen = _inputs(image_size, center_crop)
        pooled = layers.GlobalAveragePooling2D(name=f"{key}_pool")(
            _trunk(key, seen, weights_dir, init_record)
        )
        embedding = layers.Dense(embed_dim, name="supcon_embedding")(pooled)
        embedding = layers.UnitNormalization(name="supcon_normalize")(embedding)
        return keras.Model(pixels, _classifier(embedding, num_classes, dropout), name=model_name)

    return build_supcon


def _supcon_trainer(
    model: keras.Model, seed: int, image_size: int, boundary_tensors: list | None = None
) -> keras.Model:
    from bcclassify.models.supcon import SupConTrainer  # lazy: supcon imports TensorFlow

    # On pixels the trainer draws two augmented views per image; on a frozen stem's cached
    # activations (the top of a cut model) the feed already holds augmented copies.
    trainer = SupConTrainer(
        model, seed=seed, augment_views=not boundary_tensors, encoder_inputs=boundary_tensors
    )
    trainer.build_all()
    return trainer


# Registered in the order the comparison pages list them (the package's ARCHITECTURES).
register(
    Architecture(
        name="cnn",
        description="Compact custom CNN (4 conv blocks), from scratch",
        default_image_size=64,
        builder=_build_cnn,
        explain_layers=("cnn_block4_relu2",),
        pooled_head=True,
    )
)
register(
    Architecture(
        name="unet",
        description="U-Net-style encoder-decoder with a classification head, from scratch",
        default_image_size=64,
        builder=_build_unet,
        explain_layers=("unet_dec3_relu2",),
    )
)
for _key, _desc, _size, _boundaries in (
    ("resnet50", "ResNet50 (from scratch here: no ImageNet weights offline)", 64, ()),
    ("densenet201", "DenseNet-201 (from scratch here: no ImageNet weights offline)", 64, ()),
    ("vgg16", "VGG-16 (from scratch here: no ImageNet weights offline)", 64, ()),
    ("mobilenetv2", "MobileNetV2, ImageNet-initialised", 128, ()),
    ("inceptionv3", "InceptionV3, ImageNet-derived trunk", 128, ("mixed5",)),
    ("xception", "Xception, ImageNet-initialised", 128, ("block13_sepconv1_act:input",)),
):
    register(
        Architecture(
            name=_key,
            description=_desc,
            default_image_size=_size,
            builder=_single_trunk_builder(_key),
            trunks=(_key,),
            explain_layers=(TRUNKS[_key].explain_layer,),
            finetune_boundaries=_boundaries,
            pooled_head=True,
        )
    )
register(
    Architecture(
        name="hybrid",
        description="InceptionV3 + Xception hybrid: two trunks on one input, features concatenated",
        default_image_size=128,
        builder=_build_hybrid,
        trunks=("inceptionv3", "xception"),
        explain_layers=("mixed10", "block14_sepconv2_act"),
        finetune_boundaries=("mixed5", "block13_sepconv1_act:input"),
        # InceptionV3 after mixed7 and mixed8; Xception after blocks 11 and 12 (the Add layers
        # are numbered at build time, so they are named by the layer that reads them) and block
        # 14's first separable convolution: chosen in scripts/adapt_head_study.py (issue 21).
        adapt_layers=(
            "mixed7",
            "mixed8",
            "block12_sepconv1_act:input",
            "block13_sepconv1_act:input",
            "block14_sepconv1_act",
        ),
        pooled_head=True,
        map_titles=(("mixed", "InceptionV3"), ("block", "Xception")),
    )
)
register(
    Architecture(
        name="supcon",
        description="Supervised contrastive encoder (MobileNetV2 trunk) + linear classifier",
        default_image_size=96,
        builder=_supcon_builder("mobilenetv2", "supcon"),
        trunks=("mobilenetv2",),
        explain_layers=("out_relu",),
        stages=supcon_stages,
        trainer=_supcon_trainer,
    )
)
register(
    Architecture(
        name="supcon-xception",
        description="Supervised contrastive encoder (Xception trunk, top blocks on Xception's "
        "cached activations) + linear classifier",
        default_image_size=128,
        builder=_supcon_builder("xception", "supcon_xception"),
        trunks=("xception",),
        explain_layers=("block14_sepconv2_act",),
        finetune_boundaries=("block13_sepconv1_act:input",),
        stages=supcon_stages,
        trainer=_supcon_trainer,
        shares_stem_with="xception",
    )
)


def architecture_names() -> tuple[str, ...]:
    """Every registered architecture, in the order the comparison pages list them."""
    return tuple(REGISTRY)


def get_architecture(name: str) -> Architecture:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; choose one of: {', '.join(REGISTRY)}"
        ) from None


NORMS = ("batch", "group")
MOST_GROUPS = 32  # Wu & He 2018's default number of groups


def group_count(channels: int, most: int = MOST_GROUPS) -> int:
    """The most groups, up to ``most``, that divide ``channels`` evenly."""
    return max(d for d in range(1, min(most, channels) + 1) if channels % d == 0)


def with_group_norm(model: keras.Model, init_record: dict | None = None) -> keras.Model:
    """The same network with GroupNormalization (Wu & He 2018) in place of every batch norm.

    Batch norm serves with running statistics of the training lab's images; group norm
    normalises each image by its own, so nothing of the source lab's statistics is carried to
    another lab's cells (Tsutsui et al. 2023 measured +26 to +50 points across labs). The
    learnt scale and offset are kept; the running statistics are dropped, so a converted
    pretrained trunk computes something else until its norms are fitted to the batch norms
    they replace (:func:`bcclassify.models.norm_transfer.fit_group_norm_affine`, which
    training and ``pack.py`` do) and it is fine-tuned.
    """
    import keras  # lazy: the registry is read without TensorFlow (tests check)
    import numpy as np

    norms = {
        layer.name: int(layer.moving_mean.shape[0])
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    config = model.get_config()
    for entry in config["layers"]:
        if entry["class_name"] != "BatchNormalization":
            continue
        old = entry["config"]
        entry.update(class_name="GroupNormalization", module="keras.layers", registered_name=None)
        entry["config"] = {
            "name": old["name"],
            "trainable": old.get("trainable", True),
            "dtype": old.get("dtype"),
            "groups": group_count(norms[old["name"]]),
            "axis": -1,
            "epsilon": old.get("epsilon", 1e-3),
            "center": old.get("center", True),
            # always a scale: batch norm without one (InceptionV3's) still has a per-channel
            # spread that a fitted group norm must reproduce (models.norm_transfer)
            "scale": True,
        }
        for node in entry.get("inbound_nodes", []):
            if isinstance(node, dict):
                node.get("kwargs", {}).pop("mask", None)  # batch norm's call takes one; not GN's
    converted = keras.Model.from_config(config)
    for layer in converted.layers:
        source = model.get_layer(layer.name)
        if layer.name not in norms:
            layer.set_weights(source.get_weights())
            continue
        # batch norm holds [gamma (if it scales), beta, moving mean, moving variance]: keep
        # what is learnt, a unit scale where it had none
        gamma = source.gamma if source.scale else np.ones(norms[layer.name], "float32")
        layer.set_weights(
            [np.asarray(gamma)] + ([np.asarray(source.beta)] if source.center else [])
        )
    if init_record is not None:
        init_record["normalisation"] = f"group norm in place of {len(norms)} batch norms"
    return converted


def build(
    name: str,
    image_size: int | None = None,
    num_classes: int = len(CLASS_NAMES),
    weights: str | Path | None = None,
    init_record: dict | None = None,
    center_crop: float = 1.0,
    norm: str = "batch",
) -> keras.Model:
    """Build any registered architecture.

    ``weights``: a folder of backbone weights, ``"none"`` for random initialisation, or ``None`` to
    look in $BCCLASSIFY_WEIGHTS and ``../shared/weights``. Nothing is ever downloaded.
    ``init_record`` (optional dict) receives how each trunk was initialised, for the run record.
    ``center_crop`` (0 < c <= 1): the network sees only the central c x c of its input.
    ``norm``: ``"group"`` swaps every batch norm for group norm (:func:`with_group_norm`).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    arch = get_architecture(name)
    size = image_size or arch.default_image_size
    if not 0.0 < center_crop <= 1.0:
        raise ValueError(f"center_crop must be in (0, 1], got {center_crop}")
    seen = cropped_size(size, center_crop)
    if seen < arch.min_size:
        raise ValueError(
            f"{name} needs to see at least {arch.min_size} px, got {seen}"
            + (f" ({center_crop:g} of {size} px)" if center_crop < 1.0 else "")
        )
    record = init_record if init_record is not None else {}
    weights_dir = resolve_weights_dir(weights) if arch.trunks else None
    model = arch.builder(size, num_classes, weights_dir, record, center_crop)
    return with_group_norm(model, record) if norm == "group" else model


def boundary_tensor(model: keras.Model, spec: str):
    """The tensor named by a boundary spec: ``layer`` (its output) or ``layer:input``."""
    layer_name, _, which = spec.partition(":")
    layer = model.get_layer(layer_name)
    return layer.input if which == "input" else layer.output


def split_model(model: keras.Model, boundaries: tuple[str, ...]) -> tuple[keras.Model, keras.Model]:
    """Cut a flat functional model into (frozen stem, trainable top) at the boundary tensors.

    The top shares its layers with ``model``: training it trains the full model's top blocks.
    """
    import keras  # lazy: the registry is read without TensorFlow (tests check)

    tensors = [boundary_tensor(model, spec) for spec in boundaries]
    stem = keras.Model(model.inputs, tensors, name=f"{model.name}_stem")
    top = keras.Model(tensors, model.outputs, name=f"{model.name}_top")
    return stem, top
