"""``DriftCheckWorkflow`` on a mixed fleet: node agents (announced), a stock worker and a node
that is gone (both given as explicit targets), against a gallery that moved on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from durable_installs.contracts.drift import DriftCheckInput, DriftReport, DriftState
from durable_installs.contracts.names import DRIFT_REPORT_QUERY
from durable_installs.devstack.sample_backend import Gallery, SampleBackend, build_archive
from durable_installs.node_agent import Agent
from durable_installs.protocol.messages import BackendInstallRequest, NodeBackendInfo
from tests.fake_node import FakeNode
from tests.node_agent.conftest import fast_config
from tests.workflow_helpers import assert_replays
from workflows.drift import DriftCheckWorkflow


@dataclass
class MixedFleet:
    outdated: str
    current: str
    stock: str
    gone: str
    gallery: Gallery


@pytest.fixture
async def mixed_fleet(
    nc: NATS,
    nats_url: str,
    tmp_path: Path,
    gallery: Gallery,
    archives: Path,
    port_range: tuple[int, int],
) -> AsyncIterator[MixedFleet]:
    """Two agents installed at different times, one stock worker, one id nobody answers."""
    suffix = uuid.uuid4().hex[:8]
    low = port_range[0]
    agents: list[Agent] = []

    async def agent(name: str, ports: tuple[int, int]) -> str:
        node_id = f"{name}-{suffix}"
        config = fast_config(node_id, tmp_path / name, gallery, nats_url, ports)
        started = Agent(replace(config, duplicate_check_interval=0))
        await started.start()
        agents.append(started)
        return node_id

    try:
        gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), archives)
        gallery.add_backend(SampleBackend("cpu-old", version="1.0.0"), archives)
        outdated = await agent("outdated", (low, low + 9))
        for backend in ("cpu-echo", "cpu-old"):
            assert (await agents[0].service.install(BackendInstallRequest(backend=backend))).success

        gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives)
        gallery.entries = [e for e in gallery.entries if e["name"] != "cpu-old"]
        plain = build_archive(archives / "cpu-plain.tar.gz", SampleBackend("cpu-plain"))
        gallery.add({"name": "cpu-plain", "uri": plain.uri, "sha256": plain.sha256})
        current = await agent("current", (low + 10, low + 19))
        for backend in ("cpu-echo", "cpu-plain"):
            assert (await agents[1].service.install(BackendInstallRequest(backend=backend))).success
        for started in agents:
            assert started.announcer is not None
            await started.announcer.announce()

        stock = FakeNode(nc, f"stock-{suffix}")
        stock.backends = [NodeBackendInfo(name="cpu-echo")]
        await stock.start()
        yield MixedFleet(outdated, current, stock.node_id, f"gone-{suffix}", gallery)
    finally:
        for started in agents:
            await started.stop()


def drift_input(fleet: MixedFleet, **fields: Any) -> DriftCheckInput:
    return DriftCheckInput.model_validate(
        {
            "backend_galleries": [fleet.gallery.config.model_dump()],
            "nodes": [fleet.stock, fleet.gone],
            "request_timeout_seconds": 2.0,
            **fields,
        }
    )


def states(report: DriftReport, node_id: str) -> dict[str, str]:
    (node,) = [n for n in report.nodes if n.node_id == node_id]
    return {b.name: b.state.value for b in node.backends}


async def test_drift_classifies_every_backend_of_a_mixed_fleet_and_starts_nothing(
    client: Client, task_queue: str, mixed_fleet: MixedFleet
) -> None:
    handle = await client.start_workflow(
        DriftCheckWorkflow.run,
        drift_input(mixed_fleet),
        id=f"drift-test-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    report = await handle.result()

    assert states(report, mixed_fleet.outdated) == {
        "cpu-echo": DriftState.OUTDATED,
        "cpu-old": DriftState.NOT_IN_GALLERY,
    }
    assert states(report, mixed_fleet.current) == {
        "cpu-echo": DriftState.UP_TO_DATE,
        "cpu-plain": DriftState.UP_TO_DATE,
    }
    assert states(report, mixed_fleet.stock) == {"cpu-echo": DriftState.UNKNOWN}
    (gone,) = [n for n in report.nodes if n.node_id == mixed_fleet.gone]
    assert not gone.answered and "no responders" in gone.error
    outdated = report.outdated()["cpu-echo"]
    assert mixed_fleet.outdated in outdated and mixed_fleet.current not in outdated
    assert report.upgrades == []
    await assert_replays(handle)


@workflow.defn(name="RolloutBackendWorkflow", sandboxed=False)
class RecordingRollout:
    """Stands in for the rollout on its own task queue: returns the input it was started with."""

    @workflow.run
    async def run(self, input: dict[str, Any]) -> dict[str, Any]:
        return input


async def test_with_upgrades_enabled_drift_starts_one_upgrade_rollout_for_the_outdated_nodes(
    client: Client, task_queue: str, mixed_fleet: MixedFleet
) -> None:
    rollout_queue = f"rollout-stub-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=rollout_queue, workflows=[RecordingRollout]):
        handle = await client.start_workflow(
            DriftCheckWorkflow.run,
            drift_input(
                mixed_fleet,
                start_upgrades=True,
                upgrade_task_queue=rollout_queue,
                upgrade_options={"max_unavailable": 2},
                backends=["cpu-echo"],
            ),
            id=f"drift-test-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        report = await handle.result()
        (upgrade,) = report.upgrades
        started = await client.get_workflow_handle(upgrade.workflow_id).result()

    assert upgrade.backend == "cpu-echo"
    assert mixed_fleet.outdated in upgrade.targets
    assert mixed_fleet.current not in upgrade.targets
    assert mixed_fleet.stock not in upgrade.targets, "unknown is never upgraded blindly"
    assert started["action"] == "upgrade"
    assert started["backend"] == "cpu-echo"
    assert {"node_id": mixed_fleet.outdated} in started["targets"]
    assert started["max_unavailable"] == 2
    assert started["backend_galleries"][0]["url"] == mixed_fleet.gallery.config.url
    await assert_replays(handle)


async def test_the_report_query_answers_the_report_under_the_name_it_always_had(
    client: Client, task_queue: str, gallery: Gallery
) -> None:
    handle = await client.start_workflow(
        DriftCheckWorkflow.run,
        DriftCheckInput(backend_galleries=[gallery.config], use_registry=False),
        id=f"drift-test-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    report = await handle.result()

    assert report.nodes == [] and report.upgrades == []
    assert await handle.query(DRIFT_REPORT_QUERY, result_type=DriftReport) == report
