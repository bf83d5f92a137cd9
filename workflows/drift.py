"""``DriftCheckWorkflow``: which nodes run outdated backends, and (opt-in) upgrade them.

LocalAI's upgrade checker runs every six hours inside the frontend and upgrades silently;
here a Temporal Schedule starts this workflow (``backendctl drift-schedule``), every run is
visible in the UI with its report, and upgrades start only with ``start_upgrades``: one
``RolloutBackendWorkflow`` per outdated backend with ``"action": "upgrade"`` and exactly the
nodes where it is outdated as targets (never a node that does not have it). The rollouts are
started by type name as abandoned children: they outlive the check and are linked to it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from durable_installs.contracts.drift import (
        MAX_DRIFT_NODES,
        MINIMAL_DRIFT_INPUT,
        NODES_PER_CHECK,
        CheckDriftInput,
        CheckDriftResult,
        DriftCheckInput,
        DriftReport,
        UpgradeStarted,
    )
    from durable_installs.contracts.failures import INVALID_INPUT
    from durable_installs.contracts.install import missing_input_message
    from durable_installs.contracts.names import (
        CHECK_DRIFT_ACTIVITY,
        DRIFT_WORKFLOW,
        LIST_NODES_ACTIVITY,
        ROLLOUT_WORKFLOW,
    )
    from durable_installs.contracts.nodes import FleetView

ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)


def upgrade_workflow_id(backend: str) -> str:
    """``drift-upgrade/<backend>/<UTC time of the check>-<8 hex>``: one per backend per check.

    Deterministic (workflow time and ``workflow.uuid4``) and independent of the drift run's
    own workflow id, so a recorded history replays under any id.
    """
    return f"drift-upgrade/{backend}/{workflow.now():%Y%m%dT%H%M%SZ}-{workflow.uuid4().hex[:8]}"


@workflow.defn(name=DRIFT_WORKFLOW)
class DriftCheckWorkflow:
    """Compare every known node's backends with the gallery; report; optionally upgrade."""

    def __init__(self) -> None:
        self._report: DriftReport | None = None

    @workflow.query(name="report")
    def report(self) -> DriftReport | None:
        """The report once the check has run (None before)."""
        return self._report

    @workflow.run
    async def run(self, input: DriftCheckInput | None = None) -> DriftReport:
        if input is None:
            raise ApplicationError(
                missing_input_message(MINIMAL_DRIFT_INPUT), type=INVALID_INPUT, non_retryable=True
            )
        invalid = input.describe_problems()
        if invalid:
            raise ApplicationError(invalid, type=INVALID_INPUT, non_retryable=True)

        node_ids = list(dict.fromkeys(input.nodes))
        duplicates: list[str] = []
        if input.use_registry:
            fleet: FleetView = await workflow.execute_activity(
                LIST_NODES_ACTIVITY,
                result_type=FleetView,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=ACTIVITY_RETRY,
                summary="read the node registry",
            )
            duplicates = fleet.duplicates
            for node in fleet.node_ids():
                if node not in node_ids:
                    node_ids.append(node)
        node_ids = node_ids[:MAX_DRIFT_NODES]

        report = DriftReport(checked_at=workflow.now(), duplicates=duplicates)
        for start in range(0, len(node_ids), NODES_PER_CHECK):
            batch = node_ids[start : start + NODES_PER_CHECK]
            result: CheckDriftResult = await workflow.execute_activity(
                CHECK_DRIFT_ACTIVITY,
                CheckDriftInput(
                    node_ids=batch,
                    backend_galleries=input.backend_galleries,
                    backends=input.backends,
                    timeout_seconds=input.request_timeout_seconds,
                ),
                result_type=CheckDriftResult,
                start_to_close_timeout=timedelta(seconds=input.request_timeout_seconds + 120),
                retry_policy=ACTIVITY_RETRY,
                summary=f"drift of {len(batch)} node(s)",
            )
            report.nodes += result.nodes
            for note in result.gallery_notes:
                if note not in report.gallery_notes:
                    report.gallery_notes.append(note)

        if input.start_upgrades:
            for backend, targets in report.outdated().items():
                report.upgrades.append(await self._start_upgrade(input, backend, targets))
        self._report = report
        workflow.set_current_details(_details(report))
        return report

    async def _start_upgrade(
        self, input: DriftCheckInput, backend: str, targets: list[str]
    ) -> UpgradeStarted:
        info = workflow.info()
        workflow_id = upgrade_workflow_id(backend)
        rollout_input: dict[str, Any] = {
            **input.upgrade_options,
            "backend": backend,
            "action": "upgrade",
            "targets": [{"node_id": node} for node in targets],
            "backend_galleries": [g.model_dump(mode="json") for g in input.backend_galleries],
        }
        try:
            await workflow.start_child_workflow(
                ROLLOUT_WORKFLOW,
                rollout_input,
                id=workflow_id,
                task_queue=input.upgrade_task_queue or info.task_queue,
                parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=f"drift: upgrade {backend} on {len(targets)} node(s)",
            )
        except WorkflowAlreadyStartedError:
            return UpgradeStarted(
                backend=backend, workflow_id=workflow_id, targets=targets, already_running=True
            )
        return UpgradeStarted(backend=backend, workflow_id=workflow_id, targets=targets)


def _details(report: DriftReport) -> str:
    """The UI's current details: counts, then one line per outdated backend."""
    counts = ", ".join(f"{state} {count}" for state, count in report.counts().items()) or "no nodes"
    lines = [f"**drift** across {len(report.nodes)} node(s): {counts}"]
    for backend, nodes in report.outdated().items():
        lines.append(f"- {backend} outdated on {', '.join(nodes[:20])}")
    for upgrade in report.upgrades:
        lines.append(f"- upgrade started: `{upgrade.workflow_id}`")
    return "\n".join(lines)
