"""One embedded stack (``backend-devstack``) for the module, on free ports."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from durable_installs.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT_RATE = 1024 * 1024
"""1 MiB/s: the slow demo backend downloads for about 24 s, long enough to look at."""


@dataclass
class RunningStack:
    """The stack process, what it printed, and the addresses it uses."""

    proc: subprocess.Popen[str]
    state_dir: Path
    temporal_address: str
    ui_url: str
    ports: list[int]
    lines: list[str] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports[1]}"

    def printed_line(self, start: str) -> str:
        """The first printed line that begins with ``start`` (after indentation)."""
        for line in self.lines:
            if line.strip().startswith(start):
                return line.strip()
        raise AssertionError(f"no line starting {start!r} in:\n{self.printed()}")

    def printed(self) -> str:
        return "\n".join(self.lines)

    def sample_workflow_id(self) -> str:
        match = re.search(r"^Sample install started: (\S+)$", self.printed(), re.MULTILINE)
        assert match, self.printed()
        return match.group(1)

    def printed_command(self, verb: str) -> list[str]:
        """The ``temporal workflow <verb> ...`` line the stack printed, split as a shell would."""
        for line in self.lines:
            words = shlex.split(line)
            if len(words) > 2 and words[1:3] == ["workflow", verb]:
                return words
        raise AssertionError(f"no 'temporal workflow {verb}' line in:\n{self.printed()}")

    def leftover_processes(self) -> list[str]:
        """Command lines of live processes that belong to this stack."""
        markers = [str(self.state_dir)] + [f" {port}" for port in self.ports]
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if not _is_pytest(cmdline) and any(marker in cmdline for marker in markers):
                found.append(cmdline)
        return found


def _is_pytest(cmdline: str) -> bool:
    """A test runner process (its paths, under pytest's tmp directory, contain "pytest")."""
    head = cmdline.split(" ")[:3]
    return any(Path(word).name in ("pytest", "py.test") for word in head) or "-m pytest" in (
        " ".join(head)
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """``backend-devstack`` in the foreground of a subprocess, as a newcomer runs it."""
    state_dir = tmp_path_factory.mktemp("stack") / "state"
    temporal, ui, nats, artifacts, backends, registry = (free_port() for _ in range(6))
    command = [
        sys.executable,
        "-m",
        "durable_installs.devstack",
        "--state-dir",
        str(state_dir),
        "--temporal-port",
        str(temporal),
        "--ui-port",
        str(ui),
        "--nats-port",
        str(nats),
        "--artifact-port",
        str(artifacts),
        "--backend-port-base",
        str(backends),
        "--registry-port",
        str(registry),
        "--artifact-rate",
        str(ARTIFACT_RATE),
        "--nodes",
        "3",
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    running = RunningStack(
        proc, state_dir, f"localhost:{temporal}", f"http://localhost:{ui}", [temporal, nats]
    )
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            running.lines.append(line.rstrip("\n"))
            if "Ctrl-C stops everything" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 180
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the stack did not come up:\n{running.printed()}")
    yield running
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
