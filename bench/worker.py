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
import logging
import os
import signal
from datetime import timedelta

import nats
from temporalio.worker import Worker

from bench.baseline import MinimalActivities, MinimalWorkflow
from durable_installs.orchestrator.worker import (
    compile_workflow_modules,
    connect_temporal,
    create_worker,
)

INSTALL_QUEUE = "bench-install"
BASELINE_QUEUE = "bench-baseline"
MAX_CONCURRENT_ACTIVITIES = 2000
"""Above the 1,000 installs in flight of the many-installs benchmark (the SDK default is 100)."""
MAX_CACHED_WORKFLOWS = 3000
"""Keeps every workflow of a benchmark cached, so no figure includes cache-eviction replays."""


GRACEFUL_SHUTDOWN = timedelta(seconds=1)


async def serve(temporal_address: str, nats_url: str) -> None:
    client = await connect_temporal(temporal_address)
    nc = await nats.connect(nats_url, name="bench-worker", max_reconnect_attempts=-1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The same limits for the project's worker and the baseline's.
    install = create_worker(
        client,
        nc,
        INSTALL_QUEUE,
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )
    compile_workflow_modules([MinimalWorkflow])  # as create_worker does for the project's
    baseline = Worker(
        client,
        task_queue=BASELINE_QUEUE,
        workflows=[MinimalWorkflow],
        activities=[MinimalActivities(nc).request],
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )
    async with install, baseline:
        print(f"ready {os.getpid()}", flush=True)
        await stop.wait()
    await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--temporal-address", required=True)
    parser.add_argument("--nats-url", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.temporal_address, args.nats_url))


if __name__ == "__main__":
    main()
