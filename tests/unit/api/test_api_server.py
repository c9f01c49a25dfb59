"""The HTTP API end to end: ``python -m bcclassify serve-api`` in a subprocess on a free port,
called with a real HTTP client (httpx), on the tiny store's ``tiny-cnn``.

Slow: the server loads TensorFlow and the model before it answers (the tiny store is built first).
The server runs with small caps (1 MB per file, 6 files, 3 MB per request) so the refusals can be
reached with small files.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from helpers import ACCEPTED, FIXTURE_IMAGES, REFUSED, REPO, huge_png_header
from PIL import Image

from bcclassify import CLASS_NAMES
from bcclassify.access import tokens
from bcclassify.cli.app_server import free_port, stop_process
from bcclassify.serving.classifier import prediction_json
from bcclassify.storage.store import sha256_bytes, sha256_file

pytestmark = pytest.mark.slow

MODEL = "tiny-cnn"
CELLS = sorted(FIXTURE_IMAGES.rglob("*.jpg"))[:3]
HAS_CASES = importlib.util.find_spec("bcclassify.review.cases") is not None


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    """(base url, token, data dir) of a running server; stopped after the module."""
    data_dir = tmp_path_factory.mktemp("api-data")
    token = tokens.add_token(data_dir / tokens.TOKENS_NAME, "lis")
    port = free_port()
    env = {
        **os.environ,
        "BCCLASSIFY_STORE": str(tiny_store),
        "BCCLASSIFY_DATA_DIR": str(data_dir),
        "BCCLASSIFY_MAX_FILE_MB": "1",
        "BCCLASSIFY_MAX_FILES": "6",
        "BCCLASSIFY_API_MAX_REQUEST_MB": "3",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    log = data_dir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bcclassify",
                "serve-api",
                "--port",
                str(port),
                "--model",
                MODEL,
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start: " + log.read_text()[-3000:]
            time.sleep(0.5)
        yield url, token, data_dir
    finally:
        stop_process(process, 30)


@pytest.fixture(scope="module")
def client(server):
    url, token, _ = server
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as http:
        yield http


def test_health_needs_no_token_and_model_info_names_the_served_card(server, client, tiny_store):
    url, _, _ = server
    assert httpx.get(f"{url}/health").json()["model_loaded"] is True
    assert httpx.get(f"{url}/model").status_code == 401
    info = client.get("/model").json()
    assert info["name"] == MODEL
    assert info["card_sha256"] == sha256_file(tiny_store / "models" / MODEL / "card.json")
    assert info["classes"] == list(CLASS_NAMES)
    assert info["version"] and info["limits"]["max_files"] == 6
    assert info["limits"]["max_bytes_per_file"] == 2**20
    from bcclassify.serving.classifier import load_model

    thresholds = load_model(MODEL).class_thresholds
    assert info["class_thresholds"] == dict(zip(CLASS_NAMES, thresholds.tolist(), strict=True))
    assert min(info["class_thresholds"].values()) >= info["low_confidence_threshold"]
    assert info["colour_check"] is None  # the tiny model's card has none
    assert info["unidentified_prior_weights"] is None  # nor a prior for unidentified guesses
    assert info["unidentified_prior_beyond_novelty"] is None
    assert info["unidentified_prior_fade_from_novelty"] is None
    assert info["unidentified_prior_second_opinion_share"] is None


def test_one_image_is_answered_exactly_as_predict_answers_it(client):
    from bcclassify.serving.classifier import load_model

    data = CELLS[0].read_bytes()
    response = client.post("/classify", files={"file": (CELLS[0].name, data, "image/jpeg")})
    assert response.status_code == 200, response.text
    row = response.json()
    model = load_model(MODEL)
    expected = prediction_json(model.classify([(CELLS[0].name, data)])[0], model.class_names)
    assert {k: row[k] for k in expected if k != "probabilities"} == {
        k: v for k, v in expected.items() if k != "probabilities"
    } | {"confidence": pytest.approx(expected["confidence"], abs=1e-6)}
    assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    assert row["image_sha256"] == sha256_bytes(data) and row["status"] == 200


def _oversized_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()  # ~1.5 MB: over the server's 1 MB per file, under 3 MB a request


def test_a_batch_answers_every_file_in_order_and_bad_files_get_their_own_error(client):
    good = [(p.name, p.read_bytes()) for p in CELLS[:2]]
    bad = {
        "drawing.svg": (REFUSED["svg"][0], 415, "SVG"),
        "empty.png": (b"", 422, "empty"),
        "bomb.png": (REFUSED["bomb"][0], 413, "decompression bomb"),
        "field.png": (huge_png_header(6000, 6000), 413, "limit of 25 million pixels"),
        "big.png": (_oversized_png(), 413, "over this app's limit of 1 MB per image"),
    }
    assert len(bad["big.png"][0]) > 2**20
    sent = [good[0], *((name, data) for name, (data, _, _) in bad.items())]
    response = client.post(
        "/classify/batch", files=[("files", (n, d, "application/octet-stream")) for n, d in sent]
    )
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model"] == MODEL
    rows = payload["results"]
    assert [r["path"] for r in rows] == [n for n, _ in sent]
    assert rows[0]["status"] == 200 and rows[0]["label"] in CLASS_NAMES and not rows[0]["error"]
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0)
    for row, (name, (_, status, reason)) in zip(rows[1:], bad.items()):
        assert row["status"] == status, row
        assert row["flag"] == "error" and row["label"] is None and row["probabilities"] is None
        assert row["error"].startswith(f"{name}: ") and reason in row["error"]
        assert "accepted: raster images" in row["accepted"]
    # The same good cell alone gives the same answer as inside a batch with refusals.
    alone = client.post("/classify", files={"file": (good[0][0], good[0][1], "image/jpeg")})
    assert alone.json()["probabilities"] == pytest.approx(rows[0]["probabilities"], abs=1e-6)


@pytest.mark.parametrize(
    "name, data, status",
    [("notes.pdf", REFUSED["pdf"][0], 415), ("tiny.png", REFUSED["tiny"][0], 422)],
)
def test_one_refused_image_is_its_status_with_a_json_error(client, name, data, status):
    response = client.post("/classify", files={"file": (name, data, "application/pdf")})
    assert response.status_code == status
    body = response.json()
    assert body["error"].startswith(f"{name}: ") and body["flag"] == "error"


def test_batch_and_request_caps_and_every_accepted_format(client):
    many = [("files", (f"c{i}.png", ACCEPTED["png"](), "image/png")) for i in range(7)]
    response = client.post("/classify/batch", files=many)
    assert response.status_code == 413 and "limit of 6" in response.json()["error"]
    blobs = [("files", (f"b{i}.png", _oversized_png(), "image/png")) for i in range(3)]
    response = client.post("/classify/batch", files=blobs)
    assert response.status_code == 413 and "limit of 3 MB" in response.json()["error"]
    kinds = list(ACCEPTED)[:5]
    response = client.post(
        "/classify/batch",
        files=[("files", (k, ACCEPTED[k](), "application/octet-stream")) for k in kinds],
    )
    assert [r["status"] for r in response.json()["results"]] == [200] * len(kinds)


def test_a_token_revoked_while_serving_is_refused_at_the_next_request(server):
    url, _, data_dir = server
    path = data_dir / tokens.TOKENS_NAME
    token = tokens.add_token(path, "analyser")
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{url}/model", headers=auth).status_code == 200
    tokens.revoke_token(path, "analyser")
    response = httpx.get(f"{url}/model", headers=auth)
    assert response.status_code == 401 and "error" in response.json()


@pytest.mark.skipif(not HAS_CASES, reason="bcclassify.review.cases (branch cases) not merged")
def test_a_case_is_created_filled_and_reported_as_json_fhir_and_pdf(client):
    response = client.post("/cases", json={"accession": "A-2026-0001", "wbc_count": 7.2})
    assert response.status_code == 201, response.text
    case = response.json()
    case_id = case["case_id"]
    assert case["accession"] == "A-2026-0001" and case["status"] == "open"
    assert client.get(f"/cases/{case_id}").json()["created_by"] == "api:lis"
    again = client.post("/cases", json={"accession": "a-2026-0001"})
    assert again.status_code == 422 and case_id in again.json()["error"]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in CELLS]
    files.append(("files", ("drawing.svg", REFUSED["svg"][0], "image/svg+xml")))
    added = client.post(f"/cases/{case_id}/cells", files=files)
    assert added.status_code == 200, added.text
    assert [r["status"] for r in added.json()["results"]] == [200] * len(CELLS) + [415]
    report = client.get(f"/cases/{case_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith(
        "application/json"
    )
    assert "A-2026-0001" in report.text
    fhir = client.get(f"/cases/{case_id}/report.fhir.json")
    assert fhir.status_code == 200 and fhir.json()["resourceType"] == "DiagnosticReport"
    pdf = client.get(f"/cases/{case_id}/report.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    missing = client.get("/cases/no-such-case/report")
    assert missing.status_code == 404 and "no-such-case" in missing.json()["error"]
    assert client.post("/cases/no-such-case/cells", files=files[:1]).status_code == 404
    # A file name already in the case: nothing of the request is added (all or nothing).
    repeat = client.post(f"/cases/{case_id}/cells", files=files[:1])
    assert repeat.status_code == 422 and "already in case" in repeat.json()["error"]
