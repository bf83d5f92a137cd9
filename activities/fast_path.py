"""The warm path: one ``backend.install`` with a short bound, run as a local activity.

Almost every install finds the backend already there, and the node answers in a millisecond.
Run inside the install's first workflow task, this request lets the workflow complete in that
one task: no activity task, no heartbeats, no second workflow task. It deliberately does not
subscribe to progress: an install that takes longer than the bound is the regular install
activity's job, which subscribes first and sends the same op id, so the node joins the install
this request started instead of starting a second one.

Never raises for "no immediate answer" (timeout, no responders, a broken connection): the
result says so and the workflow falls through. A ``success:false`` reply raises exactly the
typed failure the install activity raises for it, so every failure type is what it was.
"""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError
from temporalio import activity

from contracts.activities import FastInstallResult, InstallActivityInput
from contracts.failures import INSTALL_FAILED, classify_node_error, node_failure
from contracts.names import FAST_INSTALL_ACTIVITY
from protocol import subjects
from protocol.messages import BackendInstallReply, process_key
from telemetry import InstallMetrics, Telemetry, bind_fields, request_span
from telemetry.spans import outcome_of

log = logging.getLogger(__name__)


class FastPathActivities:
    """The fast path's local activity; holds the worker's shared NATS connection."""

    def __init__(self, nc: NATS, telemetry: Telemetry | None = None) -> None:
        self._nc = nc
        telemetry = telemetry or Telemetry()
        self._tracer = telemetry.tracer()
        self._metrics = InstallMetrics(telemetry.meter())

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
            try:
                msg = await self._nc.request(
                    subject,
                    request.to_wire(),
                    timeout=input.install_timeout_seconds,
                    headers=call.headers,
                )
            except (NatsTimeoutError, NoRespondersError, OSError) as err:
                reason = _reason(err)
                call.outcome = f"fast path: {reason}"
                log.info("fast path not taken for %s: %s", slot, reason)
                return FastInstallResult(
                    node_id=node_id,
                    op_id=request.op_id,
                    answered=False,
                    reason=reason,
                    elapsed_seconds=time.monotonic() - started,
                )
            except Exception as err:  # a closed or draining connection, among others
                reason = f"request failed ({type(err).__name__})"
                call.outcome = f"fast path: {reason}"
                log.warning("fast path not taken for %s: %s", slot, reason)
                return FastInstallResult(
                    node_id=node_id, op_id=request.op_id, answered=False, reason=reason
                )
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


def _reason(err: BaseException) -> str:
    if isinstance(err, NatsTimeoutError):
        return "no reply within the fast path's bound"
    if isinstance(err, NoRespondersError):
        return "no responders"
    return f"request failed ({type(err).__name__})"


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
