"""The log-in throttle: counted on the server (a file shared by every session), per account and
per client address, with back-off; failures logged without the password; a new password or a
removed account ends the sessions logged in before."""

from __future__ import annotations

import logging

import pytest

from bcclassify.access import accounts
from bcclassify.access.throttle import (
    BASE_PAUSE_S,
    FORGET_AFTER_S,
    FREE_FAILURES,
    MAX_PAUSE_S,
    LoginThrottle,
    LoginThrottled,
    ThrottleUnavailable,
    log_in,
    pause_s,
)

PASSWORD = "a long test password"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def setup(tmp_path):
    path = tmp_path / "data" / "accounts.json"
    accounts.add_user(path, "dr.lee", PASSWORD)
    accounts.add_user(path, "qa", PASSWORD)
    return path, Clock()


def _session(path, clock) -> LoginThrottle:
    """What a fresh browser session (or another server process) starts from: nothing in memory."""
    return LoginThrottle.beside(path, clock)


def test_the_pause_grows_and_is_capped():
    assert [pause_s(n) for n in range(FREE_FAILURES)] == [0.0] * FREE_FAILURES
    assert pause_s(FREE_FAILURES) == BASE_PAUSE_S
    assert pause_s(FREE_FAILURES + 1) == 2 * BASE_PAUSE_S
    assert pause_s(FREE_FAILURES + 30) == MAX_PAUSE_S


def test_a_new_session_gets_no_fresh_guesses(setup):
    path, clock = setup
    for _ in range(FREE_FAILURES):
        assert log_in(path, "dr.lee", "wrong guess!", throttle=_session(path, clock)) is None
    # Another session, even with the right password: refused unheard until the pause is over.
    with pytest.raises(LoginThrottled, match="wait 30 s") as refused:
        log_in(path, "dr.lee", PASSWORD, throttle=_session(path, clock))
    assert refused.value.wait_s == BASE_PAUSE_S
    assert log_in(path, "qa", PASSWORD, throttle=_session(path, clock)) == 1  # others unaffected
    clock.now += BASE_PAUSE_S
    assert log_in(path, "dr.lee", "wrong again!", throttle=_session(path, clock)) is None
    with pytest.raises(LoginThrottled) as refused:  # one more failure: twice as long
        log_in(path, "dr.lee", PASSWORD, throttle=_session(path, clock))
    assert refused.value.wait_s == 2 * BASE_PAUSE_S
    clock.now += 2 * BASE_PAUSE_S
    assert log_in(path, "dr.lee", PASSWORD, throttle=_session(path, clock)) == 1
    assert _session(path, clock).wait_s("dr.lee") == 0.0  # a success clears the account
    assert (path.parent / "login-throttle.sqlite3").stat().st_mode & 0o777 == 0o600


def test_one_client_guessing_many_accounts_is_paused_but_not_loopback(setup):
    path, clock = setup
    for i in range(FREE_FAILURES):
        log_in(
            path, f"guess{i}", "wrong guess!", client="203.0.113.9", throttle=_session(path, clock)
        )
    with pytest.raises(LoginThrottled):
        log_in(path, "qa", PASSWORD, client="203.0.113.9", throttle=_session(path, clock))
    assert log_in(path, "qa", PASSWORD, client="198.51.100.7", throttle=_session(path, clock))
    # Behind the loopback-bound proxy every visitor is 127.0.0.1: never counted as one client.
    for i in range(FREE_FAILURES + 2):
        log_in(
            path, f"other{i}", "wrong guess!", client="127.0.0.1", throttle=_session(path, clock)
        )
    assert log_in(path, "qa", PASSWORD, client="127.0.0.1", throttle=_session(path, clock))


def test_counts_are_forgotten_a_day_after_the_last_failure(setup):
    path, clock = setup
    for _ in range(FREE_FAILURES + 3):
        _session(path, clock).failed("dr.lee")
    assert _session(path, clock).wait_s("dr.lee") == 8 * BASE_PAUSE_S
    clock.now += FORGET_AFTER_S
    assert _session(path, clock).wait_s("dr.lee") == 0.0
    log_in(path, "dr.lee", "wrong guess!", throttle=_session(path, clock))
    assert _session(path, clock).wait_s("dr.lee") == 0.0  # counting starts again at 1


def test_failures_are_logged_without_the_password(setup, caplog):
    path, clock = setup
    with caplog.at_level(logging.WARNING, logger="bcclassify.access.throttle"):
        for _ in range(FREE_FAILURES + 1):
            try:
                log_in(
                    path,
                    "dr.lee",
                    "s3cret-guess-xyz",
                    client="203.0.113.9",
                    throttle=_session(path, clock),
                )
            except LoginThrottled:
                pass
    text = caplog.text
    assert "failed log-in for account 'dr.lee' from 203.0.113.9 (5 failure(s)" in text
    assert "refused: paused 30 s more" in text
    assert "s3cret" not in text


def test_a_damaged_count_file_refuses_log_ins_with_a_message(setup):
    path, clock = setup
    (path.parent / "login-throttle.sqlite3").write_bytes(b"not a database at all" * 50)
    with pytest.raises(ThrottleUnavailable, match="login-throttle.sqlite3: the log-in failure"):
        log_in(path, "dr.lee", PASSWORD, throttle=_session(path, clock))


def test_a_new_password_or_removal_changes_what_sessions_hold(setup):
    path, clock = setup
    assert accounts.generation(path, "dr.lee") == 1
    held = log_in(path, "dr.lee", PASSWORD, throttle=_session(path, clock))
    accounts.set_role(path, "dr.lee", accounts.Role.ADMIN)  # a role change keeps sessions
    assert accounts.generation(path, "dr.lee") == held
    accounts.add_user(path, "dr.lee", "a brand new password", replace=True)
    assert accounts.generation(path, "dr.lee") == 2 != held
    accounts.remove_user(path, "dr.lee")
    assert accounts.generation(path, "dr.lee") is None
    assert accounts.generation(path, "nobody") is None
