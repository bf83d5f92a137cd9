"""Benchmark 4: many long installs in flight in one worker process at once.

Every install is held by the node, which streams one progress event a second for each, then
replies. The worker must keep every activity heartbeating (no heartbeat timeout, so no retry)
while forwarding all those events, within a memory bound, and every install must complete.
Targets: zero heartbeat timeouts, worker RSS < 400 MB, every install completes.
Run: ``python -m bench.bench_many_installs [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import WorkflowHandle

from bench.cli import main
from bench.node import WildcardNode
from bench.report import Report, median
from bench.stack import CpuMeter, WorkerProcess, stack
from bench.workloads import all_closed, run_id, start_install, warm_up
from durable_installs.contracts.install import InstallBackendResult

NAME = "many_installs"


async def watch_rss(worker: WorkerProcess, into: list[float]) -> None:
    while True:
        into.append(worker.rss_mb())
        await asyncio.sleep(1.0)


async def timeouts_and_retries(
    handles: list[WorkflowHandle[object, InstallBackendResult]],
) -> tuple[int, int]:
    """Heartbeat timeouts and activity retries, read from every workflow's history."""
    gate = asyncio.Semaphore(32)

    async def one(handle: WorkflowHandle[object, InstallBackendResult]) -> tuple[int, int]:
        async with gate:
            history = await handle.fetch_history()
        timeouts = retries = 0
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                attrs = event.activity_task_timed_out_event_attributes
                timeouts += attrs.failure.timeout_failure_info.timeout_type == (
                    TimeoutType.TIMEOUT_TYPE_HEARTBEAT
                )
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                retries += event.activity_task_started_event_attributes.attempt > 1
        return timeouts, retries

    counts = await asyncio.gather(*(one(handle) for handle in handles))
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


async def run(quick: bool) -> Report:
    count, hold = (200, 20.0) if quick else (1000, 120.0)
    report = Report(NAME, quick)
    async with stack(NAME) as s:
        instant = await WildcardNode(s.nc).start()
        await warm_up(s, rounds=2)
        await instant.stop()
        rss_idle = s.worker.rss_mb()
        node = await WildcardNode(s.nc, hold_seconds=hold, event_interval=1.0).start()
        rss: list[float] = []
        watcher = asyncio.create_task(watch_rss(s.worker, rss))
        tag = run_id()
        began = time.perf_counter()
        with CpuMeter(s.worker) as meter:
            handles = await asyncio.gather(
                *(start_install(s, f"many-{tag}-{i}") for i in range(count))
            )
            started = time.perf_counter() - began
            await all_closed(s.client, [handle.id for handle in handles], poll=2.0)
            outcomes = await asyncio.gather(
                *(handle.result() for handle in handles), return_exceptions=True
            )  # every one has closed: no long poll waits
        elapsed = time.perf_counter() - began
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await node.stop()
        completed = sum(isinstance(o, InstallBackendResult) for o in outcomes)
        forwarded = sum(o.progress_events for o in outcomes if isinstance(o, InstallBackendResult))
        timeouts, retries = await timeouts_and_retries(handles)
    report.row(
        "installs",
        started=count,
        completed=completed,
        max_in_flight=node.max_held,
        hold_s=hold,
        start_all_s=started,
        all_done_s=elapsed,
    )
    report.row(
        "events",
        published=node.events_published,
        counted_by_workflows=forwarded,
        worker_cpu_us_each=meter.cpu / max(node.events_published, 1) * 1e6,
    )
    report.row(
        "worker",
        busy_cores=meter.cpu / meter.wall,
        rss_idle_mb=rss_idle,
        rss_median_mb=median(rss),
        rss_max_mb=max(rss, default=0),
    )
    report.row("activity", heartbeat_timeouts=timeouts, retries=retries)
    report.check("heartbeat timeouts", timeouts, 0, "<=")
    report.check("worker RSS max", max(rss, default=0), 400, "<=", " MB")
    report.check("installs completed / started", completed / count, 1.0, ">=")
    return report


if __name__ == "__main__":
    main(run)
