"""Saliency maps through tf-keras-vis: Grad-CAM, Grad-CAM++ and Score-CAM.

For the hybrid, one map per trunk (InceptionV3 ``mixed10``, Xception ``block14_sepconv2_act``) and a
fused map (their mean). Layer names come from the architecture registry: under Keras 3,
tf-keras-vis's automatic search skips SeparableConv2D, so they are always stated.

tf-keras-vis's ReplaceToLinear modifier swaps the softmax for a linear activation; explainers
work on their own clone, so the model that serves predictions is never changed.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}
# Score-CAM runs one forward pass per channel: layers wider than this use Faster Score-CAM
# (tf-keras-vis ``max_N``: only the channels of highest spatial variance).
SCORECAM_ALL_CHANNELS_UP_TO = 256
SCORECAM_MAX_N = 64


@dataclass
class Explanation:
    """Heatmaps in [0, 1], in the coordinates (height, width) of the image that was explained."""

    method: str
    target_index: int
    target_class: str
    probability: float
    maps: dict[str, np.ndarray]  # per trunk layer, plus "fused"

    @property
    def fused(self) -> np.ndarray:
        return self.maps["fused"]


JOINT_LAYER = "explain_joint"
MAX_JOINT_SIDE = 64  # beyond this the joint grid costs more than it saves: explain map by map
# Architectures whose head is Dense(concat(GAP(map) for each explained map)): their maps can be
# computed on the fast explain view below. The others (unet, supcon) use the full model.
POOLED_HEAD_ARCHITECTURES = {
    "hybrid",
    "xception",
    "inceptionv3",
    "mobilenetv2",
    "resnet50",
    "densenet201",
    "vgg16",
    "cnn",
}


def _compiled_features_layer(extractor):
    """A layer that runs ``extractor`` (input -> explained maps) as one compiled call.

    Grad-CAM needs gradients from the class score back to the explained maps only, i.e. through
    the head; the trunks below the maps need no eager gradient tape. Running them compiled makes
    an explanation cost about one forward pass instead of an eager pass layer by layer.
    """
    import keras
    import tensorflow as tf

    run = tf.function(lambda x: extractor(x, training=False))

    @tf.custom_gradient
    def _inference_only(pixels):
        # tf-keras-vis watches the pixels; without this, TF would run the compiled trunks in
        # their differentiable form (keeping every intermediate) for a gradient nobody reads.
        outputs = run(pixels)

        def no_gradient(*upstream, variables=None):
            return tf.zeros_like(pixels), [None] * len(variables or [])

        return outputs, no_gradient

    class CompiledFeatures(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(trainable=False, **kwargs)
            self.extractor = extractor

        def call(self, inputs):
            outputs = _inference_only(inputs)
            return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

        def compute_output_spec(self, inputs):
            return [keras.KerasTensor(t.shape, t.dtype) for t in self.extractor.outputs]

    return CompiledFeatures(name="explain_trunks")


def explain_view(model, layers: list[str], head_layer: str = "predictions"):
    """The same network, rebuilt for tf-keras-vis, with every explained map on ONE layer.

    Trunks run compiled (see :func:`_compiled_features_layer`); each explained map is upsampled
    (nearest, integer factor) to a common grid and concatenated as ``explain_joint``;
    the head pools slices of that layer and applies a copy of the classifier's weights with a
    linear output (what tf-keras-vis's ReplaceToLinear would do), so the serving model is never
    touched. Nearest upsampling by an integer factor leaves the pooled features unchanged, so the
    view's softmax equals the model's output. One tf-keras-vis pass over a batch holding the
    image once per map yields every map, each sample masking the other maps' gradients.
    Returns None for non-square maps or a joint grid over ``MAX_JOINT_SIDE``.
    """
    import keras

    maps = [model.get_layer(name).output for name in layers]
    sides = [int(m.shape[1]) for m in maps]
    # The joint grid is the least common multiple of the maps' grids (InceptionV3 gives 3x3 and
    # Xception 5x5 at 160 px: 15x15), so every map is repeated by a whole factor.
    side = math.lcm(*sides)
    if side > MAX_JOINT_SIDE or any(s != int(m.shape[2]) for s, m in zip(sides, maps)):
        return None
    extractor = keras.Model(model.inputs, maps, name="explain_extractor")
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    features = _compiled_features_layer(extractor)(pixels)
    upsampled = [
        keras.layers.UpSampling2D(side // s, name=f"explain_up_{i}")(f) if side > s else f
        for i, (f, s) in enumerate(zip(features, sides))
    ]
    if len(upsampled) > 1:
        joint = keras.layers.Concatenate(name=JOINT_LAYER)(upsampled)
    else:
        joint = keras.layers.Identity(name=JOINT_LAYER)(upsampled[0])
    pooled, start = [], 0
    for i, m in enumerate(maps):
        channels = int(m.shape[-1])
        pooled.append(
            keras.layers.GlobalAveragePooling2D(name=f"explain_pool_{i}")(
                joint[..., start : start + channels]
            )
        )
        start += channels
    joined = (
        keras.layers.Concatenate(name="explain_features")(pooled)
        if len(pooled) > 1
        else (pooled[0])
    )
    head = model.get_layer(head_layer)
    logits_layer = keras.layers.Dense(head.units, activation=None, name="explain_logits")
    logits = logits_layer(joined)
    logits_layer.set_weights(head.get_weights())
    return keras.Model(pixels, logits, name=f"{model.name}_explain_view")


class Explainer:
    """Explainers for one loaded model; each tf-keras-vis object is built once and reused."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self._visualizers: dict[str, object] = {}
        self._joint_channels: list[int] | None = None
        self._lock = threading.Lock()  # tf-keras-vis objects are not safe to share across threads

    @property
    def layers(self) -> list[str]:
        layers = self.classifier.card.get("explain_layers")
        if not layers:
            from .models import get_architecture

            layers = list(get_architecture(self.classifier.architecture).explain_layers)
        return layers

    def _uses_joint_view(self, method: str) -> bool:
        return method != "scorecam" and self.classifier.architecture in POOLED_HEAD_ARCHITECTURES

    def _visualizer(self, method: str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method not in self._visualizers:
            from tf_keras_vis.gradcam import Gradcam
            from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
            from tf_keras_vis.scorecam import Scorecam
            from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

            cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "scorecam": Scorecam}[method]
            use_view = self._uses_joint_view(method)
            view = explain_view(self.classifier.model, self.layers) if use_view else None
            if view is not None:
                # The view owns a linear copy of the head: nothing to modify, nothing to clone.
                self._joint_channels = [
                    int(self.classifier.model.get_layer(n).output.shape[-1]) for n in self.layers
                ]
                self._visualizers[method] = cls(view, model_modifier=None, clone=False)
            else:
                self._visualizers[method] = cls(
                    self.classifier.model, model_modifier=ReplaceToLinear(), clone=True
                )
        return self._visualizers[method]

    def _joint_maps(self, visualizer, batch: np.ndarray, index: int) -> dict[str, np.ndarray]:
        """All maps from one pass: sample i keeps only map i's gradients.

        Each map is taken back to its own grid (the joint grid repeats it by an integer factor)
        and expanded to the input size with the same linear zoom tf-keras-vis applies.
        """
        import tensorflow as tf
        from scipy.ndimage import zoom
        from tf_keras_vis.utils.scores import CategoricalScore

        n = len(self.layers)
        mask = np.zeros((n, 1, 1, sum(self._joint_channels)), dtype=np.float32)
        start = 0
        for i, channels in enumerate(self._joint_channels):
            mask[i, ..., start : start + channels] = 1.0
            start += channels
        mask = tf.constant(mask)
        cams = visualizer(
            CategoricalScore([index] * n),
            np.repeat(batch, n, axis=0),
            penultimate_layer=JOINT_LAYER,
            seek_penultimate_conv_layer=False,  # the joint layer is a Concatenate, on purpose
            gradient_modifier=lambda grads: grads * mask,
            expand_cam=False,
            normalize_cam=False,
        )
        cams = np.asarray(cams, dtype=np.float32)
        size = batch.shape[1:3]
        maps = {}
        for i, layer in enumerate(self.layers):
            native = int(self.classifier.model.get_layer(layer).output.shape[1])
            step = cams.shape[1] // native
            cam = cams[i, ::step, ::step]
            # Upsampling spreads each position's gradient over step**2 copies, which shrinks the
            # channel weights of Grad-CAM and Grad-CAM++ alike by step**2: undo it exactly.
            cam = cam * step**2
            expanded = zoom(cam, (size[0] / cam.shape[0], size[1] / cam.shape[1]), order=1)
            maps[layer] = normalize_map(np.nan_to_num(expanded))
        return maps

    def _scorecam_channels(self, layer: str) -> int:
        channels = self.classifier.model.get_layer(layer).output.shape[-1]
        return -1 if channels <= SCORECAM_ALL_CHANNELS_UP_TO else SCORECAM_MAX_N

    def explain_pixels(
        self,
        pixels: np.ndarray,
        method: str = "gradcam",
        target: int | str | None = None,
        output_size: tuple[int, int] | None = None,
        probabilities: np.ndarray | None = None,
    ) -> Explanation:
        """Explain one image given at the model's input size (uint8 ``(S, S, 3)``).

        ``target``: class index or name (default: the predicted class, from the probabilities
        the model serves, i.e. averaged over its card's test-time views). The maps are always
        those of the image as given. ``output_size``: (height, width) the maps are resized to,
        e.g. the original image's. ``probabilities``: the served probabilities of this image
        when the caller already has them (they are not computed again).
        """
        from tf_keras_vis.utils.scores import CategoricalScore

        names = self.classifier.class_names
        batch = np.asarray(pixels, dtype=np.float32)[None]
        probs = (
            self.classifier.predict_pixels(batch)[0]
            if probabilities is None
            else np.asarray(probabilities, dtype=np.float64)
        )
        if target is None:
            index = int(np.argmax(probs))
        elif isinstance(target, str):
            if target not in names:
                raise ValueError(f"unknown class {target!r}; choose one of {', '.join(names)}")
            index = names.index(target)
        else:
            index = int(target)
        maps: dict[str, np.ndarray] = {}
        with self._lock:
            visualizer = self._visualizer(method)
            if self._joint_channels is not None and self._uses_joint_view(method):
                maps = self._joint_maps(visualizer, batch, index)
            for layer in [] if maps else self.layers:
                kwargs = {"max_N": self._scorecam_channels(layer)} if method == "scorecam" else {}
                # The layer is named on purpose: never let tf-keras-vis seek another one.
                cam = visualizer(
                    CategoricalScore([index]),
                    batch,
                    penultimate_layer=layer,
                    seek_penultimate_conv_layer=False,
                    **kwargs,
                )
                maps[layer] = np.nan_to_num(np.asarray(cam, dtype=np.float32)[0])
        seen = seen_side(self.classifier.model)
        if seen is not None:
            # The maps cover only the centre the network saw; tf-keras-vis stretched them over
            # the whole input, so put them back where they belong.
            maps = {k: place_in_frame(v, seen, batch.shape[1]) for k, v in maps.items()}
        maps["fused"] = normalize_map(np.mean(list(maps.values()), axis=0))
        if output_size is not None:
            maps = {k: resize_map(v, output_size) for k, v in maps.items()}
        return Explanation(method, index, names[index], float(probs[index]), maps)


def seen_side(model) -> int | None:
    """Side of the central square a centre-cropping model sees; None without a crop layer."""
    from .models import CENTER_CROP_LAYER

    try:
        return int(model.get_layer(CENTER_CROP_LAYER).output.shape[1])
    except ValueError:
        return None


def place_in_frame(heatmap: np.ndarray, seen: int, frame: int) -> np.ndarray:
    """A map of the central ``seen`` square, placed in a ``frame`` square (zero outside).

    Keras's CenterCrop starts at (frame - seen) // 2 on both axes.
    """
    framed = np.zeros((frame, frame), dtype=np.float32)
    start = (frame - seen) // 2
    framed[start : start + seen, start : start + seen] = resize_map(heatmap, (seen, seen))
    return framed


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] with the same epsilon as tf-keras-vis (a flat map becomes 0)."""
    low, high = float(np.min(heatmap)), float(np.max(heatmap))
    return ((heatmap - low) / (high - low + 1e-7)).astype(np.float32)


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a [0, 1] map to (height, width)."""
    image = Image.fromarray(heatmap.astype(np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def _jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map (blue - cyan - yellow - red) for values in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([red, green, blue], axis=-1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """Blend a heatmap (resized to the image if needed) over an RGB uint8 image."""
    if heatmap.shape != image.shape[:2]:
        heatmap = resize_map(heatmap, image.shape[:2])
    coloured = _jet(heatmap).astype(np.float32)
    blended = (1 - opacity) * image.astype(np.float32) + opacity * coloured
    return np.clip(blended, 0, 255).astype(np.uint8)


def map_title(layer: str) -> str:
    titles = {
        "mixed10": "InceptionV3 (mixed10)",
        "block14_sepconv2_act": "Xception (block14_sepconv2_act)",
        "fused": "Fused",
    }
    return titles.get(layer, layer)


def explanation_figure(image: np.ndarray, explanation: Explanation, opacity: float = 0.45):
    """A PIL image: the input, each trunk's map and the fused overlay side by side, labelled."""
    from PIL import ImageDraw

    tile = 256
    base = np.asarray(Image.fromarray(image).resize((tile, tile), Image.Resampling.LANCZOS))
    panels = [("Input", base)]
    for layer, heatmap in explanation.maps.items():
        panels.append((map_title(layer), overlay(base, resize_map(heatmap, (tile, tile)), opacity)))
    header = 44
    canvas = Image.new("RGB", (tile * len(panels), tile + header + 22), "white")
    draw = ImageDraw.Draw(canvas)
    title = (
        f"{METHODS[explanation.method]} for class '{explanation.target_class}' "
        f"(p = {explanation.probability:.3f})"
    )
    draw.text((8, 8), title, fill="black")
    for i, (label, panel) in enumerate(panels):
        canvas.paste(Image.fromarray(panel), (i * tile, header))
        draw.text((i * tile + 6, header + tile + 4), label, fill="black")
    return canvas
