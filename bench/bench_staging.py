"""Benchmark: one large model file staged through ``LoadModelWorkflow``, against ``curl -T``.

Everything is real and on loopback: a ``backend-node-agent`` process with its file-transfer
server on (a sample backend that loads the file), a ``worker_main.py`` process as operators
run it (trusting the benchmark's ``file://`` directory, holding the nodes' token, no rate
limit), fresh Temporal and ``nats-server`` (``bench/stack.py``). The file is random bytes the
benchmark writes to a temporary directory (2 GiB; ``--quick`` 256 MiB).

1. **throughput**: the same file ``PUT`` by ``curl -T`` (with ``Authorization`` and
   ``X-Content-SHA256``, as the worker sends them) to another key on the same agent, and
   staged by a ``LoadModelWorkflow``; rounds alternate which goes first, and ``sync`` runs
   before each so neither inherits the other's dirty pages. curl's time is its own
   ``time_total``; the workflow's is its ``staging`` phase (the node's ``files.space``,
   ``HEAD``, the ``PUT`` and the node's commit, activity dispatch included: the price of
   durability). Target: staging throughput >= 0.9x curl's (median of the rounds).
2. **memory**: the worker's ``VmRSS`` (``/proc/<pid>/status``) sampled every 50 ms from just
   before the load starts to its end; target: growth < 100 MB.
3. **resume**: a load through the counting proxy (``durable_installs/servers/byte_counter.py``:
   its ``files_url`` is the proxy), the worker SIGKILLed once the proxy has seen half the
   file's body, a new worker started; re-sent = ``PUT`` body bytes through the proxy - the
   file's size (heads and responses not counted). Target: <= 5 % of the file.

``python -m bench.bench_staging [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle

from bench.cli import main
from bench.report import Report, median
from bench.stack import ROOT, cpu_seconds, stack
from durable_installs.contracts.load import LoadModelInput, LoadModelResult
from durable_installs.devstack.processes import Child, ProcessGroup, wait_for_line
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.protocol.messages import encode_galleries
from durable_installs.servers import ByteCounter, free_port
from workflows.load_model import LoadModelWorkflow

NAME = "staging"
MIB = 1024 * 1024
GIB = 1024 * MIB
TOKEN = "bench-files-token"
QUEUE = "bench-staging"
BACKEND = "cpu-bench"
SAMPLE_EVERY = 0.05
START_WITHIN = 120.0
LOAD_WITHIN = 900.0


@dataclass(frozen=True)
class Plan:
    size: int
    rounds: int
    """Rounds of (curl, workflow), the order alternating."""


FULL = Plan(size=2 * GIB, rounds=5)
QUICK = Plan(size=256 * MIB, rounds=3)


# --- processes -------------------------------------------------------------------------------


async def start_child(
    group: ProcessGroup, name: str, command: list[str], env: dict[str, str], marker: str
) -> Child:
    """``command`` in ``group`` (its output in ``<name>.log`` there), once it logged ``marker``."""

    def ready(child: Child) -> None:
        wait_for_line(child.log, marker, START_WITHIN, child.proc)

    env = {"PYTHONUNBUFFERED": "1", **env}
    return await asyncio.to_thread(group.start, name, command, env, ready)


def backend_ports(count: int = 20) -> tuple[int, int]:
    """``count`` consecutive ports nothing listens on (the agent's ``--port-range``)."""
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(30000, 60000 - count)
        try:
            for port in range(low, low + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return low, low + count - 1
    raise RuntimeError("no block of free backend ports")


async def start_agent(group: ProcessGroup, root: Path, nats_url: str) -> tuple[Child, int, Path]:
    """A node agent with its file server on a fixed port; (process, file port, models dir)."""
    gallery = Gallery(path=root / "gallery" / "index.yaml", name="bench")
    gallery.add_backend(SampleBackend(BACKEND), root / "archives")
    gallery.write()
    files_port = free_port()
    low, high = backend_ports()
    node_id = f"bench-{uuid.uuid4().hex[:8]}"
    command = [
        *(sys.executable, "-m", "durable_installs.node_agent", "--node-id", node_id),
        *("--backends-dir", str(root / "backends"), "--galleries"),
        encode_galleries([gallery.config]),
        *("--advertise-host", "127.0.0.1", "--bind-host", "127.0.0.1"),
        *("--port-range", f"{low}-{high}", "--nats-url", nats_url),
        *("--files-address", f"127.0.0.1:{files_port}", "--files-reserve", "0"),
    ]
    env = {"NODE_AGENT_FILES_TOKEN": TOKEN}
    agent = await start_child(group, node_id, command, env, f"node agent {node_id} ready")
    return agent, files_port, root / "models"


async def start_worker(
    group: ProcessGroup, root: Path, temporal_address: str, nats_url: str, name: str
) -> Child:
    """``worker_main.py`` as operators run it, trusting ``root/sources``."""
    command = [
        *(sys.executable, str(ROOT / "worker_main.py"), "--graceful-shutdown-seconds", "1"),
        *("--allow-model-source", (root / "sources").as_uri() + "/"),
        *("--model-cache-dir", str(root / "cache")),
    ]
    env = {
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_TASK_QUEUE": QUEUE,
        "NATS_URL": nats_url,
        "NODE_FILES_TOKEN": TOKEN,
    }
    return await start_child(group, name, command, env, "worker polling")


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """The highest ``VmRSS`` of a process while ``async with`` runs, and where it started."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before_kb = rss_kb(pid)
        self.max_kb = self.before_kb
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.max_kb = max(self.max_kb, rss_kb(self.pid))
            await asyncio.sleep(SAMPLE_EVERY)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def growth_mb(self) -> float:
        return (self.max_kb - self.before_kb) / 1024


# --- the file and the two ways of sending it -------------------------------------------------


def write_random_file(path: Path, size: int) -> str:
    """``size`` random bytes (4 MiB blocks); their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    block = 4 * MIB
    with path.open("wb") as out:
        left = size
        while left:
            data = os.urandom(min(block, left))
            digest.update(data)
            out.write(data)
            left -= len(data)
    return digest.hexdigest()


async def curl_put(files_port: int, key: str, source: Path, sha256: str) -> float:
    """``curl -T`` to the agent; curl's own ``time_total``."""
    process = await asyncio.create_subprocess_exec(
        *("curl", "-sS", "-T", str(source), "-o", "/dev/null"),
        *("-w", "%{http_code} %{time_total}"),
        *("-H", f"Authorization: Bearer {TOKEN}", "-H", f"X-Content-SHA256: {sha256}"),
        f"http://127.0.0.1:{files_port}/v1/files/models/{key}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    status, seconds = out.decode().split()
    if status != "200":
        raise RuntimeError(f"curl -T answered {status}: {err.decode()[:300]}")
    return float(seconds)


def load_input(
    node_id: str, model_id: str, spec: dict[str, Any], files_url: str = ""
) -> LoadModelInput:
    return LoadModelInput.model_validate(
        {
            "node_id": node_id,
            "backend": BACKEND,
            "model_id": model_id,
            "files": [spec],
            "files_url": files_url,
            "heartbeat_timeout_seconds": 5,
            "install_options": {"heartbeat_timeout_seconds": 5, "fast_path_seconds": 0},
        }
    )


async def start_load(
    client: Client, input: LoadModelInput
) -> WorkflowHandle[LoadModelWorkflow, LoadModelResult]:
    return await client.start_workflow(
        LoadModelWorkflow.run,
        input,
        id=f"bench-staging-{uuid.uuid4().hex[:10]}",
        task_queue=QUEUE,
    )


async def run_load(client: Client, input: LoadModelInput) -> LoadModelResult:
    handle = await start_load(client, input)
    async with asyncio.timeout(LOAD_WITHIN):
        return await handle.result()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def forget(path: Path) -> None:
    """Remove a staged file and its sidecar (the disk holds a few copies at most)."""
    for victim in (path, Path(f"{path}.sha256")):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Bench:
    """What the three runs share: the servers, the node, the worker, the file."""

    client: Client
    temporal_address: str
    nats_url: str
    root: Path
    group: ProcessGroup
    node_id: str
    agent_pid: int
    files_port: int
    models: Path
    worker: Child
    source: Path
    spec: dict[str, Any]
    size: int


async def run(quick: bool) -> Report:
    report = Report(NAME, quick)
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-staging-") as tmp:
        root = Path(tmp)
        source = root / "sources" / "model.bin"
        began = time.perf_counter()
        sha256 = await asyncio.to_thread(write_random_file, source, plan.size)
        report.row("file", size_mib=plan.size / MIB, written_s=time.perf_counter() - began)
        spec = {"uri": source.as_uri(), "sha256": sha256, "size": plan.size, "path": ""}
        async with stack(NAME, workers=0) as s:
            address = s.client.service_client.config.target_host
            url = s.nc.connected_url
            assert url is not None
            nats_url = f"nats://{url.hostname}:{url.port}"
            group = ProcessGroup(root)
            agent, files_port, models = await start_agent(group, root, nats_url)
            worker = await start_worker(group, root, address, nats_url, "worker-1")
            bench = Bench(
                client=s.client,
                temporal_address=address,
                nats_url=nats_url,
                root=root,
                group=group,
                node_id=agent.name,
                agent_pid=agent.proc.pid,
                files_port=files_port,
                models=models,
                worker=worker,
                source=source,
                spec=spec,
                size=plan.size,
            )
            try:
                await throughput(bench, plan.rounds, report)
                await resume(bench, report)
            finally:  # SIGTERM: the agent stops its backends too
                await asyncio.to_thread(group.stop, 30.0, lambda _: None)
    return report


async def throughput(bench: Bench, rounds: int, report: Report) -> None:
    """curl -T and the workflow in pairs, the order alternating; each copy removed after.

    The check is the median of the pairs' ratios, as in ``warm_path``: a shared machine's
    load drifts between rounds, and the two transfers of a pair run under the same load.
    The node verified each copy's sha256 before it answered 200 (a mismatch is a 400 and
    nothing in place), so only the copy's size is looked at here.
    """
    curl_seconds: list[float] = []
    staging_seconds: list[float] = []
    growth: list[float] = []
    cpu: dict[str, list[float]] = {"curl_agent": [], "ours_agent": [], "ours_worker": []}
    for round_index in range(rounds):
        order = ["curl", "workflow"] if round_index % 2 == 0 else ["workflow", "curl"]
        for way in order:
            await asyncio.to_thread(os.sync)  # no dirty pages left by the previous copy
            key = f"bench/{way}-{round_index}.bin"
            agent_cpu = cpu_seconds(bench.agent_pid)
            if way == "curl":
                seconds = await curl_put(bench.files_port, key, bench.source, bench.spec["sha256"])
                curl_seconds.append(seconds)
                cpu["curl_agent"].append(cpu_seconds(bench.agent_pid) - agent_cpu)
            else:
                model = {**bench.spec, "path": key}
                input = load_input(bench.node_id, f"bench-{round_index}", model)
                worker_cpu = cpu_seconds(bench.worker.proc.pid)
                async with RssSampler(bench.worker.proc.pid) as rss:
                    result = await run_load(bench.client, input)
                cpu["ours_agent"].append(cpu_seconds(bench.agent_pid) - agent_cpu)
                cpu["ours_worker"].append(cpu_seconds(bench.worker.proc.pid) - worker_cpu)
                growth.append(rss.growth_mb)
                staging_seconds.append(result.phase_seconds["staging"])
            placed = bench.models / key
            if placed.stat().st_size != bench.size:
                report.notes.append(f"{way}, round {round_index + 1}: the copy has another size")
            forget(placed)
    size_mb = bench.size / 1e6
    ratios = [c / o for c, o in zip(curl_seconds, staging_seconds, strict=True)]
    report.row(
        "curl -T",
        median_s=median(curl_seconds),
        best_s=min(curl_seconds),
        mb_per_s=size_mb / median(curl_seconds),
        agent_cpu_s=median(cpu["curl_agent"]),
    )
    report.row(
        "LoadModelWorkflow staging",
        median_s=median(staging_seconds),
        best_s=min(staging_seconds),
        mb_per_s=size_mb / median(staging_seconds),
        agent_cpu_s=median(cpu["ours_agent"]),
        worker_cpu_s=median(cpu["ours_worker"]),
        rss_growth_mb=max(growth),
    )
    report.row(
        "throughput, workflow / curl",
        pairs=len(ratios),
        lowest=min(ratios),
        highest=max(ratios),
        ratio_of_medians=median(curl_seconds) / median(staging_seconds),
    )
    report.check("staging throughput / curl -T (pairs)", median(ratios), 0.9, ">=")
    report.check("worker RSS growth during the staging", max(growth), 100, "<=", " MB")


async def resume(bench: Bench, report: Report) -> None:
    """Through the counting proxy: the worker SIGKILLed at half the file, a new one ends it."""
    size = bench.size
    async with ByteCounter("127.0.0.1", bench.files_port) as proxy:
        key = "bench/resumed.bin"
        input = load_input(
            bench.node_id, "bench-resume", {**bench.spec, "path": key}, files_url=proxy.url
        )
        handle = await start_load(bench.client, input)
        load = asyncio.create_task(handle.result())
        async with asyncio.timeout(LOAD_WITHIN):
            while proxy.body_bytes("PUT") < size // 2:
                if load.done():
                    raise RuntimeError(f"the load ended before half the file was sent: {load}")
                await asyncio.sleep(0.005)
        bench.worker.proc.kill()  # SIGKILL, as when the machine loses power
        await asyncio.to_thread(bench.worker.proc.wait)
        killed_at = proxy.body_bytes("PUT")
        began = time.perf_counter()
        bench.worker = await start_worker(
            bench.group, bench.root, bench.temporal_address, bench.nats_url, "worker-2"
        )
        result = await load
        recovered = time.perf_counter() - began
    resent = proxy.body_bytes("PUT") - size
    placed = bench.models / key
    if await asyncio.to_thread(sha256_of, placed) != bench.spec["sha256"]:
        report.notes.append("resumed: the file on the node does not have the source's sha256")
    forget(placed)
    report.row(
        "worker SIGKILLed mid-file",
        killed_at_pct=100 * killed_at / size,
        puts=len(proxy.requests_of("PUT")),
        resent_mib=resent / MIB,
        resent_pct=100 * resent / size,
        kill_to_loaded_s=recovered,
        workflow_counted_mib=result.bytes_sent / MIB,
    )
    report.check("bytes sent again after the kill", 100 * resent / size, 5, "<=", " %")


if __name__ == "__main__":
    main(run)
