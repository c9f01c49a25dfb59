"""Who is reviewing: the one place the app logs a user in and asks who is logged in.

Log-in is Streamlit's OpenID Connect (``st.login``) when the secrets have an ``[auth]`` section,
for the e-mail addresses listed in ``[bcclassify.sso_users]`` only (``bcclassify.access.sso``);
otherwise local accounts (``bcclassify.access.accounts``, ``python -m bcclassify users``), checked
through the server-side throttle (``bcclassify.access.throttle``). A local log-in is remembered in
the session with its account's password generation: a new password, or the account removed,
logs every session that logged in before out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from bcclassify.access import accounts
from bcclassify.access.roles import Identity
from bcclassify.access.sso import SignOnRefused, sso_identity
from bcclassify.access.throttle import LoginThrottled, ThrottleUnavailable, log_in
from bcclassify.presentation.pages import oidc_providers

LOGGED_IN = "reviewer_login"  # session key: the locally logged-in user's name
GENERATION = "reviewer_login_generation"  # session key: their password generation at log-in
PROMPT = "Log in to save and export review decisions."

logger = logging.getLogger(__name__)


def signed_in_identity(secrets: dict) -> Identity | None:
    """The logged-in user with their role, or None; draws nothing, so any page can ask.

    Sign-on users have the role the allow-list gives them (None when not on it); local
    accounts the role in the account file."""
    if oidc_providers(secrets) is not None:
        try:
            return sso_identity(st.user, secrets)
        except (SignOnRefused, ValueError):
            return None
    path = accounts.accounts_path(secrets)
    name = local_reviewer(path)
    if name is None:
        return None
    role = accounts.user_role(path, name)
    return Identity(name=name, role=role) if role is not None else None


def signed_in_reviewer(secrets: dict) -> str | None:
    """The logged-in user's name, or None (see :func:`signed_in_identity`)."""
    identity = signed_in_identity(secrets)
    return identity.name if identity else None


def local_reviewer(path: Path) -> str | None:
    """The session's local log-in while its account exists with the password it logged in
    with; otherwise the session is logged out."""
    name = st.session_state.get(LOGGED_IN)
    if not name:
        return None
    held = st.session_state.get(GENERATION)
    if held is None or accounts.generation(path, name) != held:
        st.session_state.pop(LOGGED_IN, None)
        st.session_state.pop(GENERATION, None)
        logger.info("session of %r ended: its account was removed or its password replaced", name)
        return None
    return name


def log_out() -> None:
    st.session_state.pop(LOGGED_IN, None)
    st.session_state.pop(GENERATION, None)


def client_address() -> str | None:
    """The visitor's address as Streamlit sees it (None on localhost or when unknown)."""
    try:
        return st.context.ip_address
    except Exception:  # noqa: BLE001 - outside a live session (tests) there is none
        return None


def login_ui(secrets: dict) -> str | None:
    """The sidebar's Reviewer section: who is logged in and a log-out button, or the way to log
    in. Returns the logged-in user's name, or None."""
    with st.sidebar:
        st.subheader("Reviewer")
        providers = oidc_providers(secrets)
        if providers is None:
            return local_login_ui(accounts.accounts_path(secrets))
        return sso_login_ui(secrets, providers)


def sso_login_ui(secrets: dict, providers: list[str | None]) -> str | None:
    """Sign-on buttons; once signed on, the user's e-mail and role, or why they may not enter."""
    if st.user.get("is_logged_in") is True:
        try:
            identity = sso_identity(st.user, secrets)
        except (SignOnRefused, ValueError) as exc:
            st.error("Signed on, but not let in:")
            st.text(str(exc))
            st.button("Log out", on_click=st.logout, key="logout")
            return None
        if identity is not None:
            st.text(f"Logged in as {identity.name} ({identity.role})")
            st.button("Log out", on_click=st.logout, key="logout")
            return identity.name
    for provider in providers:
        st.button(
            "Log in" + (f" with {provider}" if provider else ""),
            key=f"login-{provider or 'default'}",
            on_click=st.login,
            args=(provider,) if provider else (),
        )
    st.caption(PROMPT)
    return None


def local_login_ui(path: Path) -> str | None:
    """A log-in form checked against the local account file through the shared throttle."""
    name = local_reviewer(path)
    if name:
        st.text(f"Logged in as {name}")
        st.button("Log out", key="logout", on_click=log_out)
        return name
    if not accounts.has_accounts(path):
        st.caption(
            "Saving review decisions needs a log-in, and no reviewer accounts are set up. "
            "An administrator adds them with `python -m bcclassify users add NAME`."
        )
        return None
    with st.form("login", clear_on_submit=True):
        user = st.text_input("User name", key="login_user")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        try:
            generation = log_in(path, user, password, client=client_address())
        except LoginThrottled as exc:
            st.error(f"{str(exc).capitalize()}.")
        except ThrottleUnavailable as exc:
            st.error("Log-in is unavailable. Tell the administrator:")
            st.text(str(exc))
        else:
            if generation is not None:
                st.session_state[LOGGED_IN] = user
                st.session_state[GENERATION] = generation
                st.rerun()
            st.error("Unknown user name or wrong password.")
    st.caption(PROMPT)
    return None
