"""Loopback ports: a free one, whether one is taken, and waiting until a server listens."""

from __future__ import annotations

import socket
import subprocess
import time


class PortInUse(RuntimeError):
    """A port a server needs is taken by another process."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def check_port_free(port: int, what: str, flag: str) -> None:
    """Fail with a message naming the port, its purpose and the flag that moves it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            raise PortInUse(
                f"port {port} ({what}) is already in use; stop whatever listens there "
                f"or choose another with {flag}"
            ) from err


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Block until ``port`` accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:g}s")
