"""The server settings that protect a lab's deployment are pinned in .streamlit/config.toml, not
left to Streamlit's defaults (security issue #22)."""

from __future__ import annotations

import tomllib

from helpers import REPO


def test_xsrf_and_cors_protection_are_pinned_on():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    server = config["server"]
    assert server.get("enableXsrfProtection") is True
    assert server.get("enableCORS") is True
