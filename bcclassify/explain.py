"""Saliency maps through tf-keras-vis: Grad-CAM, Grad-CAM++ and Score-CAM.

For the hybrid, one map per trunk (InceptionV3 ``mixed10``, Xception ``block14_sepconv2_act``) and a
fused map (their mean). Layer names come from the architecture registry: under Keras 3,
tf-keras-vis's automatic search skips SeparableConv2D, so they are always stated.

tf-keras-vis's ReplaceToLinear modifier swaps the softmax for a linear activation; explainers
work on their own clone, so the model that serves predictions is never changed.
"""

from __future__ import annotations

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


class Explainer:
    """Explainers for one loaded model; each tf-keras-vis object is built once and reused."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self._visualizers: dict[str, object] = {}
        self._lock = threading.Lock()  # tf-keras-vis objects are not safe to share across threads

    @property
    def layers(self) -> list[str]:
        layers = self.classifier.card.get("explain_layers")
        if not layers:
            from .models import get_architecture

            layers = list(get_architecture(self.classifier.architecture).explain_layers)
        return layers

    def _visualizer(self, method: str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method not in self._visualizers:
            from tf_keras_vis.gradcam import Gradcam
            from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
            from tf_keras_vis.scorecam import Scorecam
            from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

            cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "scorecam": Scorecam}[method]
            self._visualizers[method] = cls(
                self.classifier.model, model_modifier=ReplaceToLinear(), clone=True
            )
        return self._visualizers[method]

    def _scorecam_channels(self, layer: str) -> int:
        channels = self.classifier.model.get_layer(layer).output.shape[-1]
        return -1 if channels <= SCORECAM_ALL_CHANNELS_UP_TO else SCORECAM_MAX_N

    def explain_pixels(
        self,
        pixels: np.ndarray,
        method: str = "gradcam",
        target: int | str | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> Explanation:
        """Explain one image given at the model's input size (uint8 ``(S, S, 3)``).

        ``target``: class index or name (default: the predicted class). ``output_size``:
        (height, width) the maps are resized to, e.g. the original image's.
        """
        from tf_keras_vis.utils.scores import CategoricalScore

        names = self.classifier.class_names
        batch = np.asarray(pixels, dtype=np.float32)[None]
        probs = self.classifier.predict_pixels(batch)[0]
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
            for layer in self.layers:
                kwargs = {"max_N": self._scorecam_channels(layer)} if method == "scorecam" else {}
                cam = visualizer(
                    CategoricalScore([index]), batch, penultimate_layer=layer, **kwargs
                )
                maps[layer] = np.nan_to_num(np.asarray(cam, dtype=np.float32)[0])
        maps["fused"] = normalize_map(np.mean(list(maps.values()), axis=0))
        if output_size is not None:
            maps = {k: resize_map(v, output_size) for k, v in maps.items()}
        return Explanation(method, index, names[index], float(probs[index]), maps)


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    low, high = float(np.min(heatmap)), float(np.max(heatmap))
    if high - low < 1e-12:
        return np.zeros_like(heatmap, dtype=np.float32)
    return ((heatmap - low) / (high - low)).astype(np.float32)


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
