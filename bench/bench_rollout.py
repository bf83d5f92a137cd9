"""Benchmark 5: one fleet rollout over N slots against N install workflows started directly.

Both install the same number of slots on the same worker, the node answering at once. The
rollout hands its slots to ``install_slots`` activities in batches (``max_in_flight`` = N, so
it is never held back by its own limit), keeps its slot table and may continue as new when its
history grows; the direct way is a client starting N workflows at once. Target: rollout time
<= 1.3x the direct starts. Run: ``python -m bench.bench_rollout [--quick]``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from temporalio.api.enums.v1 import EventType

from bench.cli import main
from bench.node import WildcardNode
from bench.report import Report, median
from bench.stack import CpuMeter, Stack, stack
from bench.workloads import burst, install, run_id, warm_up
from durable_installs.contracts.names import ROLLOUT_WORKFLOW
from durable_installs.contracts.rollout import RolloutInput, RolloutStatus

NAME = "rollout"


async def rollout(stack: Stack, count: int, tag: str) -> tuple[float, RolloutStatus]:
    """One rollout over ``count`` nodes (one slot each); seconds start-to-result and status."""
    rollout_input = RolloutInput.model_validate(
        {
            "backend": "llama-cpp",
            "targets": [{"node_id": f"{tag}-{i}", "model_id": "m"} for i in range(count)],
            "max_in_flight": count,
        }
    )
    began = time.perf_counter()
    status = await stack.client.execute_workflow(
        ROLLOUT_WORKFLOW,
        rollout_input,
        id=f"rollout-{tag}",
        task_queue=stack.install_queue,
        result_type=RolloutStatus,
    )
    return time.perf_counter() - began, status


async def history_size(stack: Stack, workflow_id: str) -> tuple[int, int]:
    """Events and workflow tasks in the workflow's last run: the work serialised on it."""
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    completed = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    tasks = sum(1 for event in history.events if event.event_type == completed)
    return len(history.events), tasks


async def run(quick: bool) -> Report:
    count, rounds = (200, 1) if quick else (1000, 3)
    report = Report(NAME, quick)
    times: dict[str, list[float]] = {"independent": [], "rollout": []}
    cpu: dict[str, list[float]] = {"independent": [], "rollout": []}
    runs: list[int] = []
    history: list[tuple[int, int]] = []
    succeeded: list[int] = []
    async with stack(NAME) as s:
        node = await WildcardNode(s.nc).start()
        await warm_up(s, rounds=2)
        for _ in range(rounds):
            with CpuMeter(s.worker) as meter:
                times["independent"].append(await burst(install, s, count, f"ind-{run_id()}"))
            cpu["independent"].append(meter.cpu)
            await asyncio.sleep(1.0)
            tag = f"ro-{run_id()}"
            with CpuMeter(s.worker) as meter:
                elapsed, status = await rollout(s, count, tag)
            times["rollout"].append(elapsed)
            cpu["rollout"].append(meter.cpu)
            runs.append(status.runs)
            history.append(await history_size(s, f"rollout-{tag}"))
            succeeded.append(status.counts.get("succeeded", 0))
            errors = Counter(slot.error for slot in status.slots if slot.error)
            for error, times_seen in errors.most_common(3):
                print(f"  rollout error x{times_seen}: {error}")
            await asyncio.sleep(1.0)
        await node.stop()
    for name in times:
        report.row(
            name,
            seconds=median(times[name]),
            best_s=min(times[name]),
            worker_cpu_s=median(cpu[name]),
            slots=count,
            rounds=rounds,
        )
    report.row(
        "rollout detail",
        runs=max(runs),
        succeeded=min(succeeded),
        history_events=max(events for events, _ in history),
        workflow_tasks=max(tasks for _, tasks in history),
    )
    ratio = median(times["rollout"]) / median(times["independent"])
    report.row(
        "ratio rollout/independent",
        seconds=ratio,
        worker_cpu=median(cpu["rollout"]) / median(cpu["independent"]),
    )
    report.check("rollout time / independent starts", ratio, 1.3, "<=", "x")
    report.check("rollout slots succeeded / slots", min(succeeded) / count, 1.0, ">=")
    return report


if __name__ == "__main__":
    main(run)
