"""A rolling upgrade never has more than ``max_unavailable`` nodes down at once, and stops
cleanly when cancelled."""

from __future__ import annotations

import uuid

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.client import Client

from bench.upgrade_fleet import HealthServer, UpgradeFleet
from durable_installs.contracts.rollout import NodeState, RolloutInput, RolloutTarget
from durable_installs.protocol.messages import BackendListReply, NodeBackendInfo
from tests.workflow_helpers import wait_for
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


async def test_cancelling_a_rolling_upgrade_cancels_the_node_in_flight_and_skips_the_rest(
    client: Client, task_queue: str, nc: NATS
) -> None:
    nodes = [f"held-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    upgrades: list[str] = []
    cancels: list[str] = []

    async def hold(msg: Msg) -> None:  # the re-pull never ends
        if msg.subject.split(".")[1] in nodes:
            upgrades.append(msg.subject.split(".")[1])

    async def listing(msg: Msg) -> None:
        if msg.subject.split(".")[1] not in nodes:
            return
        row = NodeBackendInfo(name="llama-cpp", version="1.0.0", installed_at="t0")
        await msg.respond(BackendListReply(backends=[row]).to_wire())

    async def running(msg: Msg) -> None:
        if msg.subject.split(".")[1] not in nodes:
            return
        await msg.respond(b'{"models": []}')

    async def cancel(msg: Msg) -> None:
        if msg.subject.split(".")[1] in nodes:
            cancels.append(msg.subject.split(".")[1])

    subscriptions = [
        await nc.subscribe("nodes.*.backend.upgrade", cb=hold),
        await nc.subscribe("nodes.*.backend.list", cb=listing),
        await nc.subscribe("nodes.*.models.running", cb=running),
        await nc.subscribe("nodes.*.backend.install.*.cancel", cb=cancel),
    ]
    try:
        handle = await client.start_workflow(
            RolloutBackendWorkflow.run,
            RolloutInput(
                backend="llama-cpp",
                action="upgrade",
                targets=[RolloutTarget(node_id=node) for node in nodes],
                upgrade_options={"liveness_check_interval_seconds": 0},
            ),
            id=f"rollout-cancel-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        await wait_for(lambda: upgrades == nodes[:1], what="the first node's upgrade sent")
        await handle.signal(RolloutBackendWorkflow.cancel_rollout)
        status = await handle.result()
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()

    assert status.cancelled
    assert [row.state for row in status.nodes] == [
        NodeState.CANCELLED,
        NodeState.SKIPPED,
        NodeState.SKIPPED,
    ]
    assert cancels == nodes[:1], "the node was told to stop the re-pull"
