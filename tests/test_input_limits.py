"""Out-of-bounds and missing workflow inputs fail at once, end to end on the dev server.

Each case is a start that used to leave the workflow RUNNING with workflow-task failures
repeating forever, or got it TERMINATED by the server for an oversized search attribute. Now
each one FAILS in its first workflow task with ``InvalidInput`` naming the field, before any
search attribute is written or any activity scheduled.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.limits import MAX_ROLLOUT_SLOTS
from durable_installs.contracts.rollout import RolloutTarget
from durable_installs.servers import find_binary
from tests.test_rollout import HELD, Fleet, rollout, start_rollout
from tests.workflow_helpers import assert_replays, wait_until
from workflows.rollout import RolloutBackendWorkflow

INSTALL = "InstallBackendWorkflow"
ROLLOUT = "RolloutBackendWorkflow"
NEVER_WRITTEN = (
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
)
PATCH_ATTRIBUTE = "TemporalChangeVersion"
"""The one search attribute an invalid input may write: Temporal's own record of a
``workflow.patched`` marker (a short patch id), never a value from the input."""


def written_search_attributes(history: WorkflowHistory) -> set[str]:
    """The names of every search attribute the workflow upserted."""
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    return {name for upsert in upserts for name in upsert.indexed_fields}


async def invalid_input_failure(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """Wait until the workflow closes; check it failed cleanly and return its failure.

    "Cleanly": closed as FAILED (not terminated, not still retrying a task), with no search
    attribute of ours upserted, no activity and no failed workflow task in its history.
    """

    async def closed() -> bool:
        return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING

    await wait_until(closed, within=60, what=f"{handle.id} closed")
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
    history = await handle.fetch_history()
    written = [e.event_type for e in history.events if e.event_type in NEVER_WRITTEN]
    assert written == []
    assert written_search_attributes(history) <= {PATCH_ATTRIBUTE}
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidInput" and cause.non_retryable
    await assert_replays(handle)
    return cause


async def start(
    client: Client, task_queue: str, workflow: str, *args: Any
) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        workflow, *args, id=f"limits-{uuid.uuid4().hex[:10]}", task_queue=task_queue
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"deadline_seconds": "NaN"}, "deadline_seconds"),
        ({"deadline_seconds": "Infinity"}, "deadline_seconds"),
        ({"deadline_seconds": 1e300}, "deadline_seconds"),
        ({"backend": "b" * 3000}, "backend"),
    ],
)
async def test_an_out_of_bounds_install_input_fails_at_once_naming_the_field(
    client: Client, task_queue: str, fields: dict[str, Any], field: str
) -> None:
    handle = await start(client, task_queue, INSTALL, {"node_id": "n1", "backend": "b", **fields})

    cause = await invalid_input_failure(handle)

    assert cause.message.startswith(f"invalid input: {field}: ")
    assert "b" * 300 not in cause.message, "the reason never echoes the value"


async def test_an_install_started_with_null_input_says_what_to_pass(
    client: Client, task_queue: str
) -> None:
    handle = await start(client, task_queue, INSTALL, None)

    cause = await invalid_input_failure(handle)

    assert "input is missing" in cause.message
    assert '{"node_id": "node-1", "backend": "llama-cpp"}' in cause.message


def cli_start_without_input(address: str, task_queue: str, workflow: str) -> str:
    """``temporal workflow start`` with no ``--input``, as an operator might type it."""
    workflow_id = f"limits-cli-{uuid.uuid4().hex[:10]}"
    started = subprocess.run(
        [
            find_binary("temporal"),
            "workflow",
            "start",
            "--address",
            address,
            "--type",
            workflow,
            "--task-queue",
            task_queue,
            "--workflow-id",
            workflow_id,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    return workflow_id


@pytest.mark.parametrize(
    ("workflow", "minimal"),
    [
        (INSTALL, {"node_id": "node-1", "backend": "llama-cpp"}),
        (ROLLOUT, {"backend": "llama-cpp", "targets": [{"node_id": "node-1"}]}),
    ],
)
async def test_a_cli_start_without_input_fails_at_once_showing_the_minimal_json(
    client: Client, task_queue: str, temporal_address: str, workflow: str, minimal: Any
) -> None:
    workflow_id = await asyncio.to_thread(
        cli_start_without_input, temporal_address, task_queue, workflow
    )

    cause = await invalid_input_failure(client.get_workflow_handle(workflow_id))

    assert "input is missing" in cause.message
    assert json.dumps(minimal) in cause.message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (None, "input"),
        ({"backend": "b", "max_in_flight": 10**12}, "max_in_flight"),
    ],
)
async def test_an_out_of_bounds_or_null_rollout_input_fails_at_once_naming_the_field(
    client: Client, task_queue: str, fields: dict[str, Any] | None, field: str
) -> None:
    handle = await start(client, task_queue, ROLLOUT, fields)

    cause = await invalid_input_failure(handle)

    assert f"{field}" in cause.message


async def test_targets_added_past_the_slot_limit_are_refused_and_the_rollout_goes_on(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=1) as fleet:
        fleet.release.clear()
        handle = await start_rollout(client, task_queue, rollout(fleet.targets(["a"]), HELD))
        try:
            one_too_many = [RolloutTarget(node_id=f"n{i}") for i in range(MAX_ROLLOUT_SLOTS)]
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update(RolloutBackendWorkflow.add_targets, one_too_many)
            fleet.release.set()
            result = await handle.result()
        finally:
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test cleanup")

    assert f"more than {MAX_ROLLOUT_SLOTS} slots" in str(refused.value.cause)
    assert result.counts["succeeded"] == 1 and len(result.slots) == 1
