"""Saliency: ``explain`` saves one image's figure; ``faithfulness`` scores the methods and layers.

``faithfulness``'s options are the arguments of :func:`bcclassify.explain.faithfulness.run`, not
fields of its ``Config`` (a method and its layers), so they are written out here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bcclassify.cli.common import EXIT_OK, EXIT_REFUSED, SubParsers, UsageError, load_classifier
from bcclassify.data.imaging import ImageLoadError, load_image
from bcclassify.explain import faithfulness
from bcclassify.explain.maps import METHODS, Explainer, explanation_figure
from bcclassify.serving.classifier import ModelIntegrityError, ModelNotFoundError, load_model

__all__ = ["add_explain", "add_faithfulness", "run_explain", "run_faithfulness"]


def add_explain(sub: SubParsers) -> None:
    p = sub.add_parser("explain", help="save a Grad-CAM figure for one image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--model", help="installed model name (default: the default model)")
    p.add_argument(
        "--method",
        choices=tuple(METHODS),
        help="saliency method (default: the model card's explain_method, chosen by measurement)",
    )
    p.add_argument("--target", help="class to explain (default: the predicted class)")
    p.add_argument("--opacity", type=float, default=0.45)
    p.add_argument("--out", required=True, metavar="FILE.png")


def run_explain(args: argparse.Namespace) -> int:
    classifier = load_classifier(args.model)
    if args.target is not None and args.target not in classifier.class_names:
        raise UsageError(
            f"unknown class {args.target!r}; choose one of {', '.join(classifier.class_names)}"
        )
    try:
        original = load_image(args.image)
    except ImageLoadError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    pixels = classifier.load(args.image)
    explanation = Explainer(classifier).explain_pixels(
        pixels, args.method, args.target, output_size=original.shape[:2]
    )
    explanation_figure(original, explanation, args.opacity).save(args.out)
    print(
        json.dumps(
            {
                "out": args.out,
                "class": explanation.target_class,
                "probability": round(explanation.probability, 6),
                "maps": list(explanation.maps),
            }
        )
    )
    return EXIT_OK


def add_faithfulness(sub: SubParsers) -> None:
    p = sub.add_parser(
        "faithfulness",
        help="score saliency methods and layers: deletion, insertion, pointing",
        description="On a fixed, seeded sample of the model's test split (all classes), one "
        "view per cell: deletion and insertion areas under the curve (Petsiuk et al. 2018) of "
        "each configuration's fused map, and the share of maps whose peak lies on the centre "
        "white cell. Each cell is checkpointed under cache/faithfulness/, so a rerun resumes.",
    )
    p.add_argument("--model", metavar="NAME", help="installed model (default: the default)")
    p.add_argument("--data", required=True, help="the model's training data (class folders)")
    p.add_argument("--cells", type=int, default=200, help="cells to score (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=faithfulness.STEPS, help="deletion/insertion steps")
    p.add_argument(
        "--save",
        metavar="DOCS_DIR",
        help="write faithfulness-<model>.json to this folder (e.g. docs)",
    )
    p.add_argument(
        "--set-default",
        metavar="CONFIG",
        help="with --save: make this configuration the card's explain_layers/explain_method",
    )


def run_faithfulness(args: argparse.Namespace) -> int:
    if args.cells < 1 or args.steps < 2:
        raise UsageError("--cells must be at least 1 and --steps at least 2")
    if args.set_default and not args.save:
        raise UsageError("--set-default needs --save")
    try:
        result = faithfulness.run(
            args.model, args.data, args.cells, args.seed, args.steps, progress=sys.stderr.isatty()
        )
    except (FileNotFoundError, ModelNotFoundError, ModelIntegrityError) as exc:
        raise UsageError(str(exc)) from None
    if args.set_default and args.set_default not in result["table"]:
        raise UsageError(f"--set-default: choose one of {', '.join(result['table'])}")
    if args.save:
        folder = load_model(result["model"]).folder
        out = faithfulness.record(folder, result, args.set_default, Path(args.save))
        print(f"wrote {out}", file=sys.stderr)
    print(faithfulness.table_markdown(result["table"]))
    print(f"\n{result['cells']} cells ({result['scope']}), seed {result['seed']}")
    return EXIT_OK
