"""The warm path: a node that answers at once completes the install in one workflow task.

The first request goes out from a local activity with a short bound (``fast_path_seconds``).
Anything but an immediate answer falls through to the heartbeating install activity with the
same op id; a ``success:false`` answer is the first request's failure, handled as ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.fast_path import BUSY, BUSY_BOUND, FastPathActivities
from durable_installs.contracts.activities import FastInstallResult, InstallActivityInput
from durable_installs.contracts.install import InstallBackendInput, InstallPhase
from durable_installs.contracts.search_attributes import INSTALL_PHASE, NODE_ID
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode
from tests.workflow_helpers import (
    assert_replays,
    heartbeat_with_events,
    install_input,
    start_install,
    wait_until,
)
from workflows.install_backend import InstallBackendWorkflow

ON = {"fast_path_seconds": 1.0}
"""The default bound, spelled out because the shared test inputs turn the fast path off."""

GENEROUS = {"fast_path_seconds": 5.0}
"""The longest bound: on a loaded machine an immediate answer still counts as immediate."""


def fast_input(node_id: str, **overrides: Any) -> InstallBackendInput:
    return install_input(node_id, **{**ON, **overrides})


async def event_types(handle: WorkflowHandle[Any, Any]) -> list[EventType.ValueType]:
    return [event.event_type for event in (await handle.fetch_history()).events]


async def fast_answers(handle: WorkflowHandle[Any, Any]) -> list[FastInstallResult]:
    """The fast path's answers as the history (and so the web UI) records them."""
    answers = []
    for event in (await handle.fetch_history()).events:
        marker = event.marker_recorded_event_attributes
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and "result" in marker.details:
            [payload] = marker.details["result"].payloads
            answers.append(FastInstallResult.model_validate_json(payload.data))
    return answers


def local_activity_markers(types: list[EventType.ValueType]) -> int:
    """Marker events: the fast path's local activity result (and the patch marker)."""
    return types.count(EventType.EVENT_TYPE_MARKER_RECORDED)


async def test_a_node_that_answers_at_once_completes_the_install_in_one_workflow_task(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    async with FakeNode(nc, node_id) as node:
        handle = await start_install(
            client, task_queue, fast_input(node_id, model_id="qwen3", **GENEROUS)
        )
        result = await handle.result()

    assert result.fast_path
    assert result.address == "10.0.0.7:50051"
    assert (result.attempts, result.probes, result.found_running) == (1, 0, False)
    assert len(node.install_requests) == 1
    assert node.install_requests[0].op_id == result.op_id
    types = await event_types(handle)
    assert types.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in types
    assert local_activity_markers(types) == 2, "the patch marker and the node's answer"
    [answer] = await fast_answers(handle)
    assert (answer.answered, answer.address) == (True, result.address)
    await assert_replays(handle)


async def test_the_fast_path_leaves_query_search_attributes_and_details_as_the_install_did(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    async with FakeNode(nc, node_id):
        handle = await start_install(client, task_queue, fast_input(node_id, **GENEROUS))
        result = await handle.result()

    status = await handle.query(InstallBackendWorkflow.progress)
    description = await handle.describe()
    metadata = await handle.query("__temporal_workflow_metadata")
    assert result.fast_path
    assert status.phase is InstallPhase.COMPLETED
    assert (status.address, status.attempts, status.op_id) == (
        result.address,
        1,
        result.op_id,
    )
    assert description.typed_search_attributes.get(INSTALL_PHASE) == "completed"
    assert description.typed_search_attributes.get(NODE_ID) == node_id
    assert result.address in str(metadata), "the current details show the address"


async def test_a_warm_install_writes_its_search_attributes_in_one_upsert(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    """Each upsert is a visibility write on the server; nobody could see the ones in between."""
    async with FakeNode(nc, node_id):
        handle = await start_install(client, task_queue, fast_input(node_id, model_id="qwen3"))
        await handle.result()

    upserts = [
        set(
            event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        )
        for event in (await handle.fetch_history()).events
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    ours = [fields for fields in upserts if fields != {"TemporalChangeVersion"}]
    assert ours == [{"NodeId", "BackendName", "ModelId", "InstallPhase"}]


async def test_a_slow_nodes_one_request_is_followed_by_the_install_activity_to_its_reply(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    """The fast path gives up waiting, not the request: nothing is sent a second time."""
    async with FakeNode(nc, node_id) as node:
        finished = asyncio.Event()

        async def slow(request: BackendInstallRequest, number: int) -> BackendInstallReply:
            await node.stream_progress(request.op_id, request.backend, finished)
            return BackendInstallReply(success=True, address="10.0.0.7:50077")

        node.script = slow
        handle = await start_install(
            client,
            task_queue,
            fast_input(node_id, fast_path_seconds=0.5, install_timeout_seconds=60.0),
        )
        await heartbeat_with_events(client, handle, at_least=1)  # it follows the op's progress
        finished.set()
        result = await handle.result()

    assert not result.fast_path
    assert result.address == "10.0.0.7:50077"
    assert [r.op_id for r in node.install_requests] == [result.op_id]
    assert (result.attempts, result.probes) == (1, 0), "the fast path's request was request 1"
    assert result.progress_events > 0, "the install activity forwarded the op's progress"
    types = await event_types(handle)
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1
    [answer] = await fast_answers(handle)
    assert (answer.answered, answer.request_sent) == (False, True)
    await assert_replays(handle)


async def test_a_node_that_is_gone_gets_nothing_until_it_is_back_then_the_same_op_once(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    handle = await start_install(client, task_queue, fast_input(node_id))

    async def backing_off() -> bool:
        status = await handle.query(InstallBackendWorkflow.progress)
        return status.phase == InstallPhase.BACKING_OFF

    await wait_until(backing_off, what="backing off while nothing answers")
    async with FakeNode(nc, node_id) as node:
        result = await handle.result()

    assert not result.fast_path
    assert [r.op_id for r in node.install_requests] == [result.op_id]
    assert [answer.reason for answer in await fast_answers(handle)] == ["no responders"]
    await assert_replays(handle)


async def test_a_transient_failure_answered_at_once_is_probed_before_the_same_op_is_resent(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    async with FakeNode(nc, node_id) as node:

        async def flaky(request: BackendInstallRequest, number: int) -> BackendInstallReply:
            if number == 1:
                return BackendInstallReply(
                    success=False,
                    error='installing backend from gallery: failed to download backend "x": EOF',
                )
            return await node.reply_running(request, number)

        node.script = flaky
        handle = await start_install(client, task_queue, fast_input(node_id, **GENEROUS))
        result = await handle.result()

    assert not result.fast_path
    assert (result.attempts, result.probes) == (2, 1), "the failed fast answer was request 1"
    assert [r.op_id for r in node.install_requests] == [result.op_id, result.op_id]
    await assert_replays(handle)


@pytest.mark.parametrize("fast_path_seconds", [0.0, 5.0], ids=["without", "with"])
async def test_a_permanent_failure_answered_at_once_fails_the_same_with_or_without_fast_path(
    client: Client, nc: NATS, task_queue: str, node_id: str, fast_path_seconds: float
) -> None:
    error = 'installing backend from gallery: no backend found with name "vllm"'
    async with FakeNode(nc, node_id) as node:

        async def reject(request: BackendInstallRequest, number: int) -> BackendInstallReply:
            return BackendInstallReply(success=False, error=error)

        node.script = reject
        handle = await start_install(
            client, task_queue, fast_input(node_id, fast_path_seconds=fast_path_seconds)
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("InstallRejected", True)
    assert (
        cause.message == f"node {node_id} failed to install llama-cpp for slot llama-cpp#0: {error}"
    )
    assert len(node.install_requests) == 1
    await assert_replays(handle)


def test_the_fast_path_bound_is_checked_like_every_other_duration() -> None:
    for bad in (-1.0, 0.05, 5.5, float("nan"), float("inf")):
        problems = InstallBackendInput(
            node_id="node-1", backend="llama-cpp", fast_path_seconds=bad
        ).problems()
        assert [field for field, _ in problems] == ["fast_path_seconds"], bad
    for good in (0.0, 0.1, 1.0, 5.0):
        assert (
            InstallBackendInput(
                node_id="node-1", backend="llama-cpp", fast_path_seconds=good
            ).problems()
            == []
        )


async def test_the_fast_path_may_run_as_many_requests_at_once_as_the_install_activity(
    client: Client, nc: NATS
) -> None:
    """Every install's first request is a local activity: the SDK's 100 would queue a burst."""
    worker = create_worker(client, nc, "unused-queue", max_concurrent_activities=700)

    config = worker.config()

    assert config.get("max_concurrent_local_activities") == 700


async def test_past_a_few_waiting_fast_paths_a_new_one_waits_a_tenth_of_a_second(
    nc: NATS, node_id: str
) -> None:
    """Fast paths that wait are cold installs holding workflow-task slots: in a burst they
    hand their request to the install activity at once instead of after the full bound."""
    async with FakeNode(nc, node_id) as node:

        async def silent(request: BackendInstallRequest, number: int) -> None:
            return None

        node.script = silent
        fast = FastPathActivities(nc)
        requests = [
            InstallActivityInput(
                node_id=node_id,
                request=BackendInstallRequest(backend="llama-cpp", op_id=f"op-{i}"),
                install_timeout_seconds=2.0,
            )
            for i in range(BUSY + 10)
        ]
        answers = await asyncio.gather(
            *(ActivityEnvironment().run(fast.install_backend_fast, r) for r in requests)
        )

    waited = sorted(answer.elapsed_seconds for answer in answers)
    assert all(not answer.answered and answer.request_sent for answer in answers)
    assert waited[:10] == pytest.approx([BUSY_BOUND] * 10, abs=0.5)
    assert min(waited[10:]) >= 1.9, "the first ones waited the bound they asked for"
    assert fast.waiting == 0
