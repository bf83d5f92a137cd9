"""How an install looks in a terminal: a pure function of the workflow's ``progress`` query."""

from __future__ import annotations

from contracts.install import InstallBackendResult, InstallPhase, InstallStatus
from protocol.messages import parse_size

BAR_WIDTH = 24


def progress_bar(percentage: float, width: int = BAR_WIDTH) -> str:
    """``[#########...............]``; the node's percentage is clamped to 0..100."""
    filled = round(max(0.0, min(percentage, 100.0)) / 100 * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_line(status: InstallStatus) -> str:
    """One line: phase, bar, bytes, percentage, requests, probes and the last probe."""
    event = status.last_progress
    parts = [f"{status.slot} on {status.node_id}", status.phase.value.replace("_", " ")]
    if event is not None:
        parts.append(event.phase or "progress")
        parts.append(f"{progress_bar(event.percentage)} {event.percentage:5.1f}%")
        if event.current:
            done = event.current if not event.total else f"{event.current} / {event.total}"
            parts.append(done)
    parts.append(f"requests {status.attempts}")
    parts.append(f"probes {status.probes}")
    if status.last_probe is not None:
        parts.append(f"last probe {status.last_probe.state.value}")
    if status.phase in (InstallPhase.BACKING_OFF, InstallPhase.STILL_INSTALLING) and (
        status.last_error
    ):
        parts.append(status.last_error[:80])
    return " · ".join(parts)


def success_line(result: InstallBackendResult) -> str:
    """The last line of a successful install: where the slot runs."""
    return (
        f"installed {result.backend} for {result.slot} on {result.node_id}: {result.address} "
        f"({result.attempts} request(s), {result.probes} probe(s), "
        f"{result.duration_seconds:.1f}s)"
    )


def bytes_done(status: InstallStatus) -> int | None:
    """Bytes transferred so far, when the node reported a parseable size."""
    event = status.last_progress
    return parse_size(event.current) if event is not None and event.current else None
