"""Trace context and the workflow id in NATS message headers (W3C ``traceparent``, ``baggage``).

The orchestrator's request carries the current span as ``traceparent`` (only when a span is
being traced) and the workflow id as W3C baggage, so the node agent's spans join the
orchestrator's trace and its log lines name the workflow. Only headers change: the body a
stock LocalAI worker reads is the same, and it ignores headers.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from durable_installs.telemetry.fields import current_fields

WORKFLOW_ID_BAGGAGE = "temporal.workflow_id"
"""Baggage key carrying the Temporal workflow id to the node."""

_TRACE_CONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()


def outgoing_headers() -> dict[str, str] | None:
    """Headers for a request sent from the current context; None when there is nothing to say.

    W3C trace context is injected only for a valid span, so with tracing off the only
    header is the workflow id's baggage (and none at all outside a workflow).
    """
    carrier: dict[str, str] = {}
    context = get_current()
    if trace.get_current_span(context).get_span_context().is_valid:
        _TRACE_CONTEXT.inject(carrier, context)
    workflow_id = current_fields().get("workflow_id")
    if workflow_id:
        _BAGGAGE.inject(carrier, baggage.set_baggage(WORKFLOW_ID_BAGGAGE, workflow_id, Context()))
    return carrier or None


def context_from_headers(headers: Mapping[str, str] | None) -> Context | None:
    """The remote trace context and baggage in ``headers``; None when there are none."""
    if not headers:
        return None
    context = _TRACE_CONTEXT.extract(headers)
    return _BAGGAGE.extract(headers, context)


def workflow_id_of(context: Context | None) -> str:
    """The workflow id a request's baggage names, or ``""``."""
    if context is None:
        return ""
    value = baggage.get_baggage(WORKFLOW_ID_BAGGAGE, context)
    return value if isinstance(value, str) else ""
