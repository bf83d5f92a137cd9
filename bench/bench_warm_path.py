"""Benchmark 7 (issue 16): the warm path at the limit, install vs minimal started the same way.

Three comparisons, each against the minimal one-activity workflow started the same way in the
same run, with the node answering at once:

1. **eager, in process** — the client and the workers share one process and one Temporal
   client, as in ``backendctl install``, a rollout's ``install_slots`` batches and
   ``await_install``; both start with ``request_eager_start=True``, so the server hands the
   first workflow task back in the start response. Rounds interleave install and minimal
   (order alternating). Target: install median <= 0.6x minimal; p95 and p99 reported.
2. **eager burst** — N of each started at once the same way; completions/s. Rounds are
   pairs (one burst of each, back to back, the order alternating) and the figure is the
   median of the pairs' ratios: the load of a shared machine drifts between rounds, and a
   pair sees the same load twice. Target >= 1.2x; the lowest and highest pair and the ratio
   of the two medians are reported too.
3. **temporal CLI** — ``temporal workflow execute`` against the benchmark's worker process
   (a separate process: no eager start possible), process start included for both.
   Target: install median <= 0.8x minimal.

Run: ``python -m bench.bench_warm_path [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
from temporalio.client import Client
from temporalio.worker import Worker

from bench.baseline import MINIMAL_WORKFLOW, MinimalActivities, MinimalWorkflow
from bench.cli import main
from bench.node import WildcardNode
from bench.report import Report, median, percentile
from bench.stack import Stack, stack
from bench.worker import GRACEFUL_SHUTDOWN, MAX_CACHED_WORKFLOWS, MAX_CONCURRENT_ACTIVITIES
from bench.workloads import install_input, run_id
from durable_installs.contracts.install import InstallBackendResult
from durable_installs.contracts.names import INSTALL_WORKFLOW
from durable_installs.orchestrator.worker import compile_workflow_modules, create_worker
from durable_installs.servers import find_binary

NAME = "warm_path"

EAGER_SLOTS = 500
"""Workflow-task slots of both in-process workers. The server answers a start eagerly only
while the starting process's worker has a free slot (the SDK default is 100), so a burst
larger than that was mostly dispatched the ordinary way; above the largest burst (300), every
start of a burst can be eager, for both workflows alike."""

Timed = Callable[[str], Awaitable["Sample"]]


class Sample:
    """One start-to-result time and how the start went."""

    def __init__(self, seconds: float, eager: bool, fast_path: bool = False) -> None:
        self.seconds = seconds
        self.eager = eager
        self.fast_path = fast_path


@contextlib.asynccontextmanager
async def in_process_workers(s: Stack) -> AsyncIterator[tuple[str, str]]:
    """The project's worker and the baseline's, on the benchmark's own client (eager start
    needs the starting client to know the worker), with their own NATS connection."""
    url = s.nc.connected_url.geturl() if s.nc.connected_url else ""
    nc = await nats.connect(url, name="bench-in-process-worker")
    install_queue, baseline_queue = f"eager-install-{run_id()}", f"eager-minimal-{run_id()}"
    compile_workflow_modules([MinimalWorkflow])  # as create_worker does for the project's
    try:
        async with (
            create_worker(
                s.client,
                nc,
                install_queue,
                max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
                max_cached_workflows=MAX_CACHED_WORKFLOWS,
                max_concurrent_workflow_tasks=EAGER_SLOTS,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            ),
            Worker(
                s.client,
                task_queue=baseline_queue,
                workflows=[MinimalWorkflow],
                activities=[MinimalActivities(nc).request],
                max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
                max_cached_workflows=MAX_CACHED_WORKFLOWS,
                max_concurrent_workflow_tasks=EAGER_SLOTS,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            ),
        ):
            yield install_queue, baseline_queue
    finally:
        await nc.drain()


def eager_install(client: Client, queue: str) -> Timed:
    async def timed(node_id: str) -> Sample:
        began = time.perf_counter()
        handle = await client.start_workflow(
            INSTALL_WORKFLOW,
            install_input(node_id),
            id=f"install-{node_id}",
            task_queue=queue,
            result_type=InstallBackendResult,
            request_eager_start=True,
        )
        result = await handle.result()
        return Sample(time.perf_counter() - began, _eager(handle), result.fast_path)

    return timed


def eager_minimal(client: Client, queue: str) -> Timed:
    async def timed(node_id: str) -> Sample:
        began = time.perf_counter()
        handle = await client.start_workflow(
            MINIMAL_WORKFLOW,
            node_id,
            id=f"minimal-{node_id}",
            task_queue=queue,
            result_type=str,
            request_eager_start=True,
        )
        await handle.result()
        return Sample(time.perf_counter() - began, _eager(handle))

    return timed


def _eager(handle: object) -> bool:
    """Whether the server answered the start with the first workflow task (SDK internals)."""
    return bool(getattr(handle, "__temporal_eagerly_started", False))


def cli_execute(s: Stack, workflow_type: str, queue: str) -> Timed:
    """``temporal workflow execute``: starts, waits for the result, exits."""
    address = s.client.service_client.config.target_host
    temporal = find_binary("temporal")

    async def timed(node_id: str) -> Sample:
        if workflow_type == INSTALL_WORKFLOW:
            body = install_input(node_id).model_dump(include={"node_id", "backend", "model_id"})
        else:
            body = node_id  # type: ignore[assignment]
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *(temporal, "workflow", "execute", "--address", address, "--type", workflow_type),
            *("--task-queue", queue, "--workflow-id", f"cli-{workflow_type}-{node_id}"),
            *("--input", json.dumps(body)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"temporal workflow execute failed: {err.decode()[-300:]}")
        return Sample(time.perf_counter() - began, eager=False)

    return timed


async def interleaved(
    workloads: dict[str, Timed], rounds: int, tag: str
) -> dict[str, list[Sample]]:
    """``rounds`` of each workload, the order alternating every round."""
    samples: dict[str, list[Sample]] = {name: [] for name in workloads}
    names = list(workloads)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            samples[name].append(await workloads[name](f"{tag}-{name}-{i}"))
    return samples


async def burst_rate(workload: Timed, count: int, tag: str) -> tuple[float, float]:
    """Completions per second of ``count`` starts at once, and the share started eagerly."""
    began = time.perf_counter()
    samples = await asyncio.gather(*(workload(f"{tag}-{i}") for i in range(count)))
    return count / (time.perf_counter() - began), sum(s.eager for s in samples) / count


def latency_rows(report: Report, label: str, samples: dict[str, list[Sample]]) -> float:
    """A row per workload and the install/minimal median ratio, which it returns."""
    for name, values in samples.items():
        seconds = [v.seconds for v in values]
        report.row(
            f"{label} {name}",
            median_ms=median(seconds) * 1e3,
            p95_ms=percentile(seconds, 95) * 1e3,
            p99_ms=percentile(seconds, 99) * 1e3,
            eager=sum(v.eager for v in values) / max(len(values), 1),
            fast_path=sum(v.fast_path for v in values) / max(len(values), 1),
            n=len(values),
        )
    ratio = {
        pct: percentile([v.seconds for v in samples["install"]], pct)
        / percentile([v.seconds for v in samples["minimal"]], pct)
        for pct in (95, 99)
    }
    med = median([v.seconds for v in samples["install"]]) / median(
        [v.seconds for v in samples["minimal"]]
    )
    report.row(f"{label} ratio install/minimal", median=med, p95=ratio[95], p99=ratio[99])
    return med


async def run(quick: bool) -> Report:
    rounds, count, bursts, cli_rounds = (40, 100, 3, 10) if quick else (300, 200, 7, 60)
    report = Report(NAME, quick)
    async with stack(NAME) as s:
        node = await WildcardNode(s.nc).start()
        tag = run_id()
        async with in_process_workers(s) as (install_queue, baseline_queue):
            eager = {
                "minimal": eager_minimal(s.client, baseline_queue),
                "install": eager_install(s.client, install_queue),
            }
            await interleaved(eager, 5, f"warm-{tag}")
            latency = await interleaved(eager, rounds, f"eager-{tag}")
            rates: dict[str, list[float]] = {"minimal": [], "install": []}
            eager_shares: dict[str, list[float]] = {"minimal": [], "install": []}
            for r in range(bursts):  # one pair per round, the order alternating
                for name in list(eager)[:: 1 - 2 * (r % 2)]:
                    rate, share = await burst_rate(eager[name], count, f"b{r}-{name}-{tag}")
                    rates[name].append(rate)
                    eager_shares[name].append(share)
        cli = {
            "minimal": cli_execute(s, MINIMAL_WORKFLOW, s.baseline_queue),
            "install": cli_execute(s, INSTALL_WORKFLOW, s.install_queue),
        }
        await interleaved(cli, 2, f"cliwarm-{tag}")
        by_cli = await interleaved(cli, cli_rounds, f"cli-{tag}")
        await node.stop()
    eager_ratio = latency_rows(report, "eager", latency)
    for name, values in rates.items():
        report.row(
            f"eager burst {name}",
            per_second=median(values),
            best=max(values),
            eager=min(eager_shares[name]),
            n=count,
        )
    pairs = [i / m for i, m in zip(rates["install"], rates["minimal"], strict=True)]
    rate_ratio = median(pairs)
    report.row(
        "eager burst ratio install/minimal",
        per_second=rate_ratio,
        lowest=min(pairs),
        highest=max(pairs),
        of_medians=median(rates["install"]) / median(rates["minimal"]),
        rounds=bursts,
    )
    cli_ratio = latency_rows(report, "cli", by_cli)
    report.check("eager median install / minimal", eager_ratio, 0.6, "<=", "x")
    report.check("eager completions/s install / minimal", rate_ratio, 1.2, ">=", "x")
    report.check("CLI median install / minimal", cli_ratio, 0.8, "<=", "x")
    return report


if __name__ == "__main__":
    main(run)
