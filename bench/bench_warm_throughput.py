"""Benchmark 2: warm-path throughput, N installs started at once against N minimal workflows.

Both bursts run against the same servers and worker, alternating, so a noisy neighbour slows
both. Completions per second = N / (first start to last result). Target: install >= 0.8x the
minimal workflow's. Run: ``python -m bench.bench_warm_throughput [--quick]``.
"""

from __future__ import annotations

from bench.cli import main
from bench.node import WildcardNode
from bench.report import Report, median
from bench.stack import CpuMeter, stack
from bench.workloads import burst, install, minimal, run_id, warm_up

NAME = "warm_throughput"


async def run(quick: bool) -> Report:
    count, rounds = (150, 1) if quick else (500, 3)
    report = Report(NAME, quick)
    rates: dict[str, list[float]] = {"minimal": [], "install": []}
    cpu: dict[str, list[float]] = {"minimal": [], "install": []}
    async with stack(NAME) as s:
        node = await WildcardNode(s.nc).start()
        await warm_up(s)
        for r in range(rounds):
            for name, workload in (("minimal", minimal), ("install", install))[:: 1 - 2 * (r % 2)]:
                with CpuMeter(s.worker) as meter:
                    elapsed = await burst(workload, s, count, f"tp-{name}-{run_id()}")
                rates[name].append(count / elapsed)
                cpu[name].append(meter.cpu / count)
        await node.stop()
    for name in rates:
        report.row(
            name,
            per_second=median(rates[name]),
            best=max(rates[name]),
            worker_cpu_ms_each=median(cpu[name]) * 1e3,
            started_at_once=count,
            rounds=rounds,
        )
    ratio = median(rates["install"]) / median(rates["minimal"])
    report.row(
        "ratio install/minimal",
        per_second=ratio,
        worker_cpu=median(cpu["install"]) / median(cpu["minimal"]),
    )
    report.check("completions/s install / minimal", ratio, 0.8, ">=", "x")
    return report


if __name__ == "__main__":
    main(run)
