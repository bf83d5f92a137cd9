"""``python -m bench.<benchmark> [--quick]``: run one benchmark, print it, write its JSON."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.report import RESULTS_DIR, Report

Benchmark = Callable[[bool], Awaitable[Report]]


async def run_one(benchmark: Benchmark, quick: bool, results: Path) -> Report:
    """Run, time, print and write one benchmark."""
    began = time.perf_counter()
    report = await benchmark(quick)
    report.elapsed_seconds = time.perf_counter() - began
    print(report.render(), flush=True)
    print(f"  -> {report.write(results)} ({report.elapsed_seconds:.0f}s)", flush=True)
    return report


def parse_args(description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="scaled down: everything in < 2 min")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON output directory")
    return parser.parse_args()


def main(benchmark: Benchmark) -> None:
    args = parse_args()
    asyncio.run(run_one(benchmark, args.quick, args.results))
