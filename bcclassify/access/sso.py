"""Who a single sign-on (OpenID Connect, ``st.login``) user is here: only those on the lab's list.

A provider vouches for an account, not for membership of the lab: anyone with an account at the
provider can complete its log-in. So the app lets in only the e-mail addresses listed in the
secrets, each with its role::

    [bcclassify.sso_users]
    "ana.lima@lab.example.org" = "admin"
    "ben.okafor@lab.example.org" = "reviewer"

and only when the provider says it verified the address (``email_verified``). The user is keyed
by the token's issuer and subject (``iss`` and ``sub``, which the provider never reassigns) and
shown, and recorded in the review log, by the e-mail address. Nothing here draws or needs
Streamlit: ``user`` is any mapping shaped like ``st.user``.
"""

from __future__ import annotations

from collections.abc import Mapping

from bcclassify.access.roles import Identity, Role

__all__ = ["SECTION", "USERS_KEY", "SignOnRefused", "allow_list", "sso_identity"]

SECTION, USERS_KEY = "bcclassify", "sso_users"  # [bcclassify.sso_users] in secrets.toml


class SignOnRefused(PermissionError):
    """A user who completed the provider's log-in but may not use this app; says why."""


def allow_list(secrets: Mapping) -> dict[str, Role]:
    """The ``[bcclassify.sso_users]`` table: lower-cased e-mail -> role.

    Missing: an empty list (nobody is let in). An entry whose role is not one of the roles is a
    :class:`ValueError` naming it, rather than a silent guess at what was meant.
    """
    section = secrets.get(SECTION)
    table = section.get(USERS_KEY) if isinstance(section, Mapping) else None
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ValueError(f"[{SECTION}.{USERS_KEY}] in the secrets must be a table of e-mail = role")
    allowed: dict[str, Role] = {}
    for email, role in table.items():
        try:
            allowed[str(email).strip().casefold()] = Role(str(role).strip().lower())
        except ValueError:
            raise ValueError(
                f"[{SECTION}.{USERS_KEY}] {email!r} = {role!r}: the role must be one of "
                f"{', '.join(r.value for r in Role)}"
            ) from None
    return allowed


def _verified(value: object) -> bool:
    # A JSON boolean from the ID token; some providers send the string "true".
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def sso_identity(user: Mapping, secrets: Mapping) -> Identity | None:
    """The signed-on user as an :class:`Identity` with their listed role; None when nobody has
    signed on. Raises :class:`SignOnRefused` (saying why) for a user who may not come in, and
    ValueError for a malformed list."""
    if user.get("is_logged_in") is not True:
        return None
    email = str(user.get("email") or "").strip()
    if not email:
        raise SignOnRefused(
            "the sign-on provider sent no e-mail address; ask the admin to request the "
            "'email' scope from it"
        )
    if not _verified(user.get("email_verified")):
        raise SignOnRefused(f"the sign-on provider has not verified the address {email}")
    issuer, subject = str(user.get("iss") or ""), str(user.get("sub") or "")
    if not issuer or not subject:
        raise SignOnRefused("the sign-on provider sent no issuer or subject for this account")
    role = allow_list(secrets).get(email.casefold())
    if role is None:
        raise SignOnRefused(
            f"{email} is not on this lab's list of users; ask the lab admin to add it to "
            f"[{SECTION}.{USERS_KEY}] in the app's secrets"
        )
    return Identity(name=email, role=role, issuer=issuer, subject=subject)
