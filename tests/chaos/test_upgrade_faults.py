"""Faults in the middle of an upgrade's re-pull: the node agent SIGKILLed, Temporal down.

Each test installs the node's slow backend for one slot, starts ``UpgradeBackendWorkflow``,
and strikes while the agent downloads the backend again. The upgrade must still end verified:
``backend.list`` shows the new install and the slot runs again from the new files, once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from durable_installs.contracts.upgrade import UpgradeBackendInput, UpgradeBackendResult
from tests.chaos.components import TemporalServer
from tests.chaos.conftest import ChaosNode, Harness
from tests.chaos.scenario import (
    INSTALL_WITHIN,
    MIB,
    backend_processes,
    install_input,
    install_result,
    start_install,
    wait_closed,
)
from tests.workflow_helpers import wait_for
from workflows.upgrade_backend import UpgradeBackendWorkflow

pytestmark = pytest.mark.timeout(300)

UPGRADE_INPUT: dict[str, Any] = {
    "probe_interval_seconds": 0.5,
    "retry_backoff_seconds": 0.5,
    "retry_backoff_max_seconds": 2,
    "liveness_check_interval_seconds": 1,
    "heartbeat_timeout_seconds": 5,
    "deadline_seconds": 600,
    "health_gate_seconds": 120,
    "install_options": {"probe_interval_seconds": 0.5, "retry_backoff_seconds": 0.5},
}
"""Test intervals; the upgrade request itself waits as long as in production (900 s), so only
a liveness check or an inspection, never a request timeout, can notice the fault."""


async def _installed_then_upgrading(
    chaos: Harness, client: Client, node: ChaosNode
) -> WorkflowHandle[UpgradeBackendWorkflow, UpgradeBackendResult]:
    """The slot installed once, then an upgrade started and well into its download."""
    await install_result(
        await start_install(
            client, chaos.task_queue, install_input(node.node_id, node.backend.name)
        )
    )
    first_download = node.backend.bytes_served()
    handle = await client.start_workflow(
        UpgradeBackendWorkflow.run,
        UpgradeBackendInput(node_id=node.node_id, backend=node.backend.name, **UPGRADE_INPUT),
        id=f"chaos-upgrade-{uuid.uuid4().hex[:8]}",
        task_queue=chaos.task_queue,
        execution_timeout=timedelta(minutes=20),
    )
    await wait_for(
        lambda: node.backend.bytes_served() >= first_download + node.backend.archive_size // 4,
        within=INSTALL_WITHIN,
        what="a quarter of the upgrade's download served",
    )
    return handle


async def _result(
    handle: WorkflowHandle[UpgradeBackendWorkflow, UpgradeBackendResult],
) -> UpgradeBackendResult:
    await wait_closed(handle, INSTALL_WITHIN * 2, "the upgrade closed")
    return await handle.result()


def _assert_upgraded_once(result: UpgradeBackendResult, node: ChaosNode) -> None:
    assert result.after.installed_at and not result.after.same_install(result.before)
    assert [(s.model_id, s.replica_index, s.healthy) for s in result.slots] == [("chaos", 0, True)]
    processes = backend_processes(node.backends_dir)
    assert len(processes) == 1, f"one backend process for the one slot: {processes}"


async def test_agent_killed_mid_upgrade_restarts_and_the_upgrade_completes_verified(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str
) -> None:
    node = await chaos.node(nats_url, size=4 * MIB, rate=1 * MIB)
    await chaos.worker(temporal_address, nats_url)
    handle = await _installed_then_upgrading(chaos, client, node)

    node.agent.kill()
    await node.agent.start()
    result = await _result(handle)

    _assert_upgraded_once(result, node)
    assert result.requests >= 2, "the upgrade was sent again (same op id) to the new agent"


async def test_temporal_down_mid_upgrade_and_the_upgrade_completes_verified(
    chaos: Harness, nats_url: str, tmp_path: Path
) -> None:
    temporal = TemporalServer(tmp_path)
    chaos.adopt(temporal)
    await temporal.start()
    client = await temporal.connect()
    node = await chaos.node(nats_url, size=6 * MIB, rate=512 * 1024)
    await chaos.worker(temporal.address, nats_url)
    handle = await _installed_then_upgrading(chaos, client, node)

    temporal.kill()
    await asyncio.sleep(8)  # the outage itself, longer than the heartbeat timeout
    await temporal.start()
    result = await _result(handle)

    _assert_upgraded_once(result, node)
