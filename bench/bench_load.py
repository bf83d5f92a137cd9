"""Benchmark: thousands of installs in flight, on one worker or shared by two.

Every install is held by the node (``hold`` seconds, a progress event every ``interval``),
then answered. The workers run with the defaults ``backend-install-worker`` runs with
(``durable_installs.orchestrator.sizing``). The client never holds a long poll per install:
it counts the open installs in visibility every few seconds (docs/operating/scale.md, "Waiting
on many installs"), and reads a sample of histories afterwards.

Reported, per run: when the last install completed against the hold; workflow-task
schedule-to-start latency and timeouts (from a sample of histories); each worker's RSS at its
highest, per install it carried, and its CPU per install; requests the node got per install;
heartbeats and progress reports (signals) sent, per install.

``python -m bench.bench_load [--quick] [--count N] [--hold S] [--workers K] [--sizing S]``;
``run_all`` runs the issue's rows: 3,000 on one worker held 60 s, then 5,000 on one and on
two workers and 10,000 on two (full mode); quick mode is one row of 300.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowHandle

from bench.cli import run_one
from bench.node import WildcardNode
from bench.report import RESULTS_DIR, Report, median, percentile
from bench.stack import CpuMeter, Stack, WorkerProcess, cpu_seconds, stack
from bench.workloads import run_id, start_install, warm_up
from durable_installs.contracts.names import INSTALL_WORKFLOW

NAME = "load"
COUNT_EVERY = 5.0
"""Seconds between two visibility counts of the open installs."""
HISTORY_SAMPLE = 300
START_CONCURRENCY = 200
"""Starts in flight at once from the client (a rollout's batch starts 100 at a time)."""


@dataclass(frozen=True)
class Row:
    """One run of the benchmark."""

    count: int
    hold: float
    workers: int
    interval: float = 1.0
    sizing: str = "default"
    limit: float = 1800.0
    """Seconds after which the run stops waiting (and reports what completed)."""

    @property
    def label(self) -> str:
        return f"{self.count} on {self.workers} worker(s), held {self.hold:g}s"


FULL = [Row(3000, 60.0, 1), Row(5000, 120.0, 1), Row(5000, 120.0, 2), Row(10000, 120.0, 2)]
QUICK = [Row(300, 20.0, 1)]


async def open_installs(client: Client) -> int:
    query = f"WorkflowType = '{INSTALL_WORKFLOW}' AND ExecutionStatus = 'Running'"
    return (await client.count_workflows(query)).count


async def start_all(s: Stack, tag: str, count: int) -> list[WorkflowHandle[object, object]]:
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def one(i: int) -> WorkflowHandle[object, object]:
        async with gate:
            return await start_install(s, f"load-{tag}-{i}")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def history_figures(
    handles: list[WorkflowHandle[object, object]],
) -> dict[str, float]:
    """Workflow-task latency and timeouts, and signals, from a sample of histories."""
    sample = random.Random(7).sample(handles, min(HISTORY_SAMPLE, len(handles)))
    gate = asyncio.Semaphore(16)
    latencies: list[float] = []
    timeouts = sticky_timeouts = signals = 0

    async def one(handle: WorkflowHandle[object, object]) -> None:
        nonlocal timeouts, sticky_timeouts, signals
        async with gate:
            history = await handle.fetch_history()
        scheduled = None
        for event in history.events:
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                scheduled = event.event_time.ToDatetime()
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and scheduled is not None:
                latencies.append((event.event_time.ToDatetime() - scheduled).total_seconds())
                scheduled = None
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                attributes = event.workflow_task_timed_out_event_attributes
                if attributes.timeout_type == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START:
                    sticky_timeouts += 1  # waited out the sticky queue: any worker takes it
                else:
                    timeouts += 1  # started and not completed in time
            elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                signals += 1

    await asyncio.gather(*(one(h) for h in sample))
    scale = len(handles) / max(len(sample), 1)
    return {
        "wft_latency_median_s": median(latencies),
        "wft_latency_p99_s": percentile(latencies, 99),
        "wft_latency_max_s": max(latencies, default=0.0),
        "wft_timeouts": timeouts * scale,
        "wft_sticky_timeouts": sticky_timeouts * scale,
        "signals_per_install": signals / max(len(sample), 1),
    }


def worker_stats(worker: WorkerProcess) -> dict[str, float]:
    """The ``stats`` line a bench worker prints when it stops."""
    for line in reversed(worker.log.read_text(errors="replace").splitlines()):
        if line.startswith("stats "):
            stats: dict[str, float] = json.loads(line.removeprefix("stats "))
            return stats
    return {}


async def watch_workers(workers: list[WorkerProcess], rss: list[list[float]]) -> None:
    while True:
        for samples, worker in zip(rss, workers, strict=True):
            samples.append(worker.rss_mb())
        await asyncio.sleep(1.0)


async def run_row(row: Row, report: Report) -> None:
    worker_args = ["--sizing", row.sizing]
    async with stack(f"{NAME}-{row.count}x{row.workers}", row.workers, worker_args) as s:
        instant = await WildcardNode(s.nc).start()
        await warm_up(s, rounds=1)
        await instant.stop()
        idle = [w.rss_mb() for w in s.workers]
        node = await WildcardNode(s.nc, hold_seconds=row.hold, event_interval=row.interval).start()
        rss: list[list[float]] = [[] for _ in s.workers]
        watcher = asyncio.create_task(watch_workers(s.workers, rss))
        tag = run_id()
        meters = [CpuMeter(w) for w in s.workers]
        for meter in meters:
            meter.__enter__()
        server_cpu = cpu_seconds(s.server_pid) if s.server_pid else 0.0
        began = time.perf_counter()
        handles = await start_all(s, tag, row.count)
        started = time.perf_counter() - began
        left = row.count
        while left and time.perf_counter() - began < row.limit:
            await asyncio.sleep(COUNT_EVERY)
            left = await open_installs(s.client)
        elapsed = time.perf_counter() - began
        for meter in meters:
            meter.__exit__(None, None, None)
        if s.server_pid:
            server_cpu = cpu_seconds(s.server_pid) - server_cpu
        watcher.cancel()
        await node.stop()
        figures = await history_figures(handles)
        requests = node.requests
    stats = [worker_stats(w) for w in s.workers]
    late_max = max((st.get("event_loop_late_max", 0.0) for st in stats), default=0.0)
    heartbeats = sum(st.get("heartbeats", 0) for st in stats)
    reports = sum(st.get("reports", 0) for st in stats)
    per_worker = row.count / row.workers
    rss_max = [max(samples, default=0.0) for samples in rss]
    report.row(
        row.label,
        completed=row.count - left,
        start_all_s=started,
        all_done_s=elapsed,
        over_hold_s=elapsed - row.hold,
        wft_latency_p99_s=figures["wft_latency_p99_s"],
        wft_latency_max_s=figures["wft_latency_max_s"],
        wft_timeouts=figures["wft_timeouts"],
        wft_sticky_timeouts=figures["wft_sticky_timeouts"],
        rss_max_mb=max(rss_max),
        kb_per_install=max((r - i) * 1024 / per_worker for r, i in zip(rss_max, idle, strict=True)),
        cpu_ms_per_install=sum(m.cpu for m in meters) * 1000 / row.count,
        server_cpu_ms_per_install=server_cpu * 1000 / row.count,
        requests_per_install=requests / row.count,
        event_loop_late_max_s=late_max,
        heartbeats_per_install=heartbeats / row.count,
        reports_per_install=reports / row.count,
    )
    if row == FULL[0]:
        report.check("3,000/1 worker: all complete", (row.count - left) / row.count, 1.0, ">=")
        report.check("3,000/1 worker: last done after hold", elapsed - row.hold, 120, "<=", " s")
        report.check("3,000/1 worker: RSS max", max(rss_max), 1536, "<=", " MB")
    if row.count == 10000:
        report.check("10,000/2 workers: all complete", (row.count - left) / row.count, 1.0, ">=")
        report.check(
            "10,000/2 workers: workflow tasks started, not done in time",
            figures["wft_timeouts"],
            0,
            "<=",
        )
        report.check(
            "10,000/2 workers: RSS per install per worker",
            max((r - i) * 1024 / per_worker for r, i in zip(rss_max, idle, strict=True)),
            150,
            "<=",
            " KB",
        )
    report.check(f"{row.label}: requests per install", requests / row.count, 1.0, "<=")


async def run(quick: bool, rows: list[Row] | None = None) -> Report:
    report = Report(NAME, quick)
    for row in rows or (QUICK if quick else FULL):
        await run_row(row, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=int)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sizing", choices=["default", "wide"], default="default")
    args = parser.parse_args()
    rows = None
    if args.count:
        rows = [Row(args.count, args.hold, args.workers, args.interval, args.sizing)]

    async def one(quick: bool) -> Report:
        return await run(quick, rows)

    asyncio.run(run_one(one, args.quick, RESULTS_DIR))


if __name__ == "__main__":
    main()
