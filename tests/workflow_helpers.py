"""Starting installs in tests and checking that their histories replay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from durable_installs.backendctl.progress import pending_install_progress
from durable_installs.contracts.activities import InstallProgress
from durable_installs.contracts.install import InstallBackendInput, InstallBackendResult
from workflows.install_backend import InstallBackendWorkflow

FAST = {
    "install_timeout_seconds": 2.0,
    "probe_interval_seconds": 0.5,
    "probe_listen_seconds": 0.5,
    "retry_backoff_seconds": 0.5,
    "retry_backoff_max_seconds": 2.0,
    "heartbeat_timeout_seconds": 5.0,
    "progress_report_interval_seconds": 0.5,
    "deadline_seconds": 120.0,
    "fast_path_seconds": 0.0,
}
"""Short intervals for tests, set through the input fields as any caller would. The fast path
is off: scripted nodes number their requests, and these tests are about the install activity's
path; ``tests/test_fast_path.py`` turns it on (the default) and shows how the two meet."""


def install_input(node_id: str, **overrides: Any) -> InstallBackendInput:
    fields: dict[str, Any] = {"node_id": node_id, "backend": "llama-cpp", **FAST, **overrides}
    return InstallBackendInput(**fields)


async def start_install(
    client: Client, task_queue: str, input: InstallBackendInput
) -> WorkflowHandle[InstallBackendWorkflow, InstallBackendResult]:
    return await client.start_workflow(
        InstallBackendWorkflow.run,
        input,
        id=f"install-test-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue,
    )


async def assert_replays(handle: WorkflowHandle[Any, Any]) -> None:
    """The closed workflow's history replays deterministically against today's code."""
    history = await handle.fetch_history()
    from durable_installs.orchestrator.registry import WORKFLOW_BEHAVIORS  # every type, new too

    replayer = Replayer(workflows=list(WORKFLOW_BEHAVIORS), data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    within: float = 30.0,
    what: str = "condition",
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it holds; fail the test naming ``what`` otherwise.

    The one polling loop of the tests. ``within`` is an upper bound for a shared machine,
    never a performance assertion.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within}s")
        await asyncio.sleep(interval)


async def wait_for(
    predicate: Callable[[], bool],
    within: float = 30.0,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """:func:`wait_until` for a condition the test reads without asking a server."""

    async def check() -> bool:
        return predicate()

    await wait_until(check, within, what, interval)


async def count_events(handle: WorkflowHandle[Any, Any], event_type: EventType.ValueType) -> int:
    return sum(
        1 for event in (await handle.fetch_history()).events if event.event_type == event_type
    )


async def pending_heartbeat(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> InstallProgress | None:
    """The install activity's latest heartbeat details as ``describe`` shows them."""
    return pending_install_progress(await handle.describe(), client.data_converter)


async def heartbeat_with_events(
    client: Client, handle: WorkflowHandle[Any, Any], at_least: int
) -> InstallProgress:
    """Wait until the pending install's heartbeat has carried ``at_least`` progress events."""
    seen: InstallProgress | None = None

    async def carried() -> bool:
        nonlocal seen
        seen = await pending_heartbeat(client, handle)
        return seen is not None and seen.event_count >= at_least

    await wait_until(carried, what=f"a heartbeat with {at_least} progress events")
    assert seen is not None
    return seen
