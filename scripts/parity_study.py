"""Train/serve parity on analyser originals (issue 11): answers on the 360x363 originals against
answers on their 224 px training copies, for the originals in the validation and test splits.

Needs the cached served probabilities of ``scripts/trust_features.py``: the copies' (``val``
set; the test split's from the model's ``test_predictions.csv``) and the originals' loaded the
old way, one Lanczos resize (``--raw``, set ``originals_raw``). With today's loader an original
reaches the model as exactly the pixels of its copy (``tests/unit/serving/test_parity.py``), so its
answer is the copy's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.trust_study import served_test  # noqa: E402

CACHE = REPO / "cache" / "trust" / "hybrid"
COPIES = (REPO.parent / "shared" / "data" / "pbc224").resolve()
ORIGINALS = (REPO.parent / "shared" / "data" / "pbc-originals").resolve()


def flags_on_originals(keep: set[str]) -> dict:
    """The shipped model's flags on the originals of each split, as served today: an original
    reaches the model as its copy's pixels, so the copy's features and probabilities are its."""
    import json

    from bcclassify.evaluation.metrics import expected_calibration_error
    from bcclassify.serving.acquisition import AcquisitionRange, file_summaries
    from bcclassify.serving.trust import NoveltyDetector, temper, trust_figures

    folder = REPO / "model_store" / "models" / "hybrid"
    card = json.loads((folder / "card.json").read_text())
    with np.load(folder / card["novelty"]["file"]) as stored:
        detector = NoveltyDetector.from_arrays(stored)
    detector.threshold = card["novelty"]["threshold"]
    acquisition = AcquisitionRange.from_card(card.get("acquisition"))
    out = {}
    for part in ("val", "test"):
        data = dict(np.load(CACHE / f"{part}.npz"))
        if part == "test":
            data["served"] = served_test("hybrid", data)
        rel = [Path(p).resolve().relative_to(COPIES).as_posix() for p in data["paths"]]
        mask = np.asarray([r in keep for r in rel])
        probs = temper(data["served"][mask], card["calibration"]["temperature"])
        labels = data["labels"][mask]
        scores = detector.score(data["features"][mask])
        if acquisition is not None:  # as served: outside the acquisition range is unidentified
            copies = [p for p, m in zip(data["paths"], mask) if m]
            scores = acquisition.gate(scores, file_summaries(copies, card["image_size"]))
        out[part] = {
            **trust_figures(
                labels,
                probs,
                scores,
                detector.threshold,
                card["low_confidence_threshold"],
            ),
            "ece": expected_calibration_error(labels, probs),
        }
    return out


def main() -> None:
    raw = dict(np.load(CACHE / "originals_raw.npz"))
    val, test = dict(np.load(CACHE / "val.npz")), dict(np.load(CACHE / "test.npz"))
    test["served"] = served_test("hybrid", test)
    copy_of = {}
    for part, data in (("val", val), ("test", test)):
        for path, probs, label in zip(data["paths"], data["served"], data["labels"]):
            copy_of[Path(path).resolve().relative_to(COPIES).as_posix()] = (part, probs, label)
    rows = []
    for path, probs, label in zip(raw["paths"], raw["served"], raw["labels"]):
        part, copy_probs, copy_label = copy_of[
            Path(path).resolve().relative_to(ORIGINALS).as_posix()
        ]
        assert copy_label == label
        rows.append((part, probs.argmax(), copy_probs.argmax(), label))
    rows = np.asarray(rows)
    for part in ("val", "test"):
        r = rows[rows[:, 0] == part].astype(object)
        original, copy, label = (r[:, i].astype(int) for i in (1, 2, 3))
        print(
            f"{part}: {len(r)} originals; answer differs from the copy's on "
            f"{np.mean(original != copy):.2%} ({np.sum(original != copy)}); accuracy on originals "
            f"(old loader) {np.mean(original == label):.2%}, on copies (= today's loader) "
            f"{np.mean(copy == label):.2%}"
        )
    keep = {Path(p).resolve().relative_to(ORIGINALS).as_posix() for p in raw["paths"]}
    for part, figures in flags_on_originals(keep).items():
        print(
            f"{part} originals as served today: "
            + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
            )
        )
    if "--write-card" in sys.argv:
        import json

        from bcclassify.storage.cards import write_card

        path = REPO / "model_store" / "models" / "hybrid" / "card.json"
        card = json.loads(path.read_text())
        card["novelty"]["pbc_originals"] = {
            "note": "../shared/data/pbc-originals in the validation and test splits, as served "
            "(python scripts/parity_study.py --write-card)",
            **flags_on_originals(keep),
        }
        write_card(path.parent, card)  # the one card writer: history and card.sha256


if __name__ == "__main__":
    main()
