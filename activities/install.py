"""The install activity: one ``backend.install`` request with its progress forwarded.

The NATS read loop only parses and stores progress events; a separate pump task turns the
newest one into a heartbeat (and, throttled, a progress report to the workflow). A burst of
thousands of events therefore costs one parse each and a bounded number of heartbeats, and a
slow Temporal connection can never stall NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.budget import HEARTBEAT_SHARE, ForwardBudget
from activities.liveness import (
    ANSWER_TIMEOUT,
    CONFIRM_DELAY,
    Finding,
    Liveness,
    NodeWatch,
)
from activities.replies import OpReplies
from durable_installs.contracts.activities import (
    LIVENESS_INTERVAL_RANGE,
    InstallActivityInput,
    InstallActivityResult,
    InstallProgress,
    progress_from_details,
)
from durable_installs.contracts.failures import (
    INSTALL_FAILED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
    classify_node_error,
    node_failure,
)
from durable_installs.contracts.names import INSTALL_ACTIVITY, PROGRESS_SIGNAL
from durable_installs.protocol import subjects
from durable_installs.protocol.connection import permissions_violation
from durable_installs.protocol.messages import (
    BackendInstallProgressEvent,
    BackendInstallReply,
    InstallStatusRequest,
    process_key,
)
from durable_installs.telemetry import InstallMetrics, Telemetry, bind_fields, request_span
from durable_installs.telemetry.spans import outcome_of

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


def _resume_point(input: InstallActivityInput) -> InstallProgress:
    """Where this attempt starts: the last heartbeat of a previous attempt, if any."""
    info = activity.info()
    op_id = input.request.op_id
    fresh = InstallProgress(op_id=op_id, node_id=input.node_id, attempt=info.attempt)
    previous = progress_from_details(info.heartbeat_details) if info.attempt > 1 else None
    if previous is None:
        return fresh
    if previous.op_id != op_id:
        return fresh
    activity.logger.info(
        "resuming op %s after attempt %d: %d progress events seen so far",
        op_id,
        previous.attempt,
        previous.event_count,
    )
    return previous.model_copy(update={"attempt": info.attempt})


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` pass, whichever comes first.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` can swallow the
    cancellation that ends the pump when the event is set at the same moment, and the
    activity then waits for the pump forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _request_is_out(input: InstallActivityInput) -> bool:
    """Whether this op's request was already sent: by the fast path, or by the attempt this
    one retries (a worker that died or hung). Either way the node may be working on it, so
    this attempt only listens on the op's reply subject; the workflow probes before anything
    is sent again. (An attempt that died before it sent anything costs a timeout and a probe.)
    """
    if not input.request.op_id:  # a silent install's reply has no subject to follow
        return False
    return input.request_sent or activity.info().attempt > 1


async def stop_following(pump: asyncio.Task[None], subscription: Subscription | None) -> None:
    """Stop forwarding a node's progress: the heartbeat pump, then the subscription."""
    pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump
    if subscription is not None:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` if it still runs and wait for it; its outcome no longer matters."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


def workflow_asked_to_cancel() -> bool:
    """Whether this attempt's cancellation is the workflow's wish, so the node may stop the op.

    Temporal also cancels an attempt it has given up on: heartbeat timeout after a pause or a
    Temporal outage, not found (another attempt owns the op now), worker shutdown, activity
    paused or reset. The op is shared with the attempt that takes over, so telling the node to
    cancel it then would fail the install or restart its download from zero.
    """
    details = activity.cancellation_details()
    if details is not None and details.cancel_requested:
        return True
    reasons = (
        [] if details is None else [f.name for f in fields(details) if getattr(details, f.name)]
    )
    activity.logger.info(
        "attempt cancelled (%s), not by the workflow: the node keeps the op",
        ", ".join(reasons) or "no reason given",
    )
    return False


class InstallActivities:
    """Activities that send installs; holds the worker's shared NATS connection."""

    def __init__(
        self,
        nc: NATS,
        telemetry: Telemetry | None = None,
        replies: OpReplies | None = None,
        budget: ForwardBudget | None = None,
    ) -> None:
        self._nc = nc
        self._replies = replies or OpReplies(nc)
        self._budget = budget or ForwardBudget()
        telemetry = telemetry or Telemetry()
        self._tracer = telemetry.tracer()
        self._metrics = InstallMetrics(telemetry.meter())

    @activity.defn(name=INSTALL_ACTIVITY)
    async def install_backend(self, input: InstallActivityInput) -> InstallActivityResult:
        """Send one install and wait for the reply, forwarding progress as heartbeats.

        A timeout raises ``WorkerStillInstalling`` (the node keeps working after we stop
        waiting), no responders raises ``NodeUnreachable``, a ``success:false`` reply is
        classified by the node's error text. The workflow decides what happens next.
        Without progress the node is checked on every liveness interval: a node agent that
        restarted and forgot the op raises ``WorkerStillInstalling``, a node nothing answers
        for any more ``NodeUnreachable``, both long before the timeout.

        The request is a span whose context travels to the node in the NATS headers, every
        log line names the workflow, op, node and slot, and the outcome is counted.
        """
        request = input.request
        slot = process_key(request.backend, request.model_id, request.replica_index)
        started = time.monotonic()
        with (
            bind_fields(
                workflow_id=activity.info().workflow_id or "",
                op_id=request.op_id,
                node=input.node_id,
                slot=slot,
                backend=request.backend,
            ),
            request_span(self._tracer, "backend.install", subjects.install(input.node_id)) as call,
        ):
            try:
                result = await self._install(input, slot, call.headers)
                call.outcome = "succeeded"
            except BaseException as err:
                call.outcome = outcome_of(err)
                raise
            finally:
                elapsed = time.monotonic() - started
                self._metrics.install_finished(call.outcome, request.backend, elapsed)
                log.info("install request %s after %.3fs", call.outcome, elapsed)
        return result

    async def _install(
        self, input: InstallActivityInput, slot: str, headers: dict[str, str] | None
    ) -> InstallActivityResult:
        """The request itself; ``headers`` carry trace context and the workflow id."""
        request = input.request
        node_id = input.node_id
        op_id = request.op_id
        install_subject = subjects.install(node_id)
        tracker = ProgressTracker(_resume_point(input))
        started = time.monotonic()

        # The reply subscription first: a request already out (the fast path's, or a previous
        # attempt's) is answered there, and is never sent again to be heard.
        waiter = await self._replies.open(node_id, op_id)
        subscription = await self._subscribe_progress(node_id, op_id, tracker)
        pump = asyncio.create_task(self._pump(tracker, input), name=f"progress-pump-{op_id}")
        reply_task: asyncio.Task[Msg] | None = None
        try:
            if _request_is_out(input):
                log.info("following op %s: its request is out, waiting for the reply", op_id)
            else:
                await self._publish_request(
                    install_subject, request.to_wire(), waiter.subject, headers
                )
            reply_task = asyncio.create_task(
                waiter.wait(input.install_timeout_seconds), name=f"install-reply-{op_id}"
            )
            msg = await self._await_reply(reply_task, input, tracker, slot)
        except NoRespondersError as err:
            raise node_failure(
                NODE_UNREACHABLE,
                f"node {node_id} is unreachable: nothing answers on {install_subject} "
                "(node down or not connected to NATS)",
            ) from err
        except NatsTimeoutError as err:
            raise node_failure(
                WORKER_STILL_INSTALLING,
                f"node {node_id} did not reply within {input.install_timeout_seconds:g}s; "
                f"the install of {request.backend} for slot {slot} may still be running "
                f"({tracker.event_count} progress events so far)",
                tracker.snapshot(),
            ) from err
        except asyncio.CancelledError:
            if op_id and workflow_asked_to_cancel():
                await self._ask_node_to_cancel(node_id, op_id)
            raise
        finally:
            tracker.stopped = True
            if reply_task is not None:
                await _stop(reply_task)
            await waiter.close()
            await stop_following(pump, subscription)

        try:
            reply = BackendInstallReply.model_validate_json(msg.data)
        except ValidationError as err:
            raise node_failure(  # the bytes are the node's, never echoed
                INSTALL_FAILED,
                f"node {node_id} sent an unreadable install reply ({len(msg.data)} bytes)",
            ) from err
        if not reply.success:
            error_type = classify_node_error(reply.error)
            raise node_failure(
                error_type,
                f"node {node_id} failed to install {request.backend} for slot {slot}: "
                f"{reply.error or 'no error text'}",
                tracker.snapshot(),
            )
        return InstallActivityResult(
            node_id=node_id,
            op_id=op_id,
            address=reply.address,
            attempt=activity.info().attempt,
            progress=tracker.snapshot(),
            elapsed_seconds=time.monotonic() - started,
        )

    async def _publish_request(
        self, subject: str, body: bytes, reply: str, headers: dict[str, str] | None
    ) -> None:
        """Publish the request; a connection that cannot take it is the node's unreachability
        as far as the workflow is concerned (it backs off and probes, nothing was sent)."""
        try:
            await self._nc.publish(subject, body, reply=reply, headers=headers)
        except Exception as err:
            raise node_failure(
                NODE_UNREACHABLE,
                f"could not send {subject}: the worker's NATS connection refused it "
                f"({type(err).__name__}); nothing was sent",
            ) from err

    async def _await_reply(
        self,
        reply: asyncio.Task[Msg],
        input: InstallActivityInput,
        tracker: ProgressTracker,
        slot: str,
    ) -> Msg:
        """The node's reply, unless the node restarted or went silent while we waited.

        While no progress event arrives, the node is asked every liveness interval whether it
        still has the op (see ``activities/liveness.py``). A node that forgot the op raises
        ``WorkerStillInstalling`` and one that nothing answers for raises ``NodeUnreachable``
        at once, so the workflow probes (or backs off) instead of waiting out the timeout.
        """
        interval = input.liveness_check_interval_seconds
        if not interval > 0:  # off (the workflow refuses anything else out of bounds)
            return await reply
        low, high = LIVENESS_INTERVAL_RANGE
        interval = min(max(interval, low), high)
        request = input.request
        watch = NodeWatch(
            self._nc,
            input.node_id,
            InstallStatusRequest(
                op_id=request.op_id,
                backend=request.backend,
                model_id=request.model_id,
                replica_index=request.replica_index,
            ),
            timeout=min(ANSWER_TIMEOUT, interval),
        )
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
            check = asyncio.create_task(watch.check(), name=f"liveness-{request.op_id}")
            try:
                await asyncio.wait({reply, check}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _stop(check)
            if reply.done():
                return reply.result()
            finding = check.result()
            if finding.liveness is Liveness.ALIVE:
                wait = interval
            elif finding.liveness is Liveness.SUSPECT:
                wait = min(CONFIRM_DELAY, interval)
            else:
                raise self._node_gone(input, finding, tracker, slot)

    def _node_gone(
        self,
        input: InstallActivityInput,
        finding: Finding,
        tracker: ProgressTracker,
        slot: str,
    ) -> ApplicationError:
        """The failure that ends the wait: the workflow probes or backs off next."""
        node_id = input.node_id
        request = input.request
        log.warning("stopped waiting for node %s: %s", node_id, finding.reason)
        if finding.liveness is Liveness.UNREACHABLE:
            return node_failure(
                NODE_UNREACHABLE,
                f"node {node_id} became unreachable during the install of {request.backend} "
                f"for slot {slot}: {finding.reason}",
                tracker.snapshot(),
            )
        return node_failure(
            WORKER_STILL_INSTALLING,
            f"node {node_id} no longer has op {request.op_id} for slot {slot} in flight: "
            f"{finding.reason}; the workflow probes before sending the install again "
            f"({tracker.event_count} progress events so far)",
            tracker.snapshot(),
        )

    async def _subscribe_progress(
        self, node_id: str, op_id: str, tracker: ProgressTracker
    ) -> Subscription | None:
        """Subscribe and confirm with the server before the request, or events are lost."""
        if not op_id:
            return None
        subject = subjects.progress(node_id, op_id)
        try:
            before = self._nc.last_error
            subscription = await self._nc.subscribe(subject, cb=tracker.on_message)
            await self._nc.flush(timeout=SUBSCRIBE_FLUSH_TIMEOUT)
            denied = await permissions_violation(self._nc, before, flushes=1)
        except Exception as err:  # subscription problems must not fail the install
            activity.logger.warning("no progress for op %s: subscribing failed: %s", op_id, err)
            return None
        if denied is not None and f'"{subject}"' in denied:
            activity.logger.warning(
                "no progress for op %s: NATS refused the subscription to %s (permissions "
                "violation); the worker's NATS user must be allowed to subscribe "
                "nodes.*.backend.install.*.progress",
                op_id,
                subject,
            )
        return subscription

    async def _pump(self, tracker: ProgressTracker, input: InstallActivityInput) -> None:
        """Heartbeat and report the newest progress, within the worker's forwarding budget.

        A heartbeat goes out every interval of the budget (``activities/budget.py``), with or
        without news: it carries the newest event, and its answer is how a cancel reaches the
        activity. A new phase is forwarded at once. A report (a signal) goes out when its own,
        longer interval has passed or the phase changed, always with a heartbeat of the same
        progress, so the UI's pending activity is never behind the current details.
        """
        requested = input.progress_report_interval_seconds
        timeout = activity.info().heartbeat_timeout
        longest = (
            timeout.total_seconds() * HEARTBEAT_SHARE
            if timeout
            else input.heartbeat_interval_seconds
        )
        started = time.monotonic()
        last_report = started
        reported_count = tracker.event_count
        forwarded_count = tracker.event_count
        report_task: asyncio.Task[None] | None = None
        with self._budget.following():
            try:
                while not tracker.stopped:
                    await _wait(tracker.new_phase, self._budget.heartbeat_interval(longest))
                    new_phase = tracker.new_phase.is_set()
                    tracker.new_phase.clear()
                    progress = tracker.snapshot()
                    activity.heartbeat(progress)
                    self._budget.heartbeats += 1
                    if progress.event_count > forwarded_count:
                        self._metrics.progress_events.add(progress.event_count - forwarded_count)
                        forwarded_count = progress.event_count
                    now = time.monotonic()
                    due = now - last_report >= self._budget.report_interval(
                        requested, now - started
                    )
                    if (
                        requested > 0
                        and progress.event_count != reported_count
                        and (due or new_phase)
                        and (report_task is None or report_task.done())
                    ):
                        report_task = asyncio.create_task(self._report(progress))
                        last_report, reported_count = now, progress.event_count
                        self._budget.reports += 1
            finally:
                if report_task is not None and not report_task.done():
                    report_task.cancel()

    async def _report(self, progress: InstallProgress) -> None:
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

    async def _ask_node_to_cancel(self, node_id: str, op_id: str) -> None:
        """Best effort: node agents stop the download; stock workers ignore the subject."""
        with contextlib.suppress(Exception):
            await self._nc.publish(subjects.cancel(node_id, op_id), b"{}")
            await self._nc.flush(timeout=2)
