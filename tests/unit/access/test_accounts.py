"""Local reviewer accounts: argon2 hashes in a private file, managed by `users` commands."""

from __future__ import annotations

import json

import pytest

from bcclassify.access import accounts


def test_accounts_verify_and_keep_no_plain_password(tmp_path):
    path = tmp_path / "data" / "accounts.json"
    accounts.add_user(path, "dr.lee", "correct horse battery")
    assert accounts.verify(path, "dr.lee", "correct horse battery")
    assert not accounts.verify(path, "dr.lee", "wrong password!")
    assert not accounts.verify(path, "nobody", "correct horse battery")
    stored = path.read_text()
    assert "correct horse" not in stored and "$argon2id$" in stored
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert [u["name"] for u in accounts.list_users(path)] == ["dr.lee"]


def test_accounts_refuse_bad_names_short_passwords_and_repeats(tmp_path):
    path = tmp_path / "accounts.json"
    for name in ("", "a b", "<img src=x>", "[link](http://x)", "x" * 65):
        with pytest.raises(accounts.AccountError, match="not a valid user name"):
            accounts.add_user(path, name, "long enough password")
    with pytest.raises(accounts.AccountError, match="at least"):
        accounts.add_user(path, "qa", "short")
    accounts.add_user(path, "qa", "long enough password")
    with pytest.raises(accounts.AccountError, match="exists"):
        accounts.add_user(path, "qa", "another long password")
    accounts.add_user(path, "qa", "another long password", replace=True)
    assert accounts.verify(path, "qa", "another long password")
    accounts.remove_user(path, "qa")
    assert not accounts.has_accounts(path)


def test_a_damaged_account_file_lets_nobody_in(tmp_path):
    path = tmp_path / "accounts.json"
    path.write_text("{not json")
    assert not accounts.verify(path, "qa", "anything at all")
    path.write_text(json.dumps({"users": {"qa": {"argon2": "not a hash"}}}))
    assert not accounts.verify(path, "qa", "anything at all")


def test_accounts_file_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(tmp_path / "d"))
    assert accounts.accounts_path() == tmp_path / "d" / "accounts.json"
    monkeypatch.setenv("BCCLASSIFY_ACCOUNTS", str(tmp_path / "elsewhere.json"))
    assert accounts.accounts_path() == tmp_path / "elsewhere.json"


def test_users_command_adds_lists_and_removes(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import REPO

    env = {**os.environ, "BCCLASSIFY_DATA_DIR": str(tmp_path)}

    def users(*args, stdin=""):
        return subprocess.run(
            [sys.executable, "-m", "bcclassify", "users", *args],
            input=stdin, capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
        )  # fmt: skip

    added = users("add", "dr.lee", "--password-stdin", stdin="correct horse battery\n")
    assert added.returncode == 0, added.stderr
    assert accounts.verify(tmp_path / "accounts.json", "dr.lee", "correct horse battery")
    again = users("add", "dr.lee", "--password-stdin", stdin="correct horse battery\n")
    assert again.returncode == 2 and "exists" in again.stderr
    short = users("add", "qa", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least" in short.stderr
    assert users("list").stdout.split("\t")[0] == "dr.lee"
    assert users("remove", "dr.lee").returncode == 0
    assert users("list").stdout == ""


def test_accounts_file_sits_in_the_review_logs_data_directory(tmp_path, monkeypatch):
    from bcclassify.review.reviews import default_data_dir as configured_data_dir

    monkeypatch.delenv("BCCLASSIFY_ACCOUNTS", raising=False)
    monkeypatch.delenv("BCCLASSIFY_DATA_DIR", raising=False)
    secrets = {"BCCLASSIFY_DATA_DIR": str(tmp_path / "from-secrets")}
    assert accounts.accounts_path(secrets) == configured_data_dir(secrets) / "accounts.json"
    assert accounts.accounts_path(secrets) == tmp_path / "from-secrets" / "accounts.json"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert accounts.accounts_path() == tmp_path / "home" / ".bcclassify" / "accounts.json"


def test_roles_default_to_reviewer_are_kept_on_replace_and_can_change(tmp_path):
    from bcclassify.access.roles import Identity, Role, allowed

    path = tmp_path / "accounts.json"
    accounts.add_user(path, "ana", "correct horse battery")
    assert accounts.user_role(path, "ana") is Role.REVIEWER
    accounts.set_role(path, "ana", Role.ADMIN)
    accounts.add_user(path, "ana", "another long password", replace=True)
    assert accounts.user_role(path, "ana") is Role.ADMIN
    assert [u["role"] for u in accounts.list_users(path)] == ["admin"]
    assert accounts.user_role(path, "nobody") is None
    assert allowed(Identity("ana", Role.ADMIN), "install_model")
    assert not allowed(Identity("bo", Role.REVIEWER), "install_model")
    assert not allowed(Identity("bo", Role.PATHOLOGIST), "export_all_decisions")
    assert allowed(Identity("bo", Role.PATHOLOGIST), "sign_off_final")
    assert not allowed(None, "review")
