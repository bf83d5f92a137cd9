"""Which providers a process uses, decided by configuration (``OTEL_*``, a metrics address).

Traces: ``OTEL_TRACES_EXPORTER`` is a comma-separated list of ``otlp``, ``console`` and
``none``; unlike OpenTelemetry's own default it defaults to ``none``, so nothing is traced
or sent unless asked for. ``otlp`` honours ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, the
default, or ``http/protobuf``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other exporter
variables; the SDK itself reads ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``. ``OTEL_SDK_DISABLED=true`` turns everything off.

Metrics: a Prometheus address serves this process's own instruments over HTTP, and
``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``, ``none``; default ``none``) pushes them.
Without either, the meter is the no-op one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import Meter, MeterProvider, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import NoOpTracerProvider, Tracer
from opentelemetry.trace import TracerProvider as ApiTracerProvider

from durable_installs.telemetry.prometheus import MetricsEndpoint, serve_metrics

log = logging.getLogger(__name__)

INSTRUMENTATION_SCOPE = "durable_backend_installs"


@dataclass(frozen=True)
class Telemetry:
    """The tracer and meter providers one component uses, and how to shut them down.

    The default is everything off. Tests build one around an SDK provider with an in-memory
    exporter; processes use :func:`telemetry_from_env`.
    """

    tracer_provider: ApiTracerProvider = field(default_factory=NoOpTracerProvider)
    meter_provider: MeterProvider = field(default_factory=NoOpMeterProvider)
    metrics_endpoint: MetricsEndpoint | None = None
    _closers: tuple[Callable[[], object], ...] = ()

    @property
    def tracing(self) -> bool:
        """Whether spans may be recorded (decides whether Temporal's interceptor is worth it)."""
        return not isinstance(self.tracer_provider, NoOpTracerProvider)

    def tracer(self, name: str = INSTRUMENTATION_SCOPE) -> Tracer:
        """A tracer of this component's provider."""
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str = INSTRUMENTATION_SCOPE) -> Meter:
        """A meter of this component's provider."""
        return self.meter_provider.get_meter(name)

    def shutdown(self) -> None:
        """Flush and stop exporters and the metrics endpoint (at process exit)."""
        for close in self._closers:
            try:
                close()
            except Exception as err:  # telemetry must never fail a shutdown
                log.warning("telemetry shutdown: %s", err)


def _list(value: str | None) -> list[str]:
    return [item.strip().lower() for item in (value or "").split(",") if item.strip()]


def _resource(service_name: str, env: Mapping[str, str]) -> Resource:
    """``OTEL_SERVICE_NAME`` wins over the component's default service name."""
    if env.get("OTEL_SERVICE_NAME"):
        return Resource.create()
    return Resource.create({SERVICE_NAME: service_name})


def _otlp_span_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    try:
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    except ImportError as err:
        raise RuntimeError(
            "OTEL_TRACES_EXPORTER=otlp needs the otlp extra: pip install "
            "'durable-backend-installs[otlp]'"
        ) from err


def _otlp_metric_exporter(env: Mapping[str, str]) -> MetricExporter:
    protocol = env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    try:
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpExporter,
            )

            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    except ImportError as err:
        raise RuntimeError(
            "OTEL_METRICS_EXPORTER=otlp needs the otlp extra: pip install "
            "'durable-backend-installs[otlp]'"
        ) from err


def _span_processors(env: Mapping[str, str]) -> list[SpanProcessor]:
    processors: list[SpanProcessor] = []
    for name in _list(env.get("OTEL_TRACES_EXPORTER")):
        if name == "otlp":
            processors.append(BatchSpanProcessor(_otlp_span_exporter(env)))
        elif name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console)")
    return processors


def _metric_readers(env: Mapping[str, str]) -> list[MetricReader]:
    readers: list[MetricReader] = []
    for name in _list(env.get("OTEL_METRICS_EXPORTER")):
        if name == "otlp":
            readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter(env)))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name not in ("none", "prometheus"):  # prometheus: see metrics_address
            raise ValueError(f"OTEL_METRICS_EXPORTER: unknown exporter {name!r} (otlp, console)")
    return readers


def telemetry_from_env(
    service_name: str,
    *,
    metrics_address: str = "",
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Providers as the environment configures them; ``metrics_address`` serves Prometheus.

    Raises ValueError for an unknown exporter name and RuntimeError for a missing extra, so a
    typo fails at start-up instead of silently tracing nothing.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry()
    resource = _resource(service_name, env)
    closers: list[Callable[[], object]] = []

    tracer_provider: ApiTracerProvider = NoOpTracerProvider()
    processors = _span_processors(env)
    if processors:
        sdk_tracer_provider = TracerProvider(resource=resource)
        for processor in processors:
            sdk_tracer_provider.add_span_processor(processor)
        tracer_provider = sdk_tracer_provider
        closers.append(sdk_tracer_provider.shutdown)

    meter_provider: MeterProvider = NoOpMeterProvider()
    readers = _metric_readers(env)
    endpoint = serve_metrics(metrics_address) if metrics_address else None
    if endpoint is not None:
        readers.append(endpoint.reader)
    if readers:
        sdk_meter_provider = SdkMeterProvider(metric_readers=readers, resource=resource)
        meter_provider = sdk_meter_provider
        closers.append(sdk_meter_provider.shutdown)
    if endpoint is not None:
        closers.append(endpoint.close)
    return Telemetry(tracer_provider, meter_provider, endpoint, tuple(closers))
