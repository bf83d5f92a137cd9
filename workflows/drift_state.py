"""What a drift check knows, every decision it makes, and each step's input and timeouts.

``DriftCheckWorkflow`` is split like the install: this module is the core (which nodes are
checked and in which batches, the report as the batches come in, the upgrade rollouts the
outdated backends become, the UI's details), and ``workflows/drift.py`` is the shell that
calls the activities and starts the rollouts. The core takes the time and the random part of
a rollout's id as arguments and calls nothing of ``temporalio`` but its retry policy, so the
sandbox passes it through (imported once per worker) and tests check its decisions without a
server (``tests/workflows/test_drift_state.py``).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio.common import RetryPolicy

from durable_installs.contracts.drift import (
    MAX_DRIFT_NODES,
    NODES_PER_CHECK,
    CheckDriftInput,
    CheckDriftResult,
    DriftCheckInput,
    DriftReport,
    UpgradeStarted,
)
from durable_installs.contracts.nodes import FleetView

ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)
"""Reading the registry and asking a batch of nodes: a few tries, then the check fails."""

LIST_NODES_TIMEOUT = timedelta(seconds=60)
"""Bound on reading the node registry."""

CHECK_MARGIN_SECONDS = 120.0
"""Slack on top of a batch's request timeout: the batch also reads the gallery indexes."""

DETAIL_NODES = 20
"""Nodes named per outdated backend in the UI's details."""


# --- each step's input and timeouts ---------------------------------------------------------


def nodes_to_check(input: DriftCheckInput, fleet: FleetView | None) -> list[str]:
    """The explicit nodes, then every node the registry knows (``fleet``, None when the
    registry is not used), each once, at most ``MAX_DRIFT_NODES``."""
    explicit = list(dict.fromkeys(input.nodes))
    announced = fleet.node_ids() if fleet is not None else []
    return list(dict.fromkeys([*explicit, *announced]))[:MAX_DRIFT_NODES]


def batches(node_ids: list[str]) -> list[list[str]]:
    """``NODES_PER_CHECK`` nodes per ``check_drift`` activity, in order."""
    return [
        node_ids[start : start + NODES_PER_CHECK]
        for start in range(0, len(node_ids), NODES_PER_CHECK)
    ]


def check_drift_input(input: DriftCheckInput, batch: list[str]) -> CheckDriftInput:
    """What one batch asks: these nodes against the check's galleries and backend filter."""
    return CheckDriftInput(
        node_ids=batch,
        backend_galleries=input.backend_galleries,
        backends=input.backends,
        timeout_seconds=input.request_timeout_seconds,
    )


def check_timeout(input: DriftCheckInput) -> timedelta:
    """One batch's start-to-close timeout: its nodes are asked at once, plus slack."""
    return timedelta(seconds=input.request_timeout_seconds + CHECK_MARGIN_SECONDS)


def upgrade_workflow_id(backend: str, now: datetime, unique: uuid.UUID) -> str:
    """``drift-upgrade/<backend>/<UTC time of the check>-<8 hex>``: one per backend per check.

    The caller passes workflow time and ``workflow.uuid4()``, so the id is deterministic and
    independent of the drift run's own workflow id: a recorded history replays under any id.
    """
    return f"drift-upgrade/{backend}/{now:%Y%m%dT%H%M%SZ}-{unique.hex[:8]}"


def rollout_task_queue(input: DriftCheckInput, own_task_queue: str) -> str:
    """Where the upgrade rollouts run: the queue asked for, else the check's own."""
    return input.upgrade_task_queue or own_task_queue


@dataclass(frozen=True)
class UpgradeRollout:
    """One upgrade rollout to start: an outdated backend and exactly the nodes where it is
    outdated (never a node that does not have it, never one whose state is unknown)."""

    backend: str
    targets: list[str]
    input: dict[str, Any]
    """The ``RolloutBackendWorkflow`` input, by field name: the rollout is started by type
    name, so any worker's rollout (or another team's) can run it."""

    @property
    def summary(self) -> str:
        return f"drift: upgrade {self.backend} on {len(self.targets)} node(s)"

    def started(self, workflow_id: str, already_running: bool = False) -> UpgradeStarted:
        """The report's line for this rollout, started now or found already running."""
        return UpgradeStarted(
            backend=self.backend,
            workflow_id=workflow_id,
            targets=self.targets,
            already_running=already_running,
        )


# --- the state -------------------------------------------------------------------------------


class DriftCheck:
    """The report of one check as its batches come in, and what it starts."""

    def __init__(self, input: DriftCheckInput, now: datetime, fleet: FleetView | None) -> None:
        self.input = input
        self.report = DriftReport(
            checked_at=now, duplicates=fleet.duplicates if fleet is not None else []
        )

    def add(self, result: CheckDriftResult) -> None:
        """Add one batch's nodes; a gallery note met by several batches is kept once."""
        self.report.nodes += result.nodes
        for note in result.gallery_notes:
            if note not in self.report.gallery_notes:
                self.report.gallery_notes.append(note)

    def upgrade_rollouts(self) -> list[UpgradeRollout]:
        """One upgrade rollout per outdated backend, only with ``start_upgrades`` (off, the
        check only reports)."""
        if not self.input.start_upgrades:
            return []
        return [
            UpgradeRollout(
                backend,
                targets,
                {
                    **self.input.upgrade_options,
                    "backend": backend,
                    "action": "upgrade",
                    "targets": [{"node_id": node} for node in targets],
                    "backend_galleries": [
                        g.model_dump(mode="json") for g in self.input.backend_galleries
                    ],
                },
            )
            for backend, targets in self.report.outdated().items()
        ]


def details_markdown(report: DriftReport) -> str:
    """The UI's current details: counts, then one line per outdated backend and rollout."""
    counts = ", ".join(f"{state} {count}" for state, count in report.counts().items()) or "no nodes"
    lines = [f"**drift** across {len(report.nodes)} node(s): {counts}"]
    for backend, nodes in report.outdated().items():
        lines.append(f"- {backend} outdated on {', '.join(nodes[:DETAIL_NODES])}")
    for upgrade in report.upgrades:
        lines.append(f"- upgrade started: `{upgrade.workflow_id}`")
    return "\n".join(lines)
