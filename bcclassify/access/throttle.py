"""Failed local log-ins, counted on the server per account and per client, with back-off.

The counts live in a small SQLite file beside the account file (``login-throttle.sqlite3``,
mode 0600), so every browser session and every server process shares them: opening a new
session gives no fresh guesses. After :data:`FREE_FAILURES` failures for an account (or from a
client address) each further try waits :data:`BASE_PAUSE_S`, doubling per failure up to
:data:`MAX_PAUSE_S`; a try during the pause is refused before the password is looked at.
Counts are forgotten :data:`FORGET_AFTER_S` after the last failure, and a successful log-in
clears its account's count. Every failure is logged (name and address, never the password).

A client counts only when its address is known and is not a loopback address: the app binds to
loopback behind a proxy, where every visitor would share 127.0.0.1 and one guesser would lock
everyone out.
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from bcclassify.access import accounts
from bcclassify.review.reviews import create_private_file, make_private_dir

__all__ = [
    "BASE_PAUSE_S",
    "FORGET_AFTER_S",
    "FREE_FAILURES",
    "LoginThrottle",
    "LoginThrottled",
    "MAX_PAUSE_S",
    "THROTTLE_NAME",
    "ThrottleUnavailable",
    "log_in",
    "pause_s",
]

FREE_FAILURES = 5  # failed log-ins before the first pause
BASE_PAUSE_S = 30.0  # the first pause; each further failure doubles it
MAX_PAUSE_S = 15 * 60.0
FORGET_AFTER_S = 24 * 3600.0  # a count this long after its last failure starts again from 0
THROTTLE_NAME = "login-throttle.sqlite3"
MAX_KEY_CHARS = 200  # typed names are stored as keys: bounded, whatever is typed

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last REAL NOT NULL
)
"""


class LoginThrottled(Exception):
    """A log-in refused unheard: too many recent failures for the account or from the client."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(
            f"too many failed log-ins for this account or from this address: wait "
            f"{max(1, round(wait_s))} s and try again"
        )


class ThrottleUnavailable(RuntimeError):
    """The failure counts cannot be read or written; log-ins are refused until it is fixed."""


def pause_s(failures: int) -> float:
    """How long after the last of ``failures`` failures the next try is heard."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(BASE_PAUSE_S * 2 ** (failures - FREE_FAILURES), MAX_PAUSE_S)


def _client_key(client: str | None) -> str | None:
    if not client:
        return None
    try:
        if ipaddress.ip_address(client).is_loopback:
            return None
    except ValueError:
        pass  # not an address: counted as given
    return f"client:{client[:MAX_KEY_CHARS]}"


class LoginThrottle:
    """The shared failure counts in ``path`` (see the module docstring)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock

    @classmethod
    def beside(cls, accounts_file: Path, clock: Callable[[], float] = time.time) -> LoginThrottle:
        """The throttle of an account file: ``login-throttle.sqlite3`` in its folder."""
        return cls(Path(accounts_file).with_name(THROTTLE_NAME), clock)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            make_private_dir(self.path.parent)
            create_private_file(self.path)
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("BEGIN IMMEDIATE")  # one writer: two sessions never lose a count
                try:
                    db.execute(SCHEMA)
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise ThrottleUnavailable(
                f"{self.path}: the log-in failure counts cannot be used ({exc}); log-ins are "
                "refused until the file is readable and writable again (deleting it resets "
                "the counts)"
            ) from None

    def _keys(self, account: str, client: str | None) -> list[str]:
        keys = [f"account:{(account or '')[:MAX_KEY_CHARS]}"]
        client_key = _client_key(client)
        return keys + [client_key] if client_key else keys

    def wait_s(self, account: str, client: str | None = None) -> float:
        """Seconds before a try for ``account`` (or from ``client``) is heard; 0.0: now."""
        now = self.clock()
        keys = self._keys(account, client)
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT count, last FROM failures WHERE key IN ({','.join('?' * len(keys))})",
                keys,
            ).fetchall()
        waits = [last + pause_s(count) - now for count, last in rows if now - last < FORGET_AFTER_S]
        return max([0.0, *waits])

    def failed(self, account: str, client: str | None = None) -> int:
        """Count a failed log-in (and log it); returns the account's failures so far."""
        now = self.clock()
        with self._transaction() as db:
            db.execute("DELETE FROM failures WHERE last <= ?", (now - FORGET_AFTER_S,))
            for key in reversed(self._keys(account, client)):  # the account's count last
                (failures,) = db.execute(
                    "INSERT INTO failures (key, count, last) VALUES (?, 1, ?) ON CONFLICT(key) "
                    "DO UPDATE SET count = count + 1, last = excluded.last RETURNING count",
                    (key, now),
                ).fetchall()[0]  # read whole before COMMIT
        logger.warning(
            "failed log-in for account %r from %s (%d failure(s) for this account)",
            account,
            client or "an unknown address",
            failures,
        )
        return failures

    def succeeded(self, account: str) -> None:
        """A successful log-in clears its account's count (the client's runs out by itself)."""
        with self._transaction() as db:
            db.execute("DELETE FROM failures WHERE key = ?", self._keys(account, None))


def log_in(
    accounts_file: Path,
    name: str,
    password: str,
    client: str | None = None,
    throttle: LoginThrottle | None = None,
) -> int | None:
    """Check a local log-in through the shared throttle.

    Returns the account's password generation (:func:`accounts.generation`, which the session
    keeps so that a new password or a removed account logs it out), or None for a wrong name or
    password. Raises :class:`LoginThrottled` during a pause (the password is not checked) and
    :class:`ThrottleUnavailable` when the counts cannot be kept.
    """
    throttle = throttle or LoginThrottle.beside(accounts_file)
    wait = throttle.wait_s(name, client)
    if wait > 0:
        logger.warning(
            "log-in for account %r from %s refused: paused %.0f s more after repeated failures",
            name,
            client or "an unknown address",
            wait,
        )
        raise LoginThrottled(wait)
    if accounts.verify(accounts_file, name, password):
        generation = accounts.generation(accounts_file, name)
        if generation is not None:  # removed between the two reads: a failure like any other
            throttle.succeeded(name)
            return generation
    throttle.failed(name, client)
    return None
