"""The Temporal dev server is SIGKILLed mid-download and stays down longer than the install's
heartbeat timeout, then restarts on its port with the same database. The node must keep
installing (no cancel), and the install must complete from its surviving history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.components import TemporalServer
from tests.chaos.conftest import Harness
from tests.chaos.scenario import (
    CHAOS_INPUT,
    MIB,
    assert_survived,
    install_input,
    install_result,
    start_install,
)
from tests.workflow_helpers import wait_until

pytestmark = pytest.mark.timeout(300)

OUTAGE_SECONDS = 8.0
"""Longer than the heartbeat timeout, so the server times the install's attempt out.

The download (8 MiB at 256 KiB/s, about 32 s) outlasts the outage and the restart, so the
install activity is still waiting on the node when Temporal answers again."""


async def test_temporal_down_longer_than_the_heartbeat_timeout_and_the_node_keeps_installing(
    chaos: Harness, nats_url: str, tmp_path: Path
) -> None:
    assert CHAOS_INPUT["heartbeat_timeout_seconds"] < OUTAGE_SECONDS
    temporal = TemporalServer(tmp_path)
    chaos.adopt(temporal)
    await temporal.start()
    client = await temporal.connect()
    node = await chaos.node(nats_url, size=8 * MIB, rate=256 * 1024)
    await chaos.worker(temporal.address, nats_url)
    handle = await start_install(
        client, chaos.task_queue, install_input(node.node_id, node.backend.name)
    )

    async def heartbeating() -> bool:
        pending = (await handle.describe()).raw_description.pending_activities
        return any(a.HasField("heartbeat_details") for a in pending)

    await wait_until(heartbeating, within=60, what="the install activity heartbeating")
    await node.backend.served_at_least(0.1)

    temporal.kill()
    node.backend.assert_mid_download()
    await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
    await temporal.start()
    result = await install_result(handle)

    await assert_survived(result, node.backend, node.backends_dir, node.cancels)
