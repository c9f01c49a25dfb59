"""The Cases page's regions: open the case store, create and pick a case, add classified cells,
review them, show the differential, sign off in two steps, amend, and download the report.

Every user string (accession, names, file names, reasons) is shown as plain text or in tables,
never as Markdown. Who signs comes from the log-in (``ui.login.signed_in_identity``), never from
a field on the page.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from bcclassify import CLASS_NAMES
from bcclassify.access.roles import Identity, allowed
from bcclassify.presentation.cases import (
    STATUS_LABELS,
    case_label,
    cell_rows,
    cells_to_review,
    differential_rows,
    signoff_rows,
)
from bcclassify.presentation.pages import card_sha256
from bcclassify.presentation.tables import class_label
from bcclassify.review.cases import (
    ACCESSION_RULE,
    WBC_RANGE,
    Case,
    CaseError,
    CaseStore,
    cell_result,
    report_fhir,
    report_pdf,
)
from bcclassify.review.differential import ReportLimits, load_limits
from bcclassify.review.reviews import LOG_NAME, ReviewLogUnavailable
from bcclassify.review.reviews import default_data_dir as configured_data_dir
from bcclassify.serving.uploads import UploadLimits
from ui import classify as classify_view
from ui.session import model_key

CASE = "case_id"  # session key (and widget key): the case shown
DONE = "case_done"  # session key: the message of the action just saved


def refused(exc: Exception, what: str) -> None:
    """An action refused or not saved: what, and the library's reason as plain text."""
    st.error(what)
    st.text(str(exc))


def open_store(secrets: dict) -> CaseStore | None:
    try:
        return CaseStore(configured_data_dir(secrets) / LOG_NAME)
    except ReviewLogUnavailable as exc:
        refused(exc, "The case store (the review log) cannot be opened. Tell the administrator:")
        return None


def limits_ui(secrets: dict) -> ReportLimits:
    """The lab's flag limits; a bad configuration is a banner and the defaults are used."""
    try:
        return load_limits(secrets)
    except ValueError as exc:
        refused(exc, "The report limits are misconfigured; the defaults are used until fixed:")
        return ReportLimits()


def done(message: str, detail: str = "") -> None:
    """Rerun so every region shows the saved state; the next run says what was saved (a fixed
    message, and any user data in it as plain text)."""
    st.session_state[DONE] = (message, detail)
    st.rerun()


def new_case_ui(store: CaseStore, identity: Identity) -> None:
    with st.expander("New case", expanded=not store.list()):
        with st.form("new_case", clear_on_submit=True):
            left, right = st.columns(2)
            accession = left.text_input("Accession number (type or scan)", key="accession")
            wbc = right.text_input(
                "WBC from the analyser (x10^9/L, optional)",
                key="wbc",
                help=f"From {WBC_RANGE[0]:g} to {WBC_RANGE[1]:g}; empty if not known.",
            )
            st.caption(f"Accession numbers: {ACCESSION_RULE}.")
            submitted = st.form_submit_button("Create case")
    if submitted:
        try:
            case = store.create(accession, wbc, identity.name)
        except (CaseError, ReviewLogUnavailable) as exc:
            refused(exc, "The case was not created:")
            return
        st.session_state[CASE] = case.case_id
        done("Case created.", f"Case {case.case_id} for accession {case.accession}.")


def case_picker_ui(store: CaseStore) -> Case | None:
    """The case to work on (the newest by default); cases are reopened from here."""
    cases = store.list()
    if not cases:
        return None
    by_id = {c.case_id: c for c in cases}
    if st.session_state.get(CASE) not in by_id:
        st.session_state[CASE] = cases[0].case_id
    chosen = st.selectbox("Case", list(by_id), key=CASE, format_func=lambda i: case_label(by_id[i]))
    saved = st.session_state.pop(DONE, None)
    if saved:
        st.success(saved[0])
        if saved[1]:
            st.text(saved[1])  # file names, accession numbers: data, never Markdown
    return by_id[chosen]


def case_header_ui(case: Case) -> None:
    a, b, c = st.columns(3)
    a.text(f"Accession: {case.accession}")
    b.text(f"WBC: {case.wbc_count:g} x10^9/L" if case.wbc_count is not None else "WBC: not given")
    c.text(f"Status: {STATUS_LABELS.get(case.status, case.status)}")
    st.text(f"Case {case.case_id}, created {case.created[:19]} UTC by {case.created_by}")


def add_cells_ui(store: CaseStore, case: Case, model: tuple[str, dict]) -> None:
    """Upload (or pick) crops, classify them with the chosen model, add them to the case."""
    st.subheader("Add cells")
    limits = UploadLimits.from_env()
    items = classify_view.inputs_ui(limits)
    if not items:
        return
    name, _ = model
    if not st.button(f"Classify and add {len(items)} image(s) to this case", type="primary"):
        return
    results = classify_view.classify_inputs(model_key(name), items, limits)
    cells = [cell_result(pred, item.name, item.sha256) for item, (pred, _) in zip(items, results)]
    try:
        store.add_cells(case.case_id, cells, card_sha256(name), model=name)
    except (CaseError, ReviewLogUnavailable) as exc:
        refused(exc, "No cell was added (all or nothing):")
        return
    done(f"{len(cells)} cell(s) added.", f"Classified with {name}.")


def report_ui(report: dict) -> None:
    results = report["results"]
    st.subheader("Differential")
    st.dataframe(pd.DataFrame(differential_rows(report)), hide_index=True, key="differential")
    st.caption(f"{results['leukocytes_counted']} leukocytes counted. {results['rounding']}")
    apart = results["reported_apart"]
    nrbc = apart["nrbc_per_100_wbc"]
    st.text(
        f"Reported apart: erythroblasts {apart['erythroblasts']}"
        + (f" ({nrbc:g} per 100 WBC)" if nrbc is not None else "")
        + f", platelets {apart['platelets']}, unidentified {apart['unidentified']}, "
        f"awaiting review {apart['awaiting_review']}, refused files {apart['refused_files']}"
    )
    for flag in results["flags"]:
        st.warning(f"Flag {flag['flag']}: {flag['rule']} (value {flag['value']})")
    if results["changes"]:
        st.text(
            "Reviewer changes: "
            + "; ".join(
                f"{class_label(c['model_class'])} -> {class_label(c['reviewer_class'])}: "
                f"{c['count']}"
                for c in results["changes"]
            )
        )


def cells_ui(store: CaseStore, case: Case, cells: list[dict], identity: Identity) -> None:
    """The case's cells and, while the case is open, the confirm/correct form."""
    st.subheader(f"Cells ({len(cells)})")
    if not cells:
        st.info("No cells yet: add them above.")
        return
    st.dataframe(pd.DataFrame(cell_rows(cells)), hide_index=True, key="case_cells")
    choices = cells_to_review(cells)
    if case.status != "open" or not choices:
        return
    by_name = {c["file_name"]: c for c in cells}
    with st.form("case_review"):
        left, right = st.columns(2)
        file_name = left.selectbox("Cell (flagged, undecided first)", choices, key="review_cell")
        cell = by_name[file_name]
        current = cell["reviewer_class"] or cell["predicted_class"]
        chosen = right.selectbox(
            "Class",
            list(CLASS_NAMES),
            index=list(CLASS_NAMES).index(current),
            format_func=class_label,
            key="review_class",
        )
        comment = st.text_input("Comment (optional)", key="review_comment")
        submitted = st.form_submit_button("Save decision (confirm or correct)")
    if submitted:
        try:
            store.record_decision(case.case_id, file_name, chosen, identity.name, comment)
        except (CaseError, ReviewLogUnavailable) as exc:
            refused(exc, "The decision was not saved:")
            return
        done("Decision saved.", f"{file_name}: {class_label(chosen)}")


def sign_off_ui(store: CaseStore, case: Case, cells: list[dict], identity: Identity) -> None:
    """The step this case is at, for the logged-in user; the sign-offs so far."""
    st.subheader("Sign-off")
    final_role = allowed(identity, "sign_off_final")
    try:
        if case.status == "open":
            st.caption("Step 1: a reviewer signs once every flagged cell is reviewed.")
            if st.button("Sign as reviewer (step 1)", disabled=not cells):
                store.sign_off(case.case_id, identity, "review")
                done("Signed as reviewer: the case awaits the final sign-off.")
        elif case.status == "reviewed" and not final_role:
            st.info("Awaiting the final sign-off by a pathologist or admin.")
        elif case.status == "reviewed":
            st.caption("Step 2: a pathologist or admin other than the reviewer signs off.")
            if st.button("Sign off final (step 2)", type="primary"):
                store.sign_off(case.case_id, identity, "final")
                done("Signed off: the report is final.")
            with st.form("reopen"):
                reason = st.text_input("Reason to send it back to review", key="reopen_reason")
                if st.form_submit_button("Reopen for review"):
                    store.reopen(case.case_id, identity, reason)
                    done("Reopened: the case is open for review again.")
        elif final_role:
            amend_ui(store, case, cells, identity)
    except (CaseError, ReviewLogUnavailable) as exc:
        refused(exc, "Not signed:")
    signoffs = store.signoffs(case.case_id)
    if signoffs:
        st.dataframe(pd.DataFrame(signoff_rows(signoffs)), hide_index=True, key="signoffs")


def amend_ui(store: CaseStore, case: Case, cells: list[dict], identity: Identity) -> None:
    """After the final sign-off: change one cell's class, with a reason (a new, linked row)."""
    choices = cells_to_review(cells)
    with st.form("amend"):
        st.caption("Amend the signed-off report: the change is a new sign-off row, with reason.")
        left, right = st.columns(2)
        file_name = left.selectbox("Cell", choices, key="amend_cell")
        chosen = right.selectbox("New class", list(CLASS_NAMES), format_func=class_label)
        reason = st.text_input("Reason for the amendment", key="amend_reason")
        if st.form_submit_button("Amend report"):
            store.amend(case.case_id, identity, reason, {file_name: chosen})
            done("Amended: the report shows the change and its reason.")


def downloads_ui(store: CaseStore, case: Case, limits: ReportLimits, report: dict) -> None:
    st.subheader("Report")
    left, middle, right = st.columns(3)
    stem = f"differential-{case.accession.replace('/', '_')}"
    left.download_button(
        "PDF report",
        report_pdf(store, case.case_id, limits),
        file_name=f"{stem}.pdf",
        mime="application/pdf",
    )
    middle.download_button(
        "FHIR R4 DiagnosticReport (JSON)",
        json.dumps(report_fhir(store, case.case_id, limits), indent=2),
        file_name=f"{stem}.fhir.json",
        mime="application/fhir+json",
    )
    right.download_button(
        "Report (JSON)",
        json.dumps(report, indent=2),
        file_name=f"{stem}.json",
        mime="application/json",
    )
    if case.status in ("open", "reviewed"):
        st.caption("Preliminary until the final sign-off; the PDF and FHIR status say so.")
