"""The project's own metrics: what each instrument counts, in one place.

Names follow OpenTelemetry (dots, a unit); the Prometheus exporter turns
``backend_install.requests`` into ``backend_install_requests_total`` and
``backend_install.duration`` (unit ``s``) into ``backend_install_duration_seconds``.
Attributes are low-cardinality on purpose (outcome, backend, probe result), never node or
slot ids: per-slot detail belongs in traces and logs. All of these are recorded from
activities and the node agent, never from workflow code, so replays never count twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
"""Install requests take from milliseconds (already running) to many minutes (a big pull)."""


class InstallMetrics:
    """Instruments of the worker's install and probe activities."""

    def __init__(self, meter: Meter) -> None:
        self.requests = meter.create_counter(
            "backend_install.requests",
            unit="{request}",
            description="Install requests sent to nodes, by outcome (succeeded or the failure "
            "type: WorkerStillInstalling, NodeUnreachable, InstallRejected, InstallFailed, "
            "cancelled) and backend.",
        )
        self.still_installing = meter.create_counter(
            "backend_install.still_installing",
            unit="{timeout}",
            description="Install requests that timed out while the node was still installing.",
        )
        self.probes = meter.create_counter(
            "backend_install.probes",
            unit="{probe}",
            description="Probes of a slot, by result (RUNNING, IN_FLIGHT, INSTALLED, ABSENT, "
            "UNKNOWN) and source (status extension or stock subjects).",
        )
        self.progress_events = meter.create_counter(
            "backend_install.progress_events",
            unit="{event}",
            description="Progress events received from nodes and forwarded as heartbeats.",
        )
        self.duration = meter.create_histogram(
            "backend_install.duration",
            unit="s",
            description="How long one install request waited for the node's reply, by outcome.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def install_finished(self, outcome: str, backend: str, seconds: float) -> None:
        """Count one install request and its duration."""
        self.requests.add(1, {"outcome": outcome, "backend": backend})
        self.duration.record(seconds, {"outcome": outcome})
        if outcome == "WorkerStillInstalling":
            self.still_installing.add(1)


class NodeMetrics:
    """Instruments of the node agent."""

    def __init__(self, meter: Meter, running: Callable[[], int] = lambda: 0) -> None:
        self.installs = meter.create_counter(
            "node_agent.installs",
            unit="{request}",
            description="backend.install requests answered, by outcome (succeeded, failed).",
        )
        self.download_bytes = meter.create_counter(
            "node_agent.download",
            unit="By",
            description="Bytes of backend artifacts downloaded or copied into staging.",
        )

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(running())]

        self.processes_running = meter.create_observable_gauge(
            "node_agent.processes.running",
            callbacks=[observe],
            unit="{process}",
            description="Backend processes running and healthy on this node.",
        )
