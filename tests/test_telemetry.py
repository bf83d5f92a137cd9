"""The telemetry package on its own: configuration, propagation, span helpers and log lines."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

from durable_installs.telemetry import (
    Telemetry,
    bind_fields,
    context_from_headers,
    outgoing_headers,
    phase_span,
    request_span,
    telemetry_from_env,
)
from durable_installs.telemetry.logs import install_handler
from durable_installs.telemetry.prometheus import parse_address
from durable_installs.telemetry.propagation import workflow_id_of
from durable_installs.telemetry.temporal import CORE_LOGGER, core_logging, temporal_interceptors
from worker_main import parse_args


def _recording() -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(tracer_provider=provider), exporter


def test_without_configuration_everything_is_the_no_op_implementation() -> None:
    telemetry = telemetry_from_env("worker", environ={})

    assert isinstance(telemetry.tracer_provider, NoOpTracerProvider)
    assert isinstance(telemetry.meter_provider, NoOpMeterProvider)
    assert not telemetry.tracing
    assert temporal_interceptors(telemetry) == []


def test_the_sdk_cores_logs_are_forwarded_to_python_logging_not_to_stdout() -> None:
    config = core_logging()

    assert config.forwarding is not None
    assert config.forwarding.logger.name == CORE_LOGGER


def test_console_exporter_turns_tracing_on() -> None:
    telemetry = telemetry_from_env("worker", environ={"OTEL_TRACES_EXPORTER": "console"})

    assert telemetry.tracing
    assert len(temporal_interceptors(telemetry)) == 1
    telemetry.shutdown()


def test_otlp_exporter_is_built_from_the_standard_variables() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    telemetry = telemetry_from_env("worker", environ=env)

    assert isinstance(telemetry.tracer_provider, TracerProvider)
    telemetry.shutdown()


def test_sdk_disabled_wins_over_an_exporter() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}

    assert not telemetry_from_env("worker", environ=env).tracing


def test_unknown_exporter_name_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        telemetry_from_env("worker", environ={"OTEL_TRACES_EXPORTER": "zipkin"})


def test_metrics_address_must_name_a_port() -> None:
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("localhost")


def test_worker_metrics_and_log_format_defaults_are_off_and_logfmt() -> None:
    args = parse_args([])

    assert (args.metrics_address, args.install_metrics_address) == ("", "")
    assert args.log_format == "logfmt"


def test_no_headers_are_sent_outside_a_trace_and_a_workflow() -> None:
    assert outgoing_headers() is None


def test_workflow_id_travels_as_baggage_even_with_tracing_off() -> None:
    with bind_fields(workflow_id="install/node-1/llama-cpp/qwen3/0"):
        headers = outgoing_headers()

    assert headers is not None and "traceparent" not in headers
    assert workflow_id_of(context_from_headers(headers)) == "install/node-1/llama-cpp/qwen3/0"


def test_request_span_headers_continue_its_trace_on_the_other_side() -> None:
    telemetry, exporter = _recording()
    with request_span(telemetry.tracer(), "backend.install", "nodes.n.backend.install") as call:
        assert call.headers is not None and "traceparent" in call.headers
        remote = context_from_headers(call.headers)
    with telemetry.tracer().start_as_current_span("node", context=remote):
        pass

    spans = {span.name: span for span in exporter.get_finished_spans()}
    sent, received = spans["nats request backend.install"], spans["node"]
    assert received.parent is not None and sent.context is not None
    assert received.parent.span_id == sent.context.span_id


def test_phase_span_carries_bound_fields_and_the_outcome_of_a_failure() -> None:
    telemetry, exporter = _recording()
    with (
        bind_fields(node="node-1", slot="qwen3#0", op_id="op-1"),
        pytest.raises(RuntimeError),
        phase_span(telemetry.tracer(), "download"),
    ):
        raise RuntimeError("connection reset")

    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["install.node"] == "node-1" and attributes["install.slot"] == "qwen3#0"
    assert attributes["install.outcome"] == "RuntimeError"


@pytest.mark.parametrize("log_format", ["logfmt", "json", "text"])
def test_every_format_puts_the_bound_fields_on_the_line(log_format: str) -> None:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.telemetry.{log_format}")
    logger.addHandler(install_handler(logging.StreamHandler(stream), log_format))
    logger.propagate = False
    with bind_fields(workflow_id="wf-1", op_id="op-1", node="node-1", slot="qwen3#0"):
        logger.warning("download stalled")

    line = stream.getvalue().strip()
    assert "\n" not in line
    if log_format == "json":
        event = json.loads(line)
        assert (event["msg"], event["workflow_id"], event["slot"]) == (
            "download stalled",
            "wf-1",
            "qwen3#0",
        )
    else:
        for pair in ("workflow_id=wf-1", "op_id=op-1", "node=node-1", "slot=qwen3#0"):
            assert pair in line


def test_temporal_logger_extras_supply_the_workflow_id() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.telemetry.temporal_extra")
    logger.addHandler(install_handler(logging.StreamHandler(stream), "json"))
    logger.propagate = False
    logger.warning("probe", extra={"temporal_workflow": {"workflow_id": "wf-2"}, "node": "n"})

    event = json.loads(stream.getvalue())
    assert (event["workflow_id"], event["node"]) == ("wf-2", "n")
