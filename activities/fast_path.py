"""The warm path: one ``backend.install`` with a short bound, run as a local activity.

Almost every install finds the backend already there, and the node answers in a millisecond.
Run inside the install's first workflow task, this request lets the workflow complete in that
one task: no activity task, no heartbeats, no second workflow task. It deliberately does not
subscribe to progress: an install that takes longer than the bound is the regular install
activity's job. That activity does not ask again: the request names the op's reply subject
(``activities/replies.py``), this activity leaves its subscription there with the worker when
the bound passes, and the install activity takes it over and waits for the node's one reply.

Never raises for "no immediate answer" (timeout, no responders, a broken connection): the
result says so, and whether the request went out, and the workflow falls through. A
``success:false`` reply raises exactly the typed failure the install activity raises for it,
so every failure type is what it was.
"""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError
from temporalio import activity

from activities.replies import OpReplies, OpReply
from durable_installs.contracts.activities import FastInstallResult, InstallActivityInput
from durable_installs.contracts.failures import INSTALL_FAILED, classify_node_error, node_failure
from durable_installs.contracts.names import FAST_INSTALL_ACTIVITY
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallReply, process_key
from durable_installs.telemetry import InstallMetrics, Telemetry, bind_fields, request_span
from durable_installs.telemetry.spans import Traced, outcome_of

BUSY = 20
"""Fast-path requests waiting at once past which new ones wait :data:`BUSY_BOUND` at most."""

BUSY_BOUND = 0.1
"""Long enough for a node that has the slot running (milliseconds), short enough that a burst
of cold installs does not hold the workflow-task slots."""

log = logging.getLogger(__name__)


class FastPathActivities:
    """The fast path's local activity; holds the worker's shared NATS connection."""

    def __init__(
        self, nc: NATS, telemetry: Telemetry | None = None, replies: OpReplies | None = None
    ) -> None:
        self._nc = nc
        self._replies = replies or OpReplies(nc)
        telemetry = telemetry or Telemetry()
        self._tracer = telemetry.tracer()
        self._metrics = InstallMetrics(telemetry.meter())
        self.waiting = 0
        """Fast-path requests waiting for their node's answer right now."""

    def bound(self, requested: float) -> float:
        """How long this request waits: the bound asked for, unless many already wait.

        A node that has the slot running answers in milliseconds, so fast paths that wait
        are cold installs, and each holds a workflow-task slot for its whole bound: a burst of
        thousands of cold installs then moves at the slots' pace (100 per second with the
        SDK's 100 slots and the 1 s bound). Past :data:`BUSY` waiting, a request waits
        :data:`BUSY_BOUND` at most: warm answers still come in time, cold installs hand their
        request to the install activity at once (it follows the same request, nothing is sent
        twice). The outcome is recorded in the history, so replay is unaffected.
        """
        return requested if self.waiting < BUSY else min(requested, BUSY_BOUND)

    @activity.defn(name=FAST_INSTALL_ACTIVITY)
    async def install_backend_fast(self, input: InstallActivityInput) -> FastInstallResult:
        """Ask the node once, waiting ``install_timeout_seconds`` (the short bound) at most."""
        request = input.request
        node_id = input.node_id
        slot = process_key(request.backend, request.model_id, request.replica_index)
        subject = subjects.install(node_id)
        started = time.monotonic()
        with (
            bind_fields(
                workflow_id=activity.info().workflow_id or "",
                op_id=request.op_id,
                node=node_id,
                slot=slot,
                backend=request.backend,
            ),
            request_span(self._tracer, "backend.install", subject) as call,
        ):
            reply: OpReply | None = None
            try:
                reply = await self._replies.open(node_id, request.op_id)
                await self._nc.publish(
                    subject, request.to_wire(), reply=reply.subject, headers=call.headers
                )
            except Exception as err:  # a closed or draining connection, among others
                if reply is not None:
                    await reply.close()
                reason = f"request failed ({type(err).__name__})"
                call.outcome = f"fast path: {reason}"
                log.warning("fast path not taken for %s: %s", slot, reason)
                return FastInstallResult(
                    node_id=node_id, op_id=request.op_id, answered=False, reason=reason
                )
            bound = self.bound(input.install_timeout_seconds)
            self.waiting += 1
            try:
                msg = await reply.wait(bound)
            except NoRespondersError:
                await reply.close()
                return _not_answered(call, input, sent=False, started=started)
            except BaseException as err:
                # The node may be working on the op: whoever follows it on this worker (the
                # install activity) listens on from here instead of asking again.
                self._replies.keep(reply)
                if not isinstance(err, NatsTimeoutError):
                    raise
                return _not_answered(call, input, sent=True, started=started)
            finally:
                self.waiting -= 1
            await reply.close()
            elapsed = time.monotonic() - started
            try:
                address = _address_from_reply(msg.data, input, slot)
            except BaseException as err:
                call.outcome = outcome_of(err)
                self._metrics.install_finished(call.outcome, request.backend, elapsed)
                raise
            call.outcome = "succeeded"
            self._metrics.install_finished(call.outcome, request.backend, elapsed)
            return FastInstallResult(
                node_id=node_id,
                op_id=request.op_id,
                answered=True,
                address=address,
                elapsed_seconds=elapsed,
            )


def _not_answered(
    call: Traced, input: InstallActivityInput, sent: bool, started: float
) -> FastInstallResult:
    """No immediate answer: why, and whether the node got the request."""
    reason = "no reply within the fast path's bound" if sent else "no responders"
    call.outcome = f"fast path: {reason}"
    log.info("fast path not taken: %s", reason)
    return FastInstallResult(
        node_id=input.node_id,
        op_id=input.request.op_id,
        answered=False,
        reason=reason,
        request_sent=sent,
        elapsed_seconds=time.monotonic() - started,
    )


def _address_from_reply(data: bytes, input: InstallActivityInput, slot: str) -> str:
    """The reply's address, or the install activity's own failure for the same reply."""
    node_id = input.node_id
    request = input.request
    try:
        reply = BackendInstallReply.model_validate_json(data)
    except ValidationError as err:
        raise node_failure(  # the bytes are the node's, never echoed
            INSTALL_FAILED, f"node {node_id} sent an unreadable install reply ({len(data)} bytes)"
        ) from err
    if not reply.success:
        raise node_failure(
            classify_node_error(reply.error),
            f"node {node_id} failed to install {request.backend} for slot {slot}: "
            f"{reply.error or 'no error text'}",
        )
    return reply.address
