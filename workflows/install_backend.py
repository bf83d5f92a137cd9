"""``InstallBackendWorkflow``: one slot on one node, installed durably.

The loop sends an install; a timeout means "still installing", so before anything is sent
again the probe asks the node what it has. A running or installed slot gets one more install
(the node's fast path returns the routable address at once), an absent one a re-send with the
same op id, and a node still busy gets a durable wait and another probe. Timeouts never use up
the failure budget; the deadline bounds everything.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from enum import Enum

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    import pydantic

    from contracts.activities import (
        FastInstallResult,
        InstallActivityInput,
        InstallActivityResult,
        InstallProgress,
        ProbeInput,
        ProbeResult,
        ProbeState,
        progress_from_details,
    )
    from contracts.failures import (
        ACTIVITY_ROUTED_TYPES,
        INSTALL_DEADLINE_EXCEEDED,
        INSTALL_FAILED,
        INVALID_INPUT,
        NODE_UNREACHABLE,
        WORKER_STILL_INSTALLING,
    )
    from contracts.install import (
        MAX_PROBLEMS_SHOWN,
        MINIMAL_INSTALL_INPUT,
        InstallBackendInput,
        InstallBackendResult,
        InstallCarryOver,
        InstallPhase,
        InstallStatus,
        describe_problems,
        missing_input_message,
    )
    from contracts.limits import MAX_NAME_LENGTH
    from contracts.names import (
        FAST_INSTALL_ACTIVITY,
        INSTALL_ACTIVITY,
        INSTALL_WORKFLOW,
        PROBE_ACTIVITY,
        PROGRESS_QUERY,
        PROGRESS_SIGNAL,
        SLOT_STATE_SIGNAL,
    )
    from contracts.rollout import SlotReport, SlotState
    from contracts.search_attributes import (
        BACKEND_NAME,
        INSTALL_PHASE,
        MODEL_ID,
        NODE_ID,
        ROLLOUT_ID,
    )
    from contracts.summaries import shorten
    from protocol.messages import BackendInstallRequest, encode_galleries
    from workflows.summary import describe_progress, details_markdown

ACTIVITY_MARGIN = timedelta(seconds=30)
"""Slack between the NATS request timeout and the activity's own start-to-close timeout."""

INSTALL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=list(ACTIVITY_ROUTED_TYPES),
)
"""Temporal retries an install attempt only when the worker running it died or hung (timeouts,
crashes): the retry resumes the same op from its heartbeat. Everything the node said goes back
to the workflow, which probes before anything is sent again."""

PROBE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2)

INVALID_INPUT_WRITES_NO_SEARCH_ATTRIBUTE = "invalid-input-writes-no-search-attribute"
"""Patch id: an invalid input used to upsert ``InstallPhase=failed`` before failing; now it
writes nothing (tests/histories/InstallBackendWorkflow/invalid_input.json replays the old way).
Remove the old branch once no execution started before this change can still be replayed."""

FAST_PATH = "fast-path"
"""Patch id: a fresh install first asks the node with a short bound in a local activity and
completes in its first workflow task when the node answers at once; executions started before
replay the old way (straight to the install activity; tests/histories/InstallBackendWorkflow)."""

FAST_PATH_MARGIN = timedelta(seconds=2)
"""Slack between the fast path's NATS bound and its local activity's start-to-close timeout."""

FAST_PATH_RETRY = RetryPolicy(maximum_attempts=1)
"""The fast path is tried once: anything but an immediate answer falls through to the install
activity, which has its own retries."""

OP_ID_NAMESPACE = uuid.UUID("5f0c3d4e-6a39-4d8e-9a51-0d7e2b8c1f00")


class _Next(Enum):
    INSTALL = "install"
    PROBE = "probe"
    WAIT = "wait"
    BACK_OFF = "back_off"


_ROLLOUT_STATE = {
    InstallPhase.INSTALLING: SlotState.INSTALLING,
    InstallPhase.STILL_INSTALLING: SlotState.STILL_INSTALLING,
    InstallPhase.PROBING: SlotState.STILL_INSTALLING,
    InstallPhase.WAITING: SlotState.STILL_INSTALLING,
    InstallPhase.BACKING_OFF: SlotState.STILL_INSTALLING,
}


async def _signal_quietly(
    handle: workflow.ExternalWorkflowHandle[object], report: SlotReport
) -> None:
    """A lost report only makes the rollout's table less detailed; never fail the install."""
    try:
        await handle.signal(SLOT_STATE_SIGNAL, [report])
    except Exception as err:
        workflow.logger.debug("could not report to the rollout: %s", err)


MAX_BACKOFF_DOUBLINGS = 60
"""The back-off doubles at most this often: 2**60 times any valid first wait is far beyond
any valid cap, and a bounded exponent cannot overflow however long a node stays away."""


def backoff_seconds(input: InstallBackendInput, streak: int) -> float:
    """The wait before the ``streak``-th consecutive retry: doubling, capped."""
    doublings = min(max(streak - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return min(input.retry_backoff_seconds * 2.0**doublings, input.retry_backoff_max_seconds)


def install_deadline(input: InstallBackendInput, now: datetime) -> datetime:
    """When the install gives up: carried over by continue-as-new, else from ``now``."""
    if input.resume is not None:
        return input.resume.deadline_at
    return now + timedelta(seconds=max(input.deadline_seconds, 0.0))


def install_activity_input(
    input: InstallBackendInput, op_id: str, remaining: timedelta
) -> InstallActivityInput:
    """What one install request sends; its timeout never runs past the time left."""
    request = BackendInstallRequest(
        backend=input.backend,
        model_id=input.model_id,
        backend_galleries=encode_galleries(input.backend_galleries or []),
        uri=input.uri,
        name=input.name,
        alias=input.alias,
        replica_index=input.replica_index,
        op_id=op_id,
    )
    return InstallActivityInput(
        node_id=input.node_id,
        request=request,
        install_timeout_seconds=min(input.install_timeout_seconds, remaining.total_seconds()),
        heartbeat_interval_seconds=min(5.0, input.heartbeat_timeout_seconds / 3),
        progress_report_interval_seconds=input.progress_report_interval_seconds,
        liveness_check_interval_seconds=input.liveness_check_interval_seconds,
    )


def probe_activity_input(input: InstallBackendInput, op_id: str) -> ProbeInput:
    """What one probe asks the node about the slot and its op."""
    return ProbeInput(
        node_id=input.node_id,
        backend=input.backend,
        model_id=input.model_id,
        replica_index=input.replica_index,
        op_id=op_id,
        galleries_json=encode_galleries(input.backend_galleries or []),
        listen_seconds=input.probe_listen_seconds,
    )


def probe_timeout(probe: ProbeInput) -> timedelta:
    """The probe activity's start-to-close timeout: every step's own timeout, plus slack."""
    budget = (
        probe.status_timeout_seconds
        + probe.listen_seconds
        + max(probe.running_timeout_seconds, probe.list_timeout_seconds)
    )
    return timedelta(seconds=budget) + ACTIVITY_MARGIN


def _stand_in(input: InstallBackendInput | None) -> InstallBackendInput:
    """A harmless input in place of an invalid one: the query and the UI still say what failed.

    Only the identifying strings are kept, cut to their limits; no number of the invalid
    input is used, so nothing can overflow or be NaN on the way to the failure.
    """
    if input is None:
        return InstallBackendInput(node_id="", backend="")
    return InstallBackendInput(
        node_id=input.node_id[:MAX_NAME_LENGTH],
        backend=input.backend[:MAX_NAME_LENGTH],
        model_id=input.model_id[:MAX_NAME_LENGTH],
    )


def derive_op_id(workflow_id: str) -> str:
    """A stable op id for a workflow: the same across retries, resets and continue-as-new."""
    return str(uuid.uuid5(OP_ID_NAMESPACE, workflow_id))


@workflow.defn(name=INSTALL_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class InstallBackendWorkflow:
    """Install a backend on one node and return the address of the slot's running process.

    Runs PINNED on a versioned worker (``worker_main.WORKFLOW_BEHAVIORS``): an install can
    run for hours (a large download, a node that keeps pulling) and finishes on the worker
    version that started it, so a new version never has to replay a long install's history;
    new installs go to the version that is current when they start.
    """

    @workflow.init
    def __init__(self, input: InstallBackendInput | None = None) -> None:
        """Validate first: nothing below may see a value out of bounds (NaN, 1e300, ...).

        ``input`` is optional so that a start with no input reaches ``run`` and fails there
        with ``InvalidInput``; a required parameter would fail every workflow task instead.
        """
        now = workflow.now()
        if input is None:
            self._invalid = missing_input_message(MINIMAL_INSTALL_INPUT)
            self._problems = [("input", "it is missing")]
        else:
            problems = input.problems()
            self._problems = problems[:MAX_PROBLEMS_SHOWN]
            self._invalid = f"invalid input: {describe_problems(problems)}" if problems else ""
        if self._invalid:
            input = _stand_in(input)
        assert input is not None
        carry = input.resume
        self._input = input
        self._found_running = carry.found_running if carry else False
        self._fast_path_taken = False
        self._published_phase: InstallPhase | None = None
        # A rollout marks a slot INSTALLING when it starts the install, so a fresh run does
        # not report that again: on a 1,000-slot rollout the redundant signals doubled the
        # rollout's workflow tasks (bench/README.md). A continued run reports from scratch.
        self._reported_state: SlotState | None = None if carry else SlotState.INSTALLING
        self._rollout_reports: list[asyncio.Task[None]] = []
        self._backoff_streak = carry.backoff_streak if carry else 0
        op_id = carry.op_id if carry else (input.op_id or derive_op_id(workflow.info().workflow_id))
        deadline = install_deadline(input, now)
        self._status = InstallStatus(
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
            deadline_at=deadline,
        )
        if carry and carry.progress:
            self._record_progress(carry.progress)

    @workflow.run
    async def run(self, input: InstallBackendInput | None = None) -> InstallBackendResult:
        """Install until the slot runs, the node rejects it, or the deadline passes."""
        if self._invalid:
            self._status.last_error = self._invalid
            if workflow.patched(INVALID_INPUT_WRITES_NO_SEARCH_ATTRIBUTE):
                # No search attribute is written: an oversized value would get the workflow
                # terminated by the server instead of failed with the reason.
                self._status.phase = InstallPhase.FAILED
                self._publish_details()
            else:  # executions started before the patch recorded the failed phase
                self._set_phase(InstallPhase.FAILED)
            raise ApplicationError(
                self._invalid, self._problems, type=INVALID_INPUT, non_retryable=True
            )
        input = self._input
        attributes = [
            NODE_ID.value_set(input.node_id),
            BACKEND_NAME.value_set(input.backend),
            MODEL_ID.value_set(input.model_id),
        ]
        if input.rollout_id:
            attributes.append(ROLLOUT_ID.value_set(input.rollout_id))
        workflow.upsert_search_attributes(attributes)
        self._set_phase(InstallPhase.INSTALLING)
        try:
            first = _Next.PROBE if input.resume else _Next.INSTALL
            # patched() last: only an execution that takes the fast path records the marker.
            if (
                first is _Next.INSTALL
                and input.fast_path_seconds > 0
                and workflow.patched(FAST_PATH)
            ):
                outcome = await self._fast_path()
                if isinstance(outcome, InstallBackendResult):
                    return outcome
                first = outcome
            return await self._loop(first)
        except (asyncio.CancelledError, ActivityError) as err:
            if is_cancelled_exception(err):
                self._status.last_error = "cancelled"
                self._set_phase(InstallPhase.CANCELLED)
            raise
        except ApplicationError as err:
            self._status.last_error = err.message
            self._set_phase(InstallPhase.FAILED)
            raise

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> InstallStatus:
        """Phase, attempts, probes, the newest progress event and the last probe result."""
        return self._status

    @workflow.signal(name=PROGRESS_SIGNAL)
    def report_progress(self, report: InstallProgress) -> None:
        """Progress forwarded by the install activity while it waits for the node."""
        if report.op_id != self._status.op_id:
            return
        if report.event_count < self._status.progress_events:
            return  # an older report overtaken by a newer one
        self._record_progress(report)
        self._publish_details()

    # --- the loop ------------------------------------------------------------------------------

    async def _loop(self, step: _Next) -> InstallBackendResult:
        while True:
            self._check_deadline()
            self._continue_as_new_if_suggested()
            if step is _Next.INSTALL:
                result = await self._install()
                if isinstance(result, InstallActivityResult):
                    return self._complete(result)
                step = result
            elif step is _Next.PROBE:
                step = await self._probe()
            elif step is _Next.WAIT:
                await self._sleep(
                    self._input.probe_interval_seconds,
                    InstallPhase.WAITING,
                    f"node {self._input.node_id} still busy with {self._status.slot}; probe again",
                )
                step = _Next.PROBE
            else:
                self._backoff_streak += 1
                await self._sleep(
                    backoff_seconds(self._input, self._backoff_streak),
                    InstallPhase.BACKING_OFF,
                    f"back off after: {shorten(self._status.last_error, 120)}",
                )
                step = _Next.PROBE

    async def _fast_path(self) -> InstallBackendResult | _Next:
        """Ask the node with a short bound in a local activity, inside this workflow task.

        An immediate ``success:true`` completes the install here (one workflow task, one
        request). No answer in time, no responders, or any failure of the local activity
        itself falls through to the install activity with the same op id: a node still
        working on the op joins it, so nothing is installed twice. A ``success:false`` reply
        is the first request's failure, handled exactly as the install activity's would be.
        """
        input = self._input
        remaining = self._remaining()
        bound = min(input.fast_path_seconds, remaining.total_seconds())
        activity_input = install_activity_input(input, self._status.op_id, remaining)
        activity_input = activity_input.model_copy(update={"install_timeout_seconds": bound})
        try:
            fast: FastInstallResult = await workflow.execute_local_activity(
                FAST_INSTALL_ACTIVITY,
                activity_input,
                result_type=FastInstallResult,
                start_to_close_timeout=timedelta(seconds=bound) + FAST_PATH_MARGIN,
                retry_policy=FAST_PATH_RETRY,
                summary=f"ask {input.node_id} for {self._status.slot} (fast path, "
                f"{bound:g}s bound)",
            )
        except FailureError as err:
            # A local activity's failure arrives wrapped in ActivityError or as its cause.
            if is_cancelled_exception(err):
                raise
            cause = err.cause if isinstance(err, ActivityError) else err
            if isinstance(cause, ApplicationError) and cause.type in ACTIVITY_ROUTED_TYPES:
                self._status.attempts += 1  # the node answered: that was request 1
                return self._after_failure(cause, err)
            self._log_fall_through(str(cause or err))
            return _Next.INSTALL
        if not fast.answered:
            self._log_fall_through(fast.reason)
            return _Next.INSTALL
        self._status.attempts += 1
        self._fast_path_taken = True
        return self._complete(
            InstallActivityResult(
                node_id=fast.node_id,
                op_id=fast.op_id,
                address=fast.address,
                attempt=1,
                progress=InstallProgress(op_id=fast.op_id, node_id=fast.node_id),
                elapsed_seconds=fast.elapsed_seconds,
            )
        )

    def _log_fall_through(self, reason: str) -> None:
        workflow.logger.info(
            "fast path not taken for %s on %s (%s): the install activity sends the same op",
            self._status.slot,
            self._input.node_id,
            reason[:200],
            extra=self._log_fields(),
        )

    async def _install(self) -> InstallActivityResult | _Next:
        """Send one install; the result, or what to do next given how it failed."""
        input = self._input
        self._status.attempts += 1
        self._set_phase(InstallPhase.INSTALLING)
        remaining = self._remaining()
        activity_input = install_activity_input(input, self._status.op_id, remaining)
        request_timeout = activity_input.install_timeout_seconds
        try:
            result: InstallActivityResult = await workflow.execute_activity(
                INSTALL_ACTIVITY,
                activity_input,
                result_type=InstallActivityResult,
                start_to_close_timeout=timedelta(seconds=request_timeout) + ACTIVITY_MARGIN,
                schedule_to_close_timeout=remaining + ACTIVITY_MARGIN,
                heartbeat_timeout=timedelta(seconds=input.heartbeat_timeout_seconds),
                retry_policy=INSTALL_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=(
                    f"install {input.backend} on {input.node_id} for {self._status.slot} "
                    f"(request {self._status.attempts})"
                ),
            )
        except ActivityError as err:
            return self._after_failed_install(err)
        return result

    def _after_failed_install(self, err: ActivityError) -> _Next:
        if is_cancelled_exception(err):
            raise err
        return self._after_failure(err.cause, err)

    def _after_failure(self, cause: BaseException | None, err: BaseException) -> _Next:
        """What to do after a failed install request, given the failure's cause."""
        if isinstance(cause, TimeoutError):
            # The worker running the activity died or hung through every retry: the node may
            # well be installing, so find out before sending anything again.
            self._status.last_error = f"install activity timed out ({cause.type})"
            self._set_phase(InstallPhase.STILL_INSTALLING)
            return _Next.PROBE
        if not isinstance(cause, ApplicationError):
            return self._transient_failure(str(cause or err))
        progress = progress_from_details(cause.details)
        if progress is not None:
            self._record_progress(progress)
        self._status.last_error = cause.message
        if cause.type == WORKER_STILL_INSTALLING:
            self._backoff_streak = 0
            self._set_phase(InstallPhase.STILL_INSTALLING)
            return _Next.PROBE
        if cause.type == NODE_UNREACHABLE:
            return _Next.BACK_OFF
        if cause.type in ACTIVITY_ROUTED_TYPES and cause.type != INSTALL_FAILED:
            raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
        return self._transient_failure(cause.message)

    def _transient_failure(self, message: str) -> _Next:
        self._status.failed_attempts += 1
        self._status.last_error = message
        if self._status.failed_attempts >= self._input.max_failed_attempts:
            raise ApplicationError(
                f"install of {self._input.backend} on node {self._input.node_id} failed "
                f"{self._status.failed_attempts} times; last error: {message}",
                type=INSTALL_FAILED,
                non_retryable=True,
            )
        return _Next.BACK_OFF

    async def _probe(self) -> _Next:
        """Ask the node what it has for the slot and decide the next step from the answer."""
        input = self._input
        self._status.probes += 1
        self._set_phase(InstallPhase.PROBING)
        probe_input = probe_activity_input(input, self._status.op_id)
        try:
            probe = await workflow.execute_activity(
                PROBE_ACTIVITY,
                probe_input,
                result_type=ProbeResult,
                start_to_close_timeout=probe_timeout(probe_input),
                retry_policy=PROBE_RETRY,
                summary=f"probe {input.node_id} for {self._status.slot} "
                f"(probe {self._status.probes})",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            probe = ProbeResult(
                state=ProbeState.UNKNOWN, source="error", notes=[str(err.cause or err)]
            )
        self._status.last_probe = probe
        if probe.last_event is not None and probe.events_seen:
            self._status.last_progress = probe.last_event
        if probe.node_answered:
            self._backoff_streak = 0
        workflow.logger.info(
            "probe of %s on %s: %s",
            self._status.slot,
            input.node_id,
            probe.summary(),
            extra=self._log_fields(),
        )
        if probe.state is ProbeState.RUNNING:
            self._found_running = True
            return _Next.INSTALL
        if probe.state in (ProbeState.INSTALLED, ProbeState.ABSENT):
            return _Next.INSTALL
        if probe.state is ProbeState.UNKNOWN and probe.node_offline:
            self._status.last_error = f"node {input.node_id} is offline (no responders)"
            return _Next.BACK_OFF
        self._set_phase(InstallPhase.STILL_INSTALLING)
        return _Next.WAIT

    # --- bookkeeping ---------------------------------------------------------------------------

    def _complete(self, result: InstallActivityResult) -> InstallBackendResult:
        self._record_progress(result.progress)
        self._status.address = result.address
        self._status.last_error = ""
        self._set_phase(InstallPhase.COMPLETED)
        now = workflow.now()
        return InstallBackendResult(
            node_id=self._input.node_id,
            backend=self._input.backend,
            model_id=self._input.model_id,
            replica_index=self._input.replica_index,
            slot=self._status.slot,
            op_id=self._status.op_id,
            address=result.address,
            attempts=self._status.attempts,
            probes=self._status.probes,
            found_running=self._found_running,
            fast_path=self._fast_path_taken,
            progress_events=self._status.progress_events,
            started_at=self._status.started_at,
            completed_at=now,
            duration_seconds=(now - self._status.started_at).total_seconds(),
        )

    def _remaining(self) -> timedelta:
        return self._status.deadline_at - workflow.now()

    def _check_deadline(self) -> None:
        if self._remaining() > timedelta(0):
            return
        last = describe_progress(self._status.last_progress) or "no progress event seen"
        raise ApplicationError(
            f"install of {self._input.backend} on node {self._input.node_id} for "
            f"{self._status.slot} did not finish within {self._input.deadline_seconds:g}s; "
            f"last progress: {last}; last error: {self._status.last_error or 'none'}",
            self._status,
            type=INSTALL_DEADLINE_EXCEEDED,
            non_retryable=True,
        )

    async def _sleep(self, seconds: float, phase: InstallPhase, summary: str) -> None:
        """A durable timer that never runs past the deadline."""
        remaining = self._remaining().total_seconds()
        duration = max(min(seconds, remaining), 0.001)
        self._status.next_attempt_at = workflow.now() + timedelta(seconds=duration)
        self._set_phase(phase)
        await workflow.sleep(duration, summary=summary)

    def _record_progress(self, progress: InstallProgress) -> None:
        if progress.event_count < self._status.progress_events:
            return
        self._status.progress_events = progress.event_count
        if progress.last_event is not None:
            self._status.last_progress = progress.last_event
            self._status.last_progress_at = progress.last_event_at
        self._status.updated_at = workflow.now()

    def _set_phase(self, phase: InstallPhase) -> None:
        """Record the phase; the search attribute is upserted only when it changes."""
        if phase not in (InstallPhase.WAITING, InstallPhase.BACKING_OFF):
            self._status.next_attempt_at = None
        if phase is not self._published_phase:
            workflow.upsert_search_attributes([INSTALL_PHASE.value_set(phase.value)])
            self._published_phase = phase
        self._status.phase = phase
        self._status.updated_at = workflow.now()
        self._publish_details()
        self._report_to_rollout(phase)

    def _report_to_rollout(self, phase: InstallPhase) -> None:
        """Tell the rollout when the slot goes between installing and still installing.

        Only the coarse state is sent, and only when it changes, so a rollout's history grows
        by a signal or two per slow slot, not per progress event. Outcomes reach the rollout
        through its ``install_slots`` activity, in batches.
        """
        state = _ROLLOUT_STATE.get(phase)
        if not self._input.rollout_id or state is None or state is self._reported_state:
            return
        self._reported_state = state
        report = SlotReport(
            workflow_id=workflow.info().workflow_id,
            state=state,
            detail=describe_progress(self._status.last_progress) or self._status.last_error,
        )
        handle = workflow.get_external_workflow_handle(self._input.rollout_id)
        self._rollout_reports.append(asyncio.create_task(_signal_quietly(handle, report)))

    def _log_fields(self) -> dict[str, str]:
        """The install's identifiers for a log line (``workflow.logger`` adds the workflow id)."""
        status = self._status
        return {"op_id": status.op_id, "node": status.node_id, "slot": status.slot}

    def _publish_details(self) -> None:
        workflow.set_current_details(details_markdown(self._status, workflow.info().workflow_id))

    def _continue_as_new_if_suggested(self) -> None:
        if not workflow.info().is_continue_as_new_suggested():
            return
        status = self._status
        carry = InstallCarryOver(
            op_id=status.op_id,
            started_at=status.started_at,
            deadline_at=status.deadline_at,
            attempts=status.attempts,
            probes=status.probes,
            failed_attempts=status.failed_attempts,
            backoff_streak=self._backoff_streak,
            found_running=self._found_running,
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
        workflow.continue_as_new(self._input.model_copy(update={"resume": carry}))
