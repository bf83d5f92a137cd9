"""A long install continues as new when the server suggests it, and keeps its op."""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client as NATS
from temporalio.client import Client

from durable_installs.contracts.rollout import RolloutInput, RolloutTarget
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode
from tests.workflow_helpers import FAST, assert_replays, install_input, start_install, wait_until
from workflows.install_backend import InstallBackendWorkflow
from workflows.rollout import RolloutBackendWorkflow


async def test_long_install_continues_as_new_and_keeps_its_op_and_counters(
    small_history_client: Client, nc: NATS, node_id: str
) -> None:
    client = small_history_client
    node = await FakeNode(nc, node_id).start()
    pulling = asyncio.Event()

    async def long_pull(request: BackendInstallRequest, number: int) -> BackendInstallReply | None:
        if number == 1:
            await node.stream_progress(request.op_id, request.backend, pulling, interval=0.1)
            return None
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = long_pull
    queue = f"can-{uuid.uuid4().hex[:8]}"
    async with create_worker(client, nc, queue):
        handle = await start_install(
            client,
            queue,
            install_input(node_id, install_timeout_seconds=1, probe_interval_seconds=0.1),
        )
        first_run = (await handle.describe()).run_id
        # Wait for a later run of the same workflow id to exist.
        latest = client.get_workflow_handle_for(InstallBackendWorkflow.run, handle.id)

        async def continued() -> bool:
            return (await latest.describe()).run_id != first_run

        await wait_until(continued, within=60, what="continue-as-new")
        status = await latest.query(InstallBackendWorkflow.progress)
        node.mark_running(node.install_requests[0])
        pulling.set()
        result = await latest.result()

    assert result.attempts >= 2 and result.probes >= status.probes
    assert result.started_at == status.started_at
    assert {body["op_id"] for body in node.install_bodies} == {result.op_id}
    await node.stop()
    await assert_replays(client.get_workflow_handle(handle.id, run_id=first_run))


async def test_large_rollout_continues_as_new_and_completes_every_slot(
    small_history_client: Client, nc: NATS
) -> None:
    client = small_history_client
    nodes = [await FakeNode(nc, f"node-{uuid.uuid4().hex[:8]}").start() for _ in range(2)]
    targets = [
        RolloutTarget(node_id=node.node_id, model_id=f"m{i}") for node in nodes for i in range(8)
    ]
    queue = f"can-{uuid.uuid4().hex[:8]}"
    async with create_worker(client, nc, queue):
        handle = await client.start_workflow(
            RolloutBackendWorkflow.run,
            RolloutInput(
                backend="llama-cpp", targets=targets, max_in_flight=3, install_options=FAST
            ),
            id=f"rollout-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        first_run = (await handle.describe()).run_id
        result = await handle.result()

    assert result.runs > 1
    assert result.counts["succeeded"] == 16 and len(result.slots) == 16
    assert sum(len(node.install_bodies) for node in nodes) == 16
    for node in nodes:
        await node.stop()
    await assert_replays(client.get_workflow_handle(handle.id, run_id=first_run))
