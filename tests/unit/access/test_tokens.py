"""API bearer tokens: shown once, kept as sha256 in a private file, revoked at once."""

from __future__ import annotations

import hashlib
import json

import pytest

from bcclassify.access import tokens
from bcclassify.cli.main import main


def test_a_token_is_returned_once_and_only_its_hash_is_kept(tmp_path):
    path = tmp_path / "data" / tokens.TOKENS_NAME
    token = tokens.add_token(path, "lis")
    assert token.startswith(tokens.TOKEN_PREFIX) and len(token) > 40
    stored = path.read_text()
    assert token not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert tokens.client_for_token(path, token) == "lis"
    assert tokens.add_token(path, "analyser-2") != token  # random, one per client
    assert [c["client"] for c in tokens.list_clients(path)] == ["analyser-2", "lis"]


def test_wrong_empty_and_revoked_tokens_name_no_client(tmp_path):
    path = tmp_path / tokens.TOKENS_NAME
    assert tokens.client_for_token(path, "anything") is None  # no file yet
    token = tokens.add_token(path, "lis")
    for wrong in (None, "", token[:-1], token + "x", "Bearer " + token, token.upper()):
        assert tokens.client_for_token(path, wrong) is None, wrong
    tokens.revoke_token(path, "lis")
    assert tokens.client_for_token(path, token) is None
    assert tokens.list_clients(path) == []


def test_bad_names_repeats_unknown_clients_and_damaged_files_are_refused(tmp_path):
    path = tmp_path / tokens.TOKENS_NAME
    for name in ("", "a b", "<x>", "x" * 65):
        with pytest.raises(tokens.TokenError, match="not a valid client name"):
            tokens.add_token(path, name)
    token = tokens.add_token(path, "lis")
    with pytest.raises(tokens.TokenError, match="already has a token; revoke it first"):
        tokens.add_token(path, "lis")
    assert tokens.client_for_token(path, token) == "lis"  # the refused add changed nothing
    with pytest.raises(tokens.TokenError, match="no client 'nobody'"):
        tokens.revoke_token(path, "nobody")
    path.write_text("{not json")
    with pytest.raises(tokens.TokenError, match="cannot be read"):
        tokens.add_token(path, "other")
    assert tokens.client_for_token(path, token) is None  # never raises while serving
    path.write_text(json.dumps({"clients": {"lis": "not a record"}}))
    assert tokens.client_for_token(path, token) is None


def test_api_tokens_commands_print_the_token_once_and_list_and_revoke(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("BCCLASSIFY_DATA_DIR", str(tmp_path))
    assert main(["api-tokens", "add", "lis"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert tokens.client_for_token(tmp_path / tokens.TOKENS_NAME, token) == "lis"
    assert "shown only now" in err and token not in err
    assert main(["api-tokens", "list"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("lis\t") and token not in out
    assert main(["api-tokens", "add", "lis"]) == 2
    assert "revoke it first" in capsys.readouterr().err
    assert main(["api-tokens", "revoke", "lis"]) == 0
    assert tokens.client_for_token(tmp_path / tokens.TOKENS_NAME, token) is None
    assert main(["api-tokens", "revoke", "lis"]) == 2
