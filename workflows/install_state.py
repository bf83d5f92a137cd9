"""What an install knows, and every decision it makes that needs no Temporal call.

``InstallBackendWorkflow`` is split in two: this module is the core (the status the
``progress`` query returns, how a failure or a probe answer decides the next step, the
result, the continue-as-new carry-over, the deadline's error), and the workflow module is
the shell that calls activities, sleeps, upserts and signals. The core is plain
deterministic code: it takes the time as an argument and calls nothing of ``temporalio``
but its exception types. That is what lets the sandbox pass it through, imported once per
worker instead of once per workflow run (a warm install's one workflow task is mostly that
import; bench/README.md, "The warm path"), and what lets tests check the decisions without a
server. ``tests/test_architecture.py`` checks that it reads no clock, randomness or
environment.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ApplicationError, TimeoutError

from durable_installs.contracts.activities import (
    FastInstallResult,
    InstallActivityInput,
    InstallActivityResult,
    InstallProgress,
    ProbeResult,
    ProbeState,
    progress_from_details,
)
from durable_installs.contracts.failures import (
    ACTIVITY_ROUTED_TYPES,
    INSTALL_DEADLINE_EXCEEDED,
    INSTALL_FAILED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
)
from durable_installs.contracts.install import (
    MINIMAL_INSTALL_INPUT,
    InstallBackendInput,
    InstallBackendResult,
    InstallCarryOver,
    InstallPhase,
    InstallStatus,
)
from durable_installs.contracts.rollout import SlotReport, SlotState
from durable_installs.contracts.search_attributes import (
    BACKEND_NAME,
    INSTALL_PHASE,
    MODEL_ID,
    NODE_ID,
    ROLLOUT_ID,
)
from workflows import inputs
from workflows.install_steps import (
    ROLLOUT_STATE,
    NextStep,
    derive_op_id,
    install_activity_input,
    install_deadline,
    stand_in_input,
)
from workflows.summary import describe_progress


@dataclass
class CheckedInput:
    """The input an install runs with, and why it is invalid ("" when it is valid)."""

    input: InstallBackendInput
    invalid: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)


def check_input(input: InstallBackendInput | None) -> CheckedInput:
    """Validate first: nothing after this may see a value out of bounds (NaN, 1e300, ...).

    The check every workflow shares (``workflows/inputs.py``); an invalid input is replaced
    by a harmless stand-in (``stand_in_input``) so that the query and the UI can still say
    what failed.
    """
    checked = inputs.check_input(input, MINIMAL_INSTALL_INPUT)
    if checked.input is not None:
        return CheckedInput(checked.input)
    return CheckedInput(stand_in_input(input), checked.invalid, checked.problems)


@dataclass
class PhaseChange:
    """What recording a phase asks of the workflow: search attributes to upsert (none when
    the phase is the one already written) and a report to the rollout (none when the slot's
    coarse state did not change or there is no rollout)."""

    attributes: list[SearchAttributeUpdate[Any]]
    rollout_report: SlotReport | None


class InstallState:
    """The status of one install and the counters that decide its next step."""

    def __init__(self, input: InstallBackendInput, workflow_id: str, now: datetime) -> None:
        carry = input.resume
        self.input = input
        self.found_running = carry.found_running if carry else False
        self.fast_path_taken = False
        self.request_outstanding = False
        """The fast path's request is out unanswered: the next install activity waits for
        its reply instead of sending the op again."""
        self.request_started = carry is not None
        """A request for the op may have reached the node (this run's or an earlier run's):
        a cancel then tells the node to stop the op."""
        self.backoff_streak = carry.backoff_streak if carry else 0
        self._published_phase: InstallPhase | None = None
        self._pending_attributes: list[SearchAttributeUpdate[Any]] = []
        # A rollout marks a slot INSTALLING when it starts the install, so a fresh run does
        # not report that again: on a 1,000-slot rollout the redundant signals doubled the
        # rollout's workflow tasks (bench/README.md). A continued run reports from scratch.
        self._reported_state: SlotState | None = None if carry else SlotState.INSTALLING
        op_id = carry.op_id if carry else (input.op_id or derive_op_id(workflow_id))
        self.status = InstallStatus(
            node_id=input.node_id,
            backend=input.backend,
            model_id=input.model_id,
            replica_index=input.replica_index,
            slot=input.slot,
            op_id=op_id,
            phase=InstallPhase.INSTALLING,
            attempts=carry.attempts if carry else 0,
            probes=carry.probes if carry else 0,
            failed_attempts=carry.failed_attempts if carry else 0,
            last_probe=carry.last_probe if carry else None,
            last_error=carry.last_error if carry else "",
            started_at=carry.started_at if carry else now,
            updated_at=now,
            deadline_at=install_deadline(input, now),
        )
        if carry and carry.progress:
            self.record_progress(carry.progress, now)

    # --- phase and search attributes --------------------------------------------------------

    def identity(self) -> list[SearchAttributeUpdate[Any]]:
        """The search attributes that say whose install this is."""
        input = self.input
        attributes = [
            NODE_ID.value_set(input.node_id),
            BACKEND_NAME.value_set(input.backend),
            MODEL_ID.value_set(input.model_id),
        ]
        if input.rollout_id:
            attributes.append(ROLLOUT_ID.value_set(input.rollout_id))
        return attributes

    def defer_identity(self) -> None:
        """Write the identity with the next phase that is written, not on its own."""
        self._pending_attributes = self.identity()

    def set_phase(self, phase: InstallPhase, now: datetime, workflow_id: str) -> PhaseChange:
        """Record the phase; the search attribute is upserted only when it changes.

        The rollout hears only when the slot goes between installing and still installing,
        so its history grows by a signal or two per slow slot, not per progress event;
        outcomes reach it through its ``install_slots`` activity, in batches.
        """
        status = self.status
        if phase not in (InstallPhase.WAITING, InstallPhase.BACKING_OFF):
            status.next_attempt_at = None
        attributes: list[SearchAttributeUpdate[Any]] = []
        if phase is not self._published_phase:
            attributes = [*self._pending_attributes, INSTALL_PHASE.value_set(phase.value)]
            self._pending_attributes = []
            self._published_phase = phase
        status.phase = phase
        status.updated_at = now
        report = None
        state = ROLLOUT_STATE.get(phase)
        if self.input.rollout_id and state is not None and state is not self._reported_state:
            self._reported_state = state
            report = SlotReport(
                workflow_id=workflow_id,
                state=state,
                detail=describe_progress(status.last_progress) or status.last_error,
            )
        return PhaseChange(attributes, report)

    # --- progress and time ---------------------------------------------------------------------

    def record_progress(self, progress: InstallProgress, now: datetime) -> None:
        """Keep the newest progress event; an older report overtaken by a newer one is dropped."""
        if progress.event_count < self.status.progress_events:
            return
        self.status.progress_events = progress.event_count
        if progress.last_event is not None:
            self.status.last_progress = progress.last_event
            self.status.last_progress_at = progress.last_event_at
        self.status.updated_at = now

    def next_install_input(self, remaining: timedelta) -> InstallActivityInput:
        """The next install activity's input: a new request, or the one still out."""
        activity_input = install_activity_input(self.input, self.status.op_id, remaining)
        if self.request_outstanding:
            self.request_outstanding = False
            activity_input = activity_input.model_copy(update={"request_sent": True})
        return activity_input

    def remaining(self, now: datetime) -> timedelta:
        """Time left before the deadline (negative once it has passed)."""
        return self.status.deadline_at - now

    def deadline_error(self) -> ApplicationError:
        """The failure of an install whose deadline passed: what it last saw and last hit."""
        status = self.status
        last = describe_progress(status.last_progress) or "no progress event seen"
        return ApplicationError(
            f"install of {self.input.backend} on node {self.input.node_id} for "
            f"{status.slot} did not finish within {self.input.deadline_seconds:g}s; "
            f"last progress: {last}; last error: {status.last_error or 'none'}",
            status,
            type=INSTALL_DEADLINE_EXCEEDED,
            non_retryable=True,
        )

    # --- decisions -----------------------------------------------------------------------------

    def after_failure(
        self, cause: BaseException | None, err: BaseException, now: datetime
    ) -> NextStep:
        """The next step after a failed install request, given the failure's cause.

        ``PROBE`` means the node may well be installing (the caller records the phase
        ``still_installing``); a failure the node reported as final is raised.
        """
        if isinstance(cause, TimeoutError):
            # The worker running the activity died or hung through every retry: the node may
            # well be installing, so find out before sending anything again.
            self.status.last_error = f"install activity timed out ({cause.type})"
            return NextStep.PROBE
        if not isinstance(cause, ApplicationError):
            return self.transient_failure(str(cause or err))
        progress = progress_from_details(cause.details)
        if progress is not None:
            self.record_progress(progress, now)
        self.status.last_error = cause.message
        if cause.type == WORKER_STILL_INSTALLING:
            self.backoff_streak = 0
            return NextStep.PROBE
        if cause.type == NODE_UNREACHABLE:
            return NextStep.BACK_OFF
        if cause.type in ACTIVITY_ROUTED_TYPES and cause.type != INSTALL_FAILED:
            raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
        return self.transient_failure(cause.message)

    def transient_failure(self, message: str) -> NextStep:
        """Count a failure against the budget: back off, or fail once the budget is spent."""
        self.status.failed_attempts += 1
        self.status.last_error = message
        if self.status.failed_attempts >= self.input.max_failed_attempts:
            raise ApplicationError(
                f"install of {self.input.backend} on node {self.input.node_id} failed "
                f"{self.status.failed_attempts} times; last error: {message}",
                type=INSTALL_FAILED,
                non_retryable=True,
            )
        return NextStep.BACK_OFF

    def after_probe(self, probe: ProbeResult) -> NextStep:
        """The probe decision table: what the node has decides what is sent next.

        Running, installed or absent: one more install (the node answers a running slot at
        once and joins an op it still has). Offline: back off. Anything else: the node is
        busy with the op, so ``WAIT`` (the caller records ``still_installing``).
        """
        self.status.last_probe = probe
        if probe.last_event is not None and probe.events_seen:
            self.status.last_progress = probe.last_event
        if probe.node_answered:
            self.backoff_streak = 0
        if probe.state is ProbeState.RUNNING:
            self.found_running = True
            return NextStep.INSTALL
        if probe.state in (ProbeState.INSTALLED, ProbeState.ABSENT):
            return NextStep.INSTALL
        if probe.state is ProbeState.UNKNOWN and probe.node_offline:
            self.status.last_error = f"node {self.input.node_id} is offline (no responders)"
            return NextStep.BACK_OFF
        return NextStep.WAIT

    # --- outcomes ------------------------------------------------------------------------------

    def fast_path_answered(self, fast: FastInstallResult) -> InstallActivityResult:
        """The fast path's immediate answer, as the install activity would have returned it."""
        self.status.attempts += 1
        self.fast_path_taken = True
        return InstallActivityResult(
            node_id=fast.node_id,
            op_id=fast.op_id,
            address=fast.address,
            attempt=1,
            progress=InstallProgress(op_id=fast.op_id, node_id=fast.node_id),
            elapsed_seconds=fast.elapsed_seconds,
        )

    def installed(self, result: InstallActivityResult, now: datetime) -> None:
        """Record the node's answer that the slot runs (the caller records ``completed``)."""
        self.record_progress(result.progress, now)
        self.status.address = result.address
        self.status.last_error = ""

    def result(self, now: datetime) -> InstallBackendResult:
        """What the workflow returns once the slot runs."""
        status = self.status
        return InstallBackendResult(
            node_id=self.input.node_id,
            backend=self.input.backend,
            model_id=self.input.model_id,
            replica_index=self.input.replica_index,
            slot=status.slot,
            op_id=status.op_id,
            address=status.address,
            attempts=status.attempts,
            probes=status.probes,
            found_running=self.found_running,
            fast_path=self.fast_path_taken,
            progress_events=status.progress_events,
            started_at=status.started_at,
            completed_at=now,
            duration_seconds=(now - status.started_at).total_seconds(),
        )

    def carry_over(self) -> InstallCarryOver:
        """Everything the next run needs after continue-as-new: same op, deadline, counters."""
        status = self.status
        return InstallCarryOver(
            op_id=status.op_id,
            started_at=status.started_at,
            deadline_at=status.deadline_at,
            attempts=status.attempts,
            probes=status.probes,
            failed_attempts=status.failed_attempts,
            backoff_streak=self.backoff_streak,
            found_running=self.found_running,
            progress=InstallProgress(
                op_id=status.op_id,
                node_id=status.node_id,
                event_count=status.progress_events,
                last_event=status.last_progress,
                last_event_at=status.last_progress_at,
            ),
            last_probe=status.last_probe,
            last_error=status.last_error,
        )

    def log_fields(self) -> dict[str, str]:
        """The install's identifiers for a log line (``workflow.logger`` adds the workflow id)."""
        status = self.status
        return {"op_id": status.op_id, "node": status.node_id, "slot": status.slot}
