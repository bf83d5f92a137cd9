"""Traces, metrics and structured logs for the worker and the node agent.

Everything here is off unless configured (the standard ``OTEL_*`` variables, a metrics
address), and costs next to nothing when off: the providers are OpenTelemetry's no-op ones
and no Temporal interceptor is installed. Components receive a :class:`Telemetry` explicitly
instead of reading OpenTelemetry's process-wide globals, so tests (and a process hosting a
worker and a node agent) can give each its own providers. Temporal-specific pieces live in
:mod:`telemetry.temporal`, so the node agent never imports the Temporal SDK.
"""

from durable_installs.telemetry.fields import bind_fields, current_fields
from durable_installs.telemetry.logs import LOG_FORMATS, configure_logging
from durable_installs.telemetry.metrics import InstallMetrics, NodeMetrics
from durable_installs.telemetry.propagation import context_from_headers, outgoing_headers
from durable_installs.telemetry.setup import Telemetry, telemetry_from_env
from durable_installs.telemetry.spans import Traced, phase_span, request_span, server_span

__all__ = [
    "LOG_FORMATS",
    "InstallMetrics",
    "NodeMetrics",
    "Telemetry",
    "Traced",
    "bind_fields",
    "configure_logging",
    "context_from_headers",
    "current_fields",
    "outgoing_headers",
    "phase_span",
    "request_span",
    "server_span",
    "telemetry_from_env",
]
