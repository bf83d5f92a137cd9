#!/usr/bin/env bash
# make run: create/reuse .venv like the test command, then run the embedded stack in the
# foreground (Temporal dev server + web UI, nats-server, two node agents, the worker).
# Extra arguments go to python -m devstack, e.g. scripts/run.sh --ui-port 9233
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
exec .venv/bin/python -m devstack "$@"
