"""Cases: one sample's cells under its accession number, reviewed across sessions, signed off in
two steps (a reviewer, then a pathologist or admin) and reported as a PDF and a FHIR R4
DiagnosticReport.

It reads as a table of contents: each region is a function of ``ui.cases``; cases, decisions,
sign-offs and reports are ``bcclassify.review.cases``'s, log-in is ``ui.login``'s.
"""

from __future__ import annotations

import streamlit as st

from bcclassify.review.cases import CaseError, report_json
from bcclassify.review.reviews import ReviewLogUnavailable
from ui import cases as view
from ui.classify import model_selector_ui
from ui.login import login_ui, signed_in_identity
from ui.session import app_secrets


def main() -> None:
    st.title("Cases and reports")
    st.caption(
        "A sample's differential: cells classified under its accession number, reviewed, "
        "signed off by two people and reported (PDF, FHIR R4). Research software, not a "
        "diagnostic device."
    )
    secrets = app_secrets()
    login_ui(secrets)
    identity = signed_in_identity(secrets)
    if identity is None:
        st.info(
            "Log in (sidebar) to create, review and sign off cases. Accounts: "
            "python -m bcclassify users add NAME --role reviewer|pathologist|admin"
        )
        return
    store = view.open_store(secrets)
    if store is None:
        return
    limits = view.limits_ui(secrets)
    view.new_case_ui(store, identity)
    case = view.case_picker_ui(store)
    if case is None:
        st.info("No cases yet: create one with its accession number above.")
        return
    view.case_header_ui(case)
    try:
        report = report_json(store, case.case_id, limits)
        cells = store.cells(case.case_id)
    except (CaseError, ReviewLogUnavailable) as exc:
        view.refused(exc, "The case cannot be read:")
        return
    if case.status == "open":
        model = model_selector_ui()
        if model is not None:
            view.add_cells_ui(store, case, model)
    st.divider()
    view.report_ui(report)
    view.cells_ui(store, case, cells, identity)
    st.divider()
    view.sign_off_ui(store, case, cells, identity)
    view.downloads_ui(store, case, limits, report)


main()
