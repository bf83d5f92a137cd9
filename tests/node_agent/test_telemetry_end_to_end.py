"""Traces, metrics and logs of one install through the dev server, NATS and a real node agent."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durable_installs.contracts.install import InstallBackendResult
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.orchestrator.worker import create_worker
from durable_installs.telemetry import Telemetry, telemetry_from_env
from durable_installs.telemetry.logs import install_handler
from durable_installs.telemetry.temporal import temporal_interceptors, temporal_runtime
from tests.node_agent.conftest import AgentFactory
from tests.workflow_helpers import install_input, start_install, wait_for, wait_until

NODE_PHASES = ["resolve", "download", "verify", "extract", "spawn", "readiness"]


def _traced(exporter: InMemorySpanExporter, service: str) -> Telemetry:
    """Telemetry exporting synchronously to ``exporter``; no global provider is touched."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(tracer_provider=provider)


async def _install(
    client: Client, nc: NATS, node_id: str, telemetry: Telemetry
) -> InstallBackendResult:
    """One fresh install of cpu-echo for slot qwen3#0, on a worker of its own task queue."""
    queue = f"telemetry-{uuid.uuid4().hex[:8]}"
    async with create_worker(client, nc, queue, telemetry):
        handle = await start_install(
            client, queue, install_input(node_id, backend="cpu-echo", model_id="qwen3")
        )
        return await handle.result()


@pytest.fixture
def echo_gallery(gallery: Gallery, archives: Path) -> Gallery:
    gallery.add_backend(SampleBackend("cpu-echo"), archives)
    gallery.write()
    return gallery


def _names(exporter: InMemorySpanExporter) -> set[str]:
    return {span.name for span in exporter.get_finished_spans()}


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one {name!r} span, got {[s.name for s in spans]}"
    return found[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return int(span.parent.span_id) if span.parent is not None else None


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_one_trace_runs_from_workflow_through_nats_to_the_node_phases(
    client: Client, nc: NATS, start_agent: AgentFactory, echo_gallery: Gallery
) -> None:
    exporter = InMemorySpanExporter()
    worker_telemetry = _traced(exporter, "backend-install-worker")
    node = await start_agent(telemetry=_traced(exporter, "node-agent"))
    config = client.config()
    config["interceptors"] = temporal_interceptors(worker_telemetry)
    traced_client = Client(**config)

    result = await _install(traced_client, nc, node.node_id, worker_telemetry)
    await wait_for(lambda: "node backend.install" in _names(exporter))
    spans = list(exporter.get_finished_spans())

    start = _one(spans, "StartWorkflow:InstallBackendWorkflow")
    run = _one(spans, "RunWorkflow:InstallBackendWorkflow")
    schedule = _one(spans, "StartActivity:install_backend")
    activity = _one(spans, "RunActivity:install_backend")
    request = _one(spans, "nats request backend.install")
    handled = _one(spans, "node backend.install")
    phases = [_one(spans, name) for name in NODE_PHASES]
    assert start.parent is None
    chain = [start, run, schedule, activity, request, handled, *phases]
    assert len({span.context.trace_id for span in chain if span.context}) == 1, "one trace"
    assert _parent_of(run) == _id(start)
    assert _parent_of(schedule) == _id(start)
    assert _parent_of(activity) == _id(schedule)
    assert _parent_of(request) == _id(activity)
    assert _parent_of(handled) == _id(request)
    assert all(_parent_of(phase) == _id(handled) for phase in phases)
    starts = [phase.start_time or 0 for phase in phases]
    assert starts == sorted(starts), "phases run in order resolve → … → readiness"

    slot_fields = {
        "install.node": node.node_id,
        "install.backend": "cpu-echo",
        "install.slot": result.slot,
        "install.op_id": result.op_id,
    }
    for span in [request, handled, *phases]:
        attributes = dict(span.attributes or {})
        assert {k: attributes.get(k) for k in slot_fields} == slot_fields, span.name
        assert attributes.get("install.outcome") in ("succeeded", "ok"), span.name
    assert (request.attributes or {})["install.outcome"] == "succeeded"
    workflow_id = (run.attributes or {})["temporalWorkflowID"]
    assert (handled.attributes or {})["install.workflow_id"] == workflow_id
    downloaded = (phases[1].attributes or {})["install.bytes"]
    assert isinstance(downloaded, int) and downloaded > 0
    assert handled.resource.attributes[SERVICE_NAME] == "node-agent"


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_prometheus_endpoints_serve_temporal_install_and_node_metrics(
    temporal_address: str, nc: NATS, start_agent: AgentFactory, echo_gallery: Gallery
) -> None:
    temporal_metrics = f"127.0.0.1:{_free_port()}"
    runtime = temporal_runtime(temporal_metrics)
    client = await Client.connect(
        temporal_address, data_converter=pydantic_data_converter, runtime=runtime
    )
    worker_telemetry = telemetry_from_env("worker", metrics_address="127.0.0.1:0", environ={})
    node_telemetry = telemetry_from_env("node", metrics_address="127.0.0.1:0", environ={})
    assert worker_telemetry.metrics_endpoint and node_telemetry.metrics_endpoint
    try:
        node = await start_agent(telemetry=node_telemetry)
        await _install(client, nc, node.node_id, worker_telemetry)

        ours = await asyncio.to_thread(_scrape, worker_telemetry.metrics_endpoint.url)
        on_node = await asyncio.to_thread(_scrape, node_telemetry.metrics_endpoint.url)
        temporal_text = ""

        async def temporal_has_completed() -> bool:
            nonlocal temporal_text
            temporal_text = await asyncio.to_thread(_scrape, f"http://{temporal_metrics}/metrics")
            return "temporal_workflow_completed" in temporal_text

        await wait_until(temporal_has_completed, what="Temporal's completion metric")
    finally:
        worker_telemetry.shutdown()
        node_telemetry.shutdown()

    assert "temporal_workflow_completed" in temporal_text
    assert "temporal_activity_execution_latency" in temporal_text
    assert _sample(ours, "backend_install_requests_total", 'outcome="succeeded"') == 1
    assert _sample(ours, "backend_install_duration_seconds_count", 'outcome="succeeded"') == 1
    assert _sample(ours, "backend_install_progress_events_total") >= 1
    assert _sample(on_node, "node_agent_installs_total", 'outcome="succeeded"') == 1
    assert _sample(on_node, "node_agent_download_bytes_total") > 0
    assert _sample(on_node, "node_agent_processes_running") == 1


def _sample(text: str, name: str, label: str = "") -> float:
    """The value of the sample ``name`` (with ``label`` among its labels) in a scrape."""
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ " and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {label} in:\n{text}")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged during the test, as JSON lines."""
    stream = io.StringIO()
    handler = install_handler(logging.StreamHandler(stream), "json")
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


async def test_install_log_lines_carry_workflow_op_node_and_slot(
    client: Client,
    nc: NATS,
    start_agent: AgentFactory,
    echo_gallery: Gallery,
    json_log: io.StringIO,
) -> None:
    node = await start_agent()
    result = await _install(client, nc, node.node_id, Telemetry())

    events = [json.loads(line) for line in json_log.getvalue().splitlines()]
    expected = {"op_id": result.op_id, "node": node.node_id, "slot": result.slot}
    worker_line = [e for e in events if e["logger"] == "activities.install"][-1]
    node_line = [e for e in events if e["logger"] == "durable_installs.node_agent.supervisor"][-1]
    for event in (worker_line, node_line):
        assert {k: event.get(k) for k in expected} == expected, event
        assert event.get("workflow_id", "").startswith("install-test-"), event
