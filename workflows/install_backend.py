"""``InstallBackendWorkflow``: one slot on one node, installed durably.

The loop sends an install; a timeout means "still installing", so before anything is sent
again the probe asks the node what it has. A running or installed slot gets one more install
(the node's fast path returns the routable address at once), an absent one a re-send with the
same op id, and a node still busy gets a durable wait and another probe. Timeouts never use up
the failure budget; the deadline bounds everything.

This module is the shell: every activity, timer, upsert and signal. What the install knows
and how it decides lives in ``workflows/install_state.py``, the inputs and timeouts of each
step in ``workflows/install_steps.py``; both are passed through the sandbox, so the sandbox
re-imports only this module for every run.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)

# Everything the workflow uses besides ``temporalio`` is passed through: the sandbox imports
# those modules once per worker instead of once per workflow run.
with workflow.unsafe.imports_passed_through():
    import pydantic

    from durable_installs.contracts.activities import (
        CancelOpInput,
        FastInstallResult,
        InstallActivityResult,
        InstallProgress,
        ProbeResult,
        ProbeState,
    )
    from durable_installs.contracts.failures import ACTIVITY_ROUTED_TYPES, INVALID_INPUT
    from durable_installs.contracts.install import (
        InstallBackendInput,
        InstallBackendResult,
        InstallPhase,
        InstallStatus,
    )
    from durable_installs.contracts.names import (
        CANCEL_OP_ACTIVITY,
        FAST_INSTALL_ACTIVITY,
        INSTALL_ACTIVITY,
        INSTALL_WORKFLOW,
        PROBE_ACTIVITY,
        PROGRESS_QUERY,
        PROGRESS_SIGNAL,
        SLOT_STATE_SIGNAL,
    )
    from durable_installs.contracts.rollout import SlotReport
    from durable_installs.contracts.summaries import shorten
    from workflows.install_state import InstallState, check_input
    from workflows.install_steps import (
        ACTIVITY_MARGIN,
        CANCEL_OP_RETRY,
        CANCEL_OP_TIMEOUT,
        CANCEL_TELLS_THE_NODE,
        FAST_PATH,
        FAST_PATH_MARGIN,
        FAST_PATH_ONCE,
        FAST_PATH_RETRY,
        FAST_PATH_WRITES_ATTRIBUTES_ONCE,
        FIRST_TASK_HISTORY_LENGTH,
        INSTALL_RETRY,
        INVALID_INPUT_WRITES_NO_SEARCH_ATTRIBUTE,
        PROBE_RETRY,
        NextStep,
        backoff_seconds,
        install_activity_input,
        probe_activity_input,
        probe_timeout,
    )
    from workflows.summary import details_markdown


async def _signal_quietly(
    handle: workflow.ExternalWorkflowHandle[object], report: SlotReport
) -> None:
    """A lost report only makes the rollout's table less detailed; never fail the install."""
    try:
        await handle.signal(SLOT_STATE_SIGNAL, [report])
    except Exception as err:
        workflow.logger.debug("could not report to the rollout: %s", err)


@workflow.defn(name=INSTALL_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class InstallBackendWorkflow:
    """Install a backend on one node and return the address of the slot's running process.

    Runs PINNED on a versioned worker (``orchestrator.registry.WORKFLOW_BEHAVIORS``): an install can
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
        self._checked = check_input(input)
        self._state = InstallState(self._checked.input, workflow.info().workflow_id, workflow.now())
        self._rollout_reports: list[asyncio.Task[None]] = []

    @workflow.run
    async def run(self, input: InstallBackendInput | None = None) -> InstallBackendResult:
        """Install until the slot runs, the node rejects it, or the deadline passes."""
        state = self._state
        if self._checked.invalid:
            state.status.last_error = self._checked.invalid
            if workflow.patched(INVALID_INPUT_WRITES_NO_SEARCH_ATTRIBUTE):
                # No search attribute is written: an oversized value would get the workflow
                # terminated by the server instead of failed with the reason.
                state.status.phase = InstallPhase.FAILED
                self._publish_details()
            else:  # executions started before the patch recorded the failed phase
                self._set_phase(InstallPhase.FAILED)
            raise ApplicationError(
                self._checked.invalid,
                self._checked.problems,
                type=INVALID_INPUT,
                non_retryable=True,
            )
        input = state.input
        fresh = input.resume is None and input.fast_path_seconds > 0
        try:
            step: InstallBackendResult | NextStep
            if fresh and workflow.patched(FAST_PATH_WRITES_ATTRIBUTES_ONCE):
                step = await self._fast_path_first()
            else:
                workflow.upsert_search_attributes(state.identity())
                self._set_phase(InstallPhase.INSTALLING)
                step = NextStep.PROBE if input.resume else NextStep.INSTALL
                # patched() last: only an execution that takes the fast path records it.
                if fresh and workflow.patched(FAST_PATH):
                    step = await self._fast_path()
            if isinstance(step, InstallBackendResult):
                return step
            return await self._loop(step)
        except asyncio.CancelledError as err:
            # No install activity was running to tell the node (it does so itself when it is
            # cancelled), but the node may still be busy with an op whose request timed out.
            if state.request_started and workflow.patched(CANCEL_TELLS_THE_NODE):
                await self._tell_node_to_cancel()
            self._record_end(err)
            raise
        except BaseException as err:
            self._record_end(err)
            raise

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> InstallStatus:
        """Phase, attempts, probes, the newest progress event and the last probe result."""
        return self._state.status

    @workflow.signal(name=PROGRESS_SIGNAL)
    def report_progress(self, report: InstallProgress) -> None:
        """Progress forwarded by the install activity while it waits for the node."""
        status = self._state.status
        if report.op_id != status.op_id or report.event_count < status.progress_events:
            return  # another op's, or an older report overtaken by a newer one
        self._state.record_progress(report, workflow.now())
        self._publish_details()

    # --- the steps -----------------------------------------------------------------------------

    async def _fast_path_first(self) -> InstallBackendResult | NextStep:
        """A fresh install: the fast path before anything else, attributes written once.

        Nothing a workflow task commands is visible before the task completes, and a warm
        install completes in its first task, so upserting the identity and ``installing``
        first only cost the server visibility writes nobody could see (4 upserts became 2,
        with the patch's own; bench/README.md). The identity goes out with the first phase
        that is written. The SDK reports a task's commands early (a task heartbeat) once a
        local activity runs past 80 % of the task timeout; only when the fast path could run
        that long (a start with a task timeout under ``(bound + margin) / 0.8``, 3.75 s for the
        default 1 s bound) are the attributes written first, as before.
        """
        self._state.defer_identity()
        longest = timedelta(seconds=self._state.input.fast_path_seconds) + FAST_PATH_MARGIN
        if longest >= workflow.info().task_timeout * 0.8:
            self._set_phase(InstallPhase.INSTALLING)
        else:
            self._publish_details()
        return await self._fast_path()

    async def _fast_path(self) -> InstallBackendResult | NextStep:
        """Ask the node with a short bound in a local activity, inside this workflow task.

        An immediate ``success:true`` completes the install here (one workflow task, one
        request). No answer in time, no responders, or any failure of the local activity
        itself falls through to the install activity with the same op id: a node still
        working on the op joins it, so nothing is installed twice. A ``success:false`` reply
        is the first request's failure, handled exactly as the install activity's would be.
        """
        state = self._state
        state.request_started = True
        if self._fast_path_may_have_run():
            state.status.last_error = (
                "the first workflow task ran again: its fast-path request may be out"
            )
            return NextStep.PROBE
        remaining = state.remaining(workflow.now())
        bound = min(state.input.fast_path_seconds, remaining.total_seconds())
        activity_input = install_activity_input(state.input, state.status.op_id, remaining)
        activity_input = activity_input.model_copy(update={"install_timeout_seconds": bound})
        try:
            fast: FastInstallResult = await workflow.execute_local_activity(
                FAST_INSTALL_ACTIVITY,
                activity_input,
                result_type=FastInstallResult,
                start_to_close_timeout=timedelta(seconds=bound) + FAST_PATH_MARGIN,
                retry_policy=FAST_PATH_RETRY,
                summary=f"ask {state.input.node_id} for {state.status.slot} (fast path, "
                f"{bound:g}s bound)",
            )
        except FailureError as err:
            # A local activity's failure arrives wrapped in ActivityError or as its cause.
            if is_cancelled_exception(err):
                raise
            cause = err.cause if isinstance(err, ActivityError) else err
            if isinstance(cause, ApplicationError) and cause.type in ACTIVITY_ROUTED_TYPES:
                state.status.attempts += 1  # the node answered: that was request 1
                return self._after_failure(cause, err)
            self._log_fall_through(str(cause or err))
            if workflow.patched(FAST_PATH_ONCE):
                # It may have failed after the request went out (its timeout cancels it while
                # it waits): ask the node before anything is sent again.
                state.status.last_error = f"fast path failed: {cause or err}"
                return NextStep.PROBE
            return NextStep.INSTALL
        if not fast.answered:
            # The node got the request: the install activity waits for its one reply.
            self._state.request_outstanding = fast.request_sent
            self._log_fall_through(fast.reason)
            return NextStep.INSTALL
        return self._complete(state.fast_path_answered(fast))

    def _fast_path_may_have_run(self) -> bool:
        """Whether an earlier attempt of this first workflow task may have sent the request.

        A local activity's result is recorded only when its workflow task completes: a worker
        that died while the fast path waited (or a task that overran its timeout) leaves no
        trace of the request but the longer history of the task's next attempt. Running the
        fast path again there would send the op a second time while the node may be working on
        it (the node agent joins by op id; a stock worker holds it behind its lock; another
        implementation could download twice).
        """
        length = workflow.info().get_current_history_length()
        return length > FIRST_TASK_HISTORY_LENGTH and workflow.patched(FAST_PATH_ONCE)

    def _log_fall_through(self, reason: str) -> None:
        then = (
            "the install activity waits for the node's reply"
            if self._state.request_outstanding
            else "the install activity sends the same op"
        )
        workflow.logger.info(
            "fast path not taken for %s on %s (%s): %s",
            self._state.status.slot,
            self._state.input.node_id,
            reason[:200],
            then,
            extra=self._state.log_fields(),
        )

    async def _loop(self, step: NextStep) -> InstallBackendResult:
        state = self._state
        while True:
            if state.remaining(workflow.now()) <= timedelta(0):
                raise state.deadline_error()
            self._continue_as_new_if_suggested()
            if step is NextStep.INSTALL:
                result = await self._install()
                if isinstance(result, InstallActivityResult):
                    return self._complete(result)
                step = result
            elif step is NextStep.PROBE:
                step = await self._probe()
            elif step is NextStep.WAIT:
                await self._sleep(
                    state.input.probe_interval_seconds,
                    InstallPhase.WAITING,
                    f"node {state.input.node_id} still busy with {state.status.slot}; probe again",
                )
                step = NextStep.PROBE
            else:
                state.backoff_streak += 1
                await self._sleep(
                    backoff_seconds(state.input, state.backoff_streak),
                    InstallPhase.BACKING_OFF,
                    f"back off after: {shorten(state.status.last_error, 120)}",
                )
                step = NextStep.PROBE

    async def _install(self) -> InstallActivityResult | NextStep:
        """Send one install; the result, or what to do next given how it failed."""
        state = self._state
        input = state.input
        state.status.attempts += 1
        state.request_started = True
        self._set_phase(InstallPhase.INSTALLING)
        remaining = state.remaining(workflow.now())
        activity_input = state.next_install_input(remaining)
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
                    f"install {input.backend} on {input.node_id} for {state.status.slot} "
                    f"(request {state.status.attempts}"
                    + (", sent by the fast path" if activity_input.request_sent else "")
                    + ")"
                ),
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            return self._after_failure(err.cause, err)
        return result

    def _after_failure(self, cause: BaseException | None, err: BaseException) -> NextStep:
        """What to do after a failed install request; a probe comes with ``still_installing``."""
        step = self._state.after_failure(cause, err, workflow.now())
        if step is NextStep.PROBE:
            self._set_phase(InstallPhase.STILL_INSTALLING)
        return step

    async def _probe(self) -> NextStep:
        """Ask the node what it has for the slot and decide the next step from the answer."""
        state = self._state
        input = state.input
        state.status.probes += 1
        self._set_phase(InstallPhase.PROBING)
        probe_input = probe_activity_input(input, state.status.op_id)
        try:
            probe = await workflow.execute_activity(
                PROBE_ACTIVITY,
                probe_input,
                result_type=ProbeResult,
                start_to_close_timeout=probe_timeout(probe_input),
                retry_policy=PROBE_RETRY,
                summary=f"probe {input.node_id} for {state.status.slot} "
                f"(probe {state.status.probes})",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            probe = ProbeResult(
                state=ProbeState.UNKNOWN, source="error", notes=[str(err.cause or err)]
            )
        step = state.after_probe(probe)
        workflow.logger.info(
            "probe of %s on %s: %s",
            state.status.slot,
            input.node_id,
            probe.summary(),
            extra=state.log_fields(),
        )
        if step is NextStep.WAIT:
            self._set_phase(InstallPhase.STILL_INSTALLING)
        return step

    async def _tell_node_to_cancel(self) -> None:
        """Ask the node to stop the op (``activities/cancel.py``); the install ends cancelled
        whatever the answer."""
        state = self._state
        try:
            await workflow.execute_local_activity(
                CANCEL_OP_ACTIVITY,
                CancelOpInput(node_id=state.input.node_id, op_id=state.status.op_id),
                result_type=bool,
                start_to_close_timeout=CANCEL_OP_TIMEOUT,
                retry_policy=CANCEL_OP_RETRY,
                summary=f"tell {state.input.node_id} to stop op {state.status.op_id}",
            )
        except ActivityError as err:
            workflow.logger.warning(
                "could not tell %s to stop op %s: %s",
                state.input.node_id,
                state.status.op_id,
                err.cause or err,
                extra=state.log_fields(),
            )

    # --- effects of the state ------------------------------------------------------------------

    def _complete(self, result: InstallActivityResult) -> InstallBackendResult:
        self._state.installed(result, workflow.now())
        self._set_phase(InstallPhase.COMPLETED)
        return self._state.result(workflow.now())

    def _record_end(self, err: BaseException) -> None:
        """The phase of an install that ends with ``err``: cancelled, failed, or unchanged."""
        status = self._state.status
        if isinstance(err, (asyncio.CancelledError, ActivityError)):
            if is_cancelled_exception(err):
                status.last_error = "cancelled"
                self._set_phase(InstallPhase.CANCELLED)
        elif isinstance(err, ApplicationError):
            status.last_error = err.message
            self._set_phase(InstallPhase.FAILED)

    async def _sleep(self, seconds: float, phase: InstallPhase, summary: str) -> None:
        """A durable timer that never runs past the deadline."""
        remaining = self._state.remaining(workflow.now()).total_seconds()
        duration = max(min(seconds, remaining), 0.001)
        self._state.status.next_attempt_at = workflow.now() + timedelta(seconds=duration)
        self._set_phase(phase)
        await workflow.sleep(duration, summary=summary)

    def _set_phase(self, phase: InstallPhase) -> None:
        """Record the phase: upsert what changed, refresh the details, tell the rollout."""
        change = self._state.set_phase(phase, workflow.now(), workflow.info().workflow_id)
        if change.attributes:
            workflow.upsert_search_attributes(change.attributes)
        self._publish_details()
        if change.rollout_report is not None:
            handle = workflow.get_external_workflow_handle(self._state.input.rollout_id)
            task = asyncio.create_task(_signal_quietly(handle, change.rollout_report))
            self._rollout_reports.append(task)

    def _publish_details(self) -> None:
        workflow.set_current_details(
            details_markdown(self._state.status, workflow.info().workflow_id)
        )

    def _continue_as_new_if_suggested(self) -> None:
        if workflow.info().is_continue_as_new_suggested():
            carry = self._state.carry_over()
            workflow.continue_as_new(self._state.input.model_copy(update={"resume": carry}))
