"""``DriftCheckWorkflow``: which nodes run outdated backends, and (opt-in) upgrade them.

LocalAI's upgrade checker runs every six hours inside the frontend and upgrades silently;
here a Temporal Schedule starts this workflow (``backendctl drift-schedule``), every run is
visible in the UI with its report, and upgrades start only with ``start_upgrades``: one
``RolloutBackendWorkflow`` per outdated backend with ``"action": "upgrade"`` and exactly the
nodes where it is outdated as targets (never a node that does not have it). The rollouts are
started by type name as abandoned children: they outlive the check and are linked to it.

This module is the shell: every activity and child start. What the check knows and decides,
and each step's input and timeouts, live in ``workflows/drift_state.py``, passed through the
sandbox.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from durable_installs.contracts.drift import (
        MINIMAL_DRIFT_INPUT,
        CheckDriftResult,
        DriftCheckInput,
        DriftReport,
        UpgradeStarted,
    )
    from durable_installs.contracts.names import (
        CHECK_DRIFT_ACTIVITY,
        DRIFT_REPORT_QUERY,
        DRIFT_WORKFLOW,
        LIST_NODES_ACTIVITY,
        ROLLOUT_WORKFLOW,
    )
    from durable_installs.contracts.nodes import FleetView
    from workflows.drift_state import (
        ACTIVITY_RETRY,
        LIST_NODES_TIMEOUT,
        DriftCheck,
        UpgradeRollout,
        batches,
        check_drift_input,
        check_timeout,
        details_markdown,
        nodes_to_check,
        rollout_task_queue,
        upgrade_workflow_id,
    )
    from workflows.inputs import check_input


@workflow.defn(name=DRIFT_WORKFLOW)
class DriftCheckWorkflow:
    """Compare every known node's backends with the gallery; report; optionally upgrade."""

    def __init__(self) -> None:
        self._report: DriftReport | None = None

    @workflow.query(name=DRIFT_REPORT_QUERY)
    def report(self) -> DriftReport | None:
        """The report once the check has run (None before)."""
        return self._report

    @workflow.run
    async def run(self, input: DriftCheckInput | None = None) -> DriftReport:
        """Read the registry, ask the nodes in batches, start the upgrades asked for."""
        checked = check_input(input, MINIMAL_DRIFT_INPUT)
        if checked.input is None:
            raise checked.failure(with_problems=False)
        input = checked.input

        fleet: FleetView | None = None
        if input.use_registry:
            fleet = await workflow.execute_activity(
                LIST_NODES_ACTIVITY,
                result_type=FleetView,
                start_to_close_timeout=LIST_NODES_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
                summary="read the node registry",
            )
        node_ids = nodes_to_check(input, fleet)

        check = DriftCheck(input, workflow.now(), fleet)
        for batch in batches(node_ids):
            result: CheckDriftResult = await workflow.execute_activity(
                CHECK_DRIFT_ACTIVITY,
                check_drift_input(input, batch),
                result_type=CheckDriftResult,
                start_to_close_timeout=check_timeout(input),
                retry_policy=ACTIVITY_RETRY,
                summary=f"drift of {len(batch)} node(s)",
            )
            check.add(result)

        for rollout in check.upgrade_rollouts():
            check.report.upgrades.append(await self._start_upgrade(input, rollout))
        self._report = check.report
        workflow.set_current_details(details_markdown(check.report))
        return check.report

    async def _start_upgrade(
        self, input: DriftCheckInput, rollout: UpgradeRollout
    ) -> UpgradeStarted:
        """Start one upgrade rollout as an abandoned child; one already running is reported."""
        task_queue = rollout_task_queue(input, workflow.info().task_queue)
        workflow_id = upgrade_workflow_id(rollout.backend, workflow.now(), workflow.uuid4())
        try:
            await workflow.start_child_workflow(
                ROLLOUT_WORKFLOW,
                rollout.input,
                id=workflow_id,
                task_queue=task_queue,
                parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=rollout.summary,
            )
        except WorkflowAlreadyStartedError:
            return rollout.started(workflow_id, already_running=True)
        return rollout.started(workflow_id)
