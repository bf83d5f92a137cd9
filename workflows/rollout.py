"""``RolloutBackendWorkflow``: install one backend on many slots, a bounded number at a time.

Every slot is an ``InstallBackendWorkflow`` child whose id is derived from the slot
(:func:`workflows.models.install_workflow_id`), so a re-run or an overlapping rollout can
never install the same slot twice at once: Temporal refuses the second start with "already
started", and the rollout then waits for the running install through the ``await_install``
activity and shares its result. Before the history grows too large the rollout stops starting
slots, lets those in flight finish and continues as new with every slot's status.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
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

    from activities.errors import INVALID_INPUT
    from activities.models import ATTACH_ACTIVITY
    from workflows.install_backend import InstallBackendWorkflow
    from workflows.models import InstallBackendResult
    from workflows.rollout_models import (
        FINISHED_STATES,
        SLOT_STATE_SIGNAL,
        AddTargetsResult,
        FailurePolicy,
        RolloutInput,
        RolloutStatus,
        RolloutTarget,
        SlotReport,
        SlotState,
        SlotStatus,
        expand_slots,
    )

DETAIL_ROWS = 40
"""Slots listed in the UI's current details; the query always has all of them."""


@workflow.defn(name="RolloutBackendWorkflow", failure_exception_types=[pydantic.ValidationError])
class RolloutBackendWorkflow:
    """Install a backend on every target slot and report each slot's outcome."""

    @workflow.init
    def __init__(self, input: RolloutInput) -> None:
        self._input = input
        slots = input.carried_slots or expand_slots(input.targets, input.backend)
        self._slots = {slot.workflow_id: slot for slot in slots}
        self._queue = deque(s.workflow_id for s in slots if s.state is SlotState.QUEUED)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled = False
        self._stopped = input.carried_stopped
        self._runs = input.carried_runs + 1
        self._changed = True

    @workflow.run
    async def run(self, input: RolloutInput) -> RolloutStatus:
        """Install until every slot is finished, the policy stops it, or it is cancelled."""
        problems = input.problems()
        if problems:
            reasons = "; ".join(f"{field}: {reason}" for field, reason in problems[:10])
            raise ApplicationError(
                f"invalid input: {reasons}", type=INVALID_INPUT, non_retryable=True
            )
        try:
            await self._drive()
        except asyncio.CancelledError:
            await self._cancel_everything()
        if not self._cancelled and self._should_continue_as_new():
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(self._carry_over())
        self._publish()
        return self.status()

    @workflow.query(name="status")
    def status(self) -> RolloutStatus:
        """Every slot with its state, address or error, and counts by state."""
        counts = {state.value: 0 for state in SlotState}
        for slot in self._slots.values():
            counts[slot.state.value] += 1
        return RolloutStatus(
            backend=self._input.backend,
            counts=counts,
            slots=list(self._slots.values()),
            in_flight=len(self._tasks),
            cancelled=self._cancelled,
            stopped=self._stopped,
            runs=self._runs,
        )

    @workflow.update(name="add_targets")
    def add_targets(self, targets: list[RolloutTarget]) -> AddTargetsResult:
        """Queue more slots; slots the rollout already knows are not installed twice."""
        added = already = 0
        for slot in expand_slots(targets, self._input.backend):
            if slot.workflow_id in self._slots:
                already += 1
                continue
            self._slots[slot.workflow_id] = slot
            self._queue.append(slot.workflow_id)
            added += 1
        self._changed = True
        return AddTargetsResult(added=added, already_known=already)

    @add_targets.validator
    def _validate_targets(self, targets: list[RolloutTarget]) -> None:
        if self._cancelled or self._stopped:
            raise ValueError("the rollout no longer starts slots")
        problems = self._input.model_copy(update={"targets": targets}).problems()
        if problems:
            raise ValueError("; ".join(f"{field}: {reason}" for field, reason in problems[:10]))

    @workflow.signal(name="cancel_rollout")
    def cancel_rollout(self) -> None:
        """Cancel in-flight installs, start no more, and report what was done."""
        self._cancelled = True
        self._changed = True

    @workflow.signal(name=SLOT_STATE_SIGNAL)
    def slot_state_changed(self, report: SlotReport) -> None:
        """A child install says it is installing or still installing."""
        slot = self._slots.get(report.workflow_id)
        if slot is None or slot.state in FINISHED_STATES:
            return
        slot.state = report.state
        slot.detail = report.detail
        self._changed = True

    # --- driving the slots ---------------------------------------------------------------------

    async def _drive(self) -> None:
        while True:
            if self._cancelled:
                await self._cancel_everything()
                return
            draining = self._should_continue_as_new()
            if not draining and not self._stopped:
                self._start_queued()
            if self._changed:
                self._publish()
                self._changed = False
            if not self._tasks and (draining or self._stopped or not self._queue):
                return
            await workflow.wait_condition(lambda: self._changed)

    def _start_queued(self) -> None:
        while self._queue and len(self._tasks) < self._input.max_in_flight:
            workflow_id = self._queue.popleft()
            slot = self._slots[workflow_id]
            slot.state = SlotState.INSTALLING
            self._tasks[workflow_id] = asyncio.create_task(self._install(slot))
            self._changed = True

    async def _install(self, slot: SlotStatus) -> None:
        input = self._input.install_input(slot.node_id, slot.model_id, slot.replica_index)
        try:
            try:
                result = await workflow.execute_child_workflow(
                    InstallBackendWorkflow.run,
                    input,
                    id=slot.workflow_id,
                    static_summary=f"install {input.backend} on {slot.node_id} for {input.slot}",
                )
            except WorkflowAlreadyStartedError:
                slot.shared = True
                result = await workflow.execute_activity(
                    ATTACH_ACTIVITY,
                    slot.workflow_id,
                    result_type=InstallBackendResult,
                    start_to_close_timeout=timedelta(seconds=input.deadline_seconds + 300),
                    heartbeat_timeout=timedelta(seconds=60),
                    summary=f"wait for the running install {slot.workflow_id}",
                )
            slot.state = SlotState.SUCCEEDED
            slot.address = result.address
            slot.detail = ""
        except (ChildWorkflowError, ActivityError) as err:
            if is_cancelled_exception(err):
                slot.state = SlotState.CANCELLED
            else:
                slot.state = SlotState.FAILED
                slot.error = _root_message(err)
                self._apply_failure_policy()
        except asyncio.CancelledError:
            slot.state = SlotState.CANCELLED
        finally:
            self._tasks.pop(slot.workflow_id, None)
            self._changed = True

    def _apply_failure_policy(self) -> None:
        if self._input.failure_policy is not FailurePolicy.STOP or self._stopped:
            return
        failed = sum(1 for s in self._slots.values() if s.state is SlotState.FAILED)
        if failed >= self._input.max_failures:
            self._stopped = f"stopped after {failed} failed slot(s) (failure policy: stop)"
            self._skip_queued()

    def _skip_queued(self) -> None:
        while self._queue:
            self._slots[self._queue.popleft()].state = SlotState.SKIPPED

    async def _cancel_everything(self) -> None:
        self._cancelled = True
        self._skip_queued()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._publish()

    # --- history and presentation --------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        return bool(self._queue) and workflow.info().is_continue_as_new_suggested()

    def _carry_over(self) -> RolloutInput:
        return self._input.model_copy(
            update={
                "targets": [],
                "carried_slots": list(self._slots.values()),
                "carried_runs": self._runs,
                "carried_stopped": self._stopped,
            }
        )

    def _publish(self) -> None:
        workflow.set_current_details(
            _details_markdown(
                self._input.backend, list(self._slots.values()), self._cancelled, self._stopped
            )
        )


def _root_message(err: BaseException) -> str:
    """The innermost failure's message: the node's words, not the wrappers'."""
    message = str(err)
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            message = cause.message
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return message


def _details_markdown(backend: str, slots: list[SlotStatus], cancelled: bool, stopped: str) -> str:
    """The rollout at a glance: counts, then up to DETAIL_ROWS slots, unfinished first.

    Built straight from the slot list (no status model) because it runs on every wake-up of
    a rollout that may track thousands of slots.
    """
    counts = Counter(slot.state.value for slot in slots)
    summary = " · ".join(
        f"{state.value}: {counts[state.value]}" for state in SlotState if counts[state.value]
    )
    lines = [f"**Rollout of `{backend}`** · {len(slots)} slots · {summary}"]
    if cancelled:
        lines.append("\n**cancelled**")
    if stopped:
        lines.append(f"\n**{stopped}**")
    shown = [s for s in slots if s.state is not SlotState.SUCCEEDED][:DETAIL_ROWS]
    shown += [s for s in slots if s.state is SlotState.SUCCEEDED][: DETAIL_ROWS - len(shown)]
    lines += ["", "| node | model | replica | state | address / error |", "|---|---|---|---|---|"]
    for slot in shown:
        outcome = slot.address or slot.error or slot.detail
        outcome = outcome.replace("|", "\\|").replace("\n", " ")[:120]
        state = slot.state.value.replace("_", " ") + (" (shared)" if slot.shared else "")
        lines.append(
            f"| {slot.node_id} | {slot.model_id or '-'} | {slot.replica_index} | {state} "
            f"| {outcome} |"
        )
    if len(slots) > DETAIL_ROWS:
        lines.append(f"\n… {len(slots) - DETAIL_ROWS} more slots in the `status` query")
    return "\n".join(lines)
