"""The case differential in the lab's form: rounding, what is reported apart, changes and flags."""

from __future__ import annotations

import random

import pytest

from bcclassify.review.differential import (
    LIMITS_ENV,
    CaseCell,
    ReportLimits,
    build_differential,
    largest_remainder_percentages,
    load_limits,
)
from bcclassify.review.report import LEUKOCYTE_CLASSES


def cells(**counts: int) -> list[CaseCell]:
    out = []
    for name, n in counts.items():
        out += [CaseCell(f"{name}-{i}.jpg", name) for i in range(n)]
    return out


def by_class(section: dict) -> dict:
    return {row["class"]: row for row in section["leukocytes"]}


def test_thirds_round_to_100_by_largest_remainder():
    assert largest_remainder_percentages({"a": 1, "b": 1, "c": 1}, "abc") == {
        "a": 34,
        "b": 33,
        "c": 33,
    }
    # Naive rounding would give 100.5 -> 101 here (3 x 16.67 -> 17, 2 x 16.5 -> 17 or 16).
    assert sum(largest_remainder_percentages({"a": 2, "b": 1, "c": 0}, "abc").values()) == 100
    assert largest_remainder_percentages({}, "abc") == {"a": 0, "b": 0, "c": 0}


def test_percentages_always_sum_to_100_and_stay_within_a_point():
    rng = random.Random(7)
    for _ in range(500):
        counts = {k: rng.choice([0, 0, 1, 2, 3, 7, 13, 58]) for k in LEUKOCYTE_CLASSES}
        total = sum(counts.values())
        if not total:
            continue
        percents = largest_remainder_percentages(counts, LEUKOCYTE_CLASSES)
        assert sum(percents.values()) == 100
        for k in LEUKOCYTE_CLASSES:
            assert abs(percents[k] - 100 * counts[k] / total) < 1
            assert counts[k] or percents[k] == 0


def test_non_leukocytes_and_unidentified_cells_stay_out_of_the_percentages():
    base = build_differential(cells(neutrophil=60, lymphocyte=40), 5.0)
    more = cells(neutrophil=60, lymphocyte=40, erythroblast=3, platelet=9) + [
        CaseCell("odd.jpg", "monocyte", "unidentified"),
        CaseCell("doubt.jpg", "eosinophil", "disputed"),
        CaseCell("bad.png", None, "error", error="truncated"),
    ]
    section = build_differential(more, 5.0)
    assert by_class(section) == by_class(base)
    assert section["leukocytes_counted"] == 100
    apart = section["reported_apart"]
    assert apart == {
        "erythroblasts": 3,
        "nrbc_per_100_wbc": 3.0,
        "platelets": 9,
        "unidentified": 1,
        "awaiting_review": 1,
        "awaiting_by_flag": {"disputed": 1, "low_confidence": 0},
        "refused_files": 1,
    }


def test_a_reviewer_class_counts_and_shows_as_a_change():
    reviewed = [
        CaseCell("a.jpg", "monocyte", "unidentified", reviewed="lymphocyte"),
        CaseCell("b.jpg", "monocyte", "", reviewed="lymphocyte"),
        CaseCell("c.jpg", "neutrophil", "", reviewed="ig"),
        CaseCell("d.jpg", "neutrophil", "", reviewed="neutrophil"),  # confirmed: no change
    ]
    section = build_differential(reviewed, None)
    assert by_class(section)["lymphocyte"]["count"] == 2
    assert section["reported_apart"]["unidentified"] == 0
    assert section["changes"] == [
        {"model_class": "monocyte", "reviewer_class": "lymphocyte", "count": 2},
        {"model_class": "neutrophil", "reviewer_class": "ig", "count": 1},
    ]
    assert section["reviewed_cells"] == 4


def test_absolute_counts_use_the_exact_fraction_of_the_wbc():
    rows = by_class(build_differential(cells(neutrophil=2, lymphocyte=1), 9.0))
    assert rows["neutrophil"]["absolute_10e9_per_l"] == 6.0
    assert rows["lymphocyte"]["absolute_10e9_per_l"] == 3.0
    assert (rows["neutrophil"]["percent"], rows["lymphocyte"]["percent"]) == (67, 33)
    without = by_class(build_differential(cells(neutrophil=2), None))
    assert without["neutrophil"]["absolute_10e9_per_l"] is None


def test_flags_name_the_rule_that_fired():
    section = build_differential(
        cells(neutrophil=50, lymphocyte=30, monocyte=10, eosinophil=5, basophil=2, ig=3), None
    )
    fired = {f["flag"]: f for f in section["flags"]}
    assert set(fired) == {"ig_high"}  # 100 leukocytes is not "fewer than 100"
    assert fired["ig_high"]["rule"] == "Immature granulocytes > 2% of leukocytes"
    assert fired["ig_high"]["value"] == 3.0
    small = build_differential(cells(neutrophil=50, lymphocyte=30), None)
    assert {f["flag"] for f in small["flags"]} == {"too_few_cells"}
    assert small["flags"][0]["rule"] == "fewer than 100 leukocytes classified"


def test_limits_come_from_a_toml_file_or_the_secrets(tmp_path, monkeypatch):
    path = tmp_path / "limits.toml"
    path.write_text("[report_limits]\nmin_leukocytes = 50\nig_percent_above = -1\n")
    monkeypatch.setenv(LIMITS_ENV, str(path))
    limits = load_limits({"report_limits": {"min_leukocytes": 200}})
    assert (limits.min_leukocytes, limits.ig_percent_above) == (50, None)  # the file wins
    section = build_differential(cells(neutrophil=50, lymphocyte=30, ig=20), None, limits)
    assert section["flags"] == []  # 20% IG, but that rule is off and 100 >= 50 cells
    monkeypatch.delenv(LIMITS_ENV)
    assert load_limits({"report_limits": {"min_leukocytes": 200}}).min_leukocytes == 200
    assert load_limits({}) == ReportLimits()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"ig_percent": 2}, "unknown key.*ig_percent"),
        ({"min_leukocytes": "many"}, "min_leukocytes: 'many' is not a number"),
        ({"min_leukocytes": 10.5}, "min_leukocytes: 10.5 is not whole"),
        ({"monocyte_percent_above": float("nan")}, "must be a number >= 0"),
    ],
)
def test_bad_limits_are_refused_by_name(table, message):
    with pytest.raises(ValueError, match=message):
        load_limits({"report_limits": table})


def test_an_unreadable_limits_file_is_named(tmp_path):
    path = tmp_path / "limits.toml"
    path.write_text("[report_limits\n")
    with pytest.raises(ValueError, match="limits.toml: report limits cannot be read"):
        load_limits(path=path)
