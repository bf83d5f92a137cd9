"""Follow an install through its ``progress`` query until it ends."""

from __future__ import annotations

import asyncio
from typing import TextIO

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.converter import DataConverter
from temporalio.service import RPCError

from backendctl.render import status_line, success_line
from contracts.activities import InstallProgress, progress_from_details
from contracts.install import InstallStatus
from workflows.install_backend import InstallBackendWorkflow

POLL_SECONDS = 0.5


def pending_install_progress(
    description: WorkflowExecutionDescription, converter: DataConverter
) -> InstallProgress | None:
    """The install activity's latest heartbeat details, as ``describe`` shows them."""
    for pending in description.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            try:
                details = converter.payload_converter.from_payloads(
                    pending.heartbeat_details.payloads
                )
            except Exception:
                continue
            progress = progress_from_details(details)
            if progress is not None:
                return progress
    return None


def with_heartbeat(
    status: InstallStatus, description: WorkflowExecutionDescription, client: Client
) -> InstallStatus:
    """The status with the pending install's heartbeat progress, when that is newer.

    The workflow hears of progress through reports that slow down as an install ages; the
    activity heartbeat reaches the server more often. Showing the newer of the two keeps a
    long install's bar moving.
    """
    progress = pending_install_progress(description, client.data_converter)
    if (
        progress is not None
        and progress.op_id == status.op_id
        and progress.event_count > status.progress_events
        and progress.last_event is not None
    ):
        return status.model_copy(
            update={"last_progress": progress.last_event, "progress_events": progress.event_count}
        )
    return status


async def watch(
    client: Client, workflow_id: str, out: TextIO, live: bool, poll: float = POLL_SECONDS
) -> int:
    """Print progress until the install ends; 0 on success, 1 on failure.

    ``live`` redraws one line in place (a terminal); otherwise each change is a new line, which
    is what logs and tests want.
    """
    handle = client.get_workflow_handle_for(InstallBackendWorkflow.run, workflow_id)
    last = ""
    while True:
        description = await handle.describe()
        try:
            status: InstallStatus = await handle.query(InstallBackendWorkflow.progress)
            line = status_line(with_heartbeat(status, description, client))
        except RPCError as err:  # e.g. no worker is polling right now
            line = f"{workflow_id}: waiting for a worker ({err.message})"
        if line != last:
            out.write(("\r\x1b[2K" + line) if live else (line + "\n"))
            out.flush()
            last = line
        if description.status is not WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(poll)
    if live:
        out.write("\n")
    try:
        result = await handle.result()
    except WorkflowFailureError as err:
        cause = err.cause
        kind = getattr(cause, "type", None) or type(cause).__name__
        out.write(f"failed: {kind}: {getattr(cause, 'message', None) or cause}\n")
        return 1
    out.write(success_line(result) + "\n")
    return 0
