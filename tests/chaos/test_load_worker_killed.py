"""One of two workers is SIGKILLed with 3,000 installs in flight; every install completes once.

Run apart from ``make test`` (``make test-load``; CI runs it after the test command): it
holds 3,000 installs on the machine for minutes. The surviving worker takes over the killed
one's activities after their heartbeat timeout (each retry listens on its op's reply subject,
nothing is sent again) and its workflows' tasks after the sticky timeout. A reply the node sent
while no worker listened is lost: that install's activity times out, the workflow probes (the
node answers as a stock LocalAI worker does) and sends the op once more, which the node answers
at once because the slot runs.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client

from activities.closings import Closings
from bench.node import WildcardNode
from durable_installs.contracts.install import InstallBackendInput, InstallBackendResult
from tests.chaos.conftest import Harness
from tests.workflow_helpers import wait_for

pytestmark = [pytest.mark.load, pytest.mark.timeout(1500)]

INSTALLS = 3000
HOLD = 60.0


async def test_one_of_two_workers_killed_at_3000_in_flight_every_install_completes_once(
    chaos: Harness, client: Client, nc: NATS, temporal_address: str, nats_url: str
) -> None:
    node = await WildcardNode(nc, hold_seconds=HOLD, event_interval=2.0).start()
    first = await chaos.worker(temporal_address, nats_url, "worker-1")
    await chaos.worker(temporal_address, nats_url, "worker-2")
    tag = uuid.uuid4().hex[:8]
    gate = asyncio.Semaphore(200)

    async def start(i: int) -> str:
        input = InstallBackendInput(
            node_id=f"load-{tag}-{i}",
            backend="llama-cpp",
            install_timeout_seconds=90,
            heartbeat_timeout_seconds=20,
        )
        async with gate:
            handle = await client.start_workflow(
                "InstallBackendWorkflow",
                input,
                id=f"load-{tag}-{i}",
                task_queue=chaos.task_queue,
            )
        return handle.id

    ids = await asyncio.gather(*(start(i) for i in range(INSTALLS)))
    await wait_for(lambda: node.max_held >= INSTALLS // 2, within=300, what="half held")
    first.kill()
    closings = Closings(client, ids)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1200
    while closings.pending and loop.time() < deadline:
        await asyncio.sleep(5)
        await closings.closed()
    await node.stop()

    assert not closings.pending, f"{len(closings.pending)} installs still open"
    results = []
    for workflow_id in ids:
        handle = client.get_workflow_handle(workflow_id, result_type=InstallBackendResult)
        results.append(await handle.result())
    assert all(result.address == "10.0.0.7:50051" for result in results)
    assert len({result.op_id for result in results}) == INSTALLS, "each install completed once"
    assert not node.resent_without_probe(), "a re-send only after a lost reply and a probe"
    assert node.requests <= INSTALLS * 2, "at most one re-send per install"
