"""A case's report as a one-page A4 PDF (fpdf2): what a lab signs and sends.

Header (accession, case, dates, status, model and card hash), the differential table in the
lab's order, the cells reported apart, the decision-support flags with their rules, the
reviewer's changes and the sign-offs. No cell images are drawn, so no image credit is needed.
fpdf2's built-in Helvetica covers Latin-1 only: other characters (in names, say) print as '?'.
"""

from __future__ import annotations

from collections.abc import Mapping

from fpdf import FPDF

__all__ = ["report_pdf_bytes"]

STATUS_WORDS = {
    "open": "PRELIMINARY - not signed off",
    "reviewed": "PRELIMINARY - reviewed, awaiting final sign-off",
    "final": "FINAL",
    "amended": "AMENDED",
}
STEP_WORDS = {
    "review": "Reviewed by",
    "reopen": "Reopened by",
    "final": "Signed off by",
    "amendment": "Amended by",
}


def _latin1(text: object) -> str:
    return str(text).encode("latin-1", "replace").decode("latin-1")


class _Report(FPDF):
    def line_text(self, text: str, size: float = 9, style: str = "", height: float = 4.6):
        self.set_font("Helvetica", style, size)
        self.multi_cell(0, height, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    def heading(self, text: str) -> None:
        self.ln(1.5)
        self.line_text(text, 10.5, "B", 5.5)


def _day(stamp: str | None) -> str:
    return (stamp or "")[:19].replace("T", " ") + (" UTC" if stamp else "")


def report_pdf_bytes(report: Mapping) -> bytes:
    """The PDF of ``report`` (``bcclassify.review.cases.report_json``)."""
    case, results, model = report["case"], report["results"], report["model"]
    pdf = _Report(format="A4")
    pdf.set_margins(16, 14, 16)
    pdf.set_auto_page_break(True, 14)
    pdf.set_title(_latin1(f"Differential {case['accession']}"))
    pdf.set_creator("bcclassify")
    pdf.add_page()

    pdf.line_text("Leukocyte differential (image-based)", 15, "B", 7)
    pdf.line_text(f"Accession {case['accession']}", 12, "B", 6)
    pdf.line_text(STATUS_WORDS.get(case["status"], case["status"]), 10, "B", 5)
    wbc = case["wbc_count"]
    pdf.line_text(
        f"Case {case['case_id']}   created {_day(case['created'])} by {case['created_by']}   "
        f"report generated {_day(report['generated'])}"
    )
    pdf.line_text(
        "WBC (analyser): "
        + (f"{wbc:g} x10^9/L" if wbc is not None else "not given")
        + f"   Leukocytes classified: {results['leukocytes_counted']}"
    )
    pdf.line_text(
        f"Model: {', '.join(model['names']) or 'unknown'}   card.json sha256: "
        f"{', '.join(model['card_sha256']) or 'unknown'}",
        8,
    )

    pdf.heading("Differential")
    widths = (62, 26, 26, 40)
    pdf.set_font("Helvetica", "B", 9)
    for width, title in zip(widths, ("Cell type", "Count", "%", "Absolute (x10^9/L)")):
        pdf.cell(width, 6, title, border="B", align="L" if title == "Cell type" else "R")
    pdf.ln(6)
    pdf.set_font("Helvetica", "", 9.5)
    for row in results["leukocytes"]:
        absolute = row["absolute_10e9_per_l"]
        values = (
            row["label"],
            str(row["count"]),
            str(row["percent"]),
            "-" if absolute is None else f"{absolute:.2f}",
        )
        for width, value, align in zip(widths, values, "LRRR"):
            pdf.cell(width, 5.4, _latin1(value), align=align)
        pdf.ln(5.4)
    pdf.set_font("Helvetica", "B", 9)
    total = sum(r["percent"] for r in results["leukocytes"])
    pdf.cell(widths[0], 5.4, "Total", border="T")
    pdf.cell(widths[1], 5.4, str(results["leukocytes_counted"]), border="T", align="R")
    pdf.cell(widths[2], 5.4, str(total), border="T", align="R")
    pdf.cell(widths[3], 5.4, "", border="T")
    pdf.ln(6)
    pdf.line_text(results["rounding"], 7.5, "I", 3.8)

    apart = results["reported_apart"]
    pdf.heading("Reported apart (not in the percentages)")
    nrbc = apart["nrbc_per_100_wbc"]
    pdf.line_text(
        f"Erythroblasts (NRBC): {apart['erythroblasts']}"
        + (f"  = {nrbc:g} per 100 WBC" if nrbc is not None else "")
        + f"    Platelets (crops): {apart['platelets']}"
        + f"    Unidentified cells: {apart['unidentified']}"
        + f"    Refused files: {apart['refused_files']}"
        + (f"    Awaiting review: {apart['awaiting_review']}" if apart["awaiting_review"] else "")
    )

    pdf.heading("Decision-support flags")
    if results["flags"]:
        for flag in results["flags"]:
            pdf.line_text(f"- {flag['flag']}: {flag['rule']} (value {flag['value']})")
    else:
        pdf.line_text("None fired.")

    pdf.heading("Reviewer changes (model class -> reviewer class)")
    changes = results["changes"]
    if changes:
        pdf.line_text(
            "; ".join(f"{c['model_class']} -> {c['reviewer_class']}: {c['count']}" for c in changes)
        )
    else:
        pdf.line_text(
            f"None: {results['reviewed_cells']} cell(s) reviewed, all confirmed."
            if results["reviewed_cells"]
            else "No cell changed by a reviewer."
        )

    pdf.heading("Sign-offs")
    if report["signoffs"]:
        for s in report["signoffs"]:
            line = (
                f"{STEP_WORDS.get(s['step'], s['step'])} {s['signer']} ({s['signer_role']}) "
                f"at {_day(s['time'])}; results sha256 {s['results_sha256'][:16]}"
            )
            if s["amends"]:
                line += f"; amends sign-off #{s['amends']}"
            if s["reason"]:
                line += f"; reason: {s['reason']}"
            pdf.line_text(line, 8.5)
    else:
        pdf.line_text("Not signed off yet.")

    pdf.ln(2)
    pdf.line_text(report["disclaimer"], 7.5, "I", 3.8)
    return bytes(pdf.output())
