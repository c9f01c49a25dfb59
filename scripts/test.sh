#!/usr/bin/env bash
# The test command of the README: the whole suite, on whatever Python is first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q "$@"
