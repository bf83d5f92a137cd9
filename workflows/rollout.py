"""``RolloutBackendWorkflow``: install one backend on many slots, a bounded number at a time.

Every slot is an ``InstallBackendWorkflow`` whose id is derived from the slot
(:func:`contracts.install.install_workflow_id`), so a re-run or an overlapping rollout can
never install the same slot twice at once. The rollout does not start them as children: it
hands slots in batches to the ``install_slots`` activity, which starts (or joins) each
install like any client would and sends the outcomes back a batch at a time. A child per slot
put three events per slot into this one history, and Temporal updates one workflow's history
serially: a 1,000-slot rollout took 2.4x the time of 1,000 independent starts. The installs
carry the ``RolloutId`` search attribute instead of a parent link. Before the history grows
too large the rollout stops starting slots, lets the batches in flight finish and continues as
new with every slot's status.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Iterable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import pydantic

    from contracts.failures import INVALID_INPUT
    from contracts.install import MAX_PROBLEMS_SHOWN, describe_problems, missing_input_message
    from contracts.limits import MAX_ROLLOUT_SLOTS, MAX_SEARCH_ATTRIBUTE_BYTES, utf8_problem
    from contracts.names import (
        ADD_TARGETS_UPDATE,
        CANCEL_ROLLOUT_SIGNAL,
        INSTALL_SLOTS_ACTIVITY,
        ROLLOUT_STATUS_QUERY,
        ROLLOUT_WORKFLOW,
        SLOT_STATE_SIGNAL,
        SLOTS_STARTED_SIGNAL,
    )
    from contracts.rollout import (
        FINISHED_STATES,
        MINIMAL_ROLLOUT_INPUT,
        AddTargetsResult,
        FailurePolicy,
        InstallSlotsInput,
        InstallSlotsResult,
        RolloutInput,
        RolloutStatus,
        RolloutTarget,
        SlotReport,
        SlotsStarted,
        SlotState,
        SlotStatus,
        expand_slots,
    )

DETAIL_ROWS = 40
"""Slots listed in the UI's current details; the query always has all of them."""

BATCH_SIZE = 100
"""Most slots one ``install_slots`` activity starts: big enough that a large rollout's
history grows per batch, small enough that one activity's input stays a few kilobytes."""

BATCH_MARGIN = timedelta(minutes=5)
"""Slack beyond the installs' own deadline before a batch activity is presumed stuck."""

BATCH_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
"""A batch heartbeats every second; its cancellation reaches it within 0.8x this."""


@workflow.defn(name=ROLLOUT_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class RolloutBackendWorkflow:
    """Install a backend on every target slot and report each slot's outcome.

    Runs PINNED on a versioned worker (``worker_main.WORKFLOW_BEHAVIORS``), like each install:
    a fleet rollout runs for hours and finishes on the worker version that started it
    (continue-as-new keeps the version). The installs it starts are workflows of their own
    and go to the version that is current when each one starts.
    """

    @workflow.init
    def __init__(self, input: RolloutInput | None = None) -> None:
        """Validate first; an invalid input keeps no slot and fails in ``run``.

        ``input`` is optional so that a start with no input fails with ``InvalidInput``
        instead of failing every workflow task.
        """
        if input is None:
            self._problems = [("input", "it is missing")]
            self._invalid = missing_input_message(MINIMAL_ROLLOUT_INPUT)
        else:
            problems = input.problems() + _workflow_id_problems()
            self._problems = problems[:MAX_PROBLEMS_SHOWN]
            self._invalid = f"invalid input: {describe_problems(problems)}" if problems else ""
        if self._invalid or input is None:
            input = RolloutInput(backend="")
        self._input = input
        slots = input.carried_slots or expand_slots(input.targets, input.backend)
        self._slots = {slot.workflow_id: slot for slot in slots}
        self._queue = deque(s.workflow_id for s in slots if s.state is SlotState.QUEUED)
        self._in_flight: set[str] = set()
        """Slots handed to a batch and not finished: what ``max_in_flight`` bounds."""
        self._started: set[str] = set()
        """Installs this run started itself; cancelling the rollout cancels these."""
        self._batches: dict[str, asyncio.Task[None]] = {}
        """Running ``install_slots`` activities, each named by its first slot's workflow id."""
        self._cancelled = False
        self._stopped = input.carried_stopped
        self._runs = input.carried_runs + 1
        self._changed = True

    @workflow.run
    async def run(self, input: RolloutInput | None = None) -> RolloutStatus:
        """Install until every slot is finished, the policy stops it, or it is cancelled."""
        if self._invalid:
            raise ApplicationError(
                self._invalid, self._problems, type=INVALID_INPUT, non_retryable=True
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

    @workflow.query(name=ROLLOUT_STATUS_QUERY)
    def status(self) -> RolloutStatus:
        """Every slot with its state, address or error, and counts by state."""
        return RolloutStatus(
            backend=self._input.backend,
            counts=_counts(self._slots.values()),
            slots=list(self._slots.values()),
            in_flight=len(self._in_flight),
            cancelled=self._cancelled,
            stopped=self._stopped,
            runs=self._runs,
        )

    @workflow.update(name=ADD_TARGETS_UPDATE)
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
        if self._cancelled or self._stopped or self._invalid:
            raise ValueError("the rollout no longer starts slots")
        update = self._input.model_copy(update={"targets": targets})
        if len(self._slots) + update.slot_count() > MAX_ROLLOUT_SLOTS:
            raise ValueError(
                f"targets: the rollout would track more than {MAX_ROLLOUT_SLOTS} slots"
            )
        problems = update.problems()
        if problems:
            raise ValueError(describe_problems(problems))

    @workflow.signal(name=CANCEL_ROLLOUT_SIGNAL)
    def cancel_rollout(self) -> None:
        """Cancel in-flight installs, start no more, and report what was done."""
        self._cancelled = True
        self._changed = True

    @workflow.signal(name=SLOT_STATE_SIGNAL)
    def slot_state_changed(self, reports: list[SlotReport]) -> None:
        """Installs say they are (still) installing; the batch activities say how slots ended."""
        for report in reports:
            self._apply(report)

    @workflow.signal(name=SLOTS_STARTED_SIGNAL)
    def slots_started(self, started: SlotsStarted) -> None:
        """A batch's installs are running: those this rollout started, and those it joined."""
        self._started.update(started.started)
        for workflow_id in started.joined:
            slot = self._slots.get(workflow_id)
            if slot is not None and slot.state not in FINISHED_STATES:
                slot.shared = True
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
            if not self._batches and (draining or self._stopped or not self._queue):
                return
            await workflow.wait_condition(lambda: self._changed)

    def _start_queued(self) -> None:
        while self._queue and len(self._in_flight) < self._input.max_in_flight:
            room = min(self._input.max_in_flight - len(self._in_flight), BATCH_SIZE)
            batch = [self._slots[self._queue.popleft()] for _ in range(min(room, len(self._queue)))]
            for slot in batch:
                slot.state = SlotState.INSTALLING
                self._in_flight.add(slot.workflow_id)
            name = batch[0].workflow_id
            self._batches[name] = asyncio.create_task(self._install_batch(name, batch))
            self._changed = True

    async def _install_batch(self, name: str, batch: list[SlotStatus]) -> None:
        """Run one ``install_slots`` activity; slots it did not report end with its failure."""
        deadline = timedelta(seconds=self._input.install_input("", "", 0).deadline_seconds)
        targets = [
            RolloutTarget(node_id=s.node_id, model_id=s.model_id, replica_indexes=[s.replica_index])
            for s in batch
        ]
        input = InstallSlotsInput(
            rollout_id=workflow.info().workflow_id,
            task_queue=workflow.info().task_queue,
            batch=self._input.model_copy(
                update={"targets": targets, "carried_slots": [], "carried_stopped": ""}
            ),
        )
        state, error = SlotState.FAILED, "the batch ended without reporting this slot"
        try:
            result = await workflow.execute_activity(
                INSTALL_SLOTS_ACTIVITY,
                input,
                result_type=InstallSlotsResult,
                # Every install of the batch ends by its deadline, so retries (a dead worker,
                # an unreachable frontend) are bounded by it too.
                schedule_to_close_timeout=deadline + BATCH_MARGIN,
                heartbeat_timeout=BATCH_HEARTBEAT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"install {len(batch)} slot(s) of {self._input.backend}",
            )
            for report in result.reports:
                self._apply(report)
        except ActivityError as err:
            if is_cancelled_exception(err):
                state, error = SlotState.CANCELLED, ""
            else:
                error = _root_message(err)
        except asyncio.CancelledError:
            state, error = SlotState.CANCELLED, ""
        finally:
            for slot in batch:
                self._apply(SlotReport(workflow_id=slot.workflow_id, state=state, error=error))
            self._batches.pop(name, None)
            self._changed = True

    def _apply(self, report: SlotReport) -> None:
        """Take one slot's news; a finished slot never changes again."""
        slot = self._slots.get(report.workflow_id)
        if slot is None or slot.state in FINISHED_STATES:
            return
        slot.state = report.state
        slot.detail = report.detail
        if report.state in FINISHED_STATES:
            slot.address = report.address
            slot.error = report.error
            self._in_flight.discard(slot.workflow_id)
            if report.state is SlotState.FAILED:
                self._apply_failure_policy()
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
        """Cancel the installs this rollout started, then the batches waiting for them.

        The installs are cancelled from here at once; a batch only learns of its own
        cancellation at its next heartbeat, and then cancels whatever it started after the
        rollout last heard from it. Joined installs belong to someone else and keep running.
        """
        self._cancelled = True
        self._skip_queued()
        own = sorted(self._started & self._in_flight)
        if own:
            await asyncio.gather(
                *(workflow.get_external_workflow_handle(w).cancel() for w in own),
                return_exceptions=True,
            )
        batches = list(self._batches.values())
        for task in batches:
            task.cancel()
        if batches:
            await asyncio.gather(*batches, return_exceptions=True)
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


def _workflow_id_problems() -> list[tuple[str, str]]:
    """The rollout's own id becomes every install's ``RolloutId`` search attribute."""
    problem = utf8_problem(workflow.info().workflow_id, MAX_SEARCH_ATTRIBUTE_BYTES)
    return [("workflow id", f"{problem} (it is every install's RolloutId)")] if problem else []


def _counts(slots: Iterable[SlotStatus]) -> dict[str, int]:
    """Slots per state, every state present, in the order of ``SlotState``."""
    counted = Counter(slot.state.value for slot in slots)
    return {state.value: counted[state.value] for state in SlotState}


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
    summary = " · ".join(f"{state}: {n}" for state, n in _counts(slots).items() if n)
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
