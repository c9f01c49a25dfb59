"""How faithful a saliency map is to the model, and whether it points at the cell.

Deletion and insertion (Petsiuk et al. 2018, RISE, https://arxiv.org/abs/1806.07421): pixels are
removed from the image (set to black) most salient first, or restored into a blurred copy most
salient first, and the class probability is read after each step. A faithful map makes the
probability fall fast on deletion (low area under the curve) and rise fast on insertion (high
area). Only pixels the network sees (its central square) are ranked and changed.

Pointing: the share of maps whose peak lies on the centre white cell, taken as its stained
nucleus (purple under May-Grünwald-Giemsa) dilated to take in the cytoplasm.

The functions here are pure (numpy); :func:`measure` runs them over a fixed sample of a model's
test split and checkpoints each cell, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcclassify.storage.cards import ModelCard, weights_id, write_card
from bcclassify.storage.store import write_json

log = logging.getLogger(__name__)

STEPS = 10
BLUR_SIGMA = 5.0  # px; RISE's insertion baseline (a Gaussian blur with sigma 5)
# Nucleus mask: stain "purpleness" (R + B) / 2 - G above this, on 0-255 RGB. Nuclei score 40-110,
# red cells about 20, background about 0 (checked on a montage of every class).
STAIN_THRESHOLD = 30.0
CLOSE_PX = 3  # joins the lobes of a segmented nucleus before picking the centre one
CELL_DILATION = 0.07  # of the frame side (15 px at 213 px): the cytoplasm around the nucleus


@dataclass(frozen=True)
class Config:
    """One explanation setting to score: a method and the layers it explains."""

    name: str
    method: str
    layers: tuple[str, ...]


COARSE = ("mixed10", "block14_sepconv2_act")  # 3x3 and 5x5 at the hybrid's 160 px view
FINE = ("mixed7", "block13_sepconv2_act")  # 8x8 and 10x10
# What the table compares for the hybrid: the old default, and the finer layers with Grad-CAM and
# Layer-CAM. Grad-CAM++ costs another third per cell on 2 cores: named on request (--configs).
HYBRID_CONFIGS = (
    Config("gradcam-coarse", "gradcam", COARSE),
    Config("gradcam-fine", "gradcam", FINE),
    Config("layercam-fine", "layercam", FINE),
)
EXTRA_CONFIGS = (
    Config("gradcam++-fine", "gradcam++", FINE),
    Config("layercam-coarse", "layercam", COARSE),
)


# ----------------------------------------------------------------------------- pure functions


def seen_box(frame: int, seen_fraction: float | None) -> tuple[int, int]:
    """(start, stop) of the central square a centre-cropping model sees, as Keras's CenterCrop."""
    if seen_fraction is None:
        return 0, frame
    seen = int(round(frame * seen_fraction))
    start = (frame - seen) // 2
    return start, start + seen


def salience_order(heatmap: np.ndarray, box: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Flat indices (into the box's square) from most to least salient.

    Ties (flat zero regions of a ReLU'd map) are broken at random, seeded, not in raster order,
    which would favour the top of the image.
    """
    start, stop = box
    values = heatmap[start:stop, start:stop].ravel().astype(np.float64)
    jitter = np.random.default_rng(seed).random(values.size)
    return np.lexsort((jitter, -values))


def perturbation_batches(
    image: np.ndarray,
    heatmap: np.ndarray,
    box: tuple[int, int],
    steps: int = STEPS,
    blurred: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The inner points of the deletion and insertion curves: two ``(steps - 1, S, S, 3)`` arrays.

    Step k (1 .. steps-1) has k/steps of the seen pixels deleted (black) or inserted (original
    pixels into ``blurred``). The end points (the image itself, all black, all blurred) are the
    same for every map of an image, so callers score them once.
    """
    start, stop = box
    side = stop - start
    order = salience_order(heatmap, box, seed)
    blurred = blur(image) if blurred is None else blurred
    deletion = np.repeat(image[None], steps - 1, axis=0)
    insertion = np.repeat(blurred[None], steps - 1, axis=0)
    for k in range(1, steps):
        chosen = order[: int(round(k * order.size / steps))]
        rows, cols = np.unravel_index(chosen, (side, side))
        deletion[k - 1, rows + start, cols + start] = 0
        insertion[k - 1, rows + start, cols + start] = image[rows + start, cols + start]
    return deletion, insertion


def curve_area(scores: np.ndarray) -> float:
    """Area under a curve sampled at evenly spaced fractions 0..1 (trapezoid rule)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(((scores[:-1] + scores[1:]) / 2).mean())


def blur(image: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0)).astype(image.dtype)


def nucleus_mask(image: np.ndarray, threshold: float = STAIN_THRESHOLD) -> np.ndarray:
    """Pixels stained like a nucleus: purple, i.e. red and blue well above green."""
    rgb = image.astype(np.float32)
    return (rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1] > threshold


def centre_cell_mask(image: np.ndarray, dilation: float = CELL_DILATION) -> np.ndarray:
    """The centre white cell: the stained component nearest the centre, dilated.

    Empty when nothing is stained (then no peak can point at the cell).
    """
    from scipy import ndimage

    side = image.shape[0]
    stained = ndimage.binary_closing(nucleus_mask(image), iterations=CLOSE_PX)
    labels, count = ndimage.label(stained)
    if count == 0:
        return np.zeros(image.shape[:2], dtype=bool)
    centre = (np.array(image.shape[:2]) - 1) / 2
    # The component nearest the centre; small specks (below 20 px) are dust or granules.
    sizes = ndimage.sum(stained, labels, range(1, count + 1))
    rows, cols = np.indices(image.shape[:2])
    distance = np.hypot(rows - centre[0], cols - centre[1])
    nearest = ndimage.minimum(distance, labels, range(1, count + 1))
    nearest = np.where(sizes >= 20, nearest, np.inf)
    if not np.isfinite(nearest).any():
        nearest = ndimage.minimum(distance, labels, range(1, count + 1))
    chosen = labels == int(np.argmin(nearest)) + 1
    radius = max(1, int(round(dilation * side)))
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    return ndimage.binary_dilation(chosen, structure=disk)


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, column) of a map's maximum."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)


def summarize(records: list[dict], masks: dict[str, np.ndarray] | None = None) -> dict:
    """Per configuration: mean deletion and insertion areas, and pointing per map.

    ``records``: one per cell, as :func:`measure` writes them. ``masks``: each cell's centre
    cell (by path, input-size coordinates) for pointing, which is left out without them.
    """
    configs: dict[str, dict] = {}
    masks = masks or {}
    for record in records:
        for name, result in record["configs"].items():
            entry = configs.setdefault(
                name,
                {"method": result["method"], "layers": result["layers"], "del": [], "ins": []},
            )
            entry["del"].append(curve_area(result["deletion"]))
            entry["ins"].append(curve_area(result["insertion"]))
            mask = masks.get(record["path"])
            if mask is not None:
                for layer, (row, col) in result["peaks"].items():
                    entry.setdefault("hits", {}).setdefault(layer, []).append(bool(mask[row, col]))
    table = {}
    for name, entry in configs.items():
        n = len(entry["del"])
        row = {
            "method": entry["method"],
            "layers": entry["layers"],
            "cells": n,
            "deletion_auc": round(float(np.mean(entry["del"])), 4),
            "deletion_auc_se": round(float(np.std(entry["del"], ddof=1) / np.sqrt(n)), 4)
            if n > 1
            else None,
            "insertion_auc": round(float(np.mean(entry["ins"])), 4),
            "insertion_auc_se": round(float(np.std(entry["ins"], ddof=1) / np.sqrt(n)), 4)
            if n > 1
            else None,
        }
        if "hits" in entry:
            row["pointing"] = {k: round(float(np.mean(v)), 4) for k, v in entry["hits"].items()}
        table[name] = row
    return table


def paired_difference(records: list[dict], a: str, b: str, curve: str) -> dict:
    """Mean per-cell difference of ``curve`` ("deletion"/"insertion") area, a minus b, with its
    standard error and how many cells favour a (lower deletion, higher insertion)."""
    diffs = np.array(
        [
            curve_area(r["configs"][a][curve]) - curve_area(r["configs"][b][curve])
            for r in records
            if a in r["configs"] and b in r["configs"]
        ]
    )
    better = diffs < 0 if curve == "deletion" else diffs > 0
    return {
        "mean": round(float(diffs.mean()), 4),
        "se": round(float(diffs.std(ddof=1) / np.sqrt(diffs.size)), 4),
        "cells_favouring": int(better.sum()),
        "cells": int(diffs.size),
    }


# ----------------------------------------------------------------------------- the measurement


def sample_test_cells(classifier, data: str | Path, cells: int, seed: int) -> list[tuple]:
    """``cells`` test-split images of the model (as many of each class as possible), seeded.

    The split is the one the model was trained with (same manifest, same seed); a folder that
    is not its training data is sampled whole.
    """
    from bcclassify.data.datasets import scan_dataset
    from bcclassify.evaluation.scoring import split_scope

    card = classifier.card
    split_of = (
        card.get("training_data", {}).get("manifest_sha256"),
        card.get("training_config", {}).get("seed", 42),
        None,
    )
    dataset, indices, scope = split_scope(scan_dataset(data), *split_of)
    rng = np.random.default_rng(seed)
    labels = dataset.labels[indices]
    per_class = int(np.ceil(cells / len(dataset.class_names)))
    chosen: list[int] = []
    for label in range(len(dataset.class_names)):
        pool = indices[labels == label]
        chosen.extend(rng.choice(pool, min(per_class, pool.size), replace=False).tolist())
    chosen = sorted(rng.permutation(chosen)[:cells].tolist())
    log.info("faithfulness sample: %d cells from %s", len(chosen), scope)
    return [(str(dataset.paths[i]), int(dataset.labels[i])) for i in chosen], scope


def measure(
    classifier,
    data: str | Path,
    cells: int = 200,
    configs: tuple[Config, ...] = HYBRID_CONFIGS,
    steps: int = STEPS,
    seed: int = 0,
    checkpoint: Path | None = None,
    progress: bool = False,
) -> tuple[list[dict], str]:
    """Score each configuration on a fixed sample; one JSON line per cell in ``checkpoint``.

    A single view (the image as given) keeps it cheap; the explained class is that view's top
    class. Returns the records and the sample's scope.
    """
    import tensorflow as tf

    from bcclassify.explain.maps import Explainer

    sample, scope = sample_test_cells(classifier, data, cells, seed)
    done: dict[str, dict] = {}
    if checkpoint is not None and checkpoint.is_file():
        for line in checkpoint.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["path"]] = record
    wanted = {c.name for c in configs}
    explainers = {c.name: Explainer(classifier, list(c.layers)) for c in configs}
    forward = tf.function(lambda x: classifier.model(x, training=False), reduce_retracing=True)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        out = [
            forward(tf.constant(batch[i : i + 32], tf.float32)).numpy()
            for i in range(0, len(batch), 32)
        ]
        return np.concatenate(out)

    records = []
    iterator = sample
    if progress:
        from tqdm import tqdm

        iterator = tqdm(sample, desc="faithfulness", unit="cell")
    for number, (path, label) in enumerate(iterator):
        record = done.get(path)
        if record is not None and wanted <= set(record["configs"]):
            records.append(record)
            continue
        started = time.perf_counter()
        pixels = classifier.load(path)
        probs = probabilities(pixels[None].astype(np.float32))[0]
        target = int(np.argmax(probs))
        blurred = blur(pixels)
        results, batches = {}, []
        for config in configs:
            explanation = explainers[config.name].explain_pixels(
                pixels, config.method, target=target, probabilities=probs
            )
            box = seen_box(pixels.shape[0], explanation.seen_fraction)
            deletion, insertion = perturbation_batches(
                pixels, explanation.fused, box, steps, blurred, seed=number
            )
            batches += [deletion, insertion]
            results[config.name] = {
                "method": config.method,
                "layers": list(config.layers),
                "peaks": {k: list(peak(v)) for k, v in explanation.maps.items()},
            }
        black = pixels.copy()
        start, stop = seen_box(pixels.shape[0], explanation.seen_fraction)
        black[start:stop, start:stop] = 0
        ends = np.stack([black, blurred])
        scores = probabilities(np.concatenate([ends, *batches]).astype(np.float32))[:, target]
        p0, p_black, p_blur = float(probs[target]), float(scores[0]), float(scores[1])
        inner = scores[2:].reshape(len(configs), 2, steps - 1)
        for i, config in enumerate(configs):
            results[config.name]["deletion"] = [p0, *inner[i, 0].tolist(), p_black]
            results[config.name]["insertion"] = [p_blur, *inner[i, 1].tolist(), p0]
        record = {
            "path": path,
            "label": label,
            "target": target,
            "probability": p0,
            "configs": results,
            "seconds": round(time.perf_counter() - started, 2),
        }
        records.append(record)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            with checkpoint.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
    return records, scope


def table_markdown(table: dict) -> str:
    """The table as Markdown (README), one row per configuration."""
    lines = [
        "| method | layers | deletion AUC ↓ | insertion AUC ↑ | pointing, fused | "
        "pointing, per trunk | cells |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.values():
        pointing = row.get("pointing", {})
        trunks = ", ".join(f"{k} {v:.0%}" for k, v in pointing.items() if k != "fused")
        fused = f"{pointing['fused']:.0%}" if "fused" in pointing else "—"
        lines.append(
            f"| {row['method']} | {' + '.join(row['layers'])} | "
            f"{row['deletion_auc']:.3f} ± {row['deletion_auc_se']:.3f} | "
            f"{row['insertion_auc']:.3f} ± {row['insertion_auc_se']:.3f} | {fused} | "
            f"{trunks or '—'} | {row['cells']} |"
        )
    return "\n".join(lines)


def default_configs(classifier) -> tuple[Config, ...]:
    """The hybrid's table; for another model, its own layers with Grad-CAM and Layer-CAM."""
    if classifier.architecture == "hybrid":
        return HYBRID_CONFIGS
    from bcclassify.explain.maps import Explainer

    layers = tuple(Explainer(classifier).layers)
    return (Config("gradcam", "gradcam", layers), Config("layercam", "layercam", layers))


def run(
    model: str | None,
    data: str | Path,
    cells: int = 200,
    seed: int = 0,
    steps: int = STEPS,
    checkpoint_dir: Path = Path("cache") / "faithfulness",
    progress: bool = False,
) -> dict:
    """Measure every configuration of ``model`` and return the table with its provenance."""
    from bcclassify.serving.classifier import load_model

    classifier = load_model(model)
    configs = default_configs(classifier)
    checkpoint = checkpoint_dir / (
        f"{classifier.name}-{weights_id(classifier.card)}-n{cells}-seed{seed}-steps{steps}.jsonl"
    )
    records, scope = measure(
        classifier, data, cells, configs, steps, seed, checkpoint, progress=progress
    )
    masks = {r["path"]: centre_cell_mask(classifier.load(r["path"])) for r in records}
    table = summarize(records, masks)
    baseline = configs[0].name
    versus = {
        name: {
            curve: paired_difference(records, name, baseline, curve)
            for curve in ("deletion", "insertion")
        }
        for name in table
        if name != baseline
    }
    labels = np.bincount([r["label"] for r in records], minlength=len(classifier.class_names))
    return {
        "model": classifier.name,
        "weights": weights_id(classifier.card),
        "data": str(data),
        "scope": scope,
        "cells": len(records),
        "cells_per_class": dict(zip(classifier.class_names, labels.tolist())),
        "single_view_accuracy": round(
            float(np.mean([r["label"] == r["target"] for r in records])), 4
        ),
        "seed": seed,
        "steps": steps,
        "explained_class": "the single view's top class",
        "deletion_baseline": "black",
        "insertion_baseline": f"Gaussian blur, sigma {BLUR_SIGMA} px",
        "pointing_mask": (
            f"stained nucleus ((R+B)/2 - G > {STAIN_THRESHOLD}) nearest the centre, "
            f"dilated by {CELL_DILATION:.0%} of the side"
        ),
        "table": table,
        "versus_" + baseline: versus,
        "seconds_per_cell": round(float(np.median([r["seconds"] for r in records])), 2),
    }


def card_summary(result: dict, chosen: str, docs_path: str) -> dict:
    """The card's ``faithfulness`` section: the table in short, the choice and where the rest is."""
    return {
        "chosen": chosen,
        "cells": result["cells"],
        "scope": result["scope"],
        "seed": result["seed"],
        "steps": result["steps"],
        "single_view": True,
        "table": {
            name: {
                k: row[k]
                for k in ("method", "layers", "deletion_auc", "insertion_auc", "pointing")
                if k in row
            }
            for name, row in result["table"].items()
        },
        "details": docs_path,
        "command": (
            f"python -m bcclassify faithfulness --model {result['model']} --data {result['data']} "
            f"--cells {result['cells']} --seed {result['seed']}"
        ),
    }


def record(model_folder: Path, result: dict, chosen: str | None, docs_dir: Path) -> Path:
    """Write the full result to ``docs_dir`` and, with ``chosen``, make it the card's default.

    The card is re-read right before it is written and only the explain keys change
    (``explain_layers``, ``explain_method``, ``faithfulness``): other tools update other keys.
    """
    docs_dir.mkdir(parents=True, exist_ok=True)
    out = docs_dir / f"faithfulness-{result['model']}.json"
    write_json(out, result)
    if chosen is not None:
        row = result["table"][chosen]
        card = ModelCard.read(model_folder)
        if card is None:
            raise FileNotFoundError(f"{model_folder / 'card.json'}: no readable card")
        write_card(
            model_folder,
            card.updated(
                explain_layers=list(row["layers"]),
                explain_method=row["method"],
                faithfulness=card_summary(result, chosen, str(out)),
            ),
        )
    return out


def table_rows(summary: dict) -> list[dict]:
    """Rows for display (the app's Model comparison page) from a card's ``faithfulness``.

    Per-trunk pointing goes under the trunk's name (InceptionV3, Xception), whatever its layer,
    so configurations on different layers share columns.
    """
    from bcclassify.explain.maps import METHODS, TRUNK_OF_LAYER

    def trunk(layer: str) -> str:
        return next((name for prefix, name in TRUNK_OF_LAYER if layer.startswith(prefix)), layer)

    rows = []
    for name, row in summary.get("table", {}).items():
        pointing = row.get("pointing", {})
        rows.append(
            {
                "method": METHODS.get(row["method"], row["method"]),
                "layers": " + ".join(row["layers"]),
                "default": "✓" if name == summary.get("chosen") else "",
                "deletion AUC (lower is better)": f"{row['deletion_auc']:.3f}",
                "insertion AUC (higher is better)": f"{row['insertion_auc']:.3f}",
                "pointing, fused map": f"{pointing['fused']:.0%}" if "fused" in pointing else "—",
                **{
                    f"pointing, {trunk(k)} map": f"{v:.0%}"
                    for k, v in pointing.items()
                    if k != "fused"
                },
            }
        )
    return rows
