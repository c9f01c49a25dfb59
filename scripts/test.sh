#!/usr/bin/env bash
# CI's test command: the whole suite, slow and browser tests included (-m "" lifts the default
# "not slow and not browser" of pyproject.toml), the slowest tests listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -m "" --durations=25 "$@"
