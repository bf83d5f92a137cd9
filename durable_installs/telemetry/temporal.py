"""Telemetry for Temporal: the tracing interceptor and the runtime's Prometheus endpoint.

The interceptor makes spans for starting and running workflows and activities and carries
the trace context through Temporal headers; its workflow spans are created outside the
sandbox and never on replay, so workflow code stays deterministic. It is installed only when
tracing is on: with tracing off no interceptor runs at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from durable_installs.telemetry.setup import Telemetry


def temporal_interceptors(telemetry: Telemetry) -> list[Interceptor]:
    """Client (and therefore worker) interceptors for ``telemetry``: none when tracing is off."""
    if not telemetry.tracing:
        return []
    return [TracingInterceptor(telemetry.tracer("temporalio"))]


def has_tracing_interceptor(interceptors: Sequence[object]) -> bool:
    """Whether a client already traces (a worker inherits its client's interceptors)."""
    return any(isinstance(i, TracingInterceptor) for i in interceptors)


def client_traces(client: Client) -> bool:
    """Whether ``client`` was connected with the tracing interceptor."""
    return has_tracing_interceptor(client.config()["interceptors"])


CORE_LOGGER = "temporalio.core"
"""The Python logger the SDK core's own log lines are forwarded to."""


def temporal_runtime(metrics_address: str = "") -> Runtime:
    """The worker's runtime: the SDK core's logs go through Python logging, and its metrics
    are served on ``metrics_address`` when one is given.

    By default the core writes its warnings to the process's stdout from the thread that
    runs workflow tasks: an unread pipe fills and the worker stops for good (how and when:
    docs/operating/scale.md, "At capacity"). Forwarded, the lines get the process's own log
    format and handler like every other line.

    Returns a new runtime (with its own thread pool): create one per process, before
    connecting the client that uses it.
    """
    metrics = PrometheusConfig(bind_address=metrics_address) if metrics_address else None
    return Runtime(telemetry=TelemetryConfig(logging=core_logging(), metrics=metrics))


def core_logging() -> LoggingConfig:
    """The SDK core's warnings (and errors of its other parts) to :data:`CORE_LOGGER`."""
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER)),
    )
