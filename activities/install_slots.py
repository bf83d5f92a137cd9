"""Start a batch of a rollout's installs, wait for them, and report outcomes in bulk.

Why an activity and not one child workflow per slot: every child start and completion is an
event in the parent's history, which Temporal updates one at a time (the measurements:
bench/README.md, "Rollout over 1,000 slots"). Here the installs are ordinary workflows
started from the client side, exactly like independent starts, and the rollout hears about
them in a few signals per second per batch instead of three events per slot.

The installs stay one per slot: each is started with the slot's workflow id, and a start that
finds the id running joins that install instead (the slot is then ``shared``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.attach import install_result
from activities.closings import Closings
from durable_installs.contracts.failures import INSTALL_CANCELLED, ROLLOUT_GONE
from durable_installs.contracts.install import InstallBackendResult
from durable_installs.contracts.load import LoadModelResult
from durable_installs.contracts.names import (
    INSTALL_SLOTS_ACTIVITY,
    INSTALL_WORKFLOW,
    LOAD_WORKFLOW,
    SLOT_STATE_SIGNAL,
    SLOTS_STARTED_SIGNAL,
)
from durable_installs.contracts.rollout import (
    InstallSlotsInput,
    InstallSlotsProgress,
    InstallSlotsResult,
    RolloutAction,
    SlotReport,
    SlotsStarted,
    SlotState,
    SlotStatus,
    expand_slots,
)
from durable_installs.contracts.summaries import install_details, install_summary

CLOSED_POLL_INTERVAL = 1.0
"""Seconds between two visibility questions of a batch: which of its installs have closed."""

REPORT_INTERVAL = 1.0
"""Seconds between outcome signals: the rollout's table lags by this, its history does not
grow per slot."""
CANCEL_GRACE = 300.0
"""How long a cancelled batch waits for its installs to stop (each tells its node to stop
the op) before it gives up on them; it keeps heartbeating meanwhile, so the rollout sees
it alive, and ends only once they have stopped."""

InstallHandle = WorkflowHandle[object, Any]
"""An install's (``InstallBackendResult``) or a load's (``LoadModelResult``): both have the
slot's ``address``."""


class _RolloutGone(Exception):
    """Signalling the rollout found no running workflow."""


@activity.defn(name=INSTALL_SLOTS_ACTIVITY)
async def install_slots(input: InstallSlotsInput) -> InstallSlotsResult:
    """Install every slot of the batch; outcomes not yet signalled are the result."""
    details = activity.info().heartbeat_details
    progress = (
        InstallSlotsProgress.model_validate(details[0]) if details else InstallSlotsProgress()
    )
    return await InstallSlotsRun(activity.client(), input, progress).run()


class InstallSlotsRun:
    """One attempt at a batch: start or join each install, then collect the outcomes."""

    def __init__(
        self, client: Client, input: InstallSlotsInput, progress: InstallSlotsProgress
    ) -> None:
        self._client = client
        self._input = input
        self._rollout = client.get_workflow_handle(input.rollout_id)
        self._started = set(progress.started)
        self._reported = set(progress.reported)
        self._unsent: list[SlotReport] = []
        self._handles: dict[str, InstallHandle] = {}

    async def run(self) -> InstallSlotsResult:
        batch = self._input.batch
        slots = [
            slot
            for slot in expand_slots(batch.targets, batch.backend, batch.action)
            if slot.workflow_id not in self._reported
        ]
        try:
            await self._supervise(slots)
        except asyncio.CancelledError:
            if await self._rollout_let_go():
                await self._cancel_started()
                await self._send_reports()  # the slots that ended before the cancel
            raise
        except _RolloutGone as gone:
            # Terminated, or reset past this batch: nobody will read the outcomes, and the
            # installs it started must not outlive it.
            await self._cancel_started()
            raise ApplicationError(
                f"rollout {self._input.rollout_id} is no longer running ({gone}); "
                "cancelled the installs it started",
                type=ROLLOUT_GONE,
                non_retryable=True,
            ) from gone
        return InstallSlotsResult(reports=self._unsent)

    async def _supervise(self, slots: list[SlotStatus]) -> None:
        """Run the installs beside the reporter; whichever fails first ends the attempt."""
        work = asyncio.create_task(self._install_all(slots))
        reporter = asyncio.create_task(self._report_periodically())
        try:
            await asyncio.wait({work, reporter}, return_when=asyncio.FIRST_COMPLETED)
            if reporter.done():
                reporter.result()  # raises: an outcome could not be delivered
            await work
        finally:
            for task in (work, reporter):
                task.cancel()
            await asyncio.gather(work, reporter, return_exceptions=True)

    async def _install_all(self, slots: list[SlotStatus]) -> None:
        """Start or join every install, tell the rollout which are its own, collect outcomes."""
        joined: list[str] = []

        async def start(slot: SlotStatus) -> None:
            if not await self._start(slot):
                joined.append(slot.workflow_id)

        # Task groups, not gather: if one call fails for good, the others stop with it and
        # the whole attempt is retried from the heartbeat.
        async with asyncio.TaskGroup() as group:
            for slot in slots:
                group.create_task(start(slot))
        activity.heartbeat(self._progress())
        await self._signal(
            SLOTS_STARTED_SIGNAL, SlotsStarted(started=sorted(self._started), joined=sorted(joined))
        )
        await self._collect(slots)

    async def _start(self, slot: SlotStatus) -> bool:
        """Start the slot's install (or load); False when another requester's was joined."""
        batch = self._input.batch
        rollout_id = self._input.rollout_id
        node, model, replica = slot.node_id, slot.model_id, slot.replica_index
        workflow_type: str
        workflow_input: object
        result_type: type[object]
        if batch.action is RolloutAction.LOAD:
            workflow_type, result_type = LOAD_WORKFLOW, LoadModelResult
            workflow_input = batch.load_input(node, model, replica, rollout_id)
            summary = f"load {model} into {batch.backend} {model}#{replica} on {node}"
            details = f"{summary}, for rollout `{rollout_id}`"
        else:
            workflow_type, result_type = INSTALL_WORKFLOW, InstallBackendResult
            workflow_input = batch.install_input(node, model, replica, rollout_id)
            summary = install_summary(batch.backend, node, model, replica, rollout_id)
            details = install_details(
                batch.backend, node, model, replica, f"rollout `{rollout_id}`"
            )
        try:
            self._handles[slot.workflow_id] = await self._client.start_workflow(
                workflow_type,
                workflow_input,
                id=slot.workflow_id,
                task_queue=self._input.task_queue,
                result_type=result_type,
                static_summary=summary,
                static_details=details,
            )
            self._started.add(slot.workflow_id)
            return True
        except WorkflowAlreadyStartedError:
            self._handles[slot.workflow_id] = self._client.get_workflow_handle(
                slot.workflow_id, result_type=result_type
            )
            # A retried attempt finds its own earlier start running: still the rollout's.
            return slot.workflow_id in self._started

    async def _collect(self, slots: list[SlotStatus]) -> None:
        """Every slot's outcome, as its install closes (``activities/closings.py``)."""
        closings = Closings(self._client, (slot.workflow_id for slot in slots))
        while closings.pending:
            await asyncio.sleep(CLOSED_POLL_INTERVAL)
            for workflow_id in await closings.closed():
                self._unsent.append(await _outcome(workflow_id, self._handles[workflow_id]))

    async def _report_periodically(self) -> None:
        """Heartbeat and send finished slots' outcomes, at most once per REPORT_INTERVAL."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            await self._send_reports()
            activity.heartbeat(self._progress())

    async def _send_reports(self) -> None:
        """Send the outcomes not yet sent in one signal."""
        if not self._unsent:
            return
        # Sent reports leave the list only once delivered: the batch may end (and cancel
        # this task) mid-signal, and then the result carries them instead.
        reports = list(self._unsent)
        await self._signal(SLOT_STATE_SIGNAL, reports)
        del self._unsent[: len(reports)]
        self._reported.update(r.workflow_id for r in reports)

    async def _signal(self, name: str, payload: object) -> None:
        try:
            await self._rollout.signal(name, payload)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise _RolloutGone(err.message) from err
            raise

    async def _cancel_started(self) -> None:
        """Cancel the installs this rollout started and wait for them to stop, heartbeating.

        The batch is cancelled itself by now, so nothing else heartbeats for it; without
        these the rollout's heartbeat timeout would end it as failed while its installs are
        still stopping, and the rollout would close with installs running.
        """
        own = [self._handles[w] for w in self._started if w in self._handles]
        await _quietly_all(handle.cancel for handle in own)
        stopped = asyncio.ensure_future(_all_closed(self._client, [h.id for h in own]))
        try:
            async with asyncio.timeout(CANCEL_GRACE):
                while not stopped.done():
                    activity.heartbeat(self._progress())
                    await asyncio.wait({stopped}, timeout=REPORT_INTERVAL)
        except TimeoutError:
            activity.logger.warning(
                "%d install(s) of rollout %s did not stop within %gs of the cancel",
                len(own),
                self._input.rollout_id,
                CANCEL_GRACE,
            )
        finally:
            stopped.cancel()

    async def _rollout_let_go(self) -> bool:
        """Whether this cancellation means the rollout no longer wants its installs.

        A cancel the rollout requested does. NotFound does only if the rollout is no longer
        running: it also means just this attempt went stale (timed out, retried elsewhere),
        and the retry owns the installs now. A worker shutting down, a timeout or a pause
        never does: the retried batch finds the installs through its heartbeat details.
        """
        details = activity.cancellation_details()
        if details is None:
            return False
        if details.cancel_requested:
            return True
        if not details.not_found:
            return False
        try:
            description = await self._rollout.describe()
        except RPCError as err:
            return err.status is RPCStatusCode.NOT_FOUND
        return description.status is not WorkflowExecutionStatus.RUNNING

    def _progress(self) -> InstallSlotsProgress:
        return InstallSlotsProgress(started=sorted(self._started), reported=sorted(self._reported))


async def _outcome(workflow_id: str, handle: InstallHandle) -> SlotReport:
    """The slot's final report: succeeded with its address, failed or cancelled."""
    try:
        result = await install_result(handle)
    except ApplicationError as err:
        state = SlotState.CANCELLED if err.type == INSTALL_CANCELLED else SlotState.FAILED
        return SlotReport(workflow_id=workflow_id, state=state, error=err.message)
    return SlotReport(workflow_id=workflow_id, state=SlotState.SUCCEEDED, address=result.address)


async def _all_closed(client: Client, workflow_ids: list[str]) -> None:
    """Until every one of ``workflow_ids`` has closed (asked of visibility, no long polls)."""
    closings = Closings(client, workflow_ids)
    while closings.pending:
        await asyncio.sleep(CLOSED_POLL_INTERVAL)
        await closings.closed()


async def _quietly_all(calls: Iterable[Callable[[], Awaitable[object]]]) -> None:
    await asyncio.gather(*(call() for call in calls), return_exceptions=True)
