"""``evaluate``: recompute test metrics of a run or an installed model, or the share of non-cell
images a model flags (``--ood``); and the text report of those metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bcclassify.cli.common import (
    EXIT_OK,
    SubParsers,
    UsageError,
    load_classifier,
    start_tensorflow,
    view_list,
)

__all__ = ["add_evaluate", "format_metrics", "format_trust", "run_evaluate"]


def add_evaluate(sub: SubParsers) -> None:
    p = sub.add_parser(
        "evaluate",
        help="recompute test metrics of a run or an installed model",
        description="On the run's own data the run's test split is used (same seed, same "
        "split); on any other dataset folder every image is scored.",
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", metavar="RUN_ID")
    group.add_argument("--model", metavar="NAME")
    p.add_argument("--data", help="image-folder dataset (class folders)")
    p.add_argument(
        "--ood",
        metavar="DIR",
        help="with --model: a folder of images that are NOT blood cells; reports the share "
        "the model flags (unidentified, low confidence, refused), by sub-folder",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--views",
        type=view_list,
        help="test-time views to average, comma-separated (e.g. identity,flip_lr,flip_ud,"
        "rot180); default: a run's image as given, an installed model's card",
    )
    p.add_argument(
        "--held-out",
        action="store_true",
        help="with --model: score only the images whose content (sha256) is not in the "
        "model's training split, recomputed from its card (e.g. the originals of cells it did "
        "not train on); recorded as 'NAME (held out)'",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument(
        "--record",
        action="store_true",
        help="with --model and --data: write the figures into the model's card (its "
        "'evaluations' section, keyed by the data folder's name)",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    # scikit-learn, SciPy and pandas (4 s): paid by evaluate only, not by every command's --help.
    from bcclassify.evaluation.scoring import evaluate

    if args.ood:
        return _evaluate_ood(args)
    if not args.data:
        raise UsageError("give --data DIR (a dataset with class folders) or, with --model, --ood")
    if args.held_out and not args.model:
        raise UsageError("--held-out takes --model NAME: an installed model's card names its split")
    if args.record and (not args.model or args.views):
        raise UsageError("--record takes --model NAME as served (without --views)")
    start_tensorflow()
    try:
        metrics = evaluate(
            run_id=args.run,
            model_name=args.model,
            data=args.data,
            batch_size=args.batch_size,
            views=args.views,
            held_out=args.held_out,
        )
    except (FileNotFoundError, LookupError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.record:
        from bcclassify.data.datasets import scan_dataset
        from bcclassify.evaluation.scoring import record_evaluation

        record_evaluation(args.model, metrics, scan_dataset(args.data).manifest_hash())
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
    return EXIT_OK


def _evaluate_ood(args: argparse.Namespace) -> int:
    from bcclassify.evaluation.scoring import evaluate_ood  # as run_evaluate: 4 s of imports

    if not args.model:
        raise UsageError("--ood needs --model NAME (an installed model)")
    if not Path(args.ood).is_dir():
        raise UsageError(f"--ood {args.ood}: not a folder")
    result = evaluate_ood(load_classifier(args.model), args.ood, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    rows = [("all", result)] + list(result["by_folder"].items())
    print(f"non-cell images in {args.ood}, model {result['source']}:")
    print(
        f"  {'folder':<16}{'images':>7}{'flagged':>9}{'unidentified':>14}{'disputed':>10}"
        f"{'low conf.':>11}{'refused':>9}"
    )
    for name, r in rows:
        print(
            f"  {name:<16}{r['num_images']:>7d}{100 * r['flagged_fraction']:>8.1f}%"
            f"{100 * r['unidentified_fraction']:>13.1f}%"
            f"{100 * r['disputed_fraction']:>9.1f}%"
            f"{100 * r['low_confidence_fraction']:>10.1f}%"
            f"{100 * r['refused_fraction']:>8.1f}%"
        )
    return EXIT_OK


def format_trust(trust: dict) -> list[str]:
    """The reviewer-facing figures of a served model on a labelled set."""
    pct_of = lambda key: f"{100 * trust[key]:.2f}%"  # noqa: E731
    unflagged = trust.get("accuracy_of_unflagged")
    return [
        "",
        "served answers (calibrated probabilities; flags as predict writes them):",
        f"  unidentified {pct_of('unidentified_fraction')}, disputed "
        f"{100 * trust.get('disputed_fraction', 0.0):.2f}%, low confidence "
        f"{pct_of('low_confidence_fraction')}, flagged in all {pct_of('flagged_fraction')}",
        "  accuracy of the unflagged: " + ("-" if unflagged is None else f"{100 * unflagged:.2f}%"),
        f"  wrong and unflagged: {pct_of('wrong_and_unflagged_fraction')} of all cells",
        *format_class_balanced(trust.get("class_balanced")),
        f"  ECE {100 * trust['ece']:.2f}%, Brier {trust['brier']:.4f}",
        *format_noise_floor(trust.get("ece_noise_floor")),
    ]


def format_class_balanced(balanced: dict | None) -> list[str]:
    """The same figures with every class weighted equally (cards recorded before it was
    computed have none)."""
    if not balanced:
        return []
    return [
        f"  every class weighted equally: accuracy {100 * balanced['accuracy']:.2f}%, flagged "
        f"{100 * balanced['flagged_fraction']:.2f}%, wrong and unflagged "
        f"{100 * balanced['wrong_and_unflagged_fraction']:.2f}%"
    ]


def format_noise_floor(floor: dict | None) -> list[str]:
    """What ECE a perfectly calibrated model shows on a set this size (cards recorded before
    it was computed have none)."""
    if not floor:
        return []
    return [
        f"  (a perfectly calibrated model would show ECE {100 * floor['median']:.2f}% on these "
        f"{floor['cells']} cells by chance, up to {100 * floor['p95']:.2f}% in 95 of 100 draws)"
    ]


def format_metrics(metrics: dict) -> str:
    """``evaluate``'s text report: totals, per-class rows, confusion matrix, flags, trust."""
    lines = [
        f"scored on: {metrics.get('scope', '')} ({metrics['num_samples']} images)",
        "test-time views averaged: " + ", ".join(metrics.get("test_time_views") or ["identity"]),
        f"accuracy: {metrics['accuracy']:.4f}",
        f"macro precision/recall/F1: {metrics['macro_precision']:.4f} / "
        f"{metrics['macro_recall']:.4f} / {metrics['macro_f1']:.4f}",
        f"weighted precision/recall/F1: {metrics['weighted_precision']:.4f} / "
        f"{metrics['weighted_recall']:.4f} / {metrics['weighted_f1']:.4f}",
        "",
        f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name:<14}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
            f"{row['support']:>9d}"
        )
    lines += [
        "",
        "confusion matrix (rows: true, columns: predicted; "
        + ", ".join(metrics["class_names"])
        + ")",
    ]
    lines += ["  " + " ".join(f"{v:>5d}" for v in row) for row in metrics["confusion_matrix"]]
    if metrics.get("by_confidence"):
        lines += ["", "top probability under a threshold: flagged for review; accuracy of the rest"]
        for row in metrics["by_confidence"]:
            kept = row["accuracy_of_kept"]
            lines.append(
                f"  < {row['threshold']:.2f}: {row['flagged']} flagged "
                f"({100 * row['flagged_fraction']:.1f}%), accuracy of the rest "
                + ("-" if kept is None else f"{100 * kept:.2f}%")
            )
    if metrics.get("trust"):
        lines += format_trust(metrics["trust"])
    return "\n".join(lines)
