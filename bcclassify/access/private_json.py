"""The data directory's private JSON files (accounts, API tokens): one reader, one writer.

Each file is an object with a ``version`` and one named table (``users``, ``clients``). It is
written 0600 in a 0700 folder, atomically, so a crash leaves the previous version whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from bcclassify.review.reviews import make_private_dir
from bcclassify.storage.store import atomic_write_bytes

__all__ = ["read_table_file", "write_private_json"]


def read_table_file(path: Path, table: str, what: str, error: type[Exception]) -> dict:
    """``path``'s payload (an empty one when missing), or ``error`` naming the file and ``what``
    it should have been (for example "account file") when it is not one."""
    if not path.is_file():
        return {"version": 1, table: {}}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: the {what} cannot be read ({exc})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get(table), dict):
        article = "an" if what[0] in "aeiou" else "a"
        raise error(f"{path}: not {article} {what} (no {table!r} table)")
    return payload


def write_private_json(path: Path, payload: dict) -> None:
    """Replace ``path`` atomically; the new file is 0600 before it holds anything secret."""
    make_private_dir(path.parent)
    atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode(), mode=0o600)
