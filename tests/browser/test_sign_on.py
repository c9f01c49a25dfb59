"""Single sign-on end to end: ``streamlit run`` with an ``[auth]`` section, a small OpenID Connect
provider on a local port, headless Chromium clicking "Log in".

It checks what the README's set-up needs: that ``st.login`` works with the pinned packages
(Authlib: the provider's metadata is fetched, the browser is sent to it, the code is exchanged
and the ID token checked), and that only a verified address on ``[bcclassify.sso_users]`` comes
in, with its role, while anyone else the provider vouches for is refused.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS

from bcclassify.cli.app_server import free_port, served_app

pytestmark = pytest.mark.browser

CLIENT_ID = "bcclassify"


class Provider:
    """The provider's side: metadata, authorize (straight back with a code), token, keys."""

    def __init__(self) -> None:
        from joserfc.jwk import RSAKey

        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
        self.email = ""
        self.nonce = ""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def id_token(self) -> str:
        from joserfc import jwt

        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": f"sub-{self.email}",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 600,
            "nonce": self.nonce,
            "email": self.email,
            "email_verified": True,
        }
        return jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    self._json(
                        {
                            "issuer": provider.url,
                            "authorization_endpoint": f"{provider.url}/authorize",
                            "token_endpoint": f"{provider.url}/token",
                            "jwks_uri": f"{provider.url}/jwks",
                            "response_types_supported": ["code"],
                            "subject_types_supported": ["public"],
                            "id_token_signing_alg_values_supported": ["RS256"],
                        }
                    )
                elif url.path == "/jwks":
                    self._json({"keys": [provider.key.as_dict(private=False)]})
                elif url.path == "/authorize":  # the user "signs in" at once
                    assert query["client_id"] == CLIENT_ID and "openid" in query["scope"]
                    provider.nonce = query.get("nonce", "")
                    back = urllib.parse.urlencode({"code": "a-code", "state": query["state"]})
                    self.send_response(302)
                    self.send_header("Location", f"{query['redirect_uri']}?{back}")
                    self.end_headers()
                else:
                    self.send_error(404)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/token":
                    self.send_error(404)
                    return
                self._json(
                    {
                        "access_token": "an-access-token",
                        "token_type": "Bearer",
                        "expires_in": 600,
                        "id_token": provider.id_token(),
                    }
                )

            def log_message(self, *args) -> None:  # keep the test output quiet
                return None

        return Handler


@pytest.fixture()
def provider():
    served = Provider()
    yield served
    served.server.shutdown()


@pytest.fixture()
def signed_on_app(provider, tmp_path):
    """The app with an [auth] section for ``provider`` and a one-address allow-list."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        f"""
[auth]
redirect_uri = "{url}/oauth2callback"
cookie_secret = "{"c" * 40}"
client_id = "{CLIENT_ID}"
client_secret = "a-client-secret"
server_metadata_url = "{provider.url}/.well-known/openid-configuration"

[bcclassify.sso_users]
"ana.lima@lab.example.org" = "admin"
"""
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "BCCLASSIFY_STORE": str(tmp_path / "store"),  # no model: the log-in is what is tested
        "BCCLASSIFY_DATA_DIR": str(tmp_path / "data"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    log = tmp_path / "streamlit.log"
    try:
        flags = ["--secrets.files", str(secrets)]
        with served_app(env, log, "streamlit", flags, 90, port):
            yield url
    finally:
        print(log.read_text()[-3000:])


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium not installed")
def test_sign_on_lets_in_only_the_listed_address_with_its_role(provider, signed_on_app):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for email, expected in (
                ("ana.lima@lab.example.org", "Logged in as ana.lima@lab.example.org (admin)"),
                ("someone@elsewhere.example.com", "not on this lab's list"),
            ):
                provider.email = email
                page = browser.new_context().new_page()  # a new visitor, no cookies
                page.goto(signed_on_app)
                sidebar = page.get_by_test_id("stSidebar")
                sidebar.get_by_role("button", name="Log in").click()
                sidebar.get_by_text(expected).wait_for(timeout=60_000)
                if "not on" in expected:
                    assert sidebar.get_by_text("Signed on, but not let in").is_visible()
                    assert not sidebar.get_by_text("Logged in as").count()
                page.context.close()
        finally:
            browser.close()
