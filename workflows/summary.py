"""Text a person reads: the UI's current details and one-line progress descriptions.

Pure functions of the status model, so the workflow, the CLI and tests render the same words.
"""

from __future__ import annotations

from datetime import UTC

from durable_installs.contracts.install import InstallPhase, InstallStatus
from durable_installs.protocol.messages import BackendInstallProgressEvent


def describe_progress(event: BackendInstallProgressEvent | None) -> str:
    """``downloading 42.0% (412.3 MiB / 1.0 GiB)``, or "" without an event."""
    if event is None:
        return ""
    text = f"{event.phase or 'progress'} {event.percentage:.1f}%"
    if event.current and event.total:
        text += f" ({event.current} / {event.total})"
    elif event.current:
        text += f" ({event.current})"
    return text


def details_markdown(status: InstallStatus, workflow_id: str = "") -> str:
    """The workflow's current details: what is happening, at a glance.

    A finished install leads with where it runs (not its last progress event, which would
    read "completed · starting 100%"); a waiting one says when it tries again and how to stop.
    """
    lines = [
        f"**{status.phase.value.replace('_', ' ')}** · `{status.backend}` on node "
        f"`{status.node_id}` · slot `{status.slot}`",
        "",
    ]
    if status.phase is InstallPhase.COMPLETED and status.address:
        lines.append(f"- installed `{status.backend}` at `{status.address}`")
    lines.append(
        f"- requests sent: {status.attempts} · probes: {status.probes} · "
        f"transient failures: {status.failed_attempts}"
    )
    if status.next_attempt_at is not None:
        what = "next try" if status.phase is InstallPhase.BACKING_OFF else "next probe"
        lines.append(f"- {what}: {status.next_attempt_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    if status.phase in (InstallPhase.BACKING_OFF, InstallPhase.WAITING) and workflow_id:
        lines.append(
            f"- stop it: `backendctl cancel {workflow_id}` (or Request Cancellation above)"
        )
    progress = describe_progress(status.last_progress)
    finished = status.phase in (InstallPhase.COMPLETED, InstallPhase.FAILED, InstallPhase.CANCELLED)
    if progress and not finished:
        lines.append(f"- progress: {progress} · events: {status.progress_events}")
        if status.last_progress and status.last_progress.file_name:
            lines.append(f"- file: `{status.last_progress.file_name}`")
    if status.last_probe is not None:
        lines.append(f"- last probe: {status.last_probe.summary()}")
    if status.address and status.phase is not InstallPhase.COMPLETED:
        lines.append(f"- address: `{status.address}`")
    if status.last_error:
        lines.append(f"- last error: {status.last_error}")
    lines.append(f"- op id: `{status.op_id}`")
    return "\n".join(lines)
