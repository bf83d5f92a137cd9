"""Benchmark 3: one node streams progress events fast into one install.

Worker CPU per event is the worker process's CPU time over the streaming window divided by
the events published (and, separately, minus what the same install costs when the node is
quiet). Lag is how old the newest event ``describe`` shows is: the publisher writes its wall
clock into each event's ``current`` field. Targets: < 50 us of worker CPU per event, the newest
event visible within the heartbeat throttle interval (0.8 x the heartbeat timeout), RSS flat.
Run: ``python -m bench.bench_progress [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from temporalio.client import WorkflowHandle

from bench.cli import main
from bench.node import WildcardNode, progress_body
from bench.report import Report, median, percentile
from bench.stack import CpuMeter, Stack, WorkerProcess, stack
from bench.workloads import run_id, start_install, warm_up
from durable_installs.backendctl.progress import pending_install_progress
from durable_installs.contracts.install import (
    InstallBackendInput,
    InstallBackendResult,
    InstallStatus,
)
from durable_installs.protocol import subjects

NAME = "progress"
RATE = 2000
"""Events per second the node publishes."""
TICK = 0.01
HEARTBEAT_TIMEOUT = InstallBackendInput.model_fields["heartbeat_timeout_seconds"].default
QUICK_HEARTBEAT_TIMEOUT = 5.0
"""Quick mode streams for seconds only, so it shortens the timeout to see several heartbeats."""
LAG_ALLOWANCE = 1.0
"""Sampling period (0.5 s) plus the describe round trip: a lag can only be seen this late."""


def throttle(heartbeat_timeout: float) -> float:
    """The SDK sends heartbeats at most this often: 0.8 x the timeout, capped at 60 s."""
    return min(0.8 * heartbeat_timeout, 60.0)


async def publish(stack: Stack, node_id: str, op_id: str, seconds: float) -> int:
    """Publish ``RATE`` events a second in ``TICK`` batches on schedule; the count sent."""
    subject = subjects.progress(node_id, op_id)
    per_tick = round(RATE * TICK)
    sent = 0
    began = time.monotonic()
    next_tick = began
    while time.monotonic() - began < seconds:
        for _ in range(per_tick):
            sent += 1
            await stack.nc.publish(subject, progress_body(node_id, op_id, sent))
        next_tick += TICK
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    await stack.nc.flush()
    return sent


async def describe_lag(
    stack: Stack, handle: WorkflowHandle[object, InstallBackendResult], since: float
) -> float:
    """Staleness of ``describe``: age of the newest event it shows, else time since ``since``."""
    progress = pending_install_progress(await handle.describe(), stack.client.data_converter)
    last = progress.last_event if progress is not None else None
    if last is None or not last.current:
        return time.time() - since
    return time.time() - float(last.current)


async def query_lag(handle: WorkflowHandle[object, InstallBackendResult]) -> float:
    """Age of the newest event the workflow's ``progress`` query shows; -1 for none."""
    status = await handle.query("progress", result_type=InstallStatus)
    if status.last_progress is None or not status.last_progress.current:
        return -1.0
    return time.time() - float(status.last_progress.current)


async def sample(
    stack: Stack,
    handle: WorkflowHandle[object, InstallBackendResult],
    worker: WorkerProcess,
    into: dict[str, list[float]],
) -> None:
    """Every half second: describe lag, query lag, worker RSS."""
    since = time.time()
    while True:
        into["describe"].append(await describe_lag(stack, handle, since))
        into["query"].append(await query_lag(handle))
        into["rss"].append(worker.rss_mb())
        await asyncio.sleep(0.5)


async def run(quick: bool) -> Report:
    seconds = 6.0 if quick else 30.0
    heartbeat_timeout = QUICK_HEARTBEAT_TIMEOUT if quick else HEARTBEAT_TIMEOUT
    report = Report(NAME, quick)
    async with stack(NAME) as s:
        node = await WildcardNode(s.nc).start()
        await warm_up(s, rounds=2)
        await node.stop()
        holder = await WildcardNode(s.nc, hold_seconds=3600, event_interval=0).start()
        node_id = f"stream-{run_id()}"
        handle = await start_install(s, node_id, heartbeat_timeout_seconds=heartbeat_timeout)
        await asyncio.wait_for(holder.arrived.wait(), 30)
        op_id = next(iter(holder.held.values())).op_id
        await asyncio.sleep(1.0)
        with CpuMeter(s.worker) as idle:  # the same install with a quiet node
            await asyncio.sleep(min(seconds, 5.0))
        samples: dict[str, list[float]] = {"describe": [], "query": [], "rss": []}
        sampler = asyncio.create_task(sample(s, handle, s.worker, samples))
        with CpuMeter(s.worker) as busy:
            sent = await publish(s, node_id, op_id, seconds)
        await asyncio.sleep(1.0)  # let the last heartbeat and report land
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await holder.release_all()
        result = await handle.result()
        await holder.stop()
    idle_cpu_per_s = idle.cpu / idle.wall
    per_event = busy.cpu / sent
    extra_per_event = (busy.cpu - idle_cpu_per_s * busy.wall) / sent
    seen = samples["describe"]
    queried = [lag for lag in samples["query"] if lag >= 0]
    rss = samples["rss"]
    third = max(1, len(rss) // 3)
    growth = median(rss[-third:]) - median(rss[:third])
    report.row(
        "stream",
        events=sent,
        seconds=seconds,
        rate=sent / busy.wall,
        received=result.progress_events,
    )
    report.row(
        "worker cpu",
        us_per_event=per_event * 1e6,
        us_per_event_above_idle=extra_per_event * 1e6,
        busy_cores=busy.cpu / busy.wall,
        idle_cores=idle_cpu_per_s,
    )
    report.row(
        "describe lag",
        median_s=median(seen),
        p95_s=percentile(seen, 95),
        max_s=max(seen, default=-1),
        samples=len(seen),
    )
    report.row("query lag", median_s=median(queried), max_s=max(queried, default=-1))
    report.row(
        "worker rss",
        first_third_mb=median(rss[:third]),
        last_third_mb=median(rss[-third:]),
        max_mb=max(rss, default=0),
    )
    report.check("worker CPU per event", per_event * 1e6, 50, "<=", " us")
    limit = throttle(heartbeat_timeout)
    report.row("heartbeat", timeout_s=heartbeat_timeout, throttle_s=limit)
    report.check(
        "max describe lag", max(seen, default=float("inf")), limit + LAG_ALLOWANCE, "<=", " s"
    )
    report.check("RSS growth while streaming", growth, 20, "<=", " MiB")
    report.check("events received / published", result.progress_events / sent, 1.0, ">=")
    return report


if __name__ == "__main__":
    main(run)
