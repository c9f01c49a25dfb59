"""Command line: train, evaluate, promote, list, predict, explain, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bcclassify.cli.quiet_tensorflow import import_tensorflow_quietly

# Exit statuses (README, "Exit statuses"): 1 is only ever "some inputs refused", so a script can
# tell it from a crash (3) or a mistake in the call, an unknown or unverifiable model (2).
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
DEBUG_ENV = "BCCLASSIFY_DEBUG"  # set to 1 (or pass --debug) for the traceback of an internal error


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""


def _tensorflow() -> None:
    """Import TensorFlow (muted) once a command's arguments are known to be valid.

    Commands call this after their own checks, so a usage error answers in a second instead of
    paying the TensorFlow start-up first.
    """
    import_tensorflow_quietly()


def _add_train(sub) -> None:
    from bcclassify import ARCHITECTURES
    from bcclassify.training.runs import (
        TrainConfig as Defaults,  # one place for every default of a run
    )

    p = sub.add_parser("train", help="train a model and record the run under model_store/runs")
    p.add_argument("--arch", choices=ARCHITECTURES, help="architecture (required unless --resume)")
    p.add_argument("--data", help="image-folder dataset: one sub-folder per class")
    p.add_argument("--image-size", type=int, help="input side in px (default: per architecture)")
    p.add_argument("--epochs", type=int, default=Defaults.epochs)
    p.add_argument("--batch-size", type=int, default=Defaults.batch_size)
    p.add_argument("--optimizer", choices=("adam", "sgd", "rmsprop"), default=Defaults.optimizer)
    p.add_argument(
        "--lr", type=float, default=Defaults.lr, help="peak learning rate (cosine decay)"
    )
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=Defaults.augment)
    p.add_argument(
        "--augment-preset",
        choices=("standard", "lab"),
        default=Defaults.augment_preset,
        help="lab: also stain (OD), white balance, zoom up to 3x, blur, noise, JPEG (other labs)",
    )
    p.add_argument(
        "--keep-weights",
        choices=("best", "last"),
        default=Defaults.keep_weights,
        help="the epoch whose weights the run keeps: best validation accuracy, or the last",
    )
    p.add_argument("--smote", action="store_true", help="SMOTE-oversample the training part")
    p.add_argument("--class-weights", action="store_true", help="weight the loss by class rarity")
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="keep pretrained trunks' batch-norm statistics fixed (use a small --lr, e.g. 1e-4)",
    )
    p.add_argument(
        "--center-crop",
        type=float,
        default=Defaults.center_crop,
        metavar="FRACTION",
        help="the network sees only the central FRACTION of its input (a layer in the model; "
        "PBC crops centre the cell, so 0.75 gives it more pixels at the same cost)",
    )
    p.add_argument(
        "--folds", type=int, default=Defaults.folds, help="stratified K-fold cross-validation"
    )
    p.add_argument(
        "--no-shuffle", dest="shuffle", action="store_false", help="training batches in class order"
    )
    p.add_argument("--seed", type=int, default=Defaults.seed)
    p.add_argument(
        "--freeze-until",
        help="freeze up to these layers (comma list; 'layer:input' cuts before a layer; 'auto' "
        "uses the architecture's default) and train the rest on cached activations",
    )
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    p.add_argument(
        "--init-from", metavar="RUN_ID", help="start from another run's final weights (fine-tune)"
    )
    p.add_argument(
        "--strategy", choices=("auto", "mirrored", "multiworker"), default=Defaults.strategy
    )
    p.add_argument("--backbone-weights", metavar="DIR", help="folder of ImageNet-derived weights")
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class")
    p.add_argument(
        "--aug-copies",
        type=int,
        default=Defaults.aug_copies,
        help="augmented copies (cached mode)",
    )
    p.add_argument(
        "--head-epochs", type=int, default=Defaults.head_epochs, help="supcon: classifier epochs"
    )
    p.add_argument(
        "--head-lr",
        type=float,
        help="supcon: peak learning rate of the linear classifier on the frozen embedding "
        "(default: --lr; a linear probe wants a larger one than the encoder)",
    )
    p.add_argument(
        "--cache-dir", default=Defaults.cache_dir, help="where decoded pixels/activations go"
    )
    p.add_argument("--note", default=Defaults.note, help="free text kept in the run record")
    p.add_argument("--run-id", help="name for the run folder (default: time-arch-size)")


def _cmd_train(args) -> int:
    if not args.resume and (not args.arch or not args.data):
        raise UsageError("train needs --arch and --data (or --resume RUN_ID)")
    _tensorflow()
    from bcclassify.training.runs import TrainConfig, resume, train

    if args.resume:
        run_dir = resume(args.resume)
    else:
        fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
        run_dir = train(TrainConfig(**fields))
    print(run_dir.name)
    return EXIT_OK


# ----------------------------------------------------------------------------- predict


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files or folders; CSV (or JSON) on stdout",
        description="Classify cell images. Folders are searched recursively (hidden files "
        "skipped); one row per file, sorted by path; CSV rows are written (and flushed) batch by "
        "batch, so an interrupted run keeps its finished rows; JSON is written at the end. A "
        "progress bar goes to stderr when it is a terminal. Exit 0: all classified; 1: some "
        "files or folders refused (each named on stderr and in its row); 2: usage error or a "
        "model that fails its integrity check; 3: internal error.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    p.add_argument("--model", help="installed model name (default: the default model)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--batch-size", type=int, default=32)


def _load_classifier(name: str | None):
    _tensorflow()
    from bcclassify.serving.classifier import ModelIntegrityError, ModelNotFoundError, load_model

    try:
        return load_model(name)
    except (ModelNotFoundError, ModelIntegrityError) as exc:
        raise UsageError(str(exc)) from None


def _prediction_json(pred, names) -> dict:
    return {
        "path": pred.path,
        "label": pred.label,
        "confidence": pred.confidence,
        "flag": pred.flag,
        "error": pred.error,
        "probabilities": None
        if not pred.ok
        else {c: float(p) for c, p in zip(names, pred.probabilities)},
    }


def _cmd_predict(args) -> int:
    from tqdm import tqdm

    from bcclassify.data.imaging import collect_image_paths
    from bcclassify.presentation.tables import prediction_rows, write_prediction_csv
    from bcclassify.review.report import batch_shift_notice
    from bcclassify.serving.classifier import iter_sources

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not args.paths:
        raise UsageError("no inputs: give one or more image files or folders")
    paths = collect_image_paths(args.paths)  # sorted: rows can be written as soon as final
    if not paths:
        raise UsageError(f"no files found in {', '.join(args.paths)}")
    classifier = _load_classifier(args.model)
    names = classifier.class_names
    csv_out = args.format == "csv"
    if csv_out:
        write_prediction_csv([], names, sys.stdout)
        sys.stdout.flush()
    payload: list[dict] = []
    refused = classified = unidentified = 0
    # On a terminal only (disable=None): a log or pipe keeps exactly one line per refused input.
    bar = tqdm(
        total=len(paths),
        desc="classifying",
        unit="image",
        file=sys.stderr,
        disable=None if len(paths) > 1 else True,
    )
    with bar:
        for start in range(0, len(paths), args.batch_size):
            batch = paths[start : start + args.batch_size]
            predictions = classifier.classify(iter_sources(batch), batch_size=args.batch_size)
            if csv_out:
                # Flushed per batch, so a killed run leaves every finished row behind it.
                write_prediction_csv(
                    prediction_rows(predictions, names), names, sys.stdout, header=False
                )
                sys.stdout.flush()
            else:
                payload.extend(_prediction_json(pred, names) for pred in predictions)
            for pred in predictions:
                if not pred.ok:
                    refused += 1
                    bar.write(f"refused: {' '.join(pred.error.split())}", file=sys.stderr)
                else:
                    classified += 1
                    unidentified += pred.flag == "unidentified"
            bar.update(len(batch))
    if not csv_out:
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    notice = batch_shift_notice(classified, unidentified)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    return EXIT_REFUSED if refused else EXIT_OK


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(sub) -> None:
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
        type=_view_list,
        help="test-time views to average, comma-separated (e.g. identity,flip_lr,flip_ud,"
        "rot180); default: a run's image as given, an installed model's card",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _view_list(text: str) -> list[str]:
    from bcclassify.serving.classifier import check_views

    try:
        return list(check_views([v.strip() for v in text.split(",") if v.strip()]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_evaluate(args) -> int:
    from bcclassify.evaluation.scoring import evaluate

    if args.ood:
        return _evaluate_ood(args)
    if not args.data:
        raise UsageError("give --data DIR (a dataset with class folders) or, with --model, --ood")
    _tensorflow()
    try:
        metrics = evaluate(
            run_id=args.run,
            model_name=args.model,
            data=args.data,
            batch_size=args.batch_size,
            views=args.views,
        )
    except (FileNotFoundError, LookupError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
    return EXIT_OK


def _evaluate_ood(args) -> int:
    from bcclassify.evaluation.scoring import evaluate_ood

    if not args.model:
        raise UsageError("--ood needs --model NAME (an installed model)")
    if not Path(args.ood).is_dir():
        raise UsageError(f"--ood {args.ood}: not a folder")
    result = evaluate_ood(_load_classifier(args.model), args.ood, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    rows = [("all", result)] + list(result["by_folder"].items())
    print(f"non-cell images in {args.ood}, model {result['source']}:")
    print(
        f"  {'folder':<16}{'images':>7}{'flagged':>9}{'unidentified':>14}{'low conf.':>11}"
        f"{'refused':>9}"
    )
    for name, r in rows:
        print(
            f"  {name:<16}{r['num_images']:>7d}{100 * r['flagged_fraction']:>8.1f}%"
            f"{100 * r['unidentified_fraction']:>13.1f}%"
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
        f"  unidentified {pct_of('unidentified_fraction')}, low confidence "
        f"{pct_of('low_confidence_fraction')}, flagged in all {pct_of('flagged_fraction')}",
        "  accuracy of the unflagged: " + ("-" if unflagged is None else f"{100 * unflagged:.2f}%"),
        f"  wrong and unflagged: {pct_of('wrong_and_unflagged_fraction')} of all cells",
        f"  ECE {100 * trust['ece']:.2f}%, Brier {trust['brier']:.4f}",
    ]


def format_metrics(metrics: dict) -> str:
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


# ----------------------------------------------------------------------------- calibrate


def _add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit an installed model's confidence calibration and 'unidentified' detector",
        description="On the model's own training data (its split is recomputed from the card): "
        "a novelty detector on training-split features, a temperature and the unidentified "
        "threshold on the validation split; figures on the test split and on an optional "
        "folder of non-cell images. Writes novelty-*.npz and the card's calibration and "
        "novelty sections (checksummed). Features are cached under cache/trust/.",
    )
    p.add_argument("--model", metavar="NAME", help="installed model (default: the default)")
    p.add_argument("--data", required=True, help="the model's training data (class folders)")
    p.add_argument(
        "--outliers", metavar="DIR", help="non-cell images to fit the outlier-exposure part on"
    )
    p.add_argument(
        "--noncell", metavar="DIR", help="other non-cell images, only to report figures on"
    )
    p.add_argument(
        "--shifted", metavar="DIR", help="cells from another lab (class folders), figures only"
    )
    p.add_argument(
        "--method",
        choices=("knn+oe", "knn", "mahalanobis"),
        default="knn+oe",
        help="novelty score (knn+oe needs --outliers)",
    )
    p.add_argument(
        "--quantile",
        type=float,
        default=0.995,
        help="validation cells under the unidentified threshold (default 0.995: 0.5%% flagged)",
    )
    p.add_argument(
        "--low-confidence",
        type=float,
        help="calibrated top probability under which a cell is flagged low_confidence "
        "(default: keep the card's)",
    )
    p.add_argument("--train-limit", type=int, default=4000, help="training cells to fit on")
    p.add_argument(
        "--acquisition-only",
        action="store_true",
        help="only (re)fit the acquisition range (background colour, brightness, darker share of "
        "the training images; outside it a cell is unidentified): seconds, no features",
    )


def _cmd_calibrate(args) -> int:
    from bcclassify.serving.trust import calibrate_model

    if not 0.5 <= args.quantile < 1.0:
        raise UsageError("--quantile must be in [0.5, 1)")
    if args.low_confidence is not None and not 0.0 < args.low_confidence < 1.0:
        raise UsageError("--low-confidence must be in (0, 1)")
    for option in ("outliers", "noncell", "shifted"):
        value = getattr(args, option)
        if value and not Path(value).is_dir():
            raise UsageError(f"--{option} {value}: not a folder")
    if args.acquisition_only:
        from bcclassify.serving.classifier import ModelIntegrityError, ModelNotFoundError
        from bcclassify.serving.trust import fit_acquisition

        try:
            card = fit_acquisition(args.model, args.data, shifted=args.shifted)
        except (FileNotFoundError, ValueError, ModelNotFoundError, ModelIntegrityError) as exc:
            raise UsageError(str(exc)) from None
        print(json.dumps({"acquisition": card["acquisition"]}, indent=2))
        return EXIT_OK
    if args.method == "knn+oe" and not args.outliers:
        raise UsageError("--method knn+oe needs --outliers DIR (non-cell images)")
    _tensorflow()
    from bcclassify.serving.classifier import ModelIntegrityError, ModelNotFoundError

    try:
        card = calibrate_model(
            args.model,
            args.data,
            outliers=args.outliers,
            noncell=args.noncell,
            shifted=args.shifted,
            method=args.method,
            quantile=args.quantile,
            low_confidence=args.low_confidence,
            train_limit=args.train_limit,
        )
    except (FileNotFoundError, ValueError, ModelNotFoundError, ModelIntegrityError) as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps({k: card[k] for k in ("calibration", "novelty", "acquisition")}, indent=2))
    return EXIT_OK


# ----------------------------------------------------------------------------- promote, list


def _add_promote(sub) -> None:
    p = sub.add_parser("promote", help="install a run's model under model_store/models/NAME")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--name", required=True)
    p.add_argument("--default", action="store_true", help="make it the default model")
    p.add_argument("--threshold", type=float, help="low-confidence threshold (default 0.6)")
    p.add_argument(
        "--views",
        type=_view_list,
        help="test-time views the installed model averages, comma-separated; the run's test "
        "split is scored again with them for the card",
    )


def _cmd_promote(args) -> int:
    from bcclassify.evaluation.scoring import promote

    _tensorflow()
    try:
        card = promote(
            args.run_id,
            args.name,
            make_default=args.default,
            threshold=args.threshold,
            views=args.views,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps({k: card[k] for k in ("name", "architecture", "image_size", "size_mb")}))
    return EXIT_OK


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="training runs and installed models")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON list of runs")
    form.add_argument(
        "--markdown", action="store_true", help="Markdown tables of runs and models (the README's)"
    )


def _cmd_list(args) -> int:
    from bcclassify.storage.cards import installed_cards
    from bcclassify.storage.store import default_model_name, list_runs, run_state

    runs = list_runs()
    if args.json:
        print(json.dumps(runs, indent=2))
        return EXIT_OK
    cards = installed_cards()
    if args.markdown:
        print(markdown_tables(runs, cards.values()))
        return EXIT_OK

    print(f"{'run_id':<40}{'arch':<13}{'size':>5} {'status':<12}{'test acc':>9}{'macro F1':>9}")
    for r in runs:
        print(
            f"{r['run_id']:<40}{r['arch'] or '':<13}{r['image_size'] or '':>5} "
            f"{run_state(r):<12}{pct(r['test_accuracy']):>9}{pct(r['macro_f1']):>9}"
        )
    print("\nmodels:")
    default = default_model_name()
    for name, card in cards.items():
        star = " (default)" if name == default else ""
        print(
            f"  {name}{star}: {card.architecture} {card.image_size}px, "
            f"test accuracy {pct(card.accuracy)}, {card.size_mb} MB"
        )
    return EXIT_OK


def pct(value) -> str:
    from bcclassify.presentation.tables import MISSING, percent

    return percent(value, 2) if isinstance(value, (int, float)) else MISSING


def markdown_tables(runs, cards) -> str:
    """``list --markdown``: the installed models with their bench, then the finished runs.

    ``runs``: ``list_runs`` rows; ``cards``: :class:`~bcclassify.storage.cards.ModelCard` objects.
    """
    from bcclassify.presentation.tables import markdown_tables as tables
    from bcclassify.storage.cards import bench_record
    from bcclassify.storage.store import default_model_name

    by_name = {card.name: card for card in cards}
    benches = {name: bench_record(name) for name in by_name}
    return tables(runs, by_name, benches, default_model_name())


# ----------------------------------------------------------------------------- explain, bench


def _add_explain(sub) -> None:
    from bcclassify.explain.maps import METHODS

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


def _cmd_explain(args) -> int:
    from bcclassify.data.imaging import ImageLoadError, load_image
    from bcclassify.explain.maps import Explainer, explanation_figure

    classifier = _load_classifier(args.model)
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


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure load, predict and explain speed")
    p.add_argument("--model", help="installed model name (default: the default model)")
    p.add_argument("--repeats", type=int, default=20, help="single-image calls to time")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.add_argument("--save", action="store_true", help="also write bench.json beside the model")


def _cmd_bench(args) -> int:
    from bcclassify.serving.bench import run_benchmark
    from bcclassify.storage.store import models_dir, write_json

    name = _load_classifier(args.model).name
    result = run_benchmark(name, repeats=max(args.repeats, 20))
    if args.save:
        write_json(models_dir() / name / "bench.json", result)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return EXIT_OK


# ----------------------------------------------------------------------------- faithfulness


def _add_faithfulness(sub) -> None:
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
    p.add_argument("--steps", type=int, default=10, help="deletion/insertion steps")
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


def _cmd_faithfulness(args) -> int:
    from bcclassify.explain.faithfulness import record, run, table_markdown
    from bcclassify.serving.classifier import ModelIntegrityError, ModelNotFoundError

    if args.cells < 1 or args.steps < 2:
        raise UsageError("--cells must be at least 1 and --steps at least 2")
    if args.set_default and not args.save:
        raise UsageError("--set-default needs --save")
    try:
        result = run(
            args.model, args.data, args.cells, args.seed, args.steps, progress=sys.stderr.isatty()
        )
    except (FileNotFoundError, ModelNotFoundError, ModelIntegrityError) as exc:
        raise UsageError(str(exc)) from None
    if args.set_default and args.set_default not in result["table"]:
        raise UsageError(f"--set-default: choose one of {', '.join(result['table'])}")
    if args.save:
        from bcclassify.serving.classifier import load_model

        folder = load_model(result["model"]).folder
        out = record(folder, result, args.set_default, Path(args.save))
        print(f"wrote {out}", file=sys.stderr)
    print(table_markdown(result["table"]))
    print(f"\n{result['cells']} cells ({result['scope']}), seed {result['seed']}")
    return EXIT_OK


# ----------------------------------------------------------------------------- users


def _add_users(sub) -> None:
    p = sub.add_parser(
        "users",
        help="local reviewer accounts for the app (add, list, remove)",
        description="Reviewer accounts for the app's log-in where no single sign-on provider is "
        "configured: salted Argon2id hashes in accounts.json in the data directory "
        "($BCCLASSIFY_DATA_DIR, default ~/.bcclassify) or at $BCCLASSIFY_ACCOUNTS.",
    )
    actions = p.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", help="create an account (the password is asked for)")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (one line)"
    )
    add.add_argument("--replace", action="store_true", help="set a new password for NAME")
    actions.add_parser("list", help="account names and when they were created")
    remove = actions.add_parser("remove", help="delete an account")
    remove.add_argument("name")


def _cmd_users(args) -> int:
    import getpass

    from bcclassify.access.accounts import (
        AccountError,
        accounts_path,
        add_user,
        list_users,
        remove_user,
        streamlit_secrets,
    )

    path = accounts_path(streamlit_secrets())
    try:
        if args.users_command == "list":
            for user in list_users(path):
                print(f"{user['name']}\t{user['created']}")
        elif args.users_command == "remove":
            remove_user(path, args.name)
            print(f"removed {args.name} from {path}", file=sys.stderr)
        else:
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = getpass.getpass(f"Password for {args.name}: ")
                if getpass.getpass("Repeat it: ") != password:
                    raise UsageError("the two passwords differ; nothing was changed")
            add_user(path, args.name, password, replace=args.replace)
            verb = "updated" if args.replace else "added"
            print(f"{verb} {args.name} in {path}", file=sys.stderr)
    except AccountError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


# ----------------------------------------------------------------------------- adapt


def _add_adapt(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="fit an installed model to another lab from a few labelled cells; install it",
        description="Refit the classifier head of --from on at most --per-class cells of each "
        "class folder of --cells (chosen by --seed; the others are not used), pulled toward the "
        "source head; refit the temperature on cross-fitted probabilities and add the taken "
        "cells to the novelty detector's bank; install the result as --name. The card lists "
        "the sha256 of every cell used; the run is recorded under model_store/runs/. Exit 2 on "
        "bad input (missing or empty folder, unknown class folder, unreadable image).",
    )
    p.add_argument("--from", dest="source", required=True, metavar="MODEL", help="installed model")
    p.add_argument(
        "--cells", required=True, metavar="DIR", help="class folders (any of the 8 class names)"
    )
    p.add_argument("--name", required=True, help="name of the adapted model to install")
    p.add_argument("--per-class", type=int, default=10, metavar="K", help="cells a class (10)")
    p.add_argument("--seed", type=int, default=0, help="which cells are taken (default 0)")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="also score the source and the adapted model on the cells not taken",
    )


def _cmd_adapt(args) -> int:
    from bcclassify.lab.adapt import AdaptConfig, AdaptError, adapt, choose_cells, scan_cells

    config = AdaptConfig(
        source=args.source,
        cells=args.cells,
        name=args.name,
        per_class=args.per_class,
        seed=args.seed,
        evaluate=args.evaluate,
    )
    try:
        choose_cells(scan_cells(Path(args.cells)), args.per_class, args.seed)  # before TensorFlow
        _tensorflow()
        done = adapt(config)
    except AdaptError as exc:
        raise UsageError(str(exc)) from None
    summary = {
        "name": done.name,
        "source_model": done.card["source_model"]["name"],
        "adaptation_run": done.run_dir.name,
        "taken": done.taken,
        "held_back": done.held_back,
        "temperature": done.card["calibration"]["temperature"],
        "seconds": done.seconds,
    }
    if done.figures is not None:
        summary["held_back_figures"] = done.figures
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcclassify",
        description="Peripheral blood cell classification (PBC classes) with Grad-CAM.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of an internal error (exit 3); also {DEBUG_ENV}=1",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_evaluate,
        _add_promote,
        _add_list,
        _add_predict,
        _add_explain,
        _add_bench,
        _add_faithfulness,
        _add_users,
        _add_calibrate,
        _add_adapt,
    ):
        add(sub)
    return parser


COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "promote": _cmd_promote,
    "list": _cmd_list,
    "predict": _cmd_predict,
    "explain": _cmd_explain,
    "bench": _cmd_bench,
    "faithfulness": _cmd_faithfulness,
    "users": _cmd_users,
    "calibrate": _cmd_calibrate,
    "adapt": _cmd_adapt,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status (0 ok, 1 refused inputs, 2 usage, 3 internal).

    An unexpected exception is reported in one line on stderr and exits 3; its traceback is
    printed only with ``--debug`` or ``BCCLASSIFY_DEBUG=1``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error of ours; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns a crash into a status
        if _is_integrity_error(exc):  # however a command reached the model
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return _internal_error(exc, args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"))


def _is_integrity_error(exc: BaseException) -> bool:
    try:
        from bcclassify.serving.classifier import ModelIntegrityError
    except Exception:  # noqa: BLE001 - the crash may be that very import
        return False
    return isinstance(exc, ModelIntegrityError)


def _internal_error(exc: BaseException, debug: bool) -> int:
    import traceback

    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    detail = " ".join(str(exc).split()) or "no message"
    hint = "" if debug else f"; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    print(f"internal error: {type(exc).__name__}: {detail}{hint}", file=sys.stderr)
    return EXIT_INTERNAL


def _run(args) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "train":
        logging.getLogger("bcclassify").setLevel(logging.INFO)
    if not args.verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before any command imports TensorFlow
    return COMMANDS[args.command](args)
