"""The install and staging activities' heartbeat progress, read from ``describe``.

Kept free of terminal libraries: the tests' helpers import it from modules that the workflow
sandbox re-imports, and ``rich`` draws random numbers at import time.
"""

from __future__ import annotations

from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.converter import DataConverter

from durable_installs.contracts.activities import InstallProgress, progress_from_details
from durable_installs.contracts.install import InstallStatus
from durable_installs.contracts.load import StageProgress


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


def staging_progress(
    description: WorkflowExecutionDescription, converter: DataConverter
) -> StageProgress:
    """The staging activity's latest heartbeat (the file being sent, the bytes the node
    has), or an empty one when no file is being sent."""
    for pending in description.raw_description.pending_activities:
        if not pending.heartbeat_details.payloads:
            continue
        try:
            [details] = converter.payload_converter.from_payloads(
                pending.heartbeat_details.payloads
            )
            return StageProgress.model_validate(details)
        except (ValueError, TypeError, ValidationError):
            continue
    return StageProgress(path="")
