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
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    TimeoutError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    import pydantic

    from durable_installs.contracts.activities import InstallProgress, progress_from_details
    from durable_installs.contracts.failures import (
        ACTIVITY_ROUTED_TYPES,
        INSTALL_DEADLINE_EXCEEDED,
        INSTALL_FAILED,
        INVALID_INPUT,
        NODE_UNREACHABLE,
        WORKER_STILL_INSTALLING,
        root_message,
    )
    from durable_installs.contracts.install import (
        MAX_PROBLEMS_SHOWN,
        InstallBackendInput,
        InstallBackendResult,
        describe_problems,
        install_workflow_id,
        missing_input_message,
    )
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
    from durable_installs.contracts.search_attributes import BACKEND_NAME, NODE_ID, ROLLOUT_ID
    from durable_installs.contracts.upgrade import (
        BACKEND_NOT_INSTALLED,
        MAX_UPGRADE_SLOTS,
        MINIMAL_UPGRADE_INPUT,
        SLOTS_NOT_RESTORED,
        UPGRADE_NOT_APPLIED,
        BackendVersion,
        DropPreviousInput,
        HealthCheckInput,
        HealthCheckResult,
        InspectBackendInput,
        InspectBackendResult,
        SlotOutcome,
        SlotRef,
        UpgradeActivityInput,
        UpgradeActivityResult,
        UpgradeBackendInput,
        UpgradeBackendResult,
        UpgradePhase,
        UpgradeStatus,
    )
    from durable_installs.protocol.messages import encode_galleries
    from workflows.install_steps import backoff_seconds

OP_ID_NAMESPACE = uuid.UUID("0b7c3a52-47c1-4d33-9f0e-2e51c9a7d6b4")
ACTIVITY_MARGIN = timedelta(seconds=30)
SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
UPGRADE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=[*ACTIVITY_ROUTED_TYPES, "RollbackUnavailable"],
)
"""Temporal retries an upgrade attempt only when the worker running it died; everything the
node said goes back to the workflow, which inspects before anything is sent again."""
INSPECT_TIMEOUT = timedelta(minutes=2)
DETAIL_SLOTS = 20


@workflow.defn(name=UPGRADE_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class UpgradeBackendWorkflow:
    """Upgrade (or roll back) one backend on one node; success is verified, never assumed.

    Runs PINNED on a versioned worker (``orchestrator.registry.WORKFLOW_BEHAVIORS``) like the
    install: a re-pull can take hours and finishes on the worker version that started it.
    """

    @workflow.init
    def __init__(self, input: UpgradeBackendInput | None = None) -> None:
        """Validate first; an invalid input fails in ``run`` with ``InvalidInput``."""
        if input is None:
            self._problems = [("input", "it is missing")]
            self._invalid = missing_input_message(MINIMAL_UPGRADE_INPUT)
            input = UpgradeBackendInput(node_id="", backend="")
        else:
            problems = input.problems()
            self._problems = problems[:MAX_PROBLEMS_SHOWN]
            self._invalid = f"invalid input: {describe_problems(problems)}" if problems else ""
            if self._invalid:
                input = UpgradeBackendInput(node_id="", backend="")
        self._input = input
        self._op_id = input.op_id or str(uuid.uuid5(OP_ID_NAMESPACE, workflow.info().workflow_id))
        self._status = UpgradeStatus(
            node_id=input.node_id, backend=input.backend, rollback=input.rollback
        )
        self._deadline = workflow.now() + timedelta(seconds=input.deadline_seconds)

    @workflow.run
    async def run(self, input: UpgradeBackendInput | None = None) -> UpgradeBackendResult:
        """Inspect, upgrade, verify, bring the slots back, check their health."""
        if self._invalid:
            raise ApplicationError(
                self._invalid, self._problems, type=INVALID_INPUT, non_retryable=True
            )
        input = self._input
        attributes = [NODE_ID.value_set(input.node_id), BACKEND_NAME.value_set(input.backend)]
        if input.rollout_id:
            attributes.append(ROLLOUT_ID.value_set(input.rollout_id))
        workflow.upsert_search_attributes(attributes)
        try:
            return await self._run()
        except ApplicationError as err:
            self._status.error = err.message
            self._set_phase(UpgradePhase.FAILED)
            # The status travels with the failure: a rollout's table shows the version the
            # node had before and what the node said, without querying a closed workflow.
            raise ApplicationError(
                err.message, self._status, type=err.type, non_retryable=True
            ) from None

    @workflow.query(name=UPGRADE_STATUS_QUERY)
    def progress(self) -> UpgradeStatus:
        """Phase, requests, probes, the version before and after, the slots brought back."""
        return self._status

    @workflow.signal(name=PROGRESS_SIGNAL)
    def report_progress(self, report: InstallProgress) -> None:
        """Progress forwarded by the upgrade activity while it waits for the node."""
        current = self._status.progress
        if report.op_id != self._op_id:
            return
        if current is not None and report.event_count < current.event_count:
            return
        self._status.progress = report
        self._publish()

    # --- the steps -----------------------------------------------------------------------------

    async def _run(self) -> UpgradeBackendResult:
        input = self._input
        self._set_phase(UpgradePhase.INSPECTING)
        before = await self._inspect_reachable()
        self._status.before = before.version
        if not input.rollback and not before.version.listed:
            raise ApplicationError(
                f'backend "{input.backend}" is not installed on node {input.node_id}; '
                "an upgrade is only sent to nodes that list the backend",
                type=BACKEND_NOT_INSTALLED,
                non_retryable=True,
            )
        reply = await self._upgrade_until_done(before)
        self._set_phase(UpgradePhase.VERIFYING)
        after = await self._inspect_reachable()
        self._status.after = after.version
        self._verify(before.version, after.version)
        extra = list(input.restore_slots)
        if not before.slots_known:
            # A stock worker does not say which backend a slot runs: the slots running before
            # and gone after are the ones this upgrade stopped.
            extra += [
                SlotRef.from_process_key(f"{s.model_id}#{s.replica_index}", input.backend) or s
                for s in before.running
                if s not in after.running
            ]
        slots = _slots_to_restore(before, reply, input.backend, extra)
        await self._restore(slots)
        if not input.keep_previous and not input.rollback:
            await workflow.execute_activity(
                DROP_PREVIOUS_ACTIVITY,
                DropPreviousInput(node_id=input.node_id, backend=input.backend),
                result_type=bool,
                start_to_close_timeout=INSPECT_TIMEOUT,
                retry_policy=SHORT_RETRY,
                summary=f"drop the previous version of {input.backend} on {input.node_id}",
            )
        self._set_phase(UpgradePhase.SUCCEEDED)
        return UpgradeBackendResult(
            node_id=input.node_id,
            backend=input.backend,
            op_id=self._op_id,
            rollback=input.rollback,
            before=before.version,
            after=after.version,
            stopped_process_keys=reply.stopped_process_keys if reply else [],
            slots=self._status.slots,
            requests=self._status.requests,
            probes=self._status.probes,
            used_install_fallback=self._status.used_install_fallback,
        )

    async def _upgrade_until_done(
        self, before: InspectBackendResult
    ) -> UpgradeActivityResult | None:
        """Send until the node replies success, or an inspection shows the re-pull happened.

        Returns the reply, or None when an inspection found the new install after a lost reply
        (the slots to bring back then come from the first inspection alone).
        """
        streak = 0
        send = True
        while True:
            self._check_deadline()
            if send:
                outcome = await self._send()
                if isinstance(outcome, UpgradeActivityResult):
                    return outcome
                if outcome == NODE_UNREACHABLE:
                    streak += 1
                    await self._sleep(
                        backoff_seconds(self._input, streak), UpgradePhase.BACKING_OFF
                    )
            self._status.probes += 1
            self._set_phase(UpgradePhase.PROBING)
            probe = await self._inspect()
            if not probe.reachable:
                streak += 1
                await self._sleep(backoff_seconds(self._input, streak), UpgradePhase.BACKING_OFF)
                send = False
                continue
            streak = 0
            if probe.upgrade_in_flight:
                await self._sleep(self._input.probe_interval_seconds, UpgradePhase.STILL_UPGRADING)
                send = False
                continue
            if self._applied(before.version, probe.version):
                return None
            send = True

    async def _send(self) -> UpgradeActivityResult | str:
        """One request; the reply, or the failure type that says what to do next."""
        input = self._input
        self._status.requests += 1
        self._set_phase(UpgradePhase.UPGRADING)
        remaining = (self._deadline - workflow.now()).total_seconds()
        galleries = encode_galleries(input.backend_galleries or [])
        activity_input = UpgradeActivityInput(
            node_id=input.node_id,
            request=input.upgrade_request(self._op_id, galleries),
            rollback=input.rollback,
            timeout_seconds=max(min(input.upgrade_timeout_seconds, remaining), 0.1),
            heartbeat_interval_seconds=min(5.0, input.heartbeat_timeout_seconds / 3),
            liveness_check_interval_seconds=input.liveness_check_interval_seconds,
        )
        verb = "roll back" if input.rollback else "upgrade"
        try:
            result: UpgradeActivityResult = await workflow.execute_activity(
                UPGRADE_ACTIVITY,
                activity_input,
                result_type=UpgradeActivityResult,
                start_to_close_timeout=timedelta(seconds=activity_input.timeout_seconds)
                + ACTIVITY_MARGIN,
                heartbeat_timeout=timedelta(seconds=input.heartbeat_timeout_seconds),
                retry_policy=UPGRADE_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{verb} {input.backend} on {input.node_id} "
                f"(request {self._status.requests})",
            )
        except ActivityError as err:
            return self._after_failed_send(err)
        self._status.used_install_fallback = result.used_install_fallback
        if result.progress is not None:
            self._status.progress = result.progress
        return result

    def _after_failed_send(self, err: ActivityError) -> str:
        if is_cancelled_exception(err):
            raise err
        cause = err.cause
        if isinstance(cause, TimeoutError):  # the worker died through every retry
            self._set_phase(UpgradePhase.STILL_UPGRADING)
            return WORKER_STILL_INSTALLING
        if not isinstance(cause, ApplicationError):
            raise ApplicationError(str(cause or err), type=INSTALL_FAILED, non_retryable=True)
        progress = progress_from_details(cause.details)
        if progress is not None:
            self._status.progress = progress
        self._status.error = cause.message
        if cause.type in (WORKER_STILL_INSTALLING, NODE_UNREACHABLE):
            return cause.type
        raise ApplicationError(
            cause.message, type=cause.type or INSTALL_FAILED, non_retryable=True
        ) from err

    def _applied(self, before: BackendVersion, after: BackendVersion) -> bool:
        """Whether ``after`` is the install the upgrade (or rollback) was meant to produce."""
        if not after.listed:
            return False
        expected = self._input.expected()
        if expected:
            return all(getattr(after, field) == value for field, value in expected.items())
        return not after.same_install(before)

    def _verify(self, before: BackendVersion, after: BackendVersion) -> None:
        if self._applied(before, after):
            return
        input = self._input
        verb = "roll back" if input.rollback else "upgrade"
        wanted = ", ".join(f"{k} {v}" for k, v in input.expected().items()) or "a new install"
        raise ApplicationError(
            f"node {input.node_id} replied success to the {verb} of {input.backend}, but "
            f"backend.list shows {after.describe()} (before: {before.describe()}; expected "
            f"{wanted}): the {verb} did not take effect",
            type=UPGRADE_NOT_APPLIED,
            non_retryable=True,
        )

    async def _restore(self, slots: list[SlotRef]) -> None:
        """Install every slot again (new processes from the new files) and check its health."""
        if not slots:
            return
        self._set_phase(UpgradePhase.RESTORING_SLOTS)
        outcomes = await asyncio.gather(*(self._restore_slot(slot) for slot in slots))
        self._status.slots = list(outcomes)
        self._set_phase(UpgradePhase.CHECKING_HEALTH)
        addresses = [o.address for o in outcomes if o.address]
        if addresses:
            health = await workflow.execute_activity(
                CHECK_HEALTH_ACTIVITY,
                HealthCheckInput(addresses=addresses),
                result_type=HealthCheckResult,
                start_to_close_timeout=INSPECT_TIMEOUT,
                retry_policy=SHORT_RETRY,
                summary=f"gRPC Health of {len(addresses)} slot(s) on {self._input.node_id}",
            )
            for outcome in outcomes:
                outcome.healthy = health.healthy.get(outcome.address, False)
                if outcome.address and not outcome.healthy:
                    outcome.error = f"{outcome.address} does not answer gRPC Health with OK"
        self._publish()
        failed = [o for o in outcomes if not o.healthy]
        if failed:
            listed = "; ".join(
                f"{o.model_id or '-'}#{o.replica_index}: {o.error}" for o in failed[:5]
            )
            raise ApplicationError(
                f"{len(failed)} of {len(outcomes)} slot(s) of {self._input.backend} on node "
                f"{self._input.node_id} did not come back healthy: {listed}",
                type=SLOTS_NOT_RESTORED,
                non_retryable=True,
            )

    async def _restore_slot(self, slot: SlotRef) -> SlotOutcome:
        input = self._input
        workflow_id = install_workflow_id(
            input.node_id, input.backend, slot.model_id, slot.replica_index
        )
        outcome = SlotOutcome(
            model_id=slot.model_id, replica_index=slot.replica_index, workflow_id=workflow_id
        )
        install = InstallBackendInput.model_validate(
            {
                **input.install_options,
                "node_id": input.node_id,
                "backend": input.backend,
                "model_id": slot.model_id,
                "replica_index": slot.replica_index,
                "backend_galleries": input.backend_galleries,
                "deadline_seconds": input.health_gate_seconds,
                "rollout_id": input.rollout_id,
            }
        )
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
                    start_to_close_timeout=timedelta(seconds=input.health_gate_seconds)
                    + ACTIVITY_MARGIN,
                    heartbeat_timeout=timedelta(seconds=30),
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
        result: InspectBackendResult = await workflow.execute_activity(
            INSPECT_BACKEND_ACTIVITY,
            InspectBackendInput(
                node_id=self._input.node_id, backend=self._input.backend, op_id=self._op_id
            ),
            result_type=InspectBackendResult,
            start_to_close_timeout=INSPECT_TIMEOUT,
            retry_policy=SHORT_RETRY,
            summary=f"inspect {self._input.backend} on {self._input.node_id}",
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
            self._status.error = f"node {self._input.node_id} does not answer backend.list"
            self._check_deadline()
            await self._sleep(backoff_seconds(self._input, streak), UpgradePhase.BACKING_OFF)

    def _check_deadline(self) -> None:
        if workflow.now() < self._deadline:
            return
        raise ApplicationError(
            f"upgrade of {self._input.backend} on node {self._input.node_id} did not finish "
            f"within {self._input.deadline_seconds:g}s; last error: "
            f"{self._status.error or 'none'}",
            type=INSTALL_DEADLINE_EXCEEDED,
            non_retryable=True,
        )

    async def _sleep(self, seconds: float, phase: UpgradePhase) -> None:
        self._set_phase(phase)
        remaining = (self._deadline - workflow.now()).total_seconds()
        await workflow.sleep(
            max(min(seconds, remaining), 0.001), summary=f"{phase.value.replace('_', ' ')}"
        )

    def _set_phase(self, phase: UpgradePhase) -> None:
        self._status.phase = phase
        self._publish()

    def _publish(self) -> None:
        workflow.set_current_details(_details(self._status))


def _slots_to_restore(
    before: InspectBackendResult,
    reply: UpgradeActivityResult | None,
    backend: str,
    extra: list[SlotRef],
) -> list[SlotRef]:
    """Slots that ran the backend before: inspected, the keys the node says it stopped, and
    those the caller names."""
    slots = dict.fromkeys([*before.slots, *extra])
    for key in reply.stopped_process_keys if reply else []:
        slot = SlotRef.from_process_key(key, backend)
        if slot is not None:
            slots.setdefault(slot)
    return list(slots)[:MAX_UPGRADE_SLOTS]


def _details(status: UpgradeStatus) -> str:
    verb = "Rollback" if status.rollback else "Upgrade"
    lines = [
        f"**{verb} of `{status.backend}` on `{status.node_id}`** · {status.phase.value} · "
        f"requests {status.requests} · probes {status.probes}",
        "",
        f"before: {status.before.describe()}",
        f"after: {status.after.describe() if status.after.listed else '-'}",
    ]
    if status.progress is not None and status.progress.last_event is not None:
        event = status.progress.last_event
        lines.append(f"progress: {event.file_name} {event.percentage:.1f}%")
    if status.error:
        lines.append(f"last error: {status.error[:300]}")
    for slot in status.slots[:DETAIL_SLOTS]:
        state = "healthy" if slot.healthy else (slot.error[:120] or "pending")
        lines.append(f"- {slot.model_id or '-'}#{slot.replica_index}: {slot.address} {state}")
    return "\n".join(lines)
