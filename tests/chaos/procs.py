"""Processes as the kernel sees them: found through ``/proc``, never by parsing ``ps``.

The chaos tests count backend processes after an install to prove that a killed agent left
no orphan behind and that no slot is served twice. A backend's ``run.sh`` changes into its
backend directory and execs the server, so every backend process of a test has its working
directory under that test's backends directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LiveProcess:
    """A running (not zombie) process: its pid, working directory and command line."""

    pid: int
    cwd: Path
    argv: tuple[str, ...]

    def option(self, name: str) -> str | None:
        """The value after ``name`` in the command line (``--addr 127.0.0.1:50100``)."""
        for flag, value in zip(self.argv, self.argv[1:], strict=False):
            if flag == name:
                return value
        return None


def _is_zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The state follows the command name in parentheses, which may itself hold spaces.
    return stat[stat.rindex(")") + 2] in "ZX"


def live_processes() -> list[LiveProcess]:
    """Every live process of this user whose working directory can be read."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if _is_zombie(pid):
                continue
            cwd = Path(os.readlink(entry / "cwd"))
            raw = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
        argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        found.append(LiveProcess(pid, cwd, argv))
    return found


def processes_under(root: Path) -> list[LiveProcess]:
    """Live processes whose working directory is ``root`` or below it."""
    root = root.resolve()
    return [p for p in live_processes() if p.cwd == root or root in p.cwd.parents]


def kill_processes_under(root: Path) -> None:
    """SIGKILL what still runs below ``root`` (backends a killed agent left behind)."""
    for process in processes_under(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` exited but its parent has not reaped it yet."""
    try:
        return _is_zombie(pid)
    except (OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live, non-zombie process."""
    try:
        return not _is_zombie(pid)
    except (OSError, ValueError):
        return False
