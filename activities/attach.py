"""Attach to an install another requester already started, and wait for its result.

A child workflow cannot join a workflow that someone else started with the same id: starting
it fails with "already started". Waiting on the existing install from an activity lets any
number of requesters (rollouts, other teams' workflows in any SDK) share one install of a
slot and all receive its result.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError

from durable_installs.contracts.failures import INSTALL_CANCELLED, INSTALL_FAILED
from durable_installs.contracts.install import InstallBackendResult
from durable_installs.contracts.names import ATTACH_ACTIVITY

HEARTBEAT_INTERVAL = 5.0


@activity.defn(name=ATTACH_ACTIVITY)
async def await_install(workflow_id: str) -> InstallBackendResult:
    """The result of the install workflow ``workflow_id`` (following continue-as-new)."""
    handle = activity.client().get_workflow_handle(workflow_id, result_type=InstallBackendResult)
    beat = asyncio.create_task(_heartbeat())
    try:
        return await install_result(handle)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def install_result(handle: WorkflowHandle[Any, InstallBackendResult]) -> InstallBackendResult:
    """Wait for an install workflow; its failure becomes a typed, non-retryable error.

    The error keeps the install's own failure type and message (``InstallRejected`` and the
    node's words, not a wrapper's), or is ``InstallCancelled`` when the install was cancelled.
    """
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        cause = err.cause
        if isinstance(cause, CancelledError):
            raise ApplicationError(
                f"install {handle.id} was cancelled", type=INSTALL_CANCELLED, non_retryable=True
            ) from err
        if isinstance(cause, ApplicationError):
            raise ApplicationError(
                cause.message, type=cause.type or INSTALL_FAILED, non_retryable=True
            ) from err
        raise ApplicationError(
            f"install {handle.id} failed: {cause or err}", type=INSTALL_FAILED, non_retryable=True
        ) from err


async def _heartbeat() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_INTERVAL)
