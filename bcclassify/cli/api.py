"""``serve-api`` (the HTTP API for analysers and LIS) and ``api-tokens`` (its clients' tokens)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from bcclassify.api import DEFAULT_HOST, DEFAULT_PORT
from bcclassify.cli.common import EXIT_OK, SubParsers, UsageError, load_classifier

__all__ = ["add_api_tokens", "add_serve_api", "run_api_tokens", "run_serve_api"]


def add_serve_api(sub: SubParsers) -> None:
    p = sub.add_parser(
        "serve-api",
        help="serve the HTTP API (classify, cases, reports) for analysers and LIS",
        description="Serve the HTTP API with uvicorn until Ctrl-C. Every endpoint but /health "
        "needs a bearer token (`api-tokens add CLIENT`); OpenAPI docs at /docs. Listens on "
        "loopback by default: serve a lab through a TLS reverse proxy. The model is loaded and "
        "checked before the server starts (a damaged model: exit 2).",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--model", help="installed model name (default: the default model)")


def add_api_tokens(sub: SubParsers) -> None:
    p = sub.add_parser(
        "api-tokens",
        help="bearer tokens of the HTTP API's clients (add, list, revoke)",
        description="One token per client (an analyser, a LIS). Only each token's sha256 is "
        "kept, in api-tokens.json (mode 0600) in the data directory ($BCCLASSIFY_DATA_DIR, "
        "default ~/.bcclassify); a revoked token is refused at the next request.",
    )
    actions = p.add_subparsers(dest="tokens_command", required=True)
    add = actions.add_parser("add", help="make a token for CLIENT and print it (only this once)")
    add.add_argument("client")
    actions.add_parser("list", help="clients and when their token was made")
    revoke = actions.add_parser("revoke", help="refuse CLIENT's token from now on")
    revoke.add_argument("client")


def run_api_tokens(args: argparse.Namespace) -> int:
    from bcclassify.access.accounts import streamlit_secrets
    from bcclassify.access.tokens import (
        TokenError,
        add_token,
        list_clients,
        revoke_token,
        tokens_path,
    )

    path = tokens_path(streamlit_secrets())
    try:
        if args.tokens_command == "add":
            token = add_token(path, args.client)
            print(token)
            print(
                f"token for {args.client} saved (hashed) in {path}; it is shown only now: "
                "give it to the client as `Authorization: Bearer <token>`",
                file=sys.stderr,
            )
        elif args.tokens_command == "list":
            for row in list_clients(path):
                print(f"{row['client']}\t{row['created']}")
        else:
            revoke_token(path, args.client)
            print(f"revoked the token of {args.client} in {path}", file=sys.stderr)
    except TokenError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warm_up(classifier) -> None:
    """Classify one shipped example cell before listening, so that /health answering means
    ready: the first request otherwise pays for tracing the model's graph (14 s measured on the
    bundled hybrid, 2 busy cores; 0.65 s a cell after it)."""
    from bcclassify import EXAMPLES_DIR

    cell = next(iter(sorted(EXAMPLES_DIR.rglob("*.jpg"))), None)
    if cell is not None:
        classifier.classify([(cell.name, cell)])


def run_serve_api(args: argparse.Namespace) -> int:
    import uvicorn

    from bcclassify.access.accounts import streamlit_secrets
    from bcclassify.api.server import create_app
    from bcclassify.review.reviews import default_data_dir

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number (1-65535)")
    classifier = load_classifier(args.model)
    warm_up(classifier)
    data_dir = default_data_dir(streamlit_secrets())
    app = create_app(classifier, data_dir)
    if not _is_loopback(args.host):
        print(
            f"warning: listening on {args.host}, not loopback: tokens travel in clear unless a "
            "TLS reverse proxy is in front",
            file=sys.stderr,
        )
    print(
        f"serving {classifier.name} on http://{args.host}:{args.port} (docs at /docs; data in "
        f"{data_dir})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return EXIT_OK
