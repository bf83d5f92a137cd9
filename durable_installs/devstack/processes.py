"""Child processes of the dev stack: started in order, stopped in reverse, never orphaned.

Each child runs in its own session (so a terminal Ctrl-C reaches only the stack, which then
stops the children in order) and asks the kernel to send it SIGTERM if the stack dies, so even
a killed stack leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


def wait_for_line(log: Path, text: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Block until ``text`` appears in the child's log file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode}; see {log}")
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} did not appear in {log} after {timeout:g}s")


def die_with_parent() -> None:
    """In the child before exec: own session, and SIGTERM when the parent dies (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One running child and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    server: bool = False
    """Others use it (Temporal, NATS, the registry): it stops after them."""


def _terminate_all(children: list[Child], timeout: float) -> None:
    """SIGTERM every child at once, wait for all, SIGKILL what is left after ``timeout``."""
    for child in children:
        child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()


@dataclass
class ProcessGroup:
    """The stack's children, in start order."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        ready: Callable[[Child], None] | None = None,
        drop_env_prefixes: tuple[str, ...] = (),
        server: bool = False,
    ) -> Child:
        """Start ``command`` with output to ``<log_dir>/<name>.log`` and wait until ready.

        Inherited variables whose names start with one of ``drop_env_prefixes`` are not passed
        on (the Temporal dev server must not see the project's ``OTEL_*``).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        handle: IO[bytes] = log.open("wb")
        proc = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **{
                    key: value
                    for key, value in os.environ.items()
                    if not key.startswith(drop_env_prefixes)
                },
                **(env or {}),
            },
            preexec_fn=die_with_parent,
        )
        handle.close()
        child = Child(name, proc, log, server)
        self.children.append(child)
        if ready is not None:
            ready(child)
        return child

    def stop(self, timeout: float = 20.0, say: Callable[[str], None] = print) -> None:
        """Stop the clients first, all at once, then the servers they use, all at once.

        A child that started after another may depend on it (the worker and the agents on
        NATS and Temporal) but never the other way round, so the children started after the
        last server are stopped together, then the servers. Each group gets SIGTERM, then
        SIGKILL for whatever is left after ``timeout``. ``say`` tells what is waited for.
        """
        servers = [c for c in self.children if c.server]
        clients = [c for c in self.children if not c.server]
        for group, what in (
            (clients, "the worker (running activities may finish) and the node agents"),
            (servers, "the servers"),
        ):
            running = [c for c in group if c.proc.poll() is None]
            if running:
                say(f"stopping {what}: {', '.join(c.name for c in running)} ...")
                _terminate_all(running, timeout)
        self.children.clear()

    def exited(self) -> Child | None:
        """A child that exited on its own, if any."""
        return next((c for c in self.children if c.proc.poll() is not None), None)
