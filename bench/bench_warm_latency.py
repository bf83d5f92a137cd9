"""Benchmark 1: warm-path latency of ``InstallBackendWorkflow`` against the two floors.

The node answers at once (its fast path, most installs). Rounds interleave raw NATS, the
minimal workflow and the install so machine noise hits all three alike. Target: install
median <= 1.2x the minimal workflow's. Run: ``python -m bench.bench_warm_latency [--quick]``.
"""

from __future__ import annotations

from bench.cli import main
from bench.node import WildcardNode
from bench.report import Report, median, percentile
from bench.stack import CpuMeter, stack
from bench.workloads import WORKLOADS, run_id, timed, warm_up

NAME = "warm_latency"


async def run(quick: bool) -> Report:
    rounds = 40 if quick else 300
    report = Report(NAME, quick)
    async with stack(NAME) as s:
        node = await WildcardNode(s.nc).start()
        await warm_up(s)
        samples: dict[str, list[float]] = {name: [] for name in WORKLOADS}
        cpu: dict[str, float] = dict.fromkeys(WORKLOADS, 0.0)
        tag = run_id()
        names = list(WORKLOADS)
        for i in range(rounds):
            for name in names[i % 3 :] + names[: i % 3]:  # rotate the order every round
                with CpuMeter(s.worker) as meter:
                    samples[name].append(await timed(WORKLOADS[name], s, f"lat-{tag}-{i}"))
                cpu[name] += meter.cpu
        await node.stop()
    for name, values in samples.items():
        report.row(
            name,
            median_ms=median(values) * 1e3,
            p95_ms=percentile(values, 95) * 1e3,
            worker_cpu_ms=cpu[name] / rounds * 1e3,
            n=len(values),
        )
    med = {name: median(values) for name, values in samples.items()}
    p95 = {name: percentile(values, 95) for name, values in samples.items()}
    report.row(
        "ratio install/minimal",
        median=med["install"] / med["minimal"],
        p95=p95["install"] / p95["minimal"],
    )
    report.row("ratio minimal/raw_nats", median=med["minimal"] / med["raw_nats"])
    report.check("median install / minimal", med["install"] / med["minimal"], 1.2, "<=", "x")
    return report


if __name__ == "__main__":
    main(run)
