"""A rolling upgrade never has more than ``max_unavailable`` nodes down at once."""

from __future__ import annotations

import uuid

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.client import Client

from bench.upgrade_fleet import HealthServer, UpgradeFleet
from contracts.rollout import NodeState, RolloutInput, RolloutTarget
from workflows.rollout import RolloutBackendWorkflow

SLOTS = 2


class CountingFleet(UpgradeFleet):
    """Records, after every upgrade and install, how many nodes miss a slot (are down)."""

    down_counts: list[int]

    def _count(self) -> None:
        self.down_counts.append(sum(1 for n in self.nodes.values() if len(n.running) < SLOTS))

    async def _upgrade(self, msg: Msg) -> None:
        await super()._upgrade(msg)
        self._count()

    async def _install(self, msg: Msg) -> None:
        await super()._install(msg)
        self._count()


async def test_no_more_than_max_unavailable_nodes_are_down_at_once(
    client: Client, task_queue: str, nc: NATS
) -> None:
    health = await HealthServer().start()
    fleet = CountingFleet(nc, health.address)
    fleet.down_counts = []
    nodes = [f"bound-{uuid.uuid4().hex[:6]}-{i}" for i in range(6)]
    for node in nodes:
        fleet.add(node, SLOTS)
    await fleet.start()
    try:
        status = await client.execute_workflow(
            RolloutBackendWorkflow.run,
            RolloutInput(
                backend="llama-cpp",
                action="upgrade",
                targets=[RolloutTarget(node_id=node) for node in nodes],
                max_unavailable=2,
                upgrade_options={"probe_interval_seconds": 0.5},
            ),
            id=f"rollout-bound-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
    finally:
        await fleet.stop()
        await health.stop()

    assert [row.state for row in status.nodes] == [NodeState.SUCCEEDED] * 6
    assert fleet.upgrades == 6
    assert max(fleet.down_counts) <= 2
    assert all(len(fleet.nodes[n].running) == SLOTS for n in nodes)
