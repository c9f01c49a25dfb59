"""Saliency maps through tf-keras-vis: Grad-CAM, Grad-CAM++, Layer-CAM and Score-CAM.

For the hybrid, one map per trunk and a fused map (their mean). The explained layers and the
default method come from the model card (``explain_layers``, ``explain_method``), else from the
architecture registry: under Keras 3, tf-keras-vis's automatic search skips SeparableConv2D, so
layers are always stated. The card's choice is measured (``python -m bcclassify faithfulness``).

tf-keras-vis's ReplaceToLinear modifier swaps the softmax for a linear activation; explainers
work on their own clone, so the model that serves predictions is never changed.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from bcclassify.models.registry import CENTER_CROP_LAYER, REGISTRY, get_architecture

__all__ = [
    "COLOUR_BAR_CAPTION",
    "DEFAULT_METHOD",
    "Explainer",
    "Explanation",
    "JOINT_LAYER",
    "MAX_JOINT_SIDE",
    "METHODS",
    "POOLED_HEAD_ARCHITECTURES",
    "SCORECAM_ALL_CHANNELS_UP_TO",
    "SCORECAM_MAX_N",
    "SEEN_CAPTION",
    "TRUNK_OF_LAYER",
    "colour_bar",
    "colour_bar_figure",
    "cut_tensors",
    "explain_view",
    "explanation_figure",
    "map_caption",
    "map_title",
    "normalize_map",
    "overlay",
    "place_in_frame",
    "resize_map",
    "seen_side",
    "seen_square",
]

METHODS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "layercam": "Layer-CAM",
    "scorecam": "Score-CAM",
}
DEFAULT_METHOD = "gradcam"  # for a card that names none
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
    # Side of the central square the network saw, as a fraction of the frame (None: all of it).
    seen_fraction: float | None = None

    @property
    def fused(self) -> np.ndarray:
        return self.maps["fused"]


JOINT_LAYER = "explain_joint"
MAX_JOINT_SIDE = 64  # beyond this the joint grid costs more than it saves: explain map by map
# Architectures whose head is Dense(concat(GAP(map) for each explained map)): their maps can be
# computed on the fast explain view below. The others (unet, supcon) use the full model.
POOLED_HEAD_ARCHITECTURES = {name for name, arch in REGISTRY.items() if arch.pooled_head}


class TraceSwitch:
    """Whether an explain view runs its compiled parts as traced functions (the default) or
    eagerly.

    Tracing them costs about 2.8 s on the first map of a hybrid and saves 0.25 s on each later
    one (measured on 2 cores: 1.0 s for the first map run eagerly, 0.45 s warm, 0.2 s traced);
    the app explains eagerly until a trace has been made while nobody waits
    (:meth:`Explainer.trace`). Both give the same maps (within 3e-7).
    """

    def __init__(self, traced: bool = True) -> None:
        self.traced = traced


def _compiled_features_layer(
    extractor, same_image: bool = False, switch: TraceSwitch | None = None
):
    """A layer that runs ``extractor`` (input -> explained maps) as one compiled call.

    Grad-CAM needs gradients from the class score back to the explained maps only, i.e. through
    the head; the trunks below the maps need no eager gradient tape. Running them compiled makes
    an explanation cost about one forward pass instead of an eager pass layer by layer.
    ``same_image``: every sample of a batch is the same image (tf-keras-vis gets it once per
    map), so the trunks run on the first and their maps are repeated.
    """
    import keras  # lazy: TensorFlow takes seconds; the app and CLI start without it
    import tensorflow as tf

    def extract(x):
        if not same_image:
            return extractor(x, training=False)
        outputs = extractor(x[:1], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [tf.repeat(o, tf.shape(x)[0], axis=0) for o in outputs]

    traced = tf.function(extract)
    switch = switch or TraceSwitch()

    @tf.custom_gradient
    def _inference_only(pixels):
        # tf-keras-vis watches the pixels; without this, TF would run the compiled trunks in
        # their differentiable form (keeping every intermediate) for a gradient nobody reads.
        outputs = traced(pixels) if switch.traced else extract(pixels)

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


def _producer(tensor):
    """The operation that made a symbolic Keras tensor, and the node (call) that made it."""
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def _ancestors(tensors) -> set[int]:
    """ids of every operation the tensors depend on, their own producers included."""
    seen: set[int] = set()
    stack = list(tensors)
    while stack:
        operation, node = _producer(stack.pop())
        if id(operation) not in seen:
            seen.add(id(operation))
            stack.extend(node.input_tensors)
    return seen


def cut_tensors(model, layers: list[str], top):
    """The tensors the network above the explained maps reads from below them on its way to
    ``top`` (the head's input, or the logits of a model that names them), maps first.

    Above ``mixed10``/``block14_sepconv2_act`` that is just the maps; above ``mixed7`` and
    ``block13_sepconv2_act`` it also holds Xception's residual (block 13 adds its input back).
    None when one explained layer lies below another: then a map's gradient also flows through
    the other map, which the split view would miss.
    """
    maps = [model.get_layer(name).output for name in layers]
    below = [_ancestors([m]) for m in maps]
    for i, m in enumerate(maps):
        if any(id(_producer(m)[0]) in below[j] for j in range(len(maps)) if j != i):
            return None
    lower = set().union(*below)
    cut: dict[int, object] = {}
    seen: set[int] = set()
    stack = [top]
    while stack:
        tensor = stack.pop()
        operation, node = _producer(tensor)
        if id(operation) in lower:
            cut[id(tensor)] = tensor
        elif id(tensor) not in seen:
            seen.add(id(tensor))
            stack.extend(node.input_tensors)
    if any(id(m) not in cut for m in maps):
        return None
    return maps + [t for key, t in cut.items() if key not in {id(m) for m in maps}]


def _compiled_upper_layer(upper, switch: TraceSwitch | None = None):
    """A layer that runs ``upper`` (cut tensors -> the head's input) as one compiled call.

    Unlike the trunks below, gradients do flow through it (to the explained maps); a traced
    function is differentiable and far cheaper than Keras's eager layer-by-layer call.
    """
    import keras  # lazy: TensorFlow takes seconds; the app and CLI start without it
    import tensorflow as tf

    def run_upper(xs):
        return upper(xs, training=False)

    traced = tf.function(run_upper)
    switch = switch or TraceSwitch()

    class CompiledUpper(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(trainable=False, **kwargs)
            self.upper = upper

        def call(self, inputs):
            return (traced if switch.traced else run_upper)(list(inputs))

        def compute_output_spec(self, inputs):
            return keras.KerasTensor(self.upper.output.shape, self.upper.output.dtype)

    return CompiledUpper(name="explain_upper")


def explain_view(
    model,
    layers: list[str],
    head_layer: str = "predictions",
    same_image: bool = False,
    switch: TraceSwitch | None = None,
):
    """The same network, rebuilt for tf-keras-vis, with every explained map on ONE layer.

    The network is cut at the explained maps (see :func:`cut_tensors`). Below the cut runs compiled
    without gradients (see :func:`_compiled_features_layer`); each explained map is upsampled
    (nearest, integer factor) to a common grid and concatenated as ``explain_joint``, then
    average-pooled back to its own grid (an exact inverse) and fed, with any other tensor the
    cut needs, to the network above the cut (compiled, differentiable) and a copy of the
    classifier's weights with a linear output (what tf-keras-vis's ReplaceToLinear would do), so
    the serving model is never touched; a model that names its logits (``LOGITS_LAYER``) is run
    up to them instead. The view's softmax equals the model's output. One
    tf-keras-vis pass over a batch holding the image once per map yields every map, each sample
    masking the other maps' gradients.
    ``same_image``: the view is only ever given one image repeated (as :class:`Explainer`
    does), so the trunks below the cut run once per batch. ``switch``: whether the compiled
    parts run traced (the default) or eagerly; see :class:`TraceSwitch`.
    Returns None for non-square maps, a joint grid over ``MAX_JOINT_SIDE`` or layers that
    cannot be cut apart.
    """
    import keras  # lazy: TensorFlow takes seconds; the app and CLI start without it

    from bcclassify.serving.trust import LOGITS_LAYER

    head = model.get_layer(head_layer)
    # An adapted model with mid-level blocks adds a second read-out before its softmax (some of
    # its blocks lie above the explained maps): the view then runs up to those logits itself.
    logits_tensor = (
        model.get_layer(LOGITS_LAYER).output
        if any(layer.name == LOGITS_LAYER for layer in model.layers)
        else None
    )
    top = head.input if logits_tensor is None else logits_tensor
    cut = cut_tensors(model, layers, top)
    if cut is None:
        return None
    maps = cut[: len(layers)]
    sides = [int(m.shape[1]) for m in maps]
    # The joint grid is the least common multiple of the maps' grids (InceptionV3 gives 3x3 and
    # Xception 5x5 at 160 px: 15x15; mixed7 8x8 and block13 10x10: 40x40), so every map is
    # repeated by a whole factor.
    side = math.lcm(*sides)
    if side > MAX_JOINT_SIDE or any(s != int(m.shape[2]) for s, m in zip(sides, maps)):
        return None
    extractor = keras.Model(model.inputs, cut, name="explain_extractor")
    upper = keras.Model(cut, top, name="explain_upper_model")
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    features = _compiled_features_layer(extractor, same_image, switch)(pixels)
    upsampled = [
        keras.layers.UpSampling2D(side // s, name=f"explain_up_{i}")(f) if side > s else f
        for i, (f, s) in enumerate(zip(features, sides))
    ]
    if len(upsampled) > 1:
        joint = keras.layers.Concatenate(name=JOINT_LAYER)(upsampled)
    else:
        joint = keras.layers.Identity(name=JOINT_LAYER)(upsampled[0])
    native, start = [], 0
    for i, (m, s) in enumerate(zip(maps, sides)):
        channels = int(m.shape[-1])
        part = joint[..., start : start + channels]
        if side > s:
            part = keras.layers.AveragePooling2D(side // s, name=f"explain_down_{i}")(part)
        native.append(part)
        start += channels
    upper_output = _compiled_upper_layer(upper, switch)(native + list(features[len(layers) :]))
    if logits_tensor is None:
        logits_layer = keras.layers.Dense(head.units, activation=None, name="explain_logits")
        logits = logits_layer(upper_output)
        logits_layer.set_weights(head.get_weights())
    else:
        logits = upper_output
    return keras.Model(pixels, logits, name=f"{model.name}_explain_view")


class Explainer:
    """Explainers for one loaded model; each tf-keras-vis object is built once and reused."""

    def __init__(
        self, classifier, layers: list[str] | None = None, eager_until_traced: bool = False
    ) -> None:
        """``layers``: the maps to explain (default: the card's ``explain_layers``).
        ``eager_until_traced``: run the explain view eagerly until :meth:`trace` is called (a
        server's first maps come 1.8 s sooner; see :class:`TraceSwitch`)."""
        self.classifier = classifier
        self.switch = TraceSwitch(traced=not eager_until_traced)
        self._layers = list(layers) if layers else None
        self.visualizers: dict[str, object] = {}
        self._view: object = None
        self._view_built = False
        self.joint_channels: list[int] | None = None
        # tf-keras-vis objects are not safe to share across threads; re-entrant for trace().
        self._lock = threading.RLock()

    @property
    def default_method(self) -> str:
        """The card's measured choice (``explain_method``), else Grad-CAM."""
        method = self.classifier.card.get("explain_method", DEFAULT_METHOD)
        return method if method in METHODS else DEFAULT_METHOD

    @property
    def layers(self) -> list[str]:
        layers = self._layers or self.classifier.card.get("explain_layers")
        if not layers:
            layers = list(get_architecture(self.classifier.architecture).explain_layers)
        return layers

    def uses_joint_view(self, method: str) -> bool:
        return method != "scorecam" and self.classifier.architecture in POOLED_HEAD_ARCHITECTURES

    def _visualizer(self, method: str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method not in self.visualizers:
            # lazy: tf-keras-vis imports TensorFlow (seconds); the app starts without it
            from tf_keras_vis.gradcam import Gradcam
            from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
            from tf_keras_vis.layercam import Layercam
            from tf_keras_vis.scorecam import Scorecam
            from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

            cls = {
                "gradcam": Gradcam,
                "gradcam++": GradcamPlusPlus,
                "layercam": Layercam,
                "scorecam": Scorecam,
            }[method]
            view = None
            if self.uses_joint_view(method):
                if not self._view_built:  # one view (and one trace) for every method
                    # _joint_maps feeds it one image once per map: the trunks run once.
                    self._view = explain_view(
                        self.classifier.model, self.layers, same_image=True, switch=self.switch
                    )
                    self._view_built = True
                view = self._view
            if view is not None:
                # The view owns a linear copy of the head: nothing to modify, nothing to clone.
                self.joint_channels = [
                    int(self.classifier.model.get_layer(n).output.shape[-1]) for n in self.layers
                ]
                self.visualizers[method] = cls(view, model_modifier=None, clone=False)
            else:
                self.visualizers[method] = cls(
                    self.classifier.model, model_modifier=ReplaceToLinear(), clone=True
                )
        return self.visualizers[method]

    def _joint_maps(
        self, visualizer, batch: np.ndarray, index: int, method: str
    ) -> dict[str, np.ndarray]:
        """All maps from one pass: sample i keeps only map i's gradients.

        Each map is taken back to its own grid (the joint grid repeats it by an integer factor)
        and expanded to the input size with the same linear zoom tf-keras-vis applies.
        """
        import tensorflow as tf  # lazy: TensorFlow takes seconds; the app and CLI start without it
        from scipy.ndimage import zoom  # lazy: ~0.5 s, not needed at app start-up
        from tf_keras_vis.utils.scores import CategoricalScore

        n = len(self.layers)
        mask = np.zeros((n, 1, 1, sum(self.joint_channels)), dtype=np.float32)
        start = 0
        for i, channels in enumerate(self.joint_channels):
            mask[i, ..., start : start + channels] = 1.0
            start += channels
        mask = tf.constant(mask)
        if method == "layercam":
            # Layer-CAM keeps only positive gradients (tf-keras-vis's default modifier for it).
            def modifier(grads):
                return tf.nn.relu(grads) * mask
        else:

            def modifier(grads):
                return grads * mask

        cams = visualizer(
            CategoricalScore([index] * n),
            np.repeat(batch, n, axis=0),
            penultimate_layer=JOINT_LAYER,
            seek_penultimate_conv_layer=False,  # the joint layer is a Concatenate, on purpose
            gradient_modifier=modifier,
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
            # Pooling back spreads each position's gradient over step**2 copies, which shrinks
            # Grad-CAM's channel weights and Layer-CAM's per-position ones by step**2: undo it.
            cam = cam * step**2
            expanded = zoom(cam, (size[0] / cam.shape[0], size[1] / cam.shape[1]), order=1)
            maps[layer] = normalize_map(np.nan_to_num(expanded))
        return maps

    def _scorecam_channels(self, layer: str) -> int:
        channels = self.classifier.model.get_layer(layer).output.shape[-1]
        return -1 if channels <= SCORECAM_ALL_CHANNELS_UP_TO else SCORECAM_MAX_N

    def trace(self, pixels: np.ndarray, probabilities: np.ndarray | None = None) -> None:
        """Trace the explain view on ``pixels`` (as :meth:`explain_pixels` takes them) and use
        the traced view from now on; nothing to do when it already is. Maps being computed
        meanwhile finish first; maps asked for meanwhile wait for the trace (about 3 s)."""
        with self._lock:
            if self.switch.traced:
                return
            self.switch.traced = True
            try:
                self.explain_pixels(pixels, probabilities=probabilities)
            except BaseException:
                self.switch.traced = False  # stay on the eager view, which worked so far
                raise

    def explain_pixels(
        self,
        pixels: np.ndarray,
        method: str | None = None,
        target: int | str | None = None,
        output_size: tuple[int, int] | None = None,
        probabilities: np.ndarray | None = None,
    ) -> Explanation:
        """Explain one image given at the model's input size (uint8 ``(S, S, 3)``).

        ``method``: one of ``METHODS`` (default: the card's ``explain_method``).
        ``target``: class index or name (default: the predicted class, from the probabilities
        the model serves, i.e. averaged over its card's test-time views). The maps are always
        those of the image as given. ``output_size``: (height, width) the maps are resized to,
        e.g. the original image's. ``probabilities``: the served probabilities of this image
        when the caller already has them (they are not computed again).
        """
        # lazy: tf-keras-vis imports TensorFlow (seconds); the app starts without it
        from tf_keras_vis.utils.scores import CategoricalScore

        method = method or self.default_method
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
            if self.joint_channels is not None and self.uses_joint_view(method):
                maps = self._joint_maps(visualizer, batch, index, method)
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
        frame = batch.shape[1]
        if seen is not None:
            # The maps cover only the centre the network saw; tf-keras-vis stretched them over
            # the whole input, so put them back where they belong.
            maps = {k: place_in_frame(v, seen, batch.shape[1]) for k, v in maps.items()}
        maps["fused"] = normalize_map(np.mean(list(maps.values()), axis=0))
        if output_size is not None:
            maps = {k: resize_map(v, output_size) for k, v in maps.items()}
        fraction = None if seen is None or seen >= frame else seen / frame
        return Explanation(method, index, names[index], float(probs[index]), maps, fraction)


def seen_side(model) -> int | None:
    """Side of the central square a centre-cropping model sees; None without a crop layer."""
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


SEEN_CAPTION = (
    "The model sees only the central square (outlined); the dimmed border around it is not "
    "scored, so it carries no colour."
)
COLOUR_BAR_CAPTION = "Colour: the map's share of its own maximum, blue (low) to red (highest)."


def seen_square(size: tuple[int, int], seen_fraction: float | None) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the central square the network saw, in an image of ``size``.

    The fraction is of the model's input side; a non-square working copy keeps the proportion
    on each axis, as the map does.
    """
    height, width = size
    if seen_fraction is None:
        return 0, 0, height, width
    h, w = round(height * seen_fraction), round(width * seen_fraction)
    top, left = (height - h) // 2, (width - w) // 2
    return top, left, top + h, left + w


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    opacity: float = 0.45,
    seen_fraction: float | None = None,
) -> np.ndarray:
    """Blend a heatmap (resized to the image if needed) over an RGB uint8 image.

    With ``seen_fraction`` (a centre-cropping model) only the central square the network saw is
    coloured; around it the image is dimmed towards white, never painted "cold" (a cold colour
    would read as "no evidence" where the network simply did not look), and a light outline
    marks the square.
    """
    if heatmap.shape != image.shape[:2]:
        heatmap = resize_map(heatmap, image.shape[:2])
    pixels = image.astype(np.float32)
    coloured = _jet(heatmap).astype(np.float32)
    blended = (1 - opacity) * pixels + opacity * coloured
    if seen_fraction is not None:
        top, left, bottom, right = seen_square(image.shape[:2], seen_fraction)
        outside = np.ones(image.shape[:2], dtype=bool)
        outside[top:bottom, left:right] = False
        blended[outside] = 0.45 * pixels[outside] + 0.55 * 255.0  # faded, uncoloured
        line = max(1, round(min(image.shape[:2]) / 160))
        frame = np.zeros_like(outside)
        frame[max(top - line, 0) : bottom + line, max(left - line, 0) : right + line] = True
        frame[top:bottom, left:right] = False
        blended[frame] = 245.0  # a light outline of the seen square
    return np.clip(blended, 0, 255).astype(np.uint8)


def colour_bar(width: int = 256, height: int = 14) -> np.ndarray:
    """The overlay's colour scale, low (left) to high (right), as an RGB uint8 strip."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return _jet(ramp)


def colour_bar_figure(width: int = 320):
    """A labelled colour bar (PIL image): the strip with "low" and "high" under its ends."""
    strip = Image.fromarray(colour_bar(width - 16, 14))
    canvas = Image.new("RGB", (width, 34), "white")
    canvas.paste(strip, (8, 2))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 19), "low", fill="black")
    draw.text((width - 8 - 24, 19), "high", fill="black")
    draw.text((width // 2 - 40, 19), "map value", fill="black")
    return canvas


# (layer-name prefix, trunk) for the maps of multi-trunk models, as the registry states them.
TRUNK_OF_LAYER = tuple(pair for arch in REGISTRY.values() for pair in arch.map_titles)


def map_title(layer: str) -> str:
    """'InceptionV3 (mixed7)', 'Xception (block13_sepconv2_act)', 'Fused' or the layer's name."""
    if layer == "fused":
        return "Fused"
    for prefix, trunk in TRUNK_OF_LAYER:
        if layer.startswith(prefix):
            return f"{trunk} ({layer})"
    return layer


def map_caption(explanation: Explanation, layer: str, class_label=str) -> str:
    """What one map shows: method, map, and the class it argues for with its probability."""
    return (
        f"{METHODS[explanation.method]} · {map_title(layer)} — for "
        f"{class_label(explanation.target_class)}, p = {explanation.probability:.3f}"
    )


def explanation_figure(image: np.ndarray, explanation: Explanation, opacity: float = 0.45):
    """A PIL image: the input, each trunk's map and the fused overlay side by side, labelled,
    with the colour bar and, for a centre-cropping model, its seen square outlined."""
    tile = 256
    base = np.asarray(Image.fromarray(image).resize((tile, tile), Image.Resampling.LANCZOS))
    panels = [("Input", base)]
    for layer, heatmap in explanation.maps.items():
        panels.append(
            (
                map_title(layer),
                overlay(
                    base, resize_map(heatmap, (tile, tile)), opacity, explanation.seen_fraction
                ),
            )
        )
    header, footer = 44, 22 + (16 if explanation.seen_fraction else 0) + 40
    canvas = Image.new("RGB", (tile * len(panels), tile + header + footer), "white")
    draw = ImageDraw.Draw(canvas)
    title = (
        f"{METHODS[explanation.method]} for class '{explanation.target_class}' "
        f"(p = {explanation.probability:.3f})"
    )
    draw.text((8, 8), title, fill="black")
    for i, (label, panel) in enumerate(panels):
        canvas.paste(Image.fromarray(panel), (i * tile, header))
        draw.text((i * tile + 6, header + tile + 4), label, fill="black")
    y = header + tile + 22
    if explanation.seen_fraction:
        draw.text((6, y), "The model sees only the central square (outlined).", fill="black")
        y += 16
    canvas.paste(colour_bar_figure(), (0, y + 2))
    return canvas
