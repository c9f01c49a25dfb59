"""Single sign-on users: only verified e-mail addresses on the lab's list come in, keyed by the
token's issuer and subject, with the listed role; and what ``st.login`` needs imports."""

from __future__ import annotations

import pytest

from bcclassify.access.roles import Role
from bcclassify.access.sso import SignOnRefused, allow_list, sso_identity

ISSUER = "https://id.example.org"
SECRETS = {
    "auth": {"client_id": "bcclassify"},
    "bcclassify": {
        "sso_users": {"Ana.Lima@lab.example.org": "admin", "ben@lab.example.org": "reviewer"}
    },
}


def _user(**claims) -> dict:
    """What ``st.user`` holds after a provider's log-in (the ID token's claims)."""
    return {
        "is_logged_in": True,
        "iss": ISSUER,
        "sub": "248289761001",
        "email": "ana.lima@lab.example.org",
        "email_verified": True,
        "name": "Ana Lima",
        **claims,
    }


def test_a_listed_verified_user_comes_in_with_the_listed_role_keyed_by_issuer_and_subject():
    identity = sso_identity(_user(), SECRETS)
    assert identity.role is Role.ADMIN and identity.name == "ana.lima@lab.example.org"
    assert identity.key == f"{ISSUER}|248289761001"
    assert sso_identity(_user(email="ben@lab.example.org", sub="7"), SECRETS).role is Role.REVIEWER
    assert sso_identity({"is_logged_in": False}, SECRETS) is None


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"email": "mallory@gmail.com"}, "not on this lab's list"),
        ({"email_verified": False}, "not verified"),
        ({"email_verified": None}, "not verified"),
        ({"email": None, "name": "ana.lima@lab.example.org"}, "no e-mail address"),
        ({"sub": ""}, "no issuer or subject"),
    ],
)
def test_anyone_else_at_the_provider_is_refused(claims, reason):
    with pytest.raises(SignOnRefused, match=reason):
        sso_identity(_user(**claims), SECRETS)


def test_without_a_list_nobody_comes_in_and_a_bad_role_is_named():
    with pytest.raises(SignOnRefused, match=r"\[bcclassify.sso_users\]"):
        sso_identity(_user(), {"auth": {"client_id": "x"}})
    with pytest.raises(ValueError, match="'ben@lab.example.org' = 'boss': the role must be"):
        allow_list({"bcclassify": {"sso_users": {"ben@lab.example.org": "boss"}}})


def test_what_st_login_needs_is_installed():
    # Streamlit's OpenID Connect routes import Authlib's Starlette client; without it st.login
    # fails with "To use authentication features, you need to install Authlib".
    from authlib.integrations import starlette_client
    from streamlit.auth_util import is_authlib_installed

    assert is_authlib_installed() and starlette_client.OAuth
