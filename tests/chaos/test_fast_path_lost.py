"""The worker dies while the fast path waits: the op is not sent again before a probe.

A local activity's result is recorded only when its workflow task completes. A worker killed
while the fast path waits for the node leaves the request out and no trace of it in the
history; the task's next attempt (on another worker, after the task timeout) must not run the
fast path again — against a stock LocalAI worker that would be a second ``backend.install``
for an op the node is still pulling — but ask the node first, then send once more only when
the node has the slot or nothing.
"""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client

from bench.node import resends_without_probe
from tests.chaos.conftest import Harness
from tests.fake_node import FakeNode, StockWorker
from tests.workflow_helpers import assert_replays, install_input, start_install, wait_for

pytestmark = pytest.mark.timeout(300)


async def test_worker_killed_during_the_fast_path_the_next_task_probes_before_a_resend(
    chaos: Harness, client: Client, nc: NATS, temporal_address: str, nats_url: str
) -> None:
    first = await chaos.worker(temporal_address, nats_url, "worker-1")
    async with FakeNode(nc, "fast-path-lost") as node:
        StockWorker(node, install_seconds=25.0)
        handle = await start_install(
            client,
            chaos.task_queue,
            install_input(
                node.node_id,
                fast_path_seconds=5.0,
                install_timeout_seconds=120.0,
                heartbeat_timeout_seconds=10.0,
            ),
        )
        await wait_for(lambda: "install" in node.log, what="the fast path's request")
        first.kill()  # the fast path waits up to 5 s: its task never completes
        await chaos.worker(temporal_address, nats_url, "worker-2")
        result = await handle.result()

    assert result.address == "10.0.0.7:50051"
    assert resends_without_probe(node.log) == 0, node.log
    assert result.probes >= 1
    await assert_replays(handle)
