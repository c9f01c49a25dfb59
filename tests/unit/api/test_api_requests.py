"""The API's refusals that come before any model is asked: tokens, request size and shape.

In-process (Starlette's TestClient) and without a model (``create_app(None)``), so these run in
the everyday loop; everything that classifies is in ``test_api_server.py``, against a real
uvicorn server.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from helpers import ACCEPTED

from bcclassify.access import tokens
from bcclassify.api.server import create_app
from bcclassify.serving.uploads import UploadLimits


@pytest.fixture()
def api(tmp_path):
    token = tokens.add_token(tmp_path / tokens.TOKENS_NAME, "lis")
    app = create_app(None, tmp_path, UploadLimits(max_files=3), max_bytes=200_000)
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {token}"}, tmp_path


def _files(n: int) -> list:
    return [("files", (f"cell{i}.png", ACCEPTED["png"](), "image/png")) for i in range(n)]


def test_health_and_the_openapi_docs_need_no_token(api):
    client, _, _ = api
    assert client.get("/health").json() == {"status": "ok", "model_loaded": False}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/classify", "/classify/batch", "/model", "/cases/{case_id}/report.pdf"} <= set(paths)
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer wrong", "Basic dXNlcjpwYXNz", "bcc_notatoken"],
)
def test_every_other_endpoint_refuses_a_missing_or_wrong_token(api, header):
    client, _, _ = api
    headers = {"Authorization": header} if header else {}
    for method, path in [("get", "/model"), ("post", "/classify/batch"), ("get", "/cases/x")]:
        response = client.request(method, path, headers=headers, files=_files(1))
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "api-tokens add" in response.json()["error"]


def test_a_revoked_token_is_refused_at_the_next_request(api):
    client, auth, folder = api
    assert client.get("/model", headers=auth).status_code == 503  # past the gate: no model here
    tokens.revoke_token(folder / tokens.TOKENS_NAME, "lis")
    assert client.get("/model", headers=auth).status_code == 401


def test_too_many_files_and_too_large_requests_are_413_with_the_limit(api):
    client, auth, _ = api
    response = client.post("/classify/batch", headers=auth, files=_files(4))
    assert response.status_code == 413
    assert "4 files is over this server's limit of 3" in response.json()["error"]
    big = [("files", ("field.tif", b"\0" * 300_000, "image/tiff"))]
    response = client.post("/classify/batch", headers=auth, files=big)
    assert response.status_code == 413
    assert "over this server's limit of 0.19" in response.json()["error"]


def test_a_body_without_content_length_is_counted_as_it_streams(api):
    client, auth, _ = api

    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\n"
        for _ in range(30):
            yield b"\0" * 10_000

    response = client.post(
        "/classify/batch",
        headers={**auth, "Content-Type": "multipart/form-data; boundary=x"},
        content=chunks(),
    )
    assert response.status_code == 413, response.text
    assert "limit" in response.json()["error"]


def test_malformed_requests_are_422_naming_the_field(api):
    client, auth, _ = api
    response = client.post("/classify/batch", headers=auth, data={"other": "x"})
    assert response.status_code == 422
    assert "files" in response.json()["error"]
    response = client.post("/cases", headers=auth, json={"wbc_count": -1})
    assert response.status_code == 422
    error = response.json()["error"]
    assert "accession" in error and "wbc_count" in error


def test_serve_api_refuses_a_bad_port_before_loading_anything(capsys):
    from bcclassify.cli.main import main

    assert main(["serve-api", "--port", "70000"]) == 2
    assert "--port 70000 is not a port number" in capsys.readouterr().err


def test_a_busy_decoder_fails_the_request_not_the_file(monkeypatch):
    """Every decode slot taken: the batch is not answered with per-file refusals (nothing is
    wrong with the files); the error goes up, and the server answers 503 with Retry-After."""
    from contextlib import ExitStack

    from bcclassify.api.cells import Upload, classify_cells
    from bcclassify.data import imaging

    monkeypatch.setattr(imaging, "DECODE_WAIT_S", 0.05)
    data = ACCEPTED["png"]()
    upload = Upload(name="cell.png", size=len(data), read=lambda: data)
    with ExitStack() as held:
        for _ in range(imaging.DECODE_SLOTS):
            held.enter_context(imaging.decode_slot("held by another session"))
        with pytest.raises(imaging.DecoderBusyError):
            classify_cells(None, [upload], UploadLimits())
