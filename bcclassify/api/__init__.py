"""The HTTP API for analysers and laboratory information systems (FastAPI, served by uvicorn).

``cells`` classifies uploads within the app's bounds and answers each cell as ``predict --format
json`` does; ``server`` is the FastAPI application (bearer tokens from ``access.tokens``, case
reports through ``review.cases``). Started with ``python -m bcclassify serve-api``.
"""

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "cells", "server"]

DEFAULT_HOST = "127.0.0.1"  # loopback: serve a lab through a TLS reverse proxy
DEFAULT_PORT = 8600
