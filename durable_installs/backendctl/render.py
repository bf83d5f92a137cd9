"""How an install looks in a terminal: pure functions of the workflow's ``progress`` query.

Every message tells the truth a user needs next: a finished install says where it runs, a
backing-off install says when it tries again and how to stop it, and no text is cut mid-word.
"""

from __future__ import annotations

from datetime import UTC, datetime

from durable_installs.contracts.install import InstallBackendResult, InstallPhase, InstallStatus
from durable_installs.contracts.load import (
    FileState,
    LoadModelResult,
    LoadPhase,
    LoadStatus,
    StageProgress,
)
from durable_installs.contracts.summaries import shorten
from durable_installs.invoked import invoked_as
from durable_installs.protocol.messages import format_size, parse_size

BAR_WIDTH = 24
ERROR_WIDTH = 80
"""Longest error text on a status line; longer ones are cut at a word with "…"."""
PROG = invoked_as("durable_installs.backendctl")
"""How the printed commands call this tool: as it was invoked (``backendctl`` on PATH)."""


def progress_bar(percentage: float, width: int = BAR_WIDTH) -> str:
    """``[#########...............]``; the node's percentage is clamped to 0..100."""
    filled = round(max(0.0, min(percentage, 100.0)) / 100 * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def clock(moment: datetime, now: datetime) -> str:
    """``19:20:05 UTC (in 30s)``: an absolute time a person can compare, and how far off."""
    seconds = max(0, round((moment - now).total_seconds()))
    if seconds < 120:
        distance = f"{seconds}s"
    elif seconds < 7200:
        distance = f"{seconds // 60}m"
    else:
        distance = f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{moment.astimezone(UTC):%H:%M:%S} UTC (in {distance})"


def status_line(status: InstallStatus, workflow_id: str = "", now: datetime | None = None) -> str:
    """One line: phase, bar, bytes, percentage, requests, probes and what happens next."""
    now = now or datetime.now(UTC)
    head = f"{status.slot} on {status.node_id}"
    if status.phase is InstallPhase.COMPLETED and status.address:
        return (
            f"{head} · installed {status.backend} at {status.address} · "
            f"requests {status.attempts} · probes {status.probes}"
        )
    parts = [head, status.phase.value.replace("_", " ")]
    event = status.last_progress
    if event is not None and status.phase not in (InstallPhase.FAILED, InstallPhase.CANCELLED):
        parts.append(event.phase or "progress")
        parts.append(f"{progress_bar(event.percentage)} {event.percentage:5.1f}%")
        if event.current:
            done = event.current if not event.total else f"{event.current} / {event.total}"
            parts.append(done)
    parts.append(f"requests {status.attempts}")
    parts.append(f"probes {status.probes}")
    if status.last_probe is not None:
        parts.append(f"last probe {status.last_probe.state.value}")
    waiting = status.phase in (InstallPhase.BACKING_OFF, InstallPhase.WAITING)
    if waiting and status.next_attempt_at is not None:
        what = "next try" if status.phase is InstallPhase.BACKING_OFF else "next probe"
        parts.append(f"{what} {clock(status.next_attempt_at, now)}")
    if status.phase in (
        InstallPhase.BACKING_OFF,
        InstallPhase.STILL_INSTALLING,
        InstallPhase.FAILED,
    ) and (status.last_error):
        parts.append(shorten(status.last_error, ERROR_WIDTH))
    if status.phase is InstallPhase.BACKING_OFF and workflow_id:
        parts.append(f"stop it: {PROG} cancel {workflow_id}")
    return " · ".join(parts)


def success_line(result: InstallBackendResult) -> str:
    """The last line of a successful install: where the slot runs."""
    return (
        f"installed {result.backend} for {result.slot} on {result.node_id} at {result.address} "
        f"({result.attempts} request(s), {result.probes} probe(s), "
        f"{result.duration_seconds:.1f}s)"
    )


def bytes_done(status: InstallStatus) -> int | None:
    """Bytes transferred so far, when the node reported a parseable size."""
    event = status.last_progress
    return parse_size(event.current) if event is not None and event.current else None


def load_line(status: LoadStatus, sending: StageProgress, workflow_id: str) -> str:
    """One line: the phase, files done, the file being sent and how far the node has it."""
    done = sum(f.state in (FileState.STAGED, FileState.PRESENT) for f in status.files)
    parts = [f"load {workflow_id}: {status.phase.value}", f"files {done}/{len(status.files)}"]
    if sending.path and status.phase is LoadPhase.STAGING:
        size = sending.size or next((f.size for f in status.files if f.path == sending.path), 0)
        have = format_size(sending.committed)
        if size:
            share = 100 * sending.committed / size
            parts.append(f"{sending.path} {have} of {format_size(size)} ({share:.0f}%)")
        else:
            parts.append(f"{sending.path} {have}")
    if status.address:
        parts.append(f"backend {status.address}")
    if status.last_error:
        parts.append(f"last error: {status.last_error[:120]}")
    return " · ".join(parts)


def loaded_line(result: LoadModelResult) -> str:
    """``loaded: <model> in <slot> at <address> (sent 1.2 GiB; installing 2.1s, ...)``."""
    seconds = ", ".join(f"{phase} {s:.1f}s" for phase, s in result.phase_seconds.items())
    how = "already loaded" if result.already_loaded else f"sent {format_size(result.bytes_sent)}"
    return f"loaded: {result.model_id} in {result.slot} at {result.address} ({how}; {seconds})"
