"""``make run`` with the project's telemetry settings in the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from durable_installs.servers import free_port
from tests.devstack.conftest import ROOT


def test_the_stack_starts_with_otel_console_exporter_set(tmp_path: object) -> None:
    """The Temporal dev server reads OTEL_* too and refuses ``console``; it must not see it."""
    ports = [str(free_port()) for _ in range(5)]
    command = [
        sys.executable,
        "-m",
        "durable_installs.devstack",
        "--no-sample",
        "--state-dir",
        f"{tmp_path}/state",
        "--temporal-port",
        ports[0],
        "--ui-port",
        ports[1],
        "--nats-port",
        ports[2],
        "--artifact-port",
        ports[3],
        "--backend-port-base",
        ports[4],
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "console", "PYTHONUNBUFFERED": "1"},
    )
    printed: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            printed.append(line)
            if "Ctrl-C stops everything" in line or "error:" in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(printed)
    assert "Stack is up." in text, text
    assert "bin/backendctl list" in text
