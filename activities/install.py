"""The install activity: one ``backend.install`` request, its progress followed.

Following the op's progress (heartbeats, reports, the liveness checks while it waits) is
``activities/following.py``; the reply subject it listens on is ``activities/replies.py``.
This module is the request: send it (unless the fast path or a previous attempt already
did), wait for the node's one reply, and turn the outcome into a result or a typed failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import fields

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.budget import ForwardBudget
from activities.following import Followers, NodeGone, ProgressTracker, stop_task, wait_watching
from activities.liveness import Finding, Liveness
from activities.replies import OpReplies
from durable_installs.contracts.activities import InstallActivityInput, InstallActivityResult
from durable_installs.contracts.failures import (
    INSTALL_FAILED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
    classify_node_error,
    node_failure,
)
from durable_installs.contracts.names import INSTALL_ACTIVITY
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendInstallReply,
    InstallStatusRequest,
    process_key,
)
from durable_installs.telemetry import InstallMetrics, Telemetry, bind_fields, request_span
from durable_installs.telemetry.spans import outcome_of

log = logging.getLogger(__name__)


def _request_is_out(input: InstallActivityInput) -> bool:
    """Whether this op's request was already sent: by the fast path, or by the attempt this
    one retries (a worker that died or hung). Either way the node may be working on it, so
    this attempt only listens on the op's reply subject; the workflow probes before anything
    is sent again. (An attempt that died before it sent anything costs a timeout and a probe.)
    """
    if not input.request.op_id:  # a silent install's reply has no subject to follow
        return False
    return input.request_sent or activity.info().attempt > 1


def _node_gone(
    input: InstallActivityInput, finding: Finding, tracker: ProgressTracker, slot: str
) -> ApplicationError:
    """The failure that ends the wait: the workflow probes or backs off next."""
    node_id = input.node_id
    request = input.request
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
        followers: Followers | None = None,
    ) -> None:
        self._nc = nc
        self._replies = replies or OpReplies(nc)
        telemetry = telemetry or Telemetry()
        self._tracer = telemetry.tracer()
        self._metrics = InstallMetrics(telemetry.meter())
        self._followers = followers or Followers(nc, ForwardBudget(), self._metrics)

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
        started = time.monotonic()
        status = InstallStatusRequest(
            op_id=op_id,
            backend=request.backend,
            model_id=request.model_id,
            replica_index=request.replica_index,
        )
        following = self._followers.follow(
            node_id,
            op_id,
            idle_heartbeat=input.heartbeat_interval_seconds,
            report_every=input.progress_report_interval_seconds,
        )
        # The reply subscription first: a request already out (the fast path's, or a previous
        # attempt's) is answered there, and is never sent again to be heard.
        waiter = await self._replies.open(node_id, op_id)
        reply_task: asyncio.Task[Msg] | None = None
        try:
            async with following as tracker:
                if _request_is_out(input):
                    log.info("following op %s: its request is out, waiting for the reply", op_id)
                else:
                    await self._publish_request(
                        install_subject, request.to_wire(), waiter.subject, headers
                    )
                reply_task = asyncio.create_task(
                    waiter.wait(input.install_timeout_seconds), name=f"install-reply-{op_id}"
                )
                msg = await wait_watching(
                    self._nc,
                    reply_task,
                    node_id,
                    status,
                    input.liveness_check_interval_seconds,
                    tracker,
                )
        except NodeGone as gone:
            raise _node_gone(input, gone.finding, following.tracker, slot) from gone
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
                f"({following.tracker.event_count} progress events so far)",
                following.tracker.snapshot(),
            ) from err
        except asyncio.CancelledError:
            if op_id and workflow_asked_to_cancel():
                await self._ask_node_to_cancel(node_id, op_id)
            raise
        finally:
            if reply_task is not None:
                await stop_task(reply_task)
            await waiter.close()
        tracker = following.tracker

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

    async def _ask_node_to_cancel(self, node_id: str, op_id: str) -> None:
        """Best effort: node agents stop the download; stock workers ignore the subject."""
        with contextlib.suppress(Exception):
            await self._nc.publish(subjects.cancel(node_id, op_id), b"{}")
            await self._nc.flush(timeout=2)
