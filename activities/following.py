"""Following one op's progress while a request waits: the one helper every request uses.

An install or an upgrade request waits for a node that may work for minutes. Meanwhile the
node publishes progress events on the op's subject, and the activity forwards the newest as
heartbeats and, now and then, as a progress report to its workflow. :class:`Following` is
that, as an async context manager in the manner of a heartbeater: entering subscribes
(confirmed with the server before the request goes out, or early events are lost) and
starts the pump; leaving stops both, whatever ended the request. The NATS callback only
parses and stores; the pump turns the newest event into a heartbeat within the worker's
forwarding budget (``activities/budget.py``), so a burst of thousands of events costs one
parse each and a bounded number of heartbeats, and a slow Temporal connection never stalls
NATS. :func:`wait_watching` waits for the reply while checking that the node still has the
op (``activities/liveness.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from temporalio import activity

from activities.budget import HEARTBEAT_SHARE, ForwardBudget
from activities.liveness import ANSWER_TIMEOUT, CONFIRM_DELAY, Finding, Liveness, NodeWatch
from durable_installs.contracts.activities import (
    LIVENESS_INTERVAL_RANGE,
    InstallProgress,
    progress_from_details,
)
from durable_installs.contracts.names import PROGRESS_SIGNAL
from durable_installs.protocol import subjects
from durable_installs.protocol.connection import permissions_violation
from durable_installs.protocol.messages import BackendInstallProgressEvent, InstallStatusRequest
from durable_installs.telemetry import InstallMetrics

SUBSCRIBE_FLUSH_TIMEOUT = 5
"""Bound on confirming the progress subscription before the request is sent (as LocalAI)."""

log = logging.getLogger(__name__)


class ProgressTracker:
    """Newest progress event of one op, fed from the NATS callback, read by the pump."""

    def __init__(self, start: InstallProgress) -> None:
        self._start = start
        self.event_count = start.event_count
        self.last_event = start.last_event
        self.last_event_at = start.last_event_at
        self.malformed_events = start.malformed_events
        self.new_phase = asyncio.Event()
        """Set when an event names another phase than the one before: forwarded at once."""
        self.stopped = False
        """Set when the request is over; the pump then ends even if a cancellation is lost."""

    async def on_message(self, msg: Msg) -> None:
        """NATS callback: parse and store, never block. Malformed events are dropped."""
        try:
            event = BackendInstallProgressEvent.model_validate_json(msg.data)
        except ValidationError as err:
            self.malformed_events += 1
            log.warning(
                "dropping malformed progress event on %s: %s",
                msg.subject,
                err.errors(include_url=False, include_input=False)[:1],
            )
            return
        if self.last_event is not None and event.phase != self.last_event.phase:
            self.new_phase.set()
        self.event_count += 1
        self.last_event = event
        self.last_event_at = datetime.now(UTC)

    def snapshot(self) -> InstallProgress:
        return self._start.model_copy(
            update={
                "event_count": self.event_count,
                "last_event": self.last_event,
                "last_event_at": self.last_event_at,
                "malformed_events": self.malformed_events,
            }
        )


def resume_point(node_id: str, op_id: str) -> InstallProgress:
    """Where this attempt starts: the last heartbeat of a previous attempt at the same op."""
    info = activity.info()
    fresh = InstallProgress(op_id=op_id, node_id=node_id, attempt=info.attempt)
    previous = progress_from_details(info.heartbeat_details) if info.attempt > 1 else None
    if previous is None or previous.op_id != op_id:
        return fresh
    activity.logger.info(
        "resuming op %s after attempt %d: %d progress events seen so far",
        op_id,
        previous.attempt,
        previous.event_count,
    )
    return previous.model_copy(update={"attempt": info.attempt})


class Followers:
    """What every follow on one worker shares: the NATS connection, budget and metrics."""

    def __init__(self, nc: NATS, budget: ForwardBudget, metrics: InstallMetrics) -> None:
        self.nc = nc
        self.budget = budget
        self.metrics = metrics

    def follow(
        self,
        node_id: str,
        op_id: str,
        *,
        idle_heartbeat: float,
        report_every: float,
    ) -> Following:
        """Follow ``op_id`` on ``node_id``; ``idle_heartbeat`` bounds the heartbeat interval
        when the activity has no heartbeat timeout, ``report_every`` is the requested report
        interval (0: no reports)."""
        return Following(self, node_id, op_id, idle_heartbeat, report_every)


class Following:
    """One op followed for as long as its request waits (``async with``)."""

    def __init__(
        self,
        shared: Followers,
        node_id: str,
        op_id: str,
        idle_heartbeat: float,
        report_every: float,
    ) -> None:
        self._shared = shared
        self._node_id = node_id
        self._op_id = op_id
        self._idle_heartbeat = idle_heartbeat
        self._report_every = report_every
        self.tracker = ProgressTracker(resume_point(node_id, op_id))
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgressTracker:
        self._subscription = await self._subscribe()
        self._pump = asyncio.create_task(self._forward(), name=f"progress-pump-{self._op_id}")
        return self.tracker

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.tracker.stopped = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def _subscribe(self) -> Subscription | None:
        """Subscribe and confirm with the server before the request, or events are lost."""
        if not self._op_id:
            return None
        nc = self._shared.nc
        subject = subjects.progress(self._node_id, self._op_id)
        try:
            before = nc.last_error
            subscription = await nc.subscribe(subject, cb=self.tracker.on_message)
            await nc.flush(timeout=SUBSCRIBE_FLUSH_TIMEOUT)
            denied = await permissions_violation(nc, before, flushes=1)
        except Exception as err:  # subscription problems must not fail the request
            activity.logger.warning(
                "no progress for op %s: subscribing failed: %s", self._op_id, err
            )
            return None
        if denied is not None and f'"{subject}"' in denied:
            activity.logger.warning(
                "no progress for op %s: NATS refused the subscription to %s (permissions "
                "violation); the worker's NATS user must be allowed to subscribe "
                "nodes.*.backend.install.*.progress",
                self._op_id,
                subject,
            )
        return subscription

    async def _forward(self) -> None:
        """Heartbeat and report the newest progress, within the worker's forwarding budget.

        A heartbeat goes out every interval of the budget, with or without news: it carries
        the newest event, and its answer is how a cancel reaches the activity. A new phase is
        forwarded at once. A report (a signal) goes out when its own, longer interval has
        passed or the phase changed, always with a heartbeat of the same progress, so the
        UI's pending activity is never behind the current details.
        """
        budget, metrics, tracker = self._shared.budget, self._shared.metrics, self.tracker
        timeout = activity.info().heartbeat_timeout
        longest = timeout.total_seconds() * HEARTBEAT_SHARE if timeout else self._idle_heartbeat
        started = time.monotonic()
        last_report = started
        reported_count = forwarded_count = tracker.event_count
        report_task: asyncio.Task[None] | None = None
        with budget.following():
            try:
                while not tracker.stopped:
                    await _wait(tracker.new_phase, budget.heartbeat_interval(longest))
                    new_phase = tracker.new_phase.is_set()
                    tracker.new_phase.clear()
                    progress = tracker.snapshot()
                    activity.heartbeat(progress)
                    budget.heartbeats += 1
                    if progress.event_count > forwarded_count:
                        metrics.progress_events.add(progress.event_count - forwarded_count)
                        forwarded_count = progress.event_count
                    now = time.monotonic()
                    due = now - last_report >= budget.report_interval(
                        self._report_every, now - started
                    )
                    if (
                        self._report_every > 0
                        and progress.event_count != reported_count
                        and (due or new_phase)
                        and (report_task is None or report_task.done())
                    ):
                        report_task = asyncio.create_task(_report(progress))
                        last_report, reported_count = now, progress.event_count
                        budget.reports += 1
            finally:
                if report_task is not None and not report_task.done():
                    report_task.cancel()


async def _report(progress: InstallProgress) -> None:
    """Tell the workflow about progress so its query and UI summary stay live."""
    info = activity.info()
    if info.workflow_id is None:  # a standalone activity has no workflow to tell
        return
    try:
        handle = activity.client().get_workflow_handle(
            info.workflow_id, run_id=info.workflow_run_id
        )
        await handle.signal(PROGRESS_SIGNAL, progress)
    except Exception as err:  # a lost report is harmless; the next one carries more
        activity.logger.debug("progress report to workflow failed: %s", err)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` pass, whichever comes first.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` can swallow the
    cancellation that ends the pump when the event is set at the same moment, and the
    activity then waits for the pump forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class NodeGone(Exception):
    """The node no longer has the op, or nothing answers for it: stop waiting."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.reason)
        self.finding = finding


async def wait_watching(
    nc: NATS,
    reply: asyncio.Future[Msg],
    node_id: str,
    status: InstallStatusRequest,
    interval: float,
    tracker: ProgressTracker,
) -> Msg:
    """The node's reply, unless the node restarted or went silent while we waited.

    While no progress event arrives, the node is asked every ``interval`` seconds whether it
    still has the op (``activities/liveness.py``); :class:`NodeGone` says it does not, or
    that nothing answers for it any more, long before the request's timeout. ``interval``
    0 turns the checks off.
    """
    if not interval > 0:  # off (the workflow refuses anything else out of bounds)
        return await reply
    low, high = LIVENESS_INTERVAL_RANGE
    interval = min(max(interval, low), high)
    watch = NodeWatch(nc, node_id, status, timeout=min(ANSWER_TIMEOUT, interval))
    events_seen = tracker.event_count
    wait = interval
    while True:
        done, _ = await asyncio.wait({reply}, timeout=wait)
        if done:
            return reply.result()
        if tracker.event_count != events_seen:  # the node is working on the op
            events_seen = tracker.event_count
            watch.working()
            wait = interval
            continue
        check = asyncio.create_task(watch.check(), name=f"liveness-{status.op_id}")
        either: set[asyncio.Future[Any]] = {reply, check}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await stop_task(check)
        if reply.done():
            return reply.result()
        finding = check.result()
        if finding.liveness is Liveness.ALIVE:
            wait = interval
        elif finding.liveness is Liveness.SUSPECT:
            wait = min(CONFIRM_DELAY, interval)
        else:
            log.warning("stopped waiting for node %s: %s", node_id, finding.reason)
            raise NodeGone(finding)


async def stop_task(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs and wait for it; its outcome no longer matters."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
