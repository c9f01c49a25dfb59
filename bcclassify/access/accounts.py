"""Local reviewer accounts: names with salted Argon2id password hashes in one JSON file.

For labs without a single sign-on provider (with one, the app uses Streamlit's OpenID Connect
login instead). Hashing and verification are argon2-cffi's; nothing here is hand-written crypto.
The file lives in the data directory (``accounts.json`` beside the review log) unless
``BCCLASSIFY_ACCOUNTS`` names another path; it is written atomically with mode 0600, and managed
with ``python -m bcclassify users add|list|remove``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bcclassify.access.private_json import read_table_file, write_private_json
from bcclassify.access.roles import Role, parse_role
from bcclassify.review.reviews import default_data_dir
from bcclassify.storage.store import REPO_ROOT

__all__ = [
    "ACCOUNTS_ENV",
    "ACCOUNTS_NAME",
    "AccountError",
    "MIN_PASSWORD_CHARS",
    "NAME_PATTERN",
    "accounts_path",
    "add_user",
    "check_name",
    "generation",
    "has_accounts",
    "list_users",
    "remove_user",
    "set_role",
    "user_role",
    "streamlit_secrets",
    "verify",
]

ACCOUNTS_ENV = "BCCLASSIFY_ACCOUNTS"
ACCOUNTS_NAME = "accounts.json"
MIN_PASSWORD_CHARS = 10
# Names are shown in the log and the app: letters, digits and . _ @ - only, so they are readable.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

_hasher = PasswordHasher()  # argon2-cffi's defaults (Argon2id, RFC 9106 low-memory profile)
# Verified against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class AccountError(ValueError):
    """A refused account operation (bad name, short password, unknown user, unreadable file)."""


def streamlit_secrets() -> dict:
    """Top-level keys of the app's secrets files (global, then the project's), as the app sees
    them, so ``users`` commands find the same account file as the app without Streamlit."""
    merged: dict = {}
    for path in (
        Path.home() / ".streamlit" / "secrets.toml",
        REPO_ROOT / ".streamlit" / "secrets.toml",
    ):
        try:
            merged.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return merged


def accounts_path(secrets: dict | None = None) -> Path:
    """$BCCLASSIFY_ACCOUNTS, else that secret, else ``accounts.json`` in the data directory
    (the review log's: ``reviews.default_data_dir``)."""
    value = os.environ.get(ACCOUNTS_ENV) or (secrets or {}).get(ACCOUNTS_ENV)
    if value:
        return Path(value).expanduser()
    return default_data_dir(secrets) / ACCOUNTS_NAME


def _read(path: Path) -> dict:
    return read_table_file(path, "users", "account file", AccountError)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise AccountError(
            f"{name!r} is not a valid user name: 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def list_users(path: Path) -> list[dict]:
    """Account names with their creation time and role, sorted by name (no hashes)."""
    users = _read(path)["users"]
    return [
        {
            "name": n,
            "created": users[n].get("created", ""),
            "role": str(parse_role(users[n].get("role"))),
        }
        for n in sorted(users)
    ]


def add_user(
    path: Path, name: str, password: str, replace: bool = False, role: Role | None = None
) -> None:
    """Create an account (or, with ``replace``, set a new password for an existing one).

    ``role`` defaults to reviewer for a new account and to the existing role on ``replace``."""
    check_name(name)
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    payload = _read(path)
    if name in payload["users"] and not replace:
        raise AccountError(f"user {name!r} exists; use --replace to set a new password")
    previous = payload["users"].get(name) or {}
    payload["users"][name] = {
        "argon2": _hasher.hash(password),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "role": str(role or parse_role(previous.get("role"))),
        # Sessions remember the generation they logged in with; a new password ends them.
        "generation": _generation_of(previous) + 1,
    }
    write_private_json(path, payload)


def set_role(path: Path, name: str, role: Role) -> None:
    """Give an existing account another role."""
    payload = _read(path)
    if name not in payload["users"]:
        raise AccountError(f"no user {name!r} in {path}")
    payload["users"][name]["role"] = str(Role(role))
    write_private_json(path, payload)


def user_role(path: Path, name: str) -> Role | None:
    """The account's role, or None when there is no such account (or the file is unreadable)."""
    try:
        record = _read(path)["users"].get(name)
    except AccountError:
        return None
    return parse_role(record.get("role")) if isinstance(record, dict) else None


def _generation_of(record: object) -> int:
    value = record.get("generation", 0) if isinstance(record, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def generation(path: Path, name: str) -> int | None:
    """The account's password generation (1 when created, +1 at each new password), or None
    when there is no such account or the file cannot be read: a session logged in with another
    generation is over."""
    try:
        record = _read(path)["users"].get(name)
    except AccountError:
        return None
    return _generation_of(record) if isinstance(record, dict) else None


def remove_user(path: Path, name: str) -> None:
    payload = _read(path)
    if name not in payload["users"]:
        raise AccountError(f"no user {name!r} in {path}")
    del payload["users"][name]
    write_private_json(path, payload)


def has_accounts(path: Path) -> bool:
    try:
        return bool(_read(path)["users"])
    except AccountError:
        return False


def verify(path: Path, name: str, password: str) -> bool:
    """True when ``name`` exists and ``password`` is its password; never raises for bad input."""
    try:
        record = _read(path)["users"].get(name or "")
    except AccountError:
        return False
    stored = record.get("argon2") if isinstance(record, dict) else None
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password or "") and bool(stored)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
