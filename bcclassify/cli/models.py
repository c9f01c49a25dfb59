"""Installed models: ``promote`` a run, ``list`` runs and models, ``calibrate`` a model's
confidence and its "unidentified" detector, ``models uninstall`` an adapted model, ``seal`` a card
checked by hand, ``compile`` a model's served graph for a fast start."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from bcclassify.cli.common import (
    EXIT_INTERNAL,
    EXIT_OK,
    SubParsers,
    UsageError,
    start_tensorflow,
    view_list,
)
from bcclassify.serving.blood_prior import CARD_KEY as UNIDENTIFIED_PRIOR_KEY
from bcclassify.serving.blood_prior import set_unidentified_prior
from bcclassify.serving.classifier import ModelIntegrityError, ModelNotFoundError
from bcclassify.serving.colour_check import CARD_KEY as COLOUR_CHECK_KEY
from bcclassify.serving.floors import CARD_KEY as FLOORS_KEY
from bcclassify.serving.trust import (
    calibrate_model,
    fit_acquisition,
    fit_class_floors,
    fit_colour_check,
    fit_low_confidence,
    fit_second_opinion,
    highest_own_novelty,
)
from bcclassify.storage.cards import ModelCard, bench_record, installed_cards
from bcclassify.storage.store import default_model_name, list_runs, run_state

__all__ = [
    "add_calibrate",
    "add_compile",
    "add_list",
    "add_models",
    "add_promote",
    "add_seal",
    "markdown_tables",
    "pct",
    "run_calibrate",
    "run_compile",
    "run_list",
    "run_models",
    "run_promote",
    "run_seal",
]


def add_promote(sub: SubParsers) -> None:
    p = sub.add_parser("promote", help="install a run's model under model_store/models/NAME")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--name", required=True)
    p.add_argument("--default", action="store_true", help="make it the default model")
    p.add_argument("--threshold", type=float, help="low-confidence threshold (default 0.6)")
    p.add_argument(
        "--views",
        type=view_list,
        help="test-time views the installed model averages, comma-separated; the run's test "
        "split is scored again with them for the card",
    )


def run_promote(args: argparse.Namespace) -> int:
    # scikit-learn, SciPy and pandas (4 s): paid by promote only, not by every command's --help.
    from bcclassify.evaluation.scoring import promote

    start_tensorflow()
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


def add_list(sub: SubParsers) -> None:
    p = sub.add_parser("list", help="training runs and installed models")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON list of runs")
    form.add_argument(
        "--markdown", action="store_true", help="Markdown tables of runs and models (the README's)"
    )


def run_list(args: argparse.Namespace) -> int:
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


def pct(value: object) -> str:
    """A fraction as a percentage with two decimals; the table's mark for a missing one."""
    # pandas (1.5 s): paid by list only, not by every command's --help.
    from bcclassify.presentation.tables import MISSING, percent

    return percent(value, 2) if isinstance(value, (int, float)) else MISSING


def markdown_tables(runs: list[dict], cards: Iterable[ModelCard]) -> str:
    """``list --markdown``: the installed models with their bench, then the finished runs.

    ``runs``: ``list_runs`` rows; ``cards``: :class:`~bcclassify.storage.cards.ModelCard` objects.
    """
    from bcclassify.presentation.tables import markdown_tables as tables  # pandas, as pct

    by_name = {card.name: card for card in cards}
    benches = {name: bench_record(name) for name in by_name}
    return tables(runs, by_name, benches, default_model_name())


def add_calibrate(sub: SubParsers) -> None:
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
    p.add_argument(
        "--second-opinion",
        metavar="NAME",
        help="only name installed model NAME as this model's second opinion: a served class "
        "it gives little probability is flagged 'disputed'; the floor is chosen on the "
        "validation split within --dispute-budget",
    )
    p.add_argument(
        "--dispute-budget",
        type=float,
        default=0.01,
        help="with --second-opinion: the most that disputes may add to the validation cells "
        "flagged (default 0.01: 1%%)",
    )
    p.add_argument(
        "--class-floor",
        metavar="CLASS",
        nargs="+",
        help="only set a stricter low-confidence threshold for answers of these classes, each "
        "chosen on the validation split (served) within --floor-budget (issue 21: other labs' "
        "neutrophils served as eosinophils)",
    )
    p.add_argument(
        "--floor-budget",
        type=float,
        default=0.005,
        help="with --class-floor: the most the floors together may add to the validation cells "
        "flagged (default 0.005: 0.5%%)",
    )
    p.add_argument(
        "--colour-check",
        metavar=("CLASS", "RIVAL"),
        nargs=2,
        help="only set the colour check: an answer of CLASS is disputed when the same model "
        "shown the cell in greyscale gives RIVAL at least a probability chosen on the "
        "validation split (served) within --colour-budget (issue 21: other labs' neutrophils "
        "served as eosinophils at low resolution)",
    )
    p.add_argument(
        "--colour-budget",
        type=float,
        default=0.005,
        help="with --colour-check: the most it may add to the validation cells flagged "
        "(default 0.005: 0.5%%)",
    )
    p.add_argument(
        "--unidentified-prior",
        action="store_true",
        help="only set the guess written for unidentified cells: their probabilities "
        "re-weighted to a white-cell differential's class mix (erythroblast, ig and platelet "
        "at --rare-share each, the other classes in --data's proportions); reads no pixels",
    )
    p.add_argument(
        "--rare-share",
        type=float,
        default=0.01,
        help="with --unidentified-prior: the prior share of each class a white-cell "
        "differential does not count (default 0.01: 1%%)",
    )
    p.add_argument(
        "--beyond-own-cells",
        action="store_true",
        help="with --unidentified-prior: also write the guess for cells taken like the "
        "training images whose novelty score is above every validation- and test-split "
        "cell's (a CellaVision lab's cells pass the acquisition range); reads those splits' "
        "features (calibrate's cache, else minutes)",
    )
    p.add_argument(
        "--second-opinion-share",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="with --unidentified-prior: first mix a guessed cell's probabilities with the "
        "card's second opinion's, SHARE of the weight on the second opinion (weighted geometric "
        "mean, times the cell's share of the guess; default 0: the model's own)",
    )
    p.add_argument(
        "--flag-budget",
        type=float,
        default=None,
        metavar="SHARE",
        help="only re-choose the global low-confidence threshold (of 0.5-0.7) so that every "
        "served flag together (second opinion, class floors and colour check on) flags at most "
        "SHARE of the validation cells, e.g. 0.03; run last, after the floors and colour check",
    )


def run_calibrate(args: argparse.Namespace) -> int:
    if not 0.5 <= args.quantile < 1.0:
        raise UsageError("--quantile must be in [0.5, 1)")
    if args.low_confidence is not None and not 0.0 < args.low_confidence < 1.0:
        raise UsageError("--low-confidence must be in (0, 1)")
    for option in ("outliers", "noncell", "shifted"):
        value = getattr(args, option)
        if value and not Path(value).is_dir():
            raise UsageError(f"--{option} {value}: not a folder")
    refused = (FileNotFoundError, ValueError, ModelNotFoundError, ModelIntegrityError)
    if args.acquisition_only:
        try:
            card = fit_acquisition(args.model, args.data, shifted=args.shifted)
        except refused as exc:
            raise UsageError(str(exc)) from None
        print(json.dumps({"acquisition": card["acquisition"]}, indent=2))
        return EXIT_OK
    if args.beyond_own_cells and not args.unidentified_prior:
        raise UsageError("--beyond-own-cells goes with --unidentified-prior")
    if args.second_opinion_share and not args.unidentified_prior:
        raise UsageError("--second-opinion-share goes with --unidentified-prior")
    if not 0.0 <= args.second_opinion_share < 1.0:
        raise UsageError("--second-opinion-share must be in [0, 1)")
    if args.unidentified_prior:
        if not 0.0 < args.rare_share < 1.0 / 3:
            raise UsageError("--rare-share must be in (0, 1/3)")
        try:
            beyond = None
            if args.beyond_own_cells:
                start_tensorflow()
                beyond = highest_own_novelty(args.model, args.data)
            card = set_unidentified_prior(
                args.model, args.data, args.rare_share, beyond, args.second_opinion_share
            )
        except refused as exc:
            raise UsageError(str(exc)) from None
        print(json.dumps({UNIDENTIFIED_PRIOR_KEY: card[UNIDENTIFIED_PRIOR_KEY]}, indent=2))
        return EXIT_OK
    budgeted = None  # (section, budget option, budget, fit): the options that fit one section
    if args.second_opinion:
        budgeted = ("second_opinion", "--dispute-budget", args.dispute_budget, fit_second_opinion)
        fit_args = (args.model, args.second_opinion, args.data)
    elif args.class_floor:
        budgeted = (FLOORS_KEY, "--floor-budget", args.floor_budget, fit_class_floors)
        fit_args = (args.model, args.data, args.class_floor)
    elif args.colour_check:
        budgeted = (COLOUR_CHECK_KEY, "--colour-budget", args.colour_budget, fit_colour_check)
        fit_args = (args.model, args.data, args.colour_check)
    elif args.flag_budget is not None:
        budgeted = ("low_confidence", "--flag-budget", args.flag_budget, fit_low_confidence)
        fit_args = (args.model, args.data)
    if budgeted is not None:
        section, option, budget, fit = budgeted
        if not 0.0 <= budget < 1.0:
            raise UsageError(f"{option} must be in [0, 1)")
        start_tensorflow()
        try:
            card = fit(*fit_args, budget=budget)
        except refused as exc:
            raise UsageError(str(exc)) from None
        print(json.dumps({section: card[section]}, indent=2))
        return EXIT_OK
    if args.method == "knn+oe" and not args.outliers:
        raise UsageError("--method knn+oe needs --outliers DIR (non-cell images)")
    start_tensorflow()
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
    except refused as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps({k: card[k] for k in ("calibration", "novelty", "acquisition")}, indent=2))
    return EXIT_OK


def add_models(sub: SubParsers) -> None:
    p = sub.add_parser("models", help="manage installed models (uninstall an adapted one)")
    actions = p.add_subparsers(dest="models_command", required=True)
    gone = actions.add_parser(
        "uninstall",
        help="take an adapted model out of service (moved under models/.uninstalled/)",
        description="Only models made by `adapt`, never the default model nor another model's "
        "second opinion. The folder is moved whole under model_store/models/.uninstalled/ with "
        "who and when in its card; move it back to undo.",
    )
    gone.add_argument("name", metavar="NAME")


def run_models(args: argparse.Namespace) -> int:
    from bcclassify.access.roles import command_line_identity
    from bcclassify.lab.adapt import AdaptError, uninstall_adapted

    try:
        moved = uninstall_adapted(args.name, command_line_identity())
    except AdaptError as exc:
        raise UsageError(str(exc)) from None
    print(f"uninstalled {args.name}; its files are kept in {moved}", file=sys.stderr)
    return EXIT_OK


def add_seal(sub: SubParsers) -> None:
    p = sub.add_parser(
        "seal",
        help="vouch for an installed model's card.json as it is now (card.sha256)",
        description="Every tool that writes a card also writes card.sha256, and a model whose "
        "card no longer matches it is refused. After reading a card that was changed by hand, "
        "or one written before card.sha256 existed, an administrator seals it here. The other "
        "files are checked against the card first.",
    )
    p.add_argument("name", help="installed model")


def run_seal(args: argparse.Namespace) -> int:
    import sys

    from bcclassify.serving.classifier import (
        installed_model_names,
        listed_files,
        read_card,
        verify_files,
    )
    from bcclassify.storage.cards import seal_card
    from bcclassify.storage.store import models_dir

    if args.name not in installed_model_names():
        raise UsageError(f"unknown model {args.name!r}; installed: {installed_model_names()}")
    folder = models_dir() / args.name
    card = read_card(folder)
    verify_files(folder, listed_files(folder, card, sealed=False))
    digest = seal_card(folder)
    print(f"sealed {folder / 'card.json'} (sha256 {digest})", file=sys.stderr)
    return EXIT_OK


def add_compile(sub: SubParsers) -> None:
    p = sub.add_parser(
        "compile",
        help="write a model's served graph for ONNX Runtime, so servers start without TensorFlow",
        description="Exports the model (and its second opinion) as served, checks the export "
        "against the Keras model on a fixed batch, and caches it beside the store under the "
        "weights' id (cache/compiled/). Later loads answer from it; Grad-CAM still builds the "
        "Keras model when first asked. The app does this by itself after its first start.",
    )
    p.add_argument("--model", help="installed model (default: the default model)")
    p.add_argument("--force", action="store_true", help="rewrite graphs already cached")


def run_compile(args: argparse.Namespace) -> int:
    from bcclassify.cli.common import load_classifier
    from bcclassify.serving.compiled import CompileError, compile_classifier

    classifier = load_classifier(args.model, compiled=False)
    try:
        written = compile_classifier(classifier, force=args.force)
    except CompileError as exc:
        print(f"compile {classifier.name}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if not written:
        print(f"{classifier.name}: already compiled (--force rewrites)", file=sys.stderr)
    return EXIT_OK
