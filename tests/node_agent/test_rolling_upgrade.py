"""A rolling upgrade across a fleet of real node agents, health-gated, with rollback.

Twenty in-process agents (as ``conftest.py`` starts them) on the real NATS server; three get a
broken new version (its process dies at start-up). The fleet is listed through a stand-in of
the fleet registry's ``list_nodes`` activity, registered under that name.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.names import LIST_NODES_ACTIVITY
from durable_installs.contracts.nodes import FleetView, NodeAnnouncement
from durable_installs.contracts.rollout import (
    NodeState,
    RollbackState,
    RolloutInput,
    RolloutStatus,
    RolloutTarget,
)
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent import Agent
from durable_installs.orchestrator.worker import create_worker
from tests.node_agent.conftest import fast_config
from tests.ports import AGENT_PORTS
from tests.workflow_helpers import FAST, assert_replays
from workflows.rollout import RolloutBackendWorkflow

pytestmark = pytest.mark.timeout(400)

FLEET = 20
BROKEN = {5, 6, 7}
INSTALL_OPTIONS: dict[str, Any] = {
    k: v for k, v in FAST.items() if k not in ("install_timeout_seconds", "deadline_seconds")
}


class Fleet:
    """The agents, their ids in order, and what the fleet registry says about them."""

    def __init__(self, prefix: str) -> None:
        self.ids = [f"{prefix}-{i:02d}" for i in range(FLEET)]
        self.agents: dict[str, Agent] = {}
        self.bystander = f"{prefix}-without-the-backend"

    @activity.defn(name="list_nodes")
    async def list_nodes(self) -> FleetView:
        """This test's fleet only (the session's registry also holds other tests' agents),
        plus a node that does not have the backend and must not be targeted."""
        now = datetime.now(UTC)
        nodes = [
            NodeAnnouncement(
                node_id=node_id,
                instance_id=agent.service.instance_id,
                started_at=now,
                announced_at=now,
                backends=agent.service.list_backends().backends or [],
            )
            for node_id, agent in self.agents.items()
        ]
        nodes.append(
            NodeAnnouncement(
                node_id=self.bystander, instance_id="x", started_at=now, announced_at=now
            )
        )
        return FleetView(nodes=nodes)


@pytest.fixture
async def fleet(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[Fleet, Gallery, Gallery]]:
    good = Gallery(path=tmp_path / "good" / "index.yaml", name="good")
    bad = Gallery(path=tmp_path / "bad" / "index.yaml", name="bad")
    for gallery in (good, bad):
        gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), gallery.path.parent)
    fleet = Fleet(f"fleet-{uuid.uuid4().hex[:6]}")
    try:
        for index, node_id in enumerate(fleet.ids):
            gallery = bad if index in BROKEN else good
            config = fast_config(node_id, tmp_path / node_id, gallery, nats_url, _ports())
            agent = Agent(config)
            await agent.start()
            fleet.agents[node_id] = agent
        yield fleet, good, bad
    finally:
        for agent in fleet.agents.values():
            await agent.stop()


def _ports() -> tuple[int, int]:
    return AGENT_PORTS.block()


@pytest.fixture
async def fleet_queue(
    client: Client, nc: NATS, fleet: tuple[Fleet, Gallery, Gallery]
) -> AsyncIterator[str]:
    queue = f"fleet-{uuid.uuid4().hex[:8]}"
    # The worker's own registry, the fleet's registry read standing in for list_nodes.
    worker = create_worker(client, nc, queue, replace={LIST_NODES_ACTIVITY: fleet[0].list_nodes})
    async with worker:
        yield queue


def _version(agent: Agent) -> str:
    rows = agent.service.list_backends().backends or []
    return next(r.version for r in rows if r.name == "cpu-echo")


async def test_a_failed_gate_stops_the_rollout_and_rolls_every_upgraded_node_back(
    client: Client, fleet_queue: str, fleet: tuple[Fleet, Gallery, Gallery]
) -> None:
    nodes, good, bad = fleet
    installed = await client.execute_workflow(
        RolloutBackendWorkflow.run,
        RolloutInput(
            backend="cpu-echo",
            targets=[RolloutTarget(node_id=n, model_id="m") for n in nodes.ids],
            max_in_flight=FLEET,
            install_options=INSTALL_OPTIONS,
        ),
        id=f"fleet-install-{uuid.uuid4().hex[:6]}",
        task_queue=fleet_queue,
    )
    assert installed.counts["succeeded"] == FLEET
    before = {n: nodes.agents[n].service.supervisor.get("m#0") for n in nodes.ids}
    good.add_backend(SampleBackend("cpu-echo", version="2.0.0"), good.path.parent)
    bad.add_backend(SampleBackend("cpu-echo", version="2.0.0", crash=True), bad.path.parent)

    handle = await client.start_workflow(
        RolloutBackendWorkflow.run,
        RolloutInput(
            backend="cpu-echo",
            action="upgrade",
            rollback=True,
            max_failures=len(BROKEN),
            health_gate_seconds=60,
            install_options=INSTALL_OPTIONS,
            upgrade_options={"probe_interval_seconds": 0.5, "retry_backoff_seconds": 0.5},
        ),
        id=f"fleet-upgrade-{uuid.uuid4().hex[:6]}",
        task_queue=fleet_queue,
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "RolloutNodesFailed"
    broken_ids = [nodes.ids[i] for i in sorted(BROKEN)]
    assert cause.message.startswith("upgrade of cpu-echo failed on 3 node(s): ")
    for node_id in broken_ids:
        assert f"{node_id}: " in cause.message
    assert cause.message.count("did not come back healthy") == 3
    status = await handle.query(RolloutBackendWorkflow.status)
    assert isinstance(status, RolloutStatus)
    rows = {row.node_id: row for row in status.nodes}
    assert list(rows) == nodes.ids, "every node reporting the backend, and no other"
    upgraded = nodes.ids[:5]
    for node_id in upgraded:
        row = rows[node_id]
        assert (row.state, row.before_version, row.after_version) == (
            NodeState.SUCCEEDED,
            "1.0.0",
            "2.0.0",
        )
        assert row.rollback is RollbackState.ROLLED_BACK
    for node_id in broken_ids:
        row = rows[node_id]
        assert row.state is NodeState.FAILED and row.rollback is RollbackState.ROLLED_BACK
        assert "died" in row.error or "did not come back healthy" in row.error
        assert row.before_version == "1.0.0"
    for node_id in nodes.ids[8:]:
        assert rows[node_id].state is NodeState.SKIPPED
    for node_id in upgraded + broken_ids:
        agent = nodes.agents[node_id]
        assert _version(agent) == "1.0.0", f"{node_id} is back on the old version"
        proc = agent.service.supervisor.get("m#0")
        assert proc is not None and proc.alive and proc.runs_current_directory()
        assert not (agent.config.backends_dir / ".previous" / "cpu-echo").exists()
    for node_id in nodes.ids[8:]:
        assert _version(nodes.agents[node_id]) == "1.0.0"
        assert nodes.agents[node_id].service.supervisor.get("m#0") is before[node_id]
    await assert_replays(handle)
