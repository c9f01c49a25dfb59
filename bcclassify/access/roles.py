"""Roles and what each may do: one table the app, the CLI and the HTTP API all consult.

A reviewer reviews cells and saves decisions. A pathologist also signs off cases. A lab admin
does everything, including what changes or reveals the whole lab's data: installing and
uninstalling models, exporting every reviewer's decisions and forgetting kept cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ACTIONS", "Identity", "Role", "allowed", "parse_role"]


class Role(StrEnum):
    REVIEWER = "reviewer"
    PATHOLOGIST = "pathologist"
    ADMIN = "admin"


# Action -> the roles allowed to do it. Anything not listed is refused.
ACTIONS: dict[str, frozenset[Role]] = {
    "review": frozenset(Role),
    "export_own_decisions": frozenset(Role),
    "view_agreement": frozenset(Role),  # aggregate model-vs-reviewer figures, no one's decisions
    "sign_off_review": frozenset(Role),
    "sign_off_final": frozenset({Role.PATHOLOGIST, Role.ADMIN}),
    "export_all_decisions": frozenset({Role.ADMIN}),
    "install_model": frozenset({Role.ADMIN}),
    "uninstall_model": frozenset({Role.ADMIN}),
    "forget_cells": frozenset({Role.ADMIN}),
    "adapt": frozenset({Role.ADMIN}),
}


@dataclass(frozen=True)
class Identity:
    """Who is logged in, as the log-in established it (never typed into a page).

    ``name`` is what the app shows and records; ``issuer`` and ``subject`` are the OpenID
    Connect ``iss`` and ``sub`` (None for local accounts), the stable key of a sign-on user.
    """

    name: str
    role: Role = Role.REVIEWER
    issuer: str | None = None
    subject: str | None = None

    @property
    def key(self) -> str:
        """The identity's stable key: ``iss|sub`` for sign-on users, the account name else."""
        if self.issuer and self.subject:
            return f"{self.issuer}|{self.subject}"
        return self.name


def parse_role(value: object) -> Role:
    """A role from stored text; unknown or missing values are the least privileged role."""
    try:
        return Role(str(value).strip().lower())
    except ValueError:
        return Role.REVIEWER


def allowed(identity: Identity | None, action: str) -> bool:
    """Whether ``identity`` may do ``action``; anonymous visitors may do nothing listed."""
    if identity is None:
        return False
    if action not in ACTIONS:
        raise KeyError(f"unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}")
    return identity.role in ACTIONS[action]
