"""The method verification page: nothing for anonymous visitors; for a logged-in user, the
agreement of a model with the reviewers, from a real review log."""

from __future__ import annotations

from helpers import REPO
from streamlit.testing.v1 import AppTest

from bcclassify import CLASS_NAMES
from bcclassify.access import accounts
from bcclassify.access.roles import Role
from bcclassify.evaluation.agreement import agreement_matrix, cohen_kappa
from bcclassify.review.reviews import ReviewLog

PAGE = "pages/7_Method_verification.py"
PASSWORD = "a long test password"


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _fill_log(data_dir) -> tuple[list[str], list[str]]:
    log = ReviewLog(data_dir)
    probs = [1 / 8] * 8
    reviewer, model = [], []
    for n in range(40):
        truth = CLASS_NAMES[n % 8]
        predicted = truth if n % 5 else CLASS_NAMES[(n + 1) % 8]  # 8 of 40 corrected
        log.record(f"cell{n}.jpg", f"sha{n}", "hybrid", predicted, probs, truth,
                   reviewer="dr.lee", model_card_sha256="ab" * 32)  # fmt: skip
        reviewer.append(truth)
        model.append(predicted)
    return reviewer, model


def test_anonymous_visitors_see_nothing_and_logged_in_users_see_agreement(tmp_path, monkeypatch):
    data = tmp_path / "data"
    reviewer, model = _fill_log(data)
    accounts.add_user(data / "accounts.json", "tech.one", PASSWORD, role=Role.REVIEWER)
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))  # no model needed here
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Log in to see how the model agrees" in _texts(at.info)
    assert not at.metric and not at.dataframe and not at.get("plotly_chart")
    assert "hybrid" not in _texts(at.selectbox) + _texts(at.markdown) + _texts(at.text)

    at.text_input(key="login_user").set_value("tech.one")
    next(t for t in at.text_input if t.label == "Password").set_value(PASSWORD)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="verify_model").value.startswith("hybrid · card abababab · 40")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reviewed cells"] == "40"
    assert metrics["Overall agreement"] == "80.0%"
    kappa = cohen_kappa(agreement_matrix(reviewer, model, CLASS_NAMES))
    assert metrics["Cohen's kappa"] == f"{kappa:.3f}"
    table = at.dataframe[0].value
    assert len(table) == 8 and {"PPA", "PPA 95% CI", "NPA"} <= set(table.columns)
    assert set(table["enough cells"]) == {"no"}  # 5 cells a class: too few to decide on
    assert at.get("plotly_chart"), "the agreement matrix is drawn"
