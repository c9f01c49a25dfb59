#!/usr/bin/env bash
# CI's test command: the whole suite, slow and browser tests included (-m "" lifts the default
# "not slow and not browser" of pyproject.toml), the slowest tests listed at the end.
# Two worker processes (pytest-xdist): one process keeps only about one of the 2 cores busy, as
# most of a test's time is single-threaded Python (tracing, building, compiling). Whole files go
# to one worker (--dist loadfile) so each file's module fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -m "" -n 2 --dist loadfile --durations=25 "$@"
