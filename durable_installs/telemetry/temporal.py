"""Telemetry for Temporal: the tracing interceptor and the runtime's Prometheus endpoint.

The interceptor makes spans for starting and running workflows and activities and carries
the trace context through Temporal headers; its workflow spans are created outside the
sandbox and never on replay, so workflow code stays deterministic. It is installed only when
tracing is on: with tracing off no interceptor runs at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

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


def temporal_runtime(metrics_address: str) -> Runtime | None:
    """A runtime serving Temporal's SDK metrics on ``metrics_address``; None when unset.

    Returns a new runtime (with its own thread pool): create one per process, before
    connecting the client that uses it.
    """
    if not metrics_address:
        return None
    config = PrometheusConfig(bind_address=metrics_address)
    return Runtime(telemetry=TelemetryConfig(metrics=config))
