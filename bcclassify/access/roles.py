"""Roles and what each may do: one table the app, the CLI and the HTTP API all consult.

A reviewer reviews cells and saves decisions. A pathologist also signs off cases. A lab admin
does everything, including what changes or reveals the whole lab's data: installing and
uninstalling models, exporting every reviewer's decisions and forgetting kept cells.
"""

from __future__ import annotations

import getpass
import platform
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ACTIONS",
    "AccessDenied",
    "Identity",
    "Role",
    "allowed",
    "command_line_identity",
    "parse_role",
    "require",
]


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


class AccessDenied(PermissionError):
    """An action refused for the identity's role; the message names the action and the roles."""


# What each action is called in a refusal (the ACTIONS keys are for code).
_ACTION_WORDS = {
    "export_all_decisions": "exporting every reviewer's decisions",
    "install_model": "installing models",
    "uninstall_model": "uninstalling models",
    "forget_cells": "forgetting kept cells",
    "adapt": "adapting models",
    "sign_off_final": "the final sign-off",
}


def require(identity: Identity | None, action: str) -> Identity:
    """``identity`` when it may do ``action``; :class:`AccessDenied` otherwise.

    Library functions that change or reveal the whole lab's data call this themselves, so a page
    that shows a button by mistake still cannot do what the role does not allow."""
    if allowed(identity, action):
        return identity  # type: ignore[return-value]  # allowed() is False for None
    what = _ACTION_WORDS.get(action, action.replace("_", " "))
    roles = " or ".join(sorted(str(r) for r in ACTIONS[action]))
    who = "nobody is logged in" if identity is None else f"{identity.name} is {identity.role}"
    raise AccessDenied(f"{what} needs the {roles} role; {who}")


def command_line_identity() -> Identity:
    """Who runs ``python -m bcclassify``: the lab admin, since writing the store and the data
    directory already takes the server account; named by login and host for the records."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (containers)
        user = "unknown"
    return Identity(name=f"{user}@{platform.node()} (command line)", role=Role.ADMIN)
