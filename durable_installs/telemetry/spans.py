"""Spans of the install path: a NATS request, the node's handling of it, and its phases.

Each span carries the bound install fields (node, slot, op id, …) and an outcome, so a trace
backend can filter on them. Attributes are only computed for spans that record: with
tracing off the tracer is OpenTelemetry's no-op one and these helpers do almost nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from durable_installs.telemetry.fields import current_fields, span_attributes
from durable_installs.telemetry.propagation import outgoing_headers

OUTCOME = "install.outcome"
BYTES = "install.bytes"


@dataclass
class Traced:
    """A span being recorded, the headers that continue it remotely, and its outcome.

    Callers set ``outcome`` when they know better than "ok"/the exception's type (a reply
    that says ``success:false`` is not an exception).
    """

    span: Span
    headers: dict[str, str] | None = None
    outcome: str = ""

    def set(self, key: str, value: AttributeValue) -> None:
        """Set an attribute if the span records."""
        if self.span.is_recording():
            self.span.set_attribute(key, value)


_innermost: ContextVar[Traced | None] = ContextVar("innermost_traced", default=None)


def set_outcome(outcome: str) -> None:
    """Set the outcome of the innermost span of these helpers (a handler that has no handle)."""
    traced = _innermost.get()
    if traced is not None:
        traced.outcome = outcome


def annotate_current_span() -> None:
    """Copy the install fields bound since the span started onto the current span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(span_attributes(current_fields()))


def outcome_of(error: BaseException) -> str:
    """An outcome label for an exception: a Temporal failure's type, else its class."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    failure_type = getattr(error, "type", None)
    return failure_type if isinstance(failure_type, str) and failure_type else type(error).__name__


@contextmanager
def _traced(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, AttributeValue],
    context: Context | None = None,
    with_headers: bool = False,
) -> Iterator[Traced]:
    with tracer.start_as_current_span(
        name, context=context, kind=kind, record_exception=False, set_status_on_exception=False
    ) as span:
        recording = span.is_recording()
        if recording:
            span.set_attributes(span_attributes(current_fields()))
            span.set_attributes(attributes)
        traced = Traced(span, outgoing_headers() if with_headers else None)
        token = _innermost.set(traced)
        try:
            yield traced
        except BaseException as err:
            if recording:
                span.set_attribute(OUTCOME, traced.outcome or outcome_of(err))
                if not isinstance(err, asyncio.CancelledError):
                    span.record_exception(err)
                    span.set_status(Status(StatusCode.ERROR, f"{type(err).__name__}: {err}"))
            raise
        else:
            if recording:
                span.set_attribute(OUTCOME, traced.outcome or "ok")
        finally:
            _innermost.reset(token)


@contextmanager
def request_span(tracer: Tracer, operation: str, subject: str) -> Iterator[Traced]:
    """A client span around one NATS request; ``headers`` carry it to the node."""
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.destination.name": subject,
    }
    with _traced(
        tracer, f"nats request {operation}", SpanKind.CLIENT, attributes, with_headers=True
    ) as traced:
        yield traced


@contextmanager
def server_span(
    tracer: Tracer, operation: str, subject: str, context: Context | None
) -> Iterator[Traced]:
    """The node's span for one received message, a child of the sender's span if any."""
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": subject,
    }
    with _traced(tracer, f"node {operation}", SpanKind.SERVER, attributes, context) as traced:
        yield traced


@contextmanager
def phase_span(tracer: Tracer, phase: str, **attributes: AttributeValue) -> Iterator[Traced]:
    """One phase of an install on the node: resolve, download, verify, extract, spawn, readiness."""
    with _traced(tracer, phase, SpanKind.INTERNAL, attributes) as traced:
        yield traced
