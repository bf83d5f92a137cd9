"""Run one server process for a block: started, awaited on its port, stopped."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from durable_installs.servers.ports import wait_for_port


@contextmanager
def running(
    command: list[str], port: int, *, log: Path | None = None, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait until ``port`` accepts connections, SIGTERM it afterwards.

    Output goes to ``log`` (or nowhere); a server that does not stop within 10 s is killed.
    """
    out = None if log is None else log.open("wb")
    proc = subprocess.Popen(
        command,
        stdout=out or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        wait_for_port(port, timeout, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not None:
            out.close()
