#!/usr/bin/env bash
# make run: create/reuse .venv like the test command, then run the embedded stack in the
# foreground (Temporal dev server + web UI, nats-server, two node agents, the worker).
# Extra arguments go to backend-devstack, e.g. scripts/run.sh --ui-port 9233
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh
ensure_venv dev
exec .venv/bin/backend-devstack "$@"
