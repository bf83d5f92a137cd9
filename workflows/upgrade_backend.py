"""``UpgradeBackendWorkflow``: one backend on one node, re-pulled and verified, slots back.

The steps, each durable:

1. **Inspect**: ``backend.list`` (the version before) and the slots running the backend. A node
   that does not list the backend is never asked to upgrade it (reference §6).
2. **Upgrade**: ``backend.upgrade`` with a stable op id, progress forwarded as for an install.
   A timeout means "still upgrading": the workflow inspects again before anything is re-sent
   (an upgrade in flight is waited for; a finished one is not repeated), and every re-send
   carries the same op id. No responders on the subject falls back to ``backend.install`` with
   ``force:true`` (older workers); nothing answering at all backs off until the deadline.
3. **Verify**: ``backend.list`` must show the new install (the expected version/uri/digest when
   given, else anything but the install that was there before). A node that says success but
   still lists the old install fails with ``UpgradeNotApplied``: never assumed, always checked.
4. **Slots back**: every slot that ran before (from the inspection, and the keys the node says
   it stopped) is installed again through ``InstallBackendWorkflow`` with the slot's own
   workflow id, so its process starts from the new files; each then answers gRPC ``Health``.

With ``rollback`` the same steps put the previous version back (the node agent's
``backend.rollback``, or an upgrade to ``previous_uri`` for a stock worker).

This module is the shell: every activity, child workflow, timer and upsert. What the upgrade
knows and how it decides lives in ``workflows/upgrade_state.py``, each step's input, timeouts
and retry policy in ``workflows/upgrade_steps.py``; both are passed through the sandbox.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    import pydantic

    from durable_installs.contracts.activities import InstallProgress
    from durable_installs.contracts.failures import root_message
    from durable_installs.contracts.install import InstallBackendResult
    from durable_installs.contracts.names import (
        ATTACH_ACTIVITY,
        CHECK_HEALTH_ACTIVITY,
        DROP_PREVIOUS_ACTIVITY,
        INSPECT_BACKEND_ACTIVITY,
        INSTALL_WORKFLOW,
        PROGRESS_SIGNAL,
        UPGRADE_ACTIVITY,
        UPGRADE_STATUS_QUERY,
        UPGRADE_WORKFLOW,
    )
    from durable_installs.contracts.upgrade import (
        MINIMAL_UPGRADE_INPUT,
        DropPreviousInput,
        HealthCheckInput,
        HealthCheckResult,
        InspectBackendResult,
        SlotOutcome,
        SlotRef,
        UpgradeActivityResult,
        UpgradeBackendInput,
        UpgradeBackendResult,
        UpgradePhase,
        UpgradeStatus,
    )
    from workflows.inputs import check_input
    from workflows.install_steps import backoff_seconds
    from workflows.upgrade_state import UpgradeState, details_markdown, stand_in_input
    from workflows.upgrade_steps import (
        ATTACH_HEARTBEAT_TIMEOUT,
        INSPECT_TIMEOUT,
        SHORT_RETRY,
        UPGRADE_RETRY,
        NextStep,
        attach_timeout,
        inspect_input,
        restore_install_input,
        restore_workflow_id,
        upgrade_timeout,
        verb,
    )


@workflow.defn(name=UPGRADE_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class UpgradeBackendWorkflow:
    """Upgrade (or roll back) one backend on one node; success is verified, never assumed.

    Runs PINNED on a versioned worker (``orchestrator.registry.WORKFLOW_BEHAVIORS``) like the
    install: a re-pull can take hours and finishes on the worker version that started it.
    """

    @workflow.init
    def __init__(self, input: UpgradeBackendInput | None = None) -> None:
        """Validate first; an invalid input fails in ``run`` with ``InvalidInput``.

        An invalid input is replaced by a harmless stand-in, so the query still answers.
        """
        self._checked = check_input(input, MINIMAL_UPGRADE_INPUT)
        valid = self._checked.input
        self._state = UpgradeState(
            valid if valid is not None else stand_in_input(),
            workflow.info().workflow_id,
            workflow.now(),
        )

    @workflow.run
    async def run(self, input: UpgradeBackendInput | None = None) -> UpgradeBackendResult:
        """Inspect, upgrade, verify, bring the slots back, check their health."""
        if self._checked.invalid:
            raise self._checked.failure()
        workflow.upsert_search_attributes(self._state.identity())
        try:
            return await self._run()
        except ApplicationError as err:
            failure = self._state.failed(err)
            self._publish()
            raise failure from None

    @workflow.query(name=UPGRADE_STATUS_QUERY)
    def progress(self) -> UpgradeStatus:
        """Phase, requests, probes, the version before and after, the slots brought back."""
        return self._state.status

    @workflow.signal(name=PROGRESS_SIGNAL)
    def report_progress(self, report: InstallProgress) -> None:
        """Progress forwarded by the upgrade activity while it waits for the node."""
        if self._state.record_progress(report):
            self._publish()

    # --- the steps -----------------------------------------------------------------------------

    async def _run(self) -> UpgradeBackendResult:
        state = self._state
        input = state.input
        self._set_phase(UpgradePhase.INSPECTING)
        before = await self._inspect_reachable()
        state.inspected_before(before)
        reply = await self._upgrade_until_done(before)
        self._set_phase(UpgradePhase.VERIFYING)
        after = await self._inspect_reachable()
        state.verify(before.version, after.version)
        await self._restore(state.slots_to_restore(before, after, reply))
        if state.drops_previous:
            await workflow.execute_activity(
                DROP_PREVIOUS_ACTIVITY,
                DropPreviousInput(node_id=input.node_id, backend=input.backend),
                result_type=bool,
                start_to_close_timeout=INSPECT_TIMEOUT,
                retry_policy=SHORT_RETRY,
                summary=f"drop the previous version of {input.backend} on {input.node_id}",
            )
        self._set_phase(UpgradePhase.SUCCEEDED)
        return state.result(before, after, reply)

    async def _upgrade_until_done(
        self, before: InspectBackendResult
    ) -> UpgradeActivityResult | None:
        """Send until the node replies success, or an inspection shows the re-pull happened.

        Returns the reply, or None when an inspection found the new install after a lost reply
        (the slots to bring back then come from the first inspection alone).
        """
        state = self._state
        step = NextStep.SEND
        while True:
            self._check_deadline()
            if step is NextStep.SEND:
                sent = await self._send()
                if isinstance(sent, UpgradeActivityResult):
                    return sent
                if sent is NextStep.BACK_OFF:
                    await self._sleep(state.backoff_seconds(), UpgradePhase.BACKING_OFF)
            state.status.probes += 1
            self._set_phase(UpgradePhase.PROBING)
            step = state.after_probe(await self._inspect(), before.version)
            if step is NextStep.VERIFY:
                return None
            if step is NextStep.BACK_OFF:
                await self._sleep(state.backoff_seconds(), UpgradePhase.BACKING_OFF)
                step = NextStep.PROBE
            elif step is NextStep.WAIT:
                await self._sleep(state.input.probe_interval_seconds, UpgradePhase.STILL_UPGRADING)
                step = NextStep.PROBE

    async def _send(self) -> UpgradeActivityResult | NextStep:
        """One request; the reply, or what to do next given how it failed."""
        state = self._state
        input = state.input
        activity_input = state.next_request(workflow.now())
        self._set_phase(UpgradePhase.UPGRADING)
        try:
            result: UpgradeActivityResult = await workflow.execute_activity(
                UPGRADE_ACTIVITY,
                activity_input,
                result_type=UpgradeActivityResult,
                start_to_close_timeout=upgrade_timeout(activity_input),
                heartbeat_timeout=timedelta(seconds=input.heartbeat_timeout_seconds),
                retry_policy=UPGRADE_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{verb(input)} {input.backend} on {input.node_id} "
                f"(request {state.status.requests})",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            step = state.after_failed_send(err.cause, err)
            self._publish()
            return step
        state.replied(result)
        return result

    async def _restore(self, slots: list[SlotRef]) -> None:
        """Install every slot again (new processes from the new files) and check its health."""
        if not slots:
            return
        state = self._state
        self._set_phase(UpgradePhase.RESTORING_SLOTS)
        outcomes = await asyncio.gather(*(self._restore_slot(slot) for slot in slots))
        state.status.slots = list(outcomes)
        self._set_phase(UpgradePhase.CHECKING_HEALTH)
        addresses = [o.address for o in outcomes if o.address]
        if addresses:
            health = await workflow.execute_activity(
                CHECK_HEALTH_ACTIVITY,
                HealthCheckInput(addresses=addresses),
                result_type=HealthCheckResult,
                start_to_close_timeout=INSPECT_TIMEOUT,
                retry_policy=SHORT_RETRY,
                summary=f"gRPC Health of {len(addresses)} slot(s) on {state.input.node_id}",
            )
            state.record_health(health)
        self._publish()
        unhealthy = state.unhealthy_error()
        if unhealthy is not None:
            raise unhealthy

    async def _restore_slot(self, slot: SlotRef) -> SlotOutcome:
        """Bring one slot back through its own install workflow, or join the one running."""
        input = self._state.input
        workflow_id = restore_workflow_id(input, slot)
        outcome = SlotOutcome(
            model_id=slot.model_id, replica_index=slot.replica_index, workflow_id=workflow_id
        )
        install = restore_install_input(input, slot)
        try:
            try:
                result: InstallBackendResult = await workflow.execute_child_workflow(
                    INSTALL_WORKFLOW,
                    install,
                    id=workflow_id,
                    result_type=InstallBackendResult,
                    parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                    static_summary=f"bring back {install.slot} after the upgrade",
                )
            except WorkflowAlreadyStartedError:  # someone else installs the slot: wait for it
                result = await workflow.execute_activity(
                    ATTACH_ACTIVITY,
                    workflow_id,
                    result_type=InstallBackendResult,
                    start_to_close_timeout=attach_timeout(input),
                    heartbeat_timeout=ATTACH_HEARTBEAT_TIMEOUT,
                    summary=f"wait for the running install of {install.slot}",
                )
            outcome.address = result.address
        except (ChildWorkflowError, ActivityError) as err:
            if is_cancelled_exception(err):
                raise
            outcome.error = root_message(err)
        return outcome

    # --- helpers -------------------------------------------------------------------------------

    async def _inspect(self) -> InspectBackendResult:
        input = self._state.input
        result: InspectBackendResult = await workflow.execute_activity(
            INSPECT_BACKEND_ACTIVITY,
            inspect_input(input, self._state.op_id),
            result_type=InspectBackendResult,
            start_to_close_timeout=INSPECT_TIMEOUT,
            retry_policy=SHORT_RETRY,
            summary=f"inspect {input.backend} on {input.node_id}",
        )
        return result

    async def _inspect_reachable(self) -> InspectBackendResult:
        """Inspect until the node answers, backing off, bounded by the deadline."""
        streak = 0
        while True:
            result = await self._inspect()
            if result.reachable:
                return result
            streak += 1
            self._state.node_silent()
            self._check_deadline()
            await self._sleep(backoff_seconds(self._state.input, streak), UpgradePhase.BACKING_OFF)

    def _check_deadline(self) -> None:
        if self._state.past_deadline(workflow.now()):
            raise self._state.deadline_error()

    async def _sleep(self, seconds: float, phase: UpgradePhase) -> None:
        """A durable timer that never runs past the deadline."""
        self._set_phase(phase)
        await workflow.sleep(
            self._state.sleep_seconds(seconds, workflow.now()),
            summary=f"{phase.value.replace('_', ' ')}",
        )

    def _set_phase(self, phase: UpgradePhase) -> None:
        self._state.status.phase = phase
        self._publish()

    def _publish(self) -> None:
        workflow.set_current_details(details_markdown(self._state.status))
