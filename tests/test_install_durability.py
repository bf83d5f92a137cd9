"""An install survives a paused worker without cancelling the node's work.

A worker frozen (``SIGSTOP``) for longer than the heartbeat timeout loses its activity attempt
to another worker; when it thaws, its stale attempt is cancelled by Temporal. That cancel is
not the workflow's wish, so the node must never hear of it: the op is shared with the attempt
that took over. Only a cancel the workflow asked for reaches the node.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.activity import ActivityCancellationDetails
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment

from activities.install import InstallActivities
from durable_installs.contracts.activities import InstallActivityInput
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode
from tests.worker_process import output_of, worker_process
from tests.workflow_helpers import (
    assert_replays,
    heartbeat_with_events,
    install_input,
    start_install,
    wait_for,
    wait_until,
)

HEARTBEAT_TIMEOUT = 3.0
PAUSE = 3 * HEARTBEAT_TIMEOUT


async def first_attempt_superseded(handle: WorkflowHandle[Any, Any]) -> bool:
    """Temporal gave up on the install's first attempt: a retry runs, or the workflow moved on."""
    description = await handle.describe()
    return all(pending.attempt > 1 for pending in description.raw_description.pending_activities)


async def test_a_worker_paused_past_its_heartbeat_timeout_never_cancels_the_nodes_op(
    client: Client, nc: NATS, nats_url: str, temporal_address: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    finish = asyncio.Event()

    async def pull_until_finished(
        request: BackendInstallRequest, number: int
    ) -> BackendInstallReply:
        # Every request for the op joins the one pull, as a node agent does.
        if number == 1:
            await node.stream_progress(request.op_id, request.backend, finish, interval=0.2)
        await finish.wait()
        return await node.reply_running(request, number)

    node.script = pull_until_finished
    cancels: list[str] = []

    async def on_cancel(msg: Msg) -> None:
        cancels.append(msg.subject)

    task_queue = f"pause-{uuid.uuid4().hex[:8]}"
    input = install_input(
        node_id,
        install_timeout_seconds=300,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
        deadline_seconds=600,
    )
    with worker_process(temporal_address, nats_url, task_queue) as paused:
        handle = await start_install(client, task_queue, input)
        await heartbeat_with_events(client, handle, at_least=3)
        op_id = node.install_requests[0].op_id
        cancel_sub = await nc.subscribe(subjects.cancel(node_id, op_id), cb=on_cancel)
        try:
            async with create_worker(client, nc, task_queue):
                paused.send_signal(signal.SIGSTOP)
                try:
                    # The frozen worker's open polls may take the retries too; either way
                    # Temporal gives up on attempt 1 and the install goes on without it.
                    await wait_until(
                        lambda: first_attempt_superseded(handle),
                        within=60,
                        what="Temporal timed out the frozen worker's attempt",
                    )
                    await asyncio.sleep(PAUSE - HEARTBEAT_TIMEOUT)  # stay frozen a while longer
                finally:
                    paused.send_signal(signal.SIGCONT)
                await wait_for(
                    lambda: "install request cancelled" in output_of(paused),
                    within=60,
                    what="the thawed worker gave up its stale attempt",
                )
                await nc.flush()
                finish.set()
                async with asyncio.timeout(120):
                    result = await handle.result()
        finally:
            finish.set()
            await cancel_sub.unsubscribe()

    assert cancels == [], "a cancel the workflow did not ask for reached the node"
    assert {request.op_id for request in node.install_requests} == {op_id}
    assert result.address == "10.0.0.7:50051"
    await node.stop()
    await assert_replays(handle)


@pytest.mark.parametrize(
    "reason",
    [
        ActivityCancellationDetails(timed_out=True),
        ActivityCancellationDetails(not_found=True),
        ActivityCancellationDetails(worker_shutdown=True),
        ActivityCancellationDetails(paused=True),
        ActivityCancellationDetails(reset=True),
        ActivityCancellationDetails(),
    ],
    ids=["heartbeat-timeout", "not-found", "worker-shutdown", "paused", "reset", "no-reason"],
)
async def test_an_attempt_cancelled_by_anything_but_the_workflow_leaves_the_op_alone(
    nc: NATS, node_id: str, reason: ActivityCancellationDetails
) -> None:
    node = await FakeNode(nc, node_id).start()
    never = asyncio.Event()

    async def silent(request: BackendInstallRequest, number: int) -> None:
        await never.wait()

    node.script = silent
    cancels: list[str] = []

    async def on_cancel(msg: Msg) -> None:
        cancels.append(msg.subject)

    cancel_sub = await nc.subscribe(subjects.cancel(node_id, "op-1"), cb=on_cancel)
    env = ActivityEnvironment()
    request = InstallActivityInput(
        node_id=node_id,
        request=BackendInstallRequest(backend="llama-cpp", op_id="op-1"),
        install_timeout_seconds=60,
        progress_report_interval_seconds=0,
    )
    task = asyncio.create_task(env.run(InstallActivities(nc).install_backend, request))
    await wait_for(lambda: bool(node.install_bodies))
    env.cancel(reason)
    with pytest.raises(asyncio.CancelledError):
        await task
    # A round trip through the server: a cancel published before it has been delivered now.
    await nc.request(subjects.models_running(node_id), b"{}", timeout=5)

    assert cancels == []
    never.set()
    await cancel_sub.unsubscribe()
    await node.stop()
