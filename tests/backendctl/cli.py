"""Running ``backendctl`` as a user does: a subprocess, or a pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import pexpect

from tests.workflow_helpers import FAST

if TYPE_CHECKING:
    Child: TypeAlias = pexpect.spawn[str]
    """A backendctl process in a pseudo-terminal, read as text."""
else:
    Child = pexpect.spawn

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "backendctl"
"""The console script ``pip install`` put beside the interpreter, run as a user runs it."""
PROG = str(SCRIPT.relative_to(ROOT)) if SCRIPT.is_relative_to(ROOT) else str(SCRIPT)
"""How the script names itself when run from the checkout: ``.venv/bin/backendctl``."""


def run_ctl(
    *args: str,
    address: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run backendctl to the end; stdout, stderr and the exit code as the user sees them.

    From the checkout by default, as a newcomer runs it; ``cwd`` elsewhere runs it by path.
    """
    command = [PROG if cwd == ROOT else str(SCRIPT)]
    if address:
        command += ["--address", address]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


FAST_OPTIONS = [arg for key, value in FAST.items() for arg in ("--option", f"{key}={value}")]
"""The install input fields that make a test install quick, as ``--option`` flags."""


async def ctl(
    *args: str, address: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`run_ctl` in a thread, so the test's own event loop (a scripted node) runs on."""
    return await asyncio.to_thread(run_ctl, *args, address=address, env=env)


def spawn_ctl(*args: str, address: str) -> Child:
    """backendctl in a pseudo-terminal (a live view, Ctrl-C); the caller closes it."""
    return pexpect.spawn(
        PROG,
        ["--address", address, *args],
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=90,
        dimensions=(40, 250),
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "250"},
    )


def one_error_line(stderr: str) -> str:
    """The single line a user error prints; fails when there is more (a traceback)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), stderr
    return lines[0]
