"""Compare novelty scores and calibration for the installed model on the cached features.

Reads ``cache/trust/<model>/*.npz`` (``scripts/trust_features.py``) and prints, for each novelty
method: AUROC against the non-cell development set, and at a threshold set on the validation
split, the share flagged of test cells, non-cell images and ext-tecom cells. Nothing here is
fitted on the development set or ext-tecom.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bcclassify import CLASS_NAMES  # noqa: E402
from bcclassify.evaluation.metrics import auroc, brier_score, expected_calibration_error  # noqa: E402
from bcclassify.serving.trust import fit_novelty, fit_temperature, temper  # noqa: E402


def load(folder: Path, name: str) -> dict:
    with np.load(folder / f"{name}.npz") as stored:
        return {k: stored[k] for k in stored.files}


def served_test(model: str, test: dict) -> np.ndarray:
    rows = {}
    with open(REPO / "model_store" / "models" / model / "test_predictions.csv") as handle:
        for row in csv.DictReader(handle):
            rows[row["file"]] = [float(row[c]) for c in CLASS_NAMES]
    root = REPO.parent / "shared" / "data" / "pbc224"
    keys = [Path(p).resolve().relative_to(root.resolve()).as_posix() for p in test["paths"]]
    return np.asarray([rows[k] for k in keys])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="hybrid")
    parser.add_argument("--quantile", type=float, default=0.99)
    args = parser.parse_args()
    folder = REPO / "cache" / "trust" / args.model
    train, val, test = (load(folder, n) for n in ("train", "val", "test"))
    test["served"] = served_test(args.model, test)
    extra = {
        n: load(folder, n)
        for n in ("noncell_dev", "noncell_fit", "tecom")
        if (folder / f"{n}.npz").is_file()
    }

    t = fit_temperature(val["served"], val["labels"])
    print(f"temperature {t:.3f}")
    for name, s in (("val", val), ("test", test)):
        for label, p in (("raw", s["served"]), ("cal", temper(s["served"], t))):
            print(
                f"  {name} {label}: ECE {expected_calibration_error(s['labels'], p):.4f} "
                f"Brier {brier_score(s['labels'], p):.4f} "
                f"acc {np.mean(p.argmax(1) == s['labels']):.4f}"
            )

    scores = {}
    scores["msp"] = lambda s: -temper(s["served"], t).max(axis=1)
    for method, kwargs in (
        ("mahalanobis-256", {"method": "mahalanobis", "dims": 256}),
        ("knn k=10", {"method": "knn", "k": 10}),
        ("knn+oe k=10", {"method": "knn+oe", "k": 10}),
    ):
        det = fit_novelty(
            train["features"],
            train["labels"],
            outliers=extra["noncell_fit"]["features"],
            validation=val["features"],
            **kwargs,
        )
        scores[method] = det.score
    results = []
    for name, fn in scores.items():

        def of(s, fn=fn, name=name):
            return fn(s) if name == "msp" else fn(s["features"])

        v, te = of(val), of(test)
        thr = np.quantile(v, args.quantile)
        row = {"method": name, "val_flagged": np.mean(v > thr), "test_flagged": np.mean(te > thr)}
        wrong = test["served"].argmax(1) != test["labels"]
        row["test_wrong_unflagged"] = np.mean(wrong & (te <= thr))
        for n, s in extra.items():
            if n == "noncell_fit":  # fitted on: no figure
                continue
            sc = of(s)
            row[f"{n}_auroc"] = auroc(te, sc)
            row[f"{n}_flagged"] = np.mean(sc > thr)
            if n == "tecom":
                w = s["served"].argmax(1) != s["labels"]
                row["tecom_wrong_unflagged"] = np.mean(w & (sc <= thr))
            if n == "noncell_dev":
                kinds = np.asarray([Path(p).parent.name for p in s["paths"]])
                for kind in sorted(set(kinds)):
                    row[f"dev_{kind}"] = np.mean(sc[kinds == kind] > thr)
        results.append(row)
    for row in results:
        print(
            "  ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )


if __name__ == "__main__":
    main()
