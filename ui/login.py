"""Who is reviewing: the one place the app logs a reviewer in and asks who is logged in.

Log-in is Streamlit's OpenID Connect (``st.login``) when the secrets have an ``[auth]`` section,
otherwise local accounts (``bcclassify.access.accounts``, ``python -m bcclassify users``). The
local log-in is remembered in the session under ``reviewer_login``; an account removed meanwhile
logs its session out.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from bcclassify.access import accounts
from bcclassify.access.roles import Identity, Role
from bcclassify.presentation.pages import oidc_providers, oidc_reviewer

LOGIN_ATTEMPTS = 5  # failed log-ins per session before a pause
LOGIN_PAUSE_S = 30
LOGGED_IN = "reviewer_login"  # session key: the locally logged-in user's name
FAILURES = "login_failures"  # session key: (failed attempts, time of the last one)
PROMPT = "Log in to save and export review decisions."


def signed_in_reviewer(secrets: dict) -> str | None:
    """The logged-in reviewer's name (OpenID Connect, else a local account), or None; draws
    nothing, so any page can ask."""
    if oidc_providers(secrets) is not None:
        return oidc_reviewer(st.user)
    return local_reviewer(accounts.accounts_path(secrets))


def signed_in_identity(secrets: dict) -> Identity | None:
    """The logged-in user with their role, or None; draws nothing.

    Local accounts carry their role in the account file. Sign-on users are reviewers here;
    roles for them come from the sign-on allow-list (security issue #22)."""
    name = signed_in_reviewer(secrets)
    if name is None:
        return None
    if oidc_providers(secrets) is not None:
        return Identity(name=name, role=Role.REVIEWER)
    role = accounts.user_role(accounts.accounts_path(secrets), name)
    return Identity(name=name, role=role) if role is not None else None


def local_reviewer(path: Path) -> str | None:
    """The session's local log-in while its account still exists."""
    name = st.session_state.get(LOGGED_IN)
    if not name:
        return None
    try:
        users = accounts.list_users(path)
    except accounts.AccountError:
        return None
    return name if any(u["name"] == name for u in users) else None


def login_ui(secrets: dict) -> str | None:
    """The sidebar's Reviewer section: who is logged in and a log-out button, or the way to log
    in. Returns the logged-in reviewer's name, or None."""
    with st.sidebar:
        st.subheader("Reviewer")
        providers = oidc_providers(secrets)
        if providers is None:
            return local_login_ui(accounts.accounts_path(secrets))
        name = oidc_reviewer(st.user)
        if name:
            st.text(f"Logged in as {name}")
            st.button("Log out", on_click=st.logout, key="logout")
            return name
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
    """A log-in form checked against the local account file, a few failures then a pause."""
    name = local_reviewer(path)
    if name:
        st.text(f"Logged in as {name}")
        st.button("Log out", key="logout", on_click=st.session_state.pop, args=(LOGGED_IN,))
        return name
    st.session_state.pop(LOGGED_IN, None)  # an account removed meanwhile logs out
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
        failures, since = st.session_state.get(FAILURES, (0, 0.0))
        if failures >= LOGIN_ATTEMPTS and time.monotonic() - since < LOGIN_PAUSE_S:
            st.error(f"Too many failed log-ins: wait {LOGIN_PAUSE_S} s and try again.")
        elif accounts.verify(path, user, password):
            st.session_state[LOGGED_IN] = user
            st.session_state.pop(FAILURES, None)
            st.rerun()
        else:
            st.session_state[FAILURES] = (failures + 1, time.monotonic())
            st.error("Unknown user name or wrong password.")
    st.caption(PROMPT)
    return None
