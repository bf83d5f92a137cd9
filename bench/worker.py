"""The worker process every benchmark measures: the project's worker plus the baseline's.

It runs apart from the benchmark (client, fake node, publishers) so that its CPU time and RSS,
read from ``/proc``, are the orchestrator's alone. Both workers share one process, one
Temporal client and one NATS connection, and the same concurrency limits, so the baseline and
the subject run under identical conditions.

``python -m bench.worker --temporal-address H:P --nats-url URL``; prints ``ready <pid>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from datetime import timedelta

import nats
from temporalio.worker import Worker

from activities.budget import ForwardBudget
from bench.baseline import MinimalActivities, MinimalWorkflow
from durable_installs.orchestrator.capacity import CapacityMonitor, monitoring
from durable_installs.orchestrator.sizing import WorkerSizing
from durable_installs.orchestrator.worker import (
    compile_workflow_modules,
    connect_temporal,
    create_worker,
)
from durable_installs.telemetry.temporal import temporal_runtime

INSTALL_QUEUE = "bench-install"
BASELINE_QUEUE = "bench-baseline"
MAX_CONCURRENT_ACTIVITIES = 2000
"""Above the 1,000 installs in flight of the many-installs benchmark (the SDK default is 100)."""
MAX_CACHED_WORKFLOWS = 3000
"""Keeps every workflow of a benchmark cached, so no figure includes cache-eviction replays."""


WIDE = WorkerSizing(
    activities=MAX_CONCURRENT_ACTIVITIES,
    workflow_tasks=100,
    cached_workflows=MAX_CACHED_WORKFLOWS,
)
"""The limits of the earlier benchmarks (the SDK's 100 workflow-task slots)."""

GRACEFUL_SHUTDOWN = timedelta(seconds=1)


async def serve(temporal_address: str, nats_url: str, sizing: str) -> None:
    client = await connect_temporal(temporal_address, runtime=temporal_runtime())
    nc = await nats.connect(nats_url, name="bench-worker", max_reconnect_attempts=-1)
    budget = ForwardBudget()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The same limits for the project's worker and the baseline's: the worker's own defaults
    # (``--sizing default``, what backend-install-worker runs with) or the wide ones.
    limits = WorkerSizing() if sizing == "default" else WIDE
    capacity = CapacityMonitor(budget, limits.activities)
    install = create_worker(
        client,
        nc,
        INSTALL_QUEUE,
        budget=budget,
        sizing=limits,
        capacity=capacity,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )
    compile_workflow_modules([MinimalWorkflow])  # as create_worker does for the project's
    baseline = Worker(
        client,
        task_queue=BASELINE_QUEUE,
        workflows=[MinimalWorkflow],
        activities=[MinimalActivities(nc).request],
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        max_concurrent_activities=limits.activities,
        max_concurrent_local_activities=limits.activities,
        max_concurrent_workflow_tasks=limits.workflow_tasks,
        max_cached_workflows=limits.cached_workflows,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=limits.sticky_seconds),
    )
    async with install, baseline, monitoring(capacity):
        print(f"ready {os.getpid()}", flush=True)
        await stop.wait()
    await nc.drain()
    stats = {
        "heartbeats": budget.heartbeats,
        "reports": budget.reports,
        "event_loop_late_max": round(capacity.late_max, 3),
    }
    print(f"stats {json.dumps(stats)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--temporal-address", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--sizing", choices=["default", "wide"], default="wide")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.temporal_address, args.nats_url, args.sizing))


if __name__ == "__main__":
    main()
