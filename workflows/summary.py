"""Text a person reads: the UI's current details and one-line progress descriptions.

Pure functions of the status model, so the workflow, the CLI and tests render the same words.
"""

from __future__ import annotations

from contracts.install import InstallStatus
from protocol.messages import BackendInstallProgressEvent


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


def details_markdown(status: InstallStatus) -> str:
    """The workflow's current details: what is happening, at a glance."""
    lines = [
        f"**{status.phase.value.replace('_', ' ')}** · `{status.backend}` on node "
        f"`{status.node_id}` · slot `{status.slot}`",
        "",
        f"- requests sent: {status.attempts} · probes: {status.probes} · "
        f"transient failures: {status.failed_attempts}",
    ]
    progress = describe_progress(status.last_progress)
    if progress:
        lines.append(f"- progress: {progress} · events: {status.progress_events}")
        if status.last_progress and status.last_progress.file_name:
            lines.append(f"- file: `{status.last_progress.file_name}`")
    if status.last_probe is not None:
        lines.append(f"- last probe: {status.last_probe.summary()}")
    if status.address:
        lines.append(f"- address: `{status.address}`")
    if status.last_error:
        lines.append(f"- last error: {status.last_error}")
    lines.append(f"- op id: `{status.op_id}`")
    return "\n".join(lines)
