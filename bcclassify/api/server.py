"""The FastAPI application: classify cells, manage cases and fetch their reports, over HTTP.

Every endpoint but ``/health`` (and the OpenAPI pages) needs ``Authorization: Bearer <token>``,
a token made with ``python -m bcclassify api-tokens add CLIENT``. The token is checked before the
request body is read, and the body is capped as a whole before it is parsed, so an anonymous or
oversized request costs nothing. Errors are JSON: ``{"error": ..., "file": ..., "accepted": ...}``
with 401 (no or unknown token), 404 (no such case), 413 (too large or too many files), 415 (not a
supported image), 422 (an image or field that cannot be used).

Cases (``review.cases``) are created with ``created_by = "api:<client>"``; an API client can add
cells to a case and read its reports but cannot sign one off (there is no endpoint for it).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

import bcclassify
from bcclassify.access.tokens import TOKENS_NAME, client_for_token
from bcclassify.api import DEFAULT_HOST, DEFAULT_PORT
from bcclassify.api.cells import Upload, classify_cells
from bcclassify.data.imaging import ACCEPTED, DecoderBusyError
from bcclassify.review.reviews import LOG_NAME, ReviewLogUnavailable, default_data_dir
from bcclassify.serving.uploads import MAX_FILES_ENV, UploadLimits
from bcclassify.storage.store import sha256_file

__all__ = [
    "CASES_NAME",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_REQUEST_ENV",
    "ApiError",
    "create_app",
    "max_request_bytes",
]

log = logging.getLogger(__name__)

MAX_REQUEST_ENV = "BCCLASSIFY_API_MAX_REQUEST_MB"
DEFAULT_MAX_REQUEST_MB = 256  # a whole request; each file is also held to the app's per-file cap
CASES_NAME = LOG_NAME  # cases live in the review log's file (review.cases)
PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class ApiError(Exception):
    """A refusal answered as JSON with its HTTP status."""

    def __init__(self, status: int, message: str, file: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.file, self.extra = status, message, file, extra

    def response(self) -> JSONResponse:
        body = {"error": self.message, **({"file": self.file} if self.file else {}), **self.extra}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def max_request_bytes(environ: dict | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        megabytes = int(env.get(MAX_REQUEST_ENV, "") or DEFAULT_MAX_REQUEST_MB)
    except ValueError:
        megabytes = DEFAULT_MAX_REQUEST_MB
    return max(1, megabytes) * 2**20


class _TooLarge(Exception):
    pass


class Gate:
    """ASGI middleware: the token and the body size are checked before FastAPI reads the body.

    A request without a valid token (to anything but the public paths) is answered 401 at once;
    a body over ``max_bytes`` (by Content-Length, or counted as it streams in) 413.
    """

    def __init__(self, app, tokens: Path, max_bytes: int) -> None:
        self.app, self.tokens, self.max_bytes = app, tokens, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["path"] not in PUBLIC_PATHS and _client(self.tokens, headers) is None:
            await ApiError(401, UNAUTHORISED).response()(scope, receive, send)
            return
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        received, exceeded, started = 0, False, False

        async def counted() -> dict:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def watched(message: dict) -> None:
            # Once over the cap, whatever the app answers (FastAPI turns the interrupted body
            # into a 400) is replaced by one 413.
            nonlocal started
            if message["type"] == "http.response.start":
                if started:
                    return
                started = True
                if exceeded:
                    await self._too_large()(scope, receive, send)
                    return
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._too_large()(scope, receive, send)

    def _too_large(self) -> JSONResponse:
        return ApiError(
            413,
            f"the request is over this server's limit of {self.max_bytes / 2**20:g} MB "
            f"(set by {MAX_REQUEST_ENV}); send fewer files per request",
        ).response()


UNAUTHORISED = (
    "a bearer token is needed (Authorization: Bearer <token>); a lab admin makes one with "
    "`python -m bcclassify api-tokens add CLIENT`"
)


def _client(tokens: Path, headers: dict[bytes, bytes]) -> str | None:
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return client_for_token(tokens, token.strip())


_bearer = HTTPBearer(auto_error=False, description="a token from `api-tokens add CLIENT`")


def _api_client(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The calling client's name (the gate has checked the token; this also declares the
    bearer scheme in the OpenAPI document)."""
    token = credentials.credentials if credentials else None
    name = client_for_token(request.app.state.tokens, token)
    if name is None:  # revoked between the gate and here
        raise ApiError(401, UNAUTHORISED)
    return name


Client = Annotated[str, Depends(_api_client)]


class NewCase(BaseModel):
    accession: str = Field(min_length=1, max_length=64, description="the sample's accession")
    wbc_count: float | None = Field(
        default=None, ge=0, description="white cell count (10^9/L), if known"
    )


def create_app(
    classifier,
    data_dir: Path | None = None,
    limits: UploadLimits | None = None,
    max_bytes: int | None = None,
) -> FastAPI:
    """The API serving ``classifier`` (a loaded ``ClassifierModel``; None answers 503 where a
    model is needed), with tokens and cases in ``data_dir`` (default: the app's data directory)."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    limits = limits or UploadLimits.from_env()
    tokens = folder / TOKENS_NAME
    card_sha256 = sha256_file(classifier.folder / "card.json") if classifier is not None else ""
    app = FastAPI(
        title="bcclassify API",
        version=bcclassify.__version__,
        description="Classify white blood cell crops (PBC classes) as `python -m bcclassify "
        "predict` does, and read case reports. Research software, not a medical device: every "
        "answer is a suggestion for a qualified reviewer.",
    )
    app.state.tokens = tokens
    app.add_middleware(Gate, tokens=tokens, max_bytes=max_bytes or max_request_bytes())

    def model():
        if classifier is None:
            raise ApiError(503, "no model is loaded on this server")
        return classifier

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(DecoderBusyError)
    async def decoder_busy(_: Request, exc: DecoderBusyError) -> JSONResponse:
        response = ApiError(503, f"the server is busy decoding other images: {exc}").response()
        response.headers["Retry-After"] = "10"
        return response

    @app.exception_handler(ReviewLogUnavailable)
    async def log_unavailable(_: Request, exc: ReviewLogUnavailable) -> JSONResponse:
        return ApiError(503, f"the case store is unavailable: {exc}").response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return ApiError(422, f"the request is not valid: {problems}").response()

    def uploads(files: list[UploadFile]) -> list[Upload]:
        if len(files) > limits.max_files:
            raise ApiError(
                413,
                f"{len(files)} files is over this server's limit of {limits.max_files} per "
                f"request (set by {MAX_FILES_ENV}); send them in several requests",
            )
        return [
            Upload(f.filename or f"file {n}", f.size or 0, f.file.read)
            for n, f in enumerate(files, start=1)
        ]

    @app.get("/health", summary="liveness: no token needed")
    def health() -> dict:
        return {"status": "ok", "model_loaded": classifier is not None}

    @app.get("/model", summary="the served model: name, card sha256, classes, version")
    def model_info(_: Client) -> dict:
        served = model()
        second = served.second_opinion.model.name if served.second_opinion else None
        return {
            "name": served.name,
            "card_sha256": card_sha256,
            "classes": list(served.class_names),
            "version": bcclassify.__version__,
            "architecture": served.architecture,
            "training_run": served.card.get("training_run"),
            "exported": served.card.get("exported"),
            "low_confidence_threshold": served.threshold,
            # an answer of a class with a confidence floor is flagged under its stricter one
            "class_thresholds": dict(
                zip(served.class_names, map(float, served.class_thresholds), strict=True)
            ),
            "second_opinion": second,
            # an answer of ``checked`` whose greyscale view gives ``rival`` >= min_rival is
            # disputed (colour_check.py); None without one
            "colour_check": asdict(served.colour_check) if served.colour_check else None,
            # an unidentified cell's label and probabilities are a guess, re-weighted by these
            # (prior share / training share, blood_prior.py); None without them
            "unidentified_prior_weights": dict(
                zip(served.class_names, map(float, served.unidentified_prior.weights), strict=True)
            )
            if served.unidentified_prior
            else None,
            # ... for cells outside the acquisition range and those whose novelty score is
            # above this (None: the range's alone)
            "unidentified_prior_beyond_novelty": served.unidentified_prior.beyond_novelty
            if served.unidentified_prior
            else None,
            # ... and from this score up to that one, a share of it rising with the score
            "unidentified_prior_fade_from_novelty": served.unidentified_prior.fade_from_novelty
            if served.unidentified_prior
            else None,
            # ... its probabilities first mixed with the second opinion's, this share of the
            # weight on the second opinion (0: the model's own)
            "unidentified_prior_second_opinion_share": (
                prior.second_opinion_share if (prior := served.unidentified_prior) else None
            ),
            "limits": {
                "max_files": limits.max_files,
                "max_bytes_per_file": limits.max_bytes,
                "max_pixels": limits.max_pixels,
                "accepted": ACCEPTED,
            },
        }

    @app.post("/classify", summary="classify one image (multipart field `file`)")
    def classify_one(_: Client, file: Annotated[UploadFile, File()]) -> JSONResponse:
        items = uploads([file])
        row = classify_cells(model(), items, limits)[0]
        return JSONResponse(row, status_code=row["status"])

    @app.post("/classify/batch", summary="classify images (multipart field `files`, repeated)")
    def classify_batch(_: Client, files: Annotated[list[UploadFile], File()]) -> dict:
        items = uploads(files)  # refused for their number before the model is asked
        served = model()
        rows = classify_cells(served, items, limits)
        return {"model": served.name, "model_card_sha256": card_sha256, "results": rows}

    def case_store():
        try:
            from bcclassify.review import cases
        except ImportError:
            raise ApiError(501, "cases are not available in this installation") from None
        return cases, cases.CaseStore(folder / CASES_NAME)

    def existing(case_id: str):
        cases, store = case_store()
        try:
            store.get(case_id)
        except cases.CaseNotFound as exc:
            raise ApiError(404, str(exc)) from None
        return cases, store

    def report(case_id: str, build: Callable[[Any, Any, str], Any], media: str) -> Response:
        cases, store = existing(case_id)
        try:
            body = build(cases, store, case_id)
        except cases.CaseError as exc:
            raise ApiError(422, str(exc)) from None
        if isinstance(body, bytes):
            return Response(body, media_type=media)
        return Response(json.dumps(body), media_type=media)

    @app.post("/cases", status_code=201, summary="create a case (accession, optional WBC count)")
    def create_case(who: Client, new: NewCase) -> dict:
        cases, store = case_store()
        try:
            case = store.create(new.accession, new.wbc_count, created_by=f"api:{who}")
        except cases.CaseError as exc:
            raise ApiError(422, str(exc)) from None
        return asdict(case)

    @app.get("/cases/{case_id}", summary="one case")
    def get_case(_: Client, case_id: str) -> dict:
        cases, store = existing(case_id)
        return asdict(store.get(case_id))

    @app.post("/cases/{case_id}/cells", summary="classify images into a case (field `files`)")
    def add_cells(_: Client, case_id: str, files: Annotated[list[UploadFile], File()]) -> dict:
        cases, store = existing(case_id)
        items = uploads(files)
        served = model()
        rows = classify_cells(served, items, limits)
        try:
            # Refused files are answered but not added: sent again fixed, the name is free.
            classified = [r for r in rows if r["status"] == 200]
            store.add_cells(case_id, classified, card_sha256, model=served.name)
        except cases.CaseError as exc:
            raise ApiError(422, str(exc)) from None
        return {"case_id": case_id, "model": served.name, "results": rows}

    @app.get("/cases/{case_id}/report", summary="the case report (JSON)")
    def case_report(_: Client, case_id: str) -> Response:
        return report(case_id, lambda c, s, i: c.report_json(s, i), "application/json")

    @app.get("/cases/{case_id}/report.fhir.json", summary="the case report as a FHIR Bundle")
    def case_report_fhir(_: Client, case_id: str) -> Response:
        return report(case_id, lambda c, s, i: c.report_fhir(s, i), "application/fhir+json")

    @app.get("/cases/{case_id}/report.pdf", summary="the case report (PDF)")
    def case_report_pdf(_: Client, case_id: str) -> Response:
        return report(case_id, lambda c, s, i: c.report_pdf(s, i), "application/pdf")

    return app
