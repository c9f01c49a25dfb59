"""Benchmark: load, single-image and batch prediction, explanation, against the FLOP bound."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bcclassify import EXAMPLES_DIR, REPO_ROOT
from bcclassify.explain.maps import Explainer
from bcclassify.serving.classifier import load_model

__all__ = [
    "FLOP_PER_CYCLE_FP32_AVX2",
    "architecture_cost",
    "cpu_info",
    "forward_flops",
    "run_benchmark",
]

FLOP_PER_CYCLE_FP32_AVX2 = 32  # two 8-wide FMA units: 2 x 8 x 2


def forward_flops(model) -> int:
    """Floating-point operations of one forward pass (multiply-adds count 2), from the layers.

    Convolutions and dense layers only: they are >99% of the work in these networks.
    """
    import keras  # lazy: Keras takes seconds to load; the CLI starts without it

    total = 0
    for layer in model.layers:
        if not hasattr(layer, "output") or not layer.weights:
            continue
        out_shape = layer.output.shape
        if isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            in_ch = layer.input.shape[-1]
            spatial = out_shape[1] * out_shape[2]
            total += 2 * spatial * (kh * kw * in_ch * layer.depth_multiplier)
            total += 2 * spatial * in_ch * layer.depth_multiplier * out_shape[-1]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += 2 * out_shape[1] * out_shape[2] * kh * kw * out_shape[-1]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            in_ch = layer.input.shape[-1] // max(layer.groups, 1)
            total += 2 * out_shape[1] * out_shape[2] * kh * kw * in_ch * out_shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def cpu_info() -> dict:
    name, mhz = "unknown", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"name": name, "mhz": mhz, "cores": cores}


def _fresh_process_load_seconds(name: str, compiled: bool = True) -> float:
    """Import + load the model in a new Python process (what a server start-up pays); with
    ``compiled``, from its compiled graph when the cache has one."""
    code = (
        "import time; t = time.perf_counter(); "
        "from bcclassify.serving.classifier import load_model; "
        f"load_model({name!r}, compiled={compiled!r}); print(time.perf_counter() - t)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=REPO_ROOT,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_benchmark(
    name: str, repeats: int = 20, explain_repeats: int = 5, compiled: bool = True
) -> dict:
    """Load, predict, explain and batch figures of an installed model; ``compiled`` False
    answers with the Keras model even where a compiled graph is cached."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to load; the CLI starts without it

    load_s = _fresh_process_load_seconds(name, compiled)
    load_keras_s = _fresh_process_load_seconds(name, compiled=False)
    classifier = load_model(name, compiled=compiled)
    runtime = "onnxruntime" if classifier.compiled is not None else "tensorflow"
    size = classifier.image_size
    example = EXAMPLES_DIR  # the bundled example cells
    files = sorted(example.rglob("*.jpg")) if example.is_dir() else []
    raw = files[0].read_bytes() if files else None
    rng = np.random.default_rng(0)

    def single():
        pixels = classifier.load(raw, "bench") if raw else rng.integers(0, 255, (size, size, 3))
        # As served: calibrated, novelty score, second opinion and colour check.
        classifier.classify_pixels(pixels[None], ["bench"])

    for _ in range(3):
        single()  # warm-up: tracing and first-call allocation
    predict_single = _median_seconds(single, repeats)

    batch = rng.integers(0, 255, (32, size, size, 3)).astype(np.float32)
    classifier.assess_pixels(batch)
    batch_rounds = 3
    start = time.perf_counter()
    for _ in range(batch_rounds):
        classifier.assess_pixels(batch)
    batch_rate = batch_rounds * len(batch) / (time.perf_counter() - start)

    # The bundled cells (two of each class) served with every flag: what a batch of real cells
    # costs, the second opinion and the colour check's greyscale passes included.
    served_rate = None
    if files:
        cells = np.stack([classifier.load(f.read_bytes(), f.name) for f in files])
        names = [f.name for f in files]
        classifier.classify_pixels(cells, names)  # warm-up: the second model's first call
        start = time.perf_counter()
        for _ in range(batch_rounds):
            classifier.classify_pixels(cells, names)
        served_rate = batch_rounds * len(cells) / (time.perf_counter() - start)

    explainer = Explainer(classifier)
    pixels = classifier.load(raw, "bench") if raw else batch[0].astype(np.uint8)
    # As in the app: the cell has been classified, its Grad-CAM reuses those probabilities, so
    # predict + explain is the cost of one cell shown with its maps.
    probs = classifier.assess_pixels(pixels[None])[0][0]
    explainer.explain_pixels(pixels, probabilities=probs)  # warm-up: builds the visualizer
    explain_single = _median_seconds(
        lambda: explainer.explain_pixels(pixels, probabilities=probs), explain_repeats
    )

    # One classified image costs one forward pass per test-time view.
    flops = forward_flops(classifier.model) * len(classifier.test_time_views)
    cpu = cpu_info()
    peak = cpu["cores"] * (cpu["mhz"] or 0) * 1e6 * FLOP_PER_CYCLE_FP32_AVX2
    bound = peak / flops if flops and peak else None
    return {
        "model": name,
        "architecture": classifier.architecture,
        "test_time_views": list(classifier.test_time_views),
        "image_size": size,
        "runtime": runtime,  # what answered: the compiled graph or the Keras model
        "load_s": round(load_s, 3),
        "load_keras_s": round(load_keras_s, 3),
        "predict_single_s": round(predict_single, 4),
        "predict_batch_img_per_s": round(batch_rate, 2),
        "served_examples_img_per_s": round(served_rate, 2) if served_rate else None,
        "explain_single_s": round(explain_single, 4),
        "explain_maps": explainer.layers + ["fused"],
        "predict_plus_explain_s": round(predict_single + explain_single, 4),
        "flops_per_image": flops,
        "peak_gflops": round(peak / 1e9, 1),
        "flop_bound_img_per_s": round(bound, 2) if bound else None,
        "fraction_of_flop_bound": round(batch_rate / bound, 3) if bound else None,
        "cpu": cpu["name"],
        "cpu_cores": cpu["cores"],
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "repeats": repeats,
    }


def architecture_cost(
    arch: str, image_size: int, center_crop: float = 1.0, repeats: int = 20, norm: str = "batch"
) -> dict:
    """What a run's network costs to serve here, whatever its weights: parameters, FLOPs and
    the median time of one forward pass of one image (one view, no calibration or novelty).

    Measured on the registry's build of the architecture at random weights: a run folder keeps
    no model in the repository (model.keras is not committed), and the speed of a network does
    not depend on the values of its weights.
    """
    import datetime as dt

    import tensorflow as tf  # lazy: TensorFlow takes seconds to load; the CLI starts without it

    from bcclassify import CLASS_NAMES
    from bcclassify.models.registry import build

    model = build(arch, image_size, len(CLASS_NAMES), "none", center_crop=center_crop, norm=norm)
    forward = tf.function(lambda x: model(x, training=False))
    pixels = tf.constant(
        np.random.default_rng(0).integers(0, 255, (1, image_size, image_size, 3)), tf.float32
    )
    for _ in range(3):
        forward(pixels)  # warm-up: tracing and first-call allocation
    cpu = cpu_info()
    return {
        "architecture": arch,
        "image_size": image_size,
        "center_crop": center_crop,
        "norm": norm,
        "parameters": int(model.count_params()),
        "flops_per_image": forward_flops(model),
        "forward_single_s": round(_median_seconds(lambda: forward(pixels).numpy(), repeats), 4),
        "repeats": repeats,
        "cpu": cpu["name"],
        "cpu_cores": cpu["cores"],
        "measured": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "how": "the registry's build at random weights: one image, one view, one forward pass",
    }
