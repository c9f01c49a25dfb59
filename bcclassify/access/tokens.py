"""Bearer tokens for the HTTP API: one per client (an analyser, a LIS), made on the command line.

``python -m bcclassify api-tokens add CLIENT`` prints a fresh token once; only its sha256 is kept,
in ``api-tokens.json`` in the data directory (beside the review log and accounts), written
atomically with mode 0600. A token is 32 random bytes (``secrets``), so a plain sha256 is enough:
unlike a password it cannot be guessed from a list, and a hash that leaks does not give the token.
The file is read at every check, so ``revoke`` takes effect at the next request, without restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from pathlib import Path

from bcclassify.access.accounts import NAME_PATTERN
from bcclassify.access.private_json import read_table_file, write_private_json
from bcclassify.review.reviews import default_data_dir

__all__ = [
    "TOKENS_NAME",
    "TOKEN_PREFIX",
    "TokenError",
    "add_token",
    "client_for_token",
    "list_clients",
    "revoke_token",
    "tokens_path",
]

TOKENS_NAME = "api-tokens.json"
TOKEN_PREFIX = "bcc_"  # lets a secret scanner, or a person, tell what the string is
_TOKEN_BYTES = 32


class TokenError(ValueError):
    """A refused token operation (bad client name, unknown client, unreadable file)."""


def tokens_path(secrets_: dict | None = None) -> Path:
    """``api-tokens.json`` in the data directory ($BCCLASSIFY_DATA_DIR, else ~/.bcclassify)."""
    return default_data_dir(secrets_) / TOKENS_NAME


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _read(path: Path) -> dict:
    return read_table_file(path, "clients", "token file", TokenError)


def add_token(path: Path, client: str) -> str:
    """Create a token for ``client`` and return it; it is not stored and cannot be shown again."""
    if not NAME_PATTERN.fullmatch(client or ""):
        raise TokenError(
            f"{client!r} is not a valid client name: 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    payload = _read(path)
    if client in payload["clients"]:
        raise TokenError(
            f"client {client!r} already has a token; revoke it first "
            f"(python -m bcclassify api-tokens revoke {client})"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    payload["clients"][client] = {
        "sha256": _digest(token),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_private_json(path, payload)
    return token


def list_clients(path: Path) -> list[dict]:
    """Client names and when their token was made, sorted by name (no hashes)."""
    clients = _read(path)["clients"]
    return [{"client": c, "created": clients[c].get("created", "")} for c in sorted(clients)]


def revoke_token(path: Path, client: str) -> None:
    payload = _read(path)
    if client not in payload["clients"]:
        raise TokenError(f"no client {client!r} in {path}")
    del payload["clients"][client]
    write_private_json(path, payload)


def client_for_token(path: Path, token: str | None) -> str | None:
    """The client whose token this is, or None; never raises for bad input.

    Every stored hash is compared, each in constant time, so the answer takes as long for a
    wrong token as for a right one, whichever client it would have matched.
    """
    try:
        clients = _read(path)["clients"]
    except TokenError:
        return None
    presented = _digest(token or "")
    found = None
    for name, record in clients.items():
        stored = record.get("sha256") if isinstance(record, dict) else None
        if isinstance(stored, str) and hmac.compare_digest(stored, presented) and token:
            found = name
    return found
