"""The worker process is SIGKILLed mid-download; a second worker finishes the same install."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from tests.chaos.conftest import Harness
from tests.chaos.scenario import assert_survived, install_input, install_result, start_install
from tests.workflow_helpers import wait_until

pytestmark = pytest.mark.timeout(300)


async def test_worker_killed_mid_download_a_second_worker_finishes_the_install(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str
) -> None:
    node = await chaos.node(nats_url)
    first = await chaos.worker(temporal_address, nats_url, "worker-1")
    second = await chaos.worker(temporal_address, nats_url, "worker-2")
    handle = await start_install(
        client, chaos.task_queue, install_input(node.node_id, node.backend.name)
    )
    await node.backend.served_at_least(0.2)

    running_it: list[int] = []

    async def activity_found() -> bool:
        pending = (await handle.describe()).raw_description.pending_activities
        identities = [a.last_worker_identity for a in pending if a.last_worker_identity]
        running_it[:] = [int(i.split("@", 1)[0]) for i in identities]
        return bool(running_it)

    await wait_until(activity_found, what="the worker running the install activity known")
    victim, survivor = (first, second) if running_it[0] == first.pid else (second, first)
    assert running_it[0] == victim.pid
    victim.kill()
    node.backend.assert_mid_download()
    result = await install_result(handle)

    assert survivor.running()
    await assert_survived(result, node.backend, node.backends_dir, node.cancels)
