"""NATS goes away mid-download: the single server restarts on its port, or one server of a
three-node cluster dies for good. Worker and agent reconnect and the install completes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.chaos.components import NatsCluster, NatsServer
from tests.chaos.conftest import Harness
from tests.chaos.scenario import (
    MIB,
    assert_survived,
    install_input,
    install_result,
    start_install,
)

pytestmark = pytest.mark.timeout(300)

OUTAGE_SECONDS = 2.0
"""How long the single nats-server stays down: several of the clients' reconnect waits."""


async def test_nats_server_killed_mid_download_and_restarted_on_its_port(
    chaos: Harness, client: Client, temporal_address: str, tmp_path: Path
) -> None:
    server = NatsServer("nats", tmp_path)
    chaos.adopt(server)
    await server.start()
    node = await chaos.node(server.url, size=8 * MIB)
    await chaos.worker(temporal_address, server.url)
    handle = await start_install(
        client, chaos.task_queue, install_input(node.node_id, node.backend.name)
    )
    await node.backend.served_at_least(0.2)

    server.kill()
    node.backend.assert_mid_download()
    await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
    await server.start()
    result = await install_result(handle)

    await assert_survived(result, node.backend, node.backends_dir, node.cancels)


async def test_cluster_server_the_worker_is_connected_to_killed_mid_download(
    chaos: Harness, client: Client, temporal_address: str, tmp_path: Path
) -> None:
    async with NatsCluster(tmp_path) as cluster:
        node = await chaos.node(cluster.url, size=8 * MIB)
        worker = await chaos.worker(temporal_address, cluster.url)
        handle = await start_install(
            client, chaos.task_queue, install_input(node.node_id, node.backend.name)
        )
        worker_server = await cluster.server_of(lambda name: name == worker.nats_connection_name())
        await node.backend.served_at_least(0.2)

        worker_server.kill()
        node.backend.assert_mid_download()
        result = await install_result(handle)

        await assert_survived(result, node.backend, node.backends_dir, node.cancels)
