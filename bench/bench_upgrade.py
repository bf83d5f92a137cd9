"""Benchmark 7: a rolling upgrade of S slots on N nodes against the same upgrades started directly.

The rollout (``action: upgrade``, ``max_unavailable`` M) runs one ``UpgradeBackendWorkflow``
per node, each inspecting the node, sending ``backend.upgrade``, verifying ``backend.list``,
re-installing the node's slots through ``InstallBackendWorkflow`` and checking their gRPC
``Health``. The baseline starts the same N upgrade workflows from the client. Both
run on the same worker against the same wildcard fleet (``bench/upgrade_fleet.py``), the client
keeping the same ``max_unavailable`` bound (a semaphore), so the ratio is the price of the
rollout workflow, not of the bound. Target: rollout time <= 1.3x those direct starts. The same
upgrades with no bound (all at once) are reported too. History events per slot are reported
(the rollout's own, and everything: rollout + upgrades + installs). Full: 200 slots on 50
nodes, M=10; quick: 40 slots on 10 nodes, M=2. Run: ``python -m bench.bench_upgrade [--quick]``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.cli import main
from bench.report import Report
from bench.stack import CpuMeter, Stack, stack
from bench.upgrade_fleet import BACKEND, HealthServer, UpgradeFleet
from bench.workloads import run_id, warm_up
from durable_installs.contracts.names import ROLLOUT_WORKFLOW, UPGRADE_WORKFLOW
from durable_installs.contracts.rollout import RolloutInput, RolloutStatus
from durable_installs.contracts.upgrade import UpgradeBackendInput, UpgradeBackendResult

NAME = "upgrade"
SLOTS_PER_NODE = 4
FAST: dict[str, Any] = {"probe_interval_seconds": 1, "retry_backoff_seconds": 1}


async def independent(
    stack: Stack, nodes: list[str], tag: str, limit: int
) -> tuple[float, list[str]]:
    """Every node's upgrade started by the client, at most ``limit`` running at once (the
    same rolling constraint, kept by the client instead of a workflow); seconds to the last
    result."""
    began = time.perf_counter()
    ids = [f"upgrade-{tag}-{node}" for node in nodes]
    gate = asyncio.Semaphore(limit)

    async def one(node: str, workflow_id: str) -> None:
        async with gate:
            await stack.client.execute_workflow(
                UPGRADE_WORKFLOW,
                UpgradeBackendInput(node_id=node, backend=BACKEND, **FAST),
                id=workflow_id,
                task_queue=stack.install_queue,
                result_type=UpgradeBackendResult,
            )

    await asyncio.gather(*(one(n, w) for n, w in zip(nodes, ids, strict=True)))
    return time.perf_counter() - began, ids


async def rolling(
    stack: Stack, nodes: list[str], max_unavailable: int, tag: str
) -> tuple[float, RolloutStatus, str]:
    workflow_id = f"rollout-upgrade-{tag}"
    began = time.perf_counter()
    status = await stack.client.execute_workflow(
        ROLLOUT_WORKFLOW,
        RolloutInput(
            backend=BACKEND,
            action="upgrade",
            targets=[{"node_id": node} for node in nodes],
            max_unavailable=max_unavailable,
            upgrade_options=FAST,
        ),
        id=workflow_id,
        task_queue=stack.install_queue,
        result_type=RolloutStatus,
    )
    return time.perf_counter() - began, status, workflow_id


async def events(stack: Stack, workflow_id: str) -> int:
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    return len(history.events)


async def run(quick: bool) -> Report:
    node_count, max_unavailable = (10, 2) if quick else (50, 10)
    slots = node_count * SLOTS_PER_NODE
    report = Report(NAME, quick)
    async with stack(NAME) as s:
        health = await HealthServer().start()
        fleet = await UpgradeFleet(s.nc, health.address).start()
        await warm_up(s, rounds=2)
        tag = run_id()
        base_nodes = [f"ind-{tag}-{i}" for i in range(node_count)]
        free_nodes = [f"all-{tag}-{i}" for i in range(node_count)]
        roll_nodes = [f"ro-{tag}-{i}" for i in range(node_count)]
        for node in base_nodes + free_nodes + roll_nodes:
            fleet.add(node, SLOTS_PER_NODE)
        with CpuMeter(s.worker) as meter:
            base_s, base_ids = await independent(s, base_nodes, tag, max_unavailable)
        base_cpu = meter.cpu
        await asyncio.sleep(1.0)
        free_s, _ = await independent(s, free_nodes, f"all-{tag}", node_count)
        await asyncio.sleep(1.0)
        with CpuMeter(s.worker) as meter:
            roll_s, status, rollout_id = await rolling(s, roll_nodes, max_unavailable, tag)
        roll_cpu = meter.cpu
        succeeded = sum(1 for row in status.nodes if row.state.value == "succeeded")
        rollout_events = await events(s, rollout_id)
        child_events = 0
        for row in status.nodes:
            child_events += await events(s, row.workflow_id)
        install_events = 0
        for node in roll_nodes:
            for i in range(SLOTS_PER_NODE):
                install_events += await events(s, f"install/{node}/{BACKEND}/m{i}/0")
        base_events = sum([await events(s, w) for w in base_ids])
        await fleet.stop()
        await health.stop()
    report.row(
        "independent, M at once",
        seconds=base_s,
        worker_cpu_s=base_cpu,
        nodes=node_count,
        slots=slots,
        max_unavailable=max_unavailable,
    )
    report.row("independent, all at once", seconds=free_s, nodes=node_count, slots=slots)
    report.row(
        "rolling",
        seconds=roll_s,
        worker_cpu_s=roll_cpu,
        nodes=node_count,
        slots=slots,
        max_unavailable=max_unavailable,
    )
    report.row(
        "rolling detail",
        nodes_succeeded=succeeded,
        rollout_events_per_slot=rollout_events / slots,
        all_events_per_slot=(rollout_events + child_events + install_events) / slots,
        independent_upgrade_events_per_slot=base_events / slots,
    )
    ratio = roll_s / base_s
    report.row(
        "ratio rolling/independent",
        seconds=ratio,
        worker_cpu=roll_cpu / base_cpu,
        vs_all_at_once=roll_s / free_s,
    )
    report.check("rolling upgrade time / independent upgrades", ratio, 1.3, "<=", "x")
    report.check("nodes upgraded / nodes", succeeded / node_count, 1.0, ">=")
    return report


if __name__ == "__main__":
    main(run)
