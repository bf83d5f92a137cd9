"""InstallBackendWorkflow on a real Temporal dev server against scripted nodes on real NATS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.install import InstallPhase
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendInstallRequest,
    GalleryConfig,
)
from tests.fake_node import FakeNode
from tests.workflow_helpers import (
    assert_replays,
    count_events,
    heartbeat_with_events,
    install_input,
    start_install,
    wait_for,
    wait_until,
)
from workflows.install_backend import InstallBackendWorkflow


async def test_warm_path_sends_one_install_and_returns_the_nodes_address(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    handle = await start_install(client, task_queue, install_input(node_id, model_id="qwen3"))

    result = await handle.result()

    assert result.address == "10.0.0.7:50051"
    assert (result.attempts, result.probes) == (1, 0)
    assert result.slot == "qwen3#0"
    assert len(node.install_bodies) == 1
    await node.stop()
    await assert_replays(handle)


async def test_request_reaching_the_node_matches_the_reference_field_by_field(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    gallery = GalleryConfig(url="https://index.localai.io/backends", name="localai")
    input = install_input(
        node_id,
        backend="llama-cpp",
        model_id="qwen3-0.6b",
        replica_index=1,
        backend_galleries=[gallery],
        op_id="1f5e0b8a-8f3d-11f0-9c1a-0242ac120002",
    )
    handle = await start_install(client, task_queue, input)
    await handle.result()

    assert node.install_bodies == [
        {
            "backend": "llama-cpp",
            "model_id": "qwen3-0.6b",
            "backend_galleries": '[{"url":"https://index.localai.io/backends","name":"localai"}]',
            "replica_index": 1,
            "op_id": "1f5e0b8a-8f3d-11f0-9c1a-0242ac120002",
        }
    ]
    await node.stop()


async def test_admin_install_omits_zero_fields_and_derives_a_stable_op_id(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    handle = await start_install(client, task_queue, install_input(node_id))
    result = await handle.result()

    [body] = node.install_bodies
    assert set(body) == {"backend", "op_id"}
    assert body["op_id"] == result.op_id
    assert subjects.token_problem(result.op_id) is None
    await node.stop()


async def test_still_installing_probes_before_any_retry_and_sends_one_more_install_when_running(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    finished = asyncio.Event()

    async def slow_pull(request: BackendInstallRequest, number: int) -> BackendInstallReply | None:
        if number > 1:
            return BackendInstallReply(success=True, address="10.0.0.7:50099")
        await node.stream_progress(request.op_id, request.backend, finished)
        return None  # the reply to the first request is lost, as after a controller timeout

    node.script = slow_pull
    handle = await start_install(
        client, task_queue, install_input(node_id, install_timeout_seconds=3.0)
    )

    # While the first request waits, the pending activity's heartbeat shows the newest event.
    seen = await heartbeat_with_events(client, handle, at_least=1)
    assert seen.last_event is not None and seen.last_event.phase == "downloading"
    assert seen.op_id == node.install_bodies[0]["op_id"]

    # The timeout leads to probes; while progress flows, nothing is sent again.
    await _wait_for_probes(handle, at_least=2)
    assert len(node.install_bodies) == 1
    status = await handle.query(InstallBackendWorkflow.progress)
    assert status.last_probe is not None and status.last_probe.state == "IN_FLIGHT"
    assert status.progress_events > 0

    # The pull ends: the slot runs before progress stops, as on a real node.
    node.mark_running(node.install_requests[0], port=50099)
    finished.set()
    result = await handle.result()

    assert result.address == "10.0.0.7:50099"
    assert len(node.install_bodies) == 2
    assert node.install_bodies[1]["op_id"] == node.install_bodies[0]["op_id"]
    assert result.found_running
    assert result.attempts == 2 and result.probes >= 2
    await node.stop()
    await assert_replays(handle)


async def _wait_for_probes(
    handle: WorkflowHandle[InstallBackendWorkflow, Any], at_least: int
) -> None:
    """Wait until ``at_least`` probes have finished and the workflow waits for the next."""

    async def probed() -> bool:
        status = await handle.query(InstallBackendWorkflow.progress)
        return status.probes >= at_least and status.phase == InstallPhase.WAITING

    await wait_until(probed, what=f"{at_least} probes")


async def test_permanent_failure_fails_fast_with_the_nodes_text(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    text = 'installing backend from gallery: no backend found with name "cuda12-vllm"'

    async def reject(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        return BackendInstallReply(success=False, error=text)

    node.script = reject
    handle = await start_install(client, task_queue, install_input(node_id, backend="cuda12-vllm"))

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InstallRejected" and cause.non_retryable
    assert text in cause.message
    assert len(node.install_bodies) == 1
    status = await handle.query(InstallBackendWorkflow.progress)
    assert status.phase == InstallPhase.FAILED
    await node.stop()
    await assert_replays(handle)


async def test_transient_failure_probes_backs_off_and_retries(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()

    async def flaky(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        if number == 1:
            return BackendInstallReply(
                success=False,
                error='installing backend from gallery: failed to download backend "x": EOF',
            )
        return await node.reply_running(request, number)

    node.script = flaky
    handle = await start_install(client, task_queue, install_input(node_id))
    result = await handle.result()

    assert result.attempts == 2 and result.probes == 1
    status = await handle.query(InstallBackendWorkflow.progress)
    assert status.failed_attempts == 1
    await node.stop()
    await assert_replays(handle)


async def test_transient_failures_exhaust_the_failure_budget(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()

    async def always_busy(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        return BackendInstallReply(success=False, error="backend llama-cpp#0 is stopping")

    node.script = always_busy
    handle = await start_install(client, task_queue, install_input(node_id, max_failed_attempts=3))

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "InstallFailed"
    assert len(node.install_bodies) == 3
    await node.stop()


async def test_unreachable_node_is_backed_off_until_it_appears(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    handle = await start_install(client, task_queue, install_input(node_id))

    await _wait_for_phase(handle, InstallPhase.BACKING_OFF)
    status = await handle.query(InstallBackendWorkflow.progress)
    assert "unreachable" in status.last_error or "offline" in status.last_error
    node = await FakeNode(nc, node_id).start()
    result = await handle.result()

    assert result.address == "10.0.0.7:50051"
    assert len(node.install_bodies) == 1
    assert result.attempts >= 1
    await node.stop()
    await assert_replays(handle)


async def test_invalid_node_id_fails_with_invalid_input_and_sends_nothing(
    client: Client, nc: NATS, task_queue: str
) -> None:
    received: list[str] = []

    async def record(msg: Msg) -> None:
        received.append(msg.subject)

    watcher = await nc.subscribe("nodes.a.>", cb=record)
    handle = await start_install(client, task_queue, install_input("a.*"))

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidInput" and cause.non_retryable
    assert "node_id" in cause.message
    await nc.flush()
    assert received == []
    assert await count_events(handle, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 0
    await watcher.unsubscribe()
    await assert_replays(handle)


async def test_deadline_ends_in_install_deadline_exceeded_with_last_progress(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    never = asyncio.Event()

    async def endless(request: BackendInstallRequest, number: int) -> None:
        if number == 1:
            await node.stream_progress(request.op_id, request.backend, never)

    node.script = endless
    handle = await start_install(
        client, task_queue, install_input(node_id, install_timeout_seconds=1.0, deadline_seconds=4)
    )

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InstallDeadlineExceeded"
    assert "downloading" in cause.message
    assert len(node.install_bodies) == 1
    never.set()
    await node.stop()
    await assert_replays(handle)


async def test_cancelling_the_workflow_cancels_the_install_and_ends_cleanly(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    cancels: list[str] = []

    async def on_cancel(msg: Msg) -> None:
        cancels.append(msg.subject)

    async def silent(request: BackendInstallRequest, number: int) -> None:
        return None

    node.script = silent
    handle = await start_install(
        client, task_queue, install_input(node_id, install_timeout_seconds=60)
    )
    await wait_for(lambda: len(node.install_bodies) == 1)
    op_id = node.install_bodies[0]["op_id"]
    cancel_sub = await nc.subscribe(subjects.cancel(node_id, op_id), cb=on_cancel)
    await handle.cancel()

    with pytest.raises(WorkflowFailureError):
        await handle.result()

    status = await handle.query(InstallBackendWorkflow.progress)
    assert status.phase == InstallPhase.CANCELLED
    await wait_for(lambda: len(cancels) == 1)
    await cancel_sub.unsubscribe()
    await node.stop()
    await assert_replays(handle)


async def test_a_cancel_while_the_node_is_still_busy_between_requests_tells_it_to_stop(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    """After a timeout no install activity runs (the workflow probes and waits), but the node
    is still pulling the op: the workflow itself tells the node to stop."""
    node = await FakeNode(nc, node_id).start()
    cancels: list[str] = []
    pulling = asyncio.Event()

    async def on_cancel(msg: Msg) -> None:
        cancels.append(msg.subject)

    async def slow_pull(request: BackendInstallRequest, number: int) -> None:
        await node.stream_progress(request.op_id, request.backend, pulling)

    node.script = slow_pull
    handle = await start_install(
        client, task_queue, install_input(node_id, install_timeout_seconds=1.0)
    )
    await _wait_for_phase(handle, InstallPhase.WAITING)
    op_id = node.install_bodies[0]["op_id"]
    cancel_sub = await nc.subscribe(subjects.cancel(node_id, op_id), cb=on_cancel)
    await nc.flush()
    await handle.cancel()

    with pytest.raises(WorkflowFailureError):
        await handle.result()

    assert (await handle.query(InstallBackendWorkflow.progress)).phase == InstallPhase.CANCELLED
    await wait_for(lambda: len(cancels) == 1, what="the node told to stop the op")
    assert len(node.install_bodies) == 1
    pulling.set()
    await cancel_sub.unsubscribe()
    await node.stop()
    await assert_replays(handle)


async def _wait_for_phase(
    handle: WorkflowHandle[InstallBackendWorkflow, Any], phase: InstallPhase
) -> None:
    async def reached() -> bool:
        return (await handle.query(InstallBackendWorkflow.progress)).phase == phase

    await wait_until(reached, what=f"phase {phase}", interval=0.05)


async def test_a_wrongly_typed_input_fails_the_workflow_naming_the_field(
    client: Client, task_queue: str
) -> None:
    handle = await client.start_workflow(
        "InstallBackendWorkflow",
        {"node_id": "n1", "backend": "llama-cpp", "replica_index": "first"},
        id=f"install-test-typed-{task_queue}",
        task_queue=task_queue,
    )

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "ValidationError"
    assert "replica_index" in cause.message
