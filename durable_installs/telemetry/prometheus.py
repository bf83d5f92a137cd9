"""Serve OpenTelemetry metrics in the Prometheus text format on an HTTP address.

Each endpoint has its own collector registry rather than ``prometheus_client``'s global one,
so two components in one process (a test, the dev stack) never mix their metrics. Needs the
``prometheus`` extra (``opentelemetry-exporter-prometheus``, which brings
``prometheus_client``); it is imported only when an address is configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port`` → (host, port)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {address!r}: expected HOST:PORT, e.g. 0.0.0.0:9464")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class MetricsEndpoint:
    """A running ``/metrics`` endpoint and the reader that feeds it."""

    reader: MetricReader
    host: str
    port: int
    _server: Any

    @property
    def url(self) -> str:
        """Where to scrape."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(address: str) -> MetricsEndpoint:
    """Start serving on ``address`` (port 0 picks a free port; see ``.port``)."""
    host, port = parse_address(address)
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as err:
        raise RuntimeError(
            "a metrics address needs the prometheus extra: pip install "
            "'durable-backend-installs[prometheus]'"
        ) from err
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(reader, host, server.server_port, server)
