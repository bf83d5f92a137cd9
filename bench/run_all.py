"""Run every benchmark, one after the other, each on its own fresh servers and worker.

``python -m bench.run_all [--quick] [--only NAME ...]``. Prints each table as it finishes,
then one summary of every target, and writes ``summary[-quick].json`` next to the per-
benchmark files. Exits 0 even when a target is missed: a benchmark reports, it does not gate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench import (
    bench_many_installs,
    bench_oci,
    bench_progress,
    bench_rollout,
    bench_upgrade,
    bench_warm_latency,
    bench_warm_path,
    bench_warm_throughput,
)
from bench.cli import Benchmark, run_one
from bench.report import RESULTS_DIR, Report, machine

BENCHMARKS: dict[str, Benchmark] = {
    bench_warm_latency.NAME: bench_warm_latency.run,
    bench_warm_throughput.NAME: bench_warm_throughput.run,
    bench_warm_path.NAME: bench_warm_path.run,
    bench_progress.NAME: bench_progress.run,
    bench_many_installs.NAME: bench_many_installs.run,
    bench_rollout.NAME: bench_rollout.run,
    bench_oci.NAME: bench_oci.run,
    bench_upgrade.NAME: bench_upgrade.run,
}


async def run_all(names: list[str], quick: bool, results: Path) -> list[Report]:
    reports = []
    for name in names:
        reports.append(await run_one(BENCHMARKS[name], quick, results))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled down: everything in < 2 min")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON output directory")
    args = parser.parse_args()
    began = time.perf_counter()
    reports = asyncio.run(run_all(args.only, args.quick, args.results))
    elapsed = time.perf_counter() - began
    print(f"\n== summary ({'quick, ' if args.quick else ''}{elapsed:.0f}s)")
    for report in reports:
        for check in report.checks:
            verdict = "ok  " if check.passed else "MISS"
            print(
                f"  [{verdict}] {report.name:<16} {check.name:<40} {check.value:.3g}{check.unit}"
                f" (target {check.op} {check.target:g}{check.unit})"
            )
    summary = {
        "quick": args.quick,
        "elapsed_seconds": elapsed,
        "machine": machine(),
        "checks": [
            {"benchmark": r.name, **c, "passed": c["passed"]}
            for r in reports
            for c in r.to_json()["checks"]  # type: ignore[attr-defined]
        ],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"summary{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"  -> {path}")


if __name__ == "__main__":
    main()
