"""Log-in and roles in the running app (streamlit.testing): the throttle holds across browser
sessions, a new password or a removed account ends live sessions, and the review log shows a
reviewer only their own decisions (an admin every reviewer's)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest
from test_app import APP, PASSWORD, TIMEOUT, _frame, _log_in, _no_exception, _texts

from bcclassify.access import accounts
from bcclassify.access.roles import Role
from bcclassify.access.throttle import FREE_FAILURES
from bcclassify.review.reviews import ReviewLog

PROBS = [0.05, 0.05, 0.05, 0.05, 0.6, 0.1, 0.05, 0.05]


def _session(monkeypatch, tmp_path) -> AppTest:
    """A new browser session: a fresh AppTest has an empty session state."""
    monkeypatch.setenv("BCCLASSIFY_STORE", str(tmp_path / "store"))  # no model: a fast page
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()


def _logged_in(at: AppTest) -> bool:
    return "Logged in as" in _texts(at.text)


def test_a_new_session_gets_no_fresh_guesses(tmp_path, monkeypatch):
    accounts.add_user(tmp_path / "data" / "accounts.json", "dr.lee", PASSWORD)
    first = _session(monkeypatch, tmp_path)
    for _ in range(FREE_FAILURES):
        first = _log_in(first, "dr.lee", "a wrong password")
        assert "wrong password" in _texts(first.error)
    second = _log_in(_session(monkeypatch, tmp_path), "dr.lee")  # the right password
    _no_exception(second)
    assert "Too many failed log-ins" in _texts(second.error) and not _logged_in(second)


def test_a_new_password_or_a_removed_account_ends_live_sessions(tmp_path, monkeypatch):
    path = tmp_path / "data" / "accounts.json"
    accounts.add_user(path, "dr.lee", PASSWORD)
    accounts.add_user(path, "qa", PASSWORD)
    lee = _log_in(_session(monkeypatch, tmp_path), "dr.lee")
    qa = _log_in(_session(monkeypatch, tmp_path), "qa")
    assert _logged_in(lee) and _logged_in(qa)
    accounts.add_user(path, "dr.lee", "a replaced password", replace=True)
    accounts.remove_user(path, "qa")
    lee.run()
    qa.run()
    _no_exception(lee)
    assert not _logged_in(lee) and lee.text_input(key="login_user")
    assert not _logged_in(qa)
    lee = _log_in(lee, "dr.lee", "a replaced password")
    assert _logged_in(lee)
    accounts.set_role(path, "dr.lee", Role.ADMIN)  # a new role keeps the session
    assert _logged_in(lee.run())


def test_the_review_log_shows_a_reviewer_only_their_own_decisions(
    tiny_store, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    for name, role in (("ana", Role.REVIEWER), ("ben", Role.REVIEWER), ("boss", Role.ADMIN)):
        accounts.add_user(data / "accounts.json", name, PASSWORD, role=role)
    log = ReviewLog(data)
    for file_name, reviewer in (("a.jpg", "ana"), ("b.jpg", "ben"), ("c.jpg", "ana")):
        log.record(file_name, f"sha-{file_name}", "tiny-cnn", "ig", PROBS, "ig", reviewer=reviewer)
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(data))
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    for name, seen in (("ana", ["c.jpg", "a.jpg"]), ("boss", ["c.jpg", "b.jpg", "a.jpg"])):
        at = _log_in(AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), name)
        _no_exception(at)
        assert list(_frame(at, "file_name")["file_name"]) == seen, name
        assert any(b.label.startswith("Export review") for b in at.get("download_button"))
