"""One case end to end, as the README shows it: a mock sample, classified, reviewed, signed off
twice, reported as PDF (and its first page as PNG) and FHIR.

The mock sample is PBC cells from the test split (never trained on) drawn in the proportions of
a normal adult differential. The installed default model classifies them; the "reviewer" then
gives every flagged cell its dataset class (standing in for the eye of a person), and two users
sign: a reviewer, then a pathologist. Everything goes through ``bcclassify.review.cases``, in a
throw-away review log unless ``--data`` names one.

    .venv/bin/python scripts/case_report_example.py --data-root ../shared/data/pbc224 \
        --out docs/images
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bcclassify.access.roles import Identity, Role
from bcclassify.data.datasets import scan_dataset, train_val_test_split
from bcclassify.presentation.pages import card_sha256
from bcclassify.review.cases import CaseStore, cell_result, report_fhir, report_json, report_pdf
from bcclassify.serving.classifier import load_model
from bcclassify.storage.store import sha256_file

# Cells per class: roughly a normal adult differential of 100 leukocytes, plus a few others.
MOCK_SAMPLE = {
    "neutrophil": 57,
    "lymphocyte": 29,
    "monocyte": 8,
    "eosinophil": 3,
    "basophil": 1,
    "ig": 2,
    "erythroblast": 1,
    "platelet": 3,
}


def mock_sample(root: Path) -> list[tuple[Path, str]]:
    data = scan_dataset(root)
    test = train_val_test_split(data.labels, data.hashes).test
    chosen = []
    for name, count in MOCK_SAMPLE.items():
        index = data.class_names.index(name)
        members = sorted((data.paths[i] for i in test if data.labels[i] == index), key=str)
        chosen += [(p, name) for p in members[:count]]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="e.g. ../shared/data/pbc224")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PDF, PNG, JSON")
    parser.add_argument("--data", type=Path, help="review-log folder (default: a temporary one)")
    parser.add_argument("--model", help="installed model (default: the default model)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.data or Path(tempfile.mkdtemp(prefix="bcclassify-case-"))
    store = CaseStore(folder / "reviews.sqlite3")

    cells = mock_sample(args.data_root)
    model = load_model(args.model)
    case = store.create("H26-004211", 6.8, "ann")
    predictions = model.classify([(p.name, p) for p, _ in cells])
    results = [
        cell_result(pred, path.name, sha256_file(path))
        for pred, (path, _) in zip(predictions, cells)
    ]
    store.add_cells(case.case_id, results, card_sha256(model.name), model=model.name)
    for pred, (path, truth) in zip(predictions, cells):
        if pred.ok and pred.flag:  # the reviewer looks at every flagged cell
            store.record_decision(case.case_id, path.name, truth, "ann")
    store.sign_off(case.case_id, Identity("ann"), "review")
    store.sign_off(case.case_id, Identity("dr.lee", Role.PATHOLOGIST), "final")

    pdf = args.out / "case_report.pdf"
    pdf.write_bytes(report_pdf(store, case.case_id))
    (args.out / "case_report.fhir.json").write_text(
        json.dumps(report_fhir(store, case.case_id), indent=2)
    )
    report = report_json(store, case.case_id)
    if shutil.which("pdftoppm"):
        subprocess.run(
            [
                "pdftoppm",
                "-png",
                "-r",
                "110",
                "-singlefile",
                str(pdf),
                str(args.out / "case_report"),
            ],
            check=True,
        )
    results = report["results"]
    print(
        json.dumps(
            {
                "case": case.case_id,
                "cells": results["cells_total"],
                "leukocytes": results["leukocytes_counted"],
                "percent": {r["class"]: r["percent"] for r in results["leukocytes"]},
                "changes": results["changes"],
                "flags": [f["flag"] for f in results["flags"]],
                "review_log": str(store.path),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
