"""A case's outputs: the plain JSON report, the FHIR R4 DiagnosticReport (validated by a maintained
FHIR model library) and the one-page PDF."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from bcclassify.access.roles import Identity, Role
from bcclassify.review.cases import CaseStore, report_fhir, report_json, report_pdf

CARD = "d" * 64
OBSERVATION_STATUSES = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}
PATHOLOGIST = Identity("dr.bob", Role.PATHOLOGIST)
# A normal-looking differential of 104 cells: 100 leukocytes, 1 erythroblast, 3 platelets.
CLASSES = (
    ["neutrophil"] * 58
    + ["lymphocyte"] * 28
    + ["monocyte"] * 8
    + ["eosinophil"] * 4
    + ["basophil"] * 1
    + ["ig"] * 1
    + ["erythroblast"] * 1
    + ["platelet"] * 3
)


def results(classes=CLASSES):
    return [
        {"file": f"cell-{i:03d}.jpg", "label": c, "confidence": 0.95, "flag": "", "error": None}
        for i, c in enumerate(classes)
    ]


@pytest.fixture()
def case(tmp_path):
    store = CaseStore(tmp_path / "reviews.sqlite3")
    case = store.create("H26-004211", 7.4, "ann")
    store.add_cells(case.case_id, results(), CARD, model="hybrid")
    store.record_decision(case.case_id, "cell-000.jpg", "neutrophil", "ann")
    return store, case.case_id


def observations(resource: dict) -> dict[str, dict]:
    return {o["code"]["coding"][0]["code"]: o for o in resource["contained"]}


def test_the_json_report_is_plain_json_in_the_lab_order(case):
    store, case_id = case
    report = report_json(store, case_id)
    assert json.loads(json.dumps(report)) == report
    rows = report["results"]["leukocytes"]
    assert [r["label"] for r in rows] == [
        "Neutrophils",
        "Lymphocytes",
        "Monocytes",
        "Eosinophils",
        "Basophils",
        "Immature granulocytes",
    ]
    assert [r["percent"] for r in rows] == [58, 28, 8, 4, 1, 1]
    assert rows[0]["absolute_10e9_per_l"] == round(7.4 * 0.58, 2)
    assert report["model"] == {"names": ["hybrid"], "card_sha256": [CARD]}
    assert report["case"]["accession"] == "H26-004211"


def test_fhir_report_validates_as_r4_and_follows_the_sign_off(case):
    store, case_id = case
    preliminary = report_fhir(store, case_id)
    DiagnosticReport.model_validate(preliminary)  # raises on any invalid element
    assert preliminary["status"] == "preliminary"
    # fhir.resources checks structure and types, not code values: R4's status sets, checked here.
    assert {o["status"] for o in preliminary["contained"]} <= OBSERVATION_STATUSES
    assert preliminary["identifier"][0]["value"] == "H26-004211"
    obs = observations(preliminary)
    assert obs["770-8"]["valueQuantity"] == {
        "value": 58,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%",
    }
    assert obs["751-8"]["valueQuantity"]["code"] == "10*9/L"
    assert obs["751-8"]["valueQuantity"]["value"] == 4.29
    assert obs["58413-6"]["valueQuantity"]["code"] == "/100{WBCs}"
    assert {"731-0", "736-9", "742-7", "5905-5", "711-2", "713-8", "704-7", "706-2"} <= set(obs)
    assert {"53115-2", "38518-7"} <= set(obs)
    assert (
        sum(o["valueQuantity"]["value"] for o in obs.values() if o["valueQuantity"]["code"] == "%")
        == 100
    )
    refs = {r["reference"] for r in preliminary["result"]}
    assert refs == {f"#{o['id']}" for o in preliminary["contained"]}

    store.sign_off(case_id, Identity("ann"), "review")
    store.sign_off(case_id, PATHOLOGIST, "final")
    final = report_fhir(store, case_id)
    DiagnosticReport.model_validate(final)
    assert final["status"] == "final"
    assert {o["status"] for o in final["contained"]} == {"final"}
    assert [i["display"] for i in final["resultsInterpreter"]] == [
        "ann (reviewer)",
        "dr.bob (pathologist)",
    ]
    store.amend(case_id, PATHOLOGIST, "band forms", {"cell-001.jpg": "ig"})
    amended = report_fhir(store, case_id)
    DiagnosticReport.model_validate(amended)
    assert amended["status"] == "amended"
    assert observations(amended)["38518-7"]["valueQuantity"]["value"] == 2


def test_without_a_wbc_count_there_are_no_absolute_observations(tmp_path):
    store = CaseStore(tmp_path / "reviews.sqlite3")
    case = store.create("H26-1", None, "ann")
    store.add_cells(case.case_id, results(["neutrophil", "lymphocyte"]), CARD)
    resource = report_fhir(store, case.case_id)
    DiagnosticReport.model_validate(resource)
    assert {o["valueQuantity"]["code"] for o in resource["contained"]} == {"%", "/100{WBCs}"}


@pytest.mark.parametrize(
    "change",
    [
        {"status": None},  # required
        {"note": [{"text": "R5 only"}]},  # DiagnosticReport.note is new in R5: not R4
        {"issued": "yesterday"},
        {
            "contained": [
                {
                    "resourceType": "Observation",
                    "id": "a",
                    "status": "final",
                    "code": {"text": "y"},
                    "valueQuantity": {"value": "many"},
                }
            ]
        },
    ],
)
def test_the_validator_catches_what_we_rely_on_it_for(case, change):
    store, case_id = case
    resource = {**report_fhir(store, case_id), **change}
    resource = {k: v for k, v in resource.items() if v is not None}
    with pytest.raises(ValueError):
        DiagnosticReport.model_validate(resource)


def pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))


def test_the_pdf_of_a_normal_case_is_one_page(case):
    store, case_id = case
    store.sign_off(case_id, Identity("ann"), "review")
    store.sign_off(case_id, PATHOLOGIST, "final")
    pdf = report_pdf(store, case_id)
    assert pdf.startswith(b"%PDF-")
    assert pages(pdf) == 1


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_the_pdf_says_what_the_lab_needs(case, tmp_path):
    store, case_id = case
    store.sign_off(case_id, Identity("ann"), "review")
    path = tmp_path / "report.pdf"
    path.write_bytes(report_pdf(store, case_id))
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    for expected in (
        "Accession H26-004211",
        "PRELIMINARY",
        CARD,
        "Neutrophils",
        "58",
        "4.29",
        "Erythroblasts (NRBC): 1",
        "Reviewed by ann (reviewer)",
        "largest-remainder",
    ):
        assert expected in text, expected
