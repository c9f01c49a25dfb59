"""What the Classify page shows, as data: gallery groups, captions, count tables, review lines
and the kept-cell decision (no Streamlit here; ``ui.classify`` and ``ui.review`` draw it)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from bcclassify import CLASS_NAMES
from bcclassify.lab.kept import KeptCell, KeptCells, KeptCellsError, cell_bytes
from bcclassify.presentation.pages import CellInput
from bcclassify.presentation.tables import class_label, percent
from bcclassify.review.report import needs_review
from bcclassify.serving.classifier import Prediction

FLAG_GROUPS = {  # shown ahead of the classes, in this order
    "unidentified": "Unidentified — not like the cells this model was trained on",
    "disputed": "Disputed — a second look disagrees, needs review",
    "low_confidence": "Low confidence — needs review",
}
OTHER_FLAGS = "Flagged — needs review"
KEEP_CAPTION = (
    "Off unless you tick it; uploads are otherwise never written to disk. When ticked, saving "
    "stores this image as classified (at most 1024 px a side) with the class you chose, your "
    "user name, the file name, the model and the time, in the kept-cells folder beside the "
    "review log on this server, so that 'Adapt to your lab' can fit a model to your lab's "
    "cells. Untick and save to remove it; 'Adapt to your lab' removes all kept cells."
)

Cell = tuple[CellInput, Prediction, object]  # (input, prediction, thumbnail)


def gallery_groups(cells: Sequence[Cell]) -> list[tuple[str, list[Cell]]]:
    """Flagged groups first (unidentified, then low confidence), then one group per class; each
    group most confident first, empty groups left out."""
    groups = [
        (title, [c for c in cells if c[1].flag == flag]) for flag, title in FLAG_GROUPS.items()
    ]
    other_flags = [c for c in cells if needs_review(c[1]) and c[1].flag not in FLAG_GROUPS]
    groups.append((OTHER_FLAGS, other_flags))
    for name in CLASS_NAMES:
        group = [c for c in cells if c[1].label == name and not needs_review(c[1])]
        groups.append((class_label(name), group))
    return [
        (title, sorted(group, key=lambda c: -c[1].confidence)) for title, group in groups if group
    ]


def group_heading(title: str, group: Sequence[Cell], reviewed: dict[str, str]) -> str:
    """``**title** · n cell(s) · k awaiting review`` (Markdown; titles are the app's own)."""
    waiting = sum(c[0].sha256 not in reviewed for c in group if needs_review(c[1]))
    return f"**{title}** · {len(group)} cell(s)" + (
        f" · {waiting} awaiting review" if waiting else ""
    )


def thumbnail_caption(sha256: str, prediction: Prediction, reviewed: dict[str, str]) -> str:
    """Confidence; a guessed class for a flagged cell; the reviewer's class once reviewed."""
    caption = percent(prediction.confidence, 0)
    if needs_review(prediction):
        caption = f"{class_label(prediction.label)}? · " + caption
    if sha256 in reviewed:
        caption += f" · ✓ {class_label(reviewed[sha256])}"
    return caption


def cell_key(item: CellInput) -> str:
    """The session's key of one cell of a batch (content and name: two files may be equal)."""
    return f"{item.sha256}|{item.name}"


def cell_choice_label(item: CellInput, prediction: Prediction) -> str:
    """A cell in the 'Cell to inspect' list: file, class (or Unidentified), confidence."""
    shown = "Unidentified" if prediction.flag == "unidentified" else class_label(prediction.label)
    return f"{item.name} — {shown} ({percent(prediction.confidence, 0)})"


def refused_table(refused: Iterable[tuple[CellInput, Prediction]]) -> pd.DataFrame:
    refused = list(refused)
    return pd.DataFrame(
        {"file": [i.name for i, _ in refused], "reason": [p.error for _, p in refused]}
    )


def not_read_table(refused: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """Files refused before they were read (admit_uploads): name and reason."""
    refused = list(refused)
    return pd.DataFrame({"file": [n for n, _ in refused], "reason": [r for _, r in refused]})


def count_table(rows: list[dict], percent_label: str) -> pd.DataFrame:
    """A differential's rows as the page's table: class, count and one percentage column."""
    return pd.DataFrame(
        {
            "class": [class_label(r["class"]) for r in rows],
            "count": [r["count"] for r in rows],
            percent_label: [round(r["percent"], 1) for r in rows],
        }
    )


def awaiting_note(counts: dict) -> str:
    by_flag = counts["awaiting_by_flag"]
    return (
        f"{counts['awaiting_review']} cell(s) awaiting review are not counted "
        f"({by_flag.get('unidentified', 0)} unidentified, "
        f"{by_flag.get('disputed', 0)} disputed, "
        f"{by_flag.get('low_confidence', 0)} low confidence): each counts once a reviewer "
        "assigns its class."
    )


def guess_note(prediction: Prediction) -> str:
    """Under the probabilities shown for an unidentified cell: what they are (the guess for
    another lab's cell, serving/blood_prior.py, or the model's own)."""
    if prediction.guessed:
        return (
            "Only a guess. For an image taken unlike its training images, or further from them "
            "than the cells it was checked on, the default model's guess is mixed with its "
            "second opinion's, counts erythroblasts, immature granulocytes and platelets "
            "(common in its training folders, rare in a white-cell differential) for less, both "
            "the more the further the image lies from its training cells, and an eosinophil "
            "its colour check disputes is replaced by the greyscale view's guess."
        )
    return "Only a guess: the model's own probabilities, for a cell unlike those it was trained on."


def unidentified_note(prediction: Prediction) -> str:
    """Why an unidentified cell's class is withheld, and what happens to it."""
    if prediction.taken_unlike_training:
        why = (
            "This image was taken unlike the training lab's images: its background colour, "
            "brightness or stained share lies outside the range the model was checked on "
            "(another lab's stain, camera or magnification, or not a smear). If your lab's "
            "cells all look like this, adapt the model to your lab ('Adapt to your lab')."
        )
    else:
        why = (
            "The model's features say this image is unlike the cells it was trained on "
            "(another cell type, an artefact, not a blood cell)."
        )
    return (
        f"{why} Its class is withheld: a reviewer assigns one, and until then the cell is "
        "left out of the differential."
    )


def disputed_note(prediction: Prediction) -> str:
    """Why a disputed cell's class is held back: the second model's support for it, or what
    the model answers for the cell in greyscale (the colour check)."""
    reasons = []
    if prediction.disputed_by_second_model:
        reasons.append(
            "a second model, trained apart from this one to resist other labs' stains and "
            f"cameras, gives this class only {percent(prediction.second_support or 0.0, 1)} "
            f"(it disputes below {percent(prediction.min_support, 0)})"
        )
    check = prediction.colour_check
    if prediction.disputed_by_colour and check is not None:
        reasons.append(
            f"shown this cell in greyscale, the same model calls it {_a(check.rival)} "
            f"({percent(prediction.colour_rival or 0.0, 1)}; it disputes from "
            f"{percent(check.min_rival, 0)}): on another lab's stain, colour can make "
            f"{_a(check.rival)} look like {_a(check.checked)}"
        )
    return (
        f"{FLAG_GROUPS['disputed']}: {'; and '.join(reasons)}. Such disagreements catch many "
        "of the answers that are wrong on another lab's cells; the cell is left out of the "
        "differential until a reviewer assigns a class."
    )


def _a(name: str) -> str:
    """A class name with its indefinite article ("an eosinophil", "a neutrophil")."""
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def low_confidence_note(prediction: Prediction) -> str:
    return (
        f"{FLAG_GROUPS['low_confidence']}: below {percent(prediction.threshold, 0)}, so "
        "it is left out of the differential until a reviewer assigns a class, as an analyser "
        "leaves an unidentified cell."
    )


def shown_maps(layers: Iterable[str]) -> list[tuple[str, str]]:
    """(map, title) pairs to draw: a one-trunk model's fused map is its only map, titled by its
    trunk; the hybrid shows both trunks and the fused map."""
    trunks = [layer for layer in layers if layer != "fused"]
    if len(trunks) > 1:
        return [(layer, layer) for layer in [*trunks, "fused"]]
    return [("fused", trunks[0] if trunks else "fused")]


def latest_classes(rows: Iterable[dict], model_name: str) -> dict[str, str]:
    """The reviewer's latest class per image sha256 for this model, from the log's latest rows."""
    return {r["image_sha256"]: r["reviewer_class"] for r in rows if r["model"] == model_name}


def saved_message(chosen: str, predicted: str) -> str:
    verb = "Confirmed" if chosen == predicted else "Corrected to"
    return f"{verb} {class_label(chosen)} — saved."


def last_decision_line(row: dict) -> str:
    """The cell's last decision (shown as plain text: the reviewer's name is data)."""
    return (
        f"Last decision: {row['decision']} as {class_label(row['reviewer_class'])} "
        f"by {row['reviewer'] or 'anonymous'} at {row['time']}."
    )


def review_log_frame(entries: list[dict]) -> pd.DataFrame:
    """The log's rows newest first, without the probability vectors and chain hashes."""
    frame = pd.DataFrame(entries).drop(columns=["probabilities", "chain_sha256"], errors="ignore")
    return frame.iloc[::-1]


def kept_cell_for(kept: KeptCells, sha256: str) -> KeptCell | None:
    """This upload's kept cell, if the lab kept it (None when kept cells cannot be read)."""
    try:
        return kept.is_kept(sha256)
    except KeptCellsError:
        return None


def apply_keep(
    kept: KeptCells,
    keep: bool,
    was_kept: KeptCell | None,
    item: CellInput,
    copy,
    chosen: str,
    reviewer: str,
    model_name: str,
) -> str | None:
    """Keep (or move) the cell under ``chosen`` when ticked; forget it when unticked.

    Returns a line for the reviewer, or None when nothing changed on disk; raises
    KeptCellsError when the kept cells cannot be written."""
    if keep:
        kept.keep(
            cell_bytes(copy),
            chosen,
            reviewer,
            item.name,
            image_sha256=item.sha256,
            model=model_name,
        )
        return f"Kept on this server as {class_label(chosen)} for adapting to this lab."
    if was_kept is not None:
        kept.forget(item.sha256, by=reviewer)
        return "No longer kept on this server."
    return None
