"""A case's report as a FHIR R4 DiagnosticReport with contained Observations (LOINC, UCUM).

Plain dicts, ready for ``json.dumps``; the tests validate them with ``fhir.resources`` (its R4B
models: R4B is R4 with technical corrections, and DiagnosticReport and Observation are the same
in both). Status: ``preliminary`` until the final sign-off, ``final`` after it, ``amended`` after
an amendment.

LOINC codes, each checked before use (where is noted beside it). The "Automated count" codes
are the ones labs use for analyser and digital-morphology differentials; the percent codes are
"X/100 leukocytes in Blood" with the UCUM unit ``%``, absolute counts ``10*9/L``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LOINC", "UCUM", "diagnostic_report", "fhir_status"]

LOINC_SYSTEM = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# class -> ((code, display) for the absolute count, (code, display) for the percentage).
LOINC: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    # 770-8: HL7 US Core example Observation "neutrophils"
    #   (hl7.org/fhir/us/core/Observation-neutrophils.html); 751-8 with it in analyser mappings
    #   (GitHub code, e.g. "NEU#" -> 751-8, "NEU%" -> 770-8).
    "neutrophil": (
        ("751-8", "Neutrophils [#/volume] in Blood by Automated count"),
        ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
    ),
    # 731-0: HL7 eCR / US Public Health library examples (hl7.org/fhir/us/ecr/stu2/
    #   Observation-observation-us-core-results-eve-everywoman-lymphocytes.html);
    #   736-9 "Lymphocytes %" in the same analyser mappings as 770-8.
    "lymphocyte": (
        ("731-0", "Lymphocytes [#/volume] in Blood by Automated count"),
        ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
    ),
    # 742-7: HL7 CTC adverse events IG example (build.fhir.org/ig/standardhealth/fsh-ae/
    #   Observation-r202-13.html); 742-7 and 5905-5 with displays in a GitHub reference table.
    "monocyte": (
        ("742-7", "Monocytes [#/volume] in Blood by Automated count"),
        ("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
    ),
    # 711-2 and 713-8 with these displays: the same GitHub reference table as 5905-5.
    "eosinophil": (
        ("711-2", "Eosinophils [#/volume] in Blood by Automated count"),
        ("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
    ),
    # 704-7 and 706-2: analyser LOINC mappings on GitHub ("BAS#", "BAS%") with these displays.
    "basophil": (
        ("704-7", "Basophils [#/volume] in Blood by Automated count"),
        ("706-2", "Basophils/100 leukocytes in Blood by Automated count"),
    ),
    # 53115-2: analyser mappings on GitHub ("IMG#" -> 53115-2, "Immature granulocytes [#/volume]
    #   in Blood by Automated count"); 38518-7 ("IMG%", "Immature granulocytes/100 leukocytes in
    #   Blood") in the same mapping and in lab code tables. Some systems use 71695-1 instead.
    "ig": (
        ("53115-2", "Immature granulocytes [#/volume] in Blood by Automated count"),
        ("38518-7", "Immature granulocytes/100 leukocytes in Blood"),
    ),
}
# 58413-6: loinc.org/58413-6 ("Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by
#   Automated count"; LOINC's mapper guidance prefers it to the methodless 19048-8).
NRBC = ("58413-6", "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count")

OBSERVATION_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
            "display": "Laboratory",
        }
    ]
}
REPORT_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
            "code": "HM",
            "display": "Hematology",
        }
    ]
}


def fhir_status(case_status: str) -> str:
    """DiagnosticReport/Observation status for a case's status."""
    return {"final": "final", "amended": "amended"}.get(case_status, "preliminary")


def _quantity(value: float, unit: str, code: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _observation(ident: str, code: tuple[str, str], quantity: dict, status: str, when: str):
    return {
        "resourceType": "Observation",
        "id": ident,
        "status": status,
        "category": [OBSERVATION_CATEGORY],
        "code": {
            "coding": [{"system": LOINC_SYSTEM, "code": code[0], "display": code[1]}],
            "text": code[1],
        },
        "effectiveDateTime": when,
        "valueQuantity": quantity,
    }


def _conclusion(report: Mapping) -> str:
    results = report["results"]
    apart = results["reported_apart"]
    parts = [
        f"Image-based differential of {results['leukocytes_counted']} leukocytes "
        f"({results['cells_classified']} cells classified, {results['reviewed_cells']} reviewed).",
        f"Reported apart: {apart['erythroblasts']} erythroblast(s), {apart['platelets']} "
        f"platelet(s), {apart['unidentified']} unidentified cell(s), "
        f"{apart['refused_files']} refused file(s).",
    ]
    if results["flags"]:
        parts.append("Flags: " + "; ".join(f"{f['flag']} ({f['rule']})" for f in results["flags"]))
    models = report["model"]
    parts.append(
        f"Model: {', '.join(models['names']) or 'unknown'}; card sha256 "
        f"{', '.join(models['card_sha256']) or 'unknown'}."
    )
    return " ".join(parts)


def diagnostic_report(report: Mapping) -> dict:
    """The DiagnosticReport for ``report`` (``bcclassify.review.cases.report_json``)."""
    case = report["case"]
    results = report["results"]
    status = fhir_status(case["status"])
    when = case["created"]
    observations = []
    for row in results["leukocytes"]:
        absolute, percent = LOINC[row["class"]]
        observations.append(
            _observation(
                f"{row['class']}-percent",
                percent,
                _quantity(row["percent"], "%", "%"),
                status,
                when,
            )
        )
        if row["absolute_10e9_per_l"] is not None:
            observations.append(
                _observation(
                    f"{row['class']}-count",
                    absolute,
                    _quantity(row["absolute_10e9_per_l"], "10*9/L", "10*9/L"),
                    status,
                    when,
                )
            )
    nrbc = results["reported_apart"]["nrbc_per_100_wbc"]
    if nrbc is not None:
        observations.append(
            _observation(
                "nrbc-per-100-wbc",
                NRBC,
                _quantity(nrbc, "/100 WBC", "/100{WBCs}"),
                status,
                when,
            )
        )
    signoffs = report["signoffs"]
    interpreters = [{"display": f"{s['signer']} ({s['signer_role']})"} for s in signoffs]
    resource = {
        "resourceType": "DiagnosticReport",
        "id": case["case_id"],
        "identifier": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "ACSN",
                            "display": "Accession ID",
                        }
                    ]
                },
                "value": case["accession"],
            }
        ],
        "status": status,
        "category": [REPORT_CATEGORY],
        "code": {"text": "Leukocyte differential (image-based, bcclassify)"},
        "effectiveDateTime": when,
        "issued": signoffs[-1]["time"] if signoffs else report["generated"],
        "contained": observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": _conclusion(report),
    }
    if interpreters:
        resource["resultsInterpreter"] = interpreters
    return resource
