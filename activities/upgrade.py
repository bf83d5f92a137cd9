"""Activities of ``UpgradeBackendWorkflow``: the upgrade request, inspection, health, clean-up.

The upgrade request follows its op's progress exactly as an install does
(``activities/following.py``): an upgrade publishes on the install progress subject
(reference §3.3), so only the request and its reply differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.budget import ForwardBudget
from activities.following import Followers, NodeGone, ProgressTracker, stop_task, wait_watching
from activities.install import workflow_asked_to_cancel
from activities.liveness import Finding, Liveness
from durable_installs.contracts.failures import (
    INSTALL_FAILED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
    classify_node_error,
    node_failure,
)
from durable_installs.contracts.names import (
    CHECK_HEALTH_ACTIVITY,
    DROP_PREVIOUS_ACTIVITY,
    INSPECT_BACKEND_ACTIVITY,
    UPGRADE_ACTIVITY,
)
from durable_installs.contracts.upgrade import (
    ROLLBACK_UNAVAILABLE,
    BackendVersion,
    DropPreviousInput,
    HealthCheckInput,
    HealthCheckResult,
    InspectBackendInput,
    InspectBackendResult,
    SlotRef,
    UpgradeActivityInput,
    UpgradeActivityResult,
)
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendInstallRequest,
    BackendListReply,
    BackendPreviousDropRequest,
    BackendRollbackRequest,
    BackendUpgradeReply,
    InstallStatusReply,
    InstallStatusRequest,
    ModelsRunningReply,
    NodeSlotState,
)
from durable_installs.telemetry import InstallMetrics, Telemetry

MAX_INSPECTED_SLOTS = 1_000
"""Running slots asked about one by one; a node's reply beyond this is cut (never trusted)."""

grpc_aio: Any = importlib.import_module("grpc.aio")
HEALTH = "/backend.Backend/Health"


class UpgradeActivities:
    """Upgrade, inspect and clean-up activities on the worker's shared NATS connection."""

    def __init__(self, nc: NATS, followers: Followers | None = None) -> None:
        self._nc = nc
        self._followers = followers or Followers(
            nc, ForwardBudget(), InstallMetrics(Telemetry().meter())
        )

    @activity.defn(name=UPGRADE_ACTIVITY)
    async def upgrade_backend(self, input: UpgradeActivityInput) -> UpgradeActivityResult:
        """Send one ``backend.upgrade`` (or ``backend.rollback``) and wait for the reply.

        A timeout raises ``WorkerStillInstalling`` (the node keeps pulling; the workflow
        probes before sending again), no responders falls back to ``backend.install`` with
        ``force:true`` and the same op id (workers older than the upgrade subject, reference
        §6), and a ``success:false`` reply is classified by the node's text like an install's.
        """
        op_id = input.request.op_id
        following = self._followers.follow(
            input.node_id,
            op_id,
            idle_heartbeat=input.heartbeat_interval_seconds,
            report_every=input.progress_report_interval_seconds,
        )
        try:
            async with following as tracker:
                return await self._send(input, tracker)
        except asyncio.CancelledError:
            if op_id and workflow_asked_to_cancel():
                with contextlib.suppress(Exception):
                    await self._nc.publish(subjects.cancel(input.node_id, op_id), b"{}")
            raise

    async def _send(
        self, input: UpgradeActivityInput, tracker: ProgressTracker
    ) -> UpgradeActivityResult:
        node_id, request = input.node_id, input.request
        what = "roll back" if input.rollback else "upgrade"
        subject = subjects.upgrade(node_id)
        rolled_back_by_uri = False
        try:
            if input.rollback:
                subject = subjects.rollback(node_id)
                body = BackendRollbackRequest(backend=request.backend).to_wire()
                try:
                    msg = await self._request(subject, body, input, tracker)
                    return self._result(input, msg.data, False, tracker, fallback=False)
                except NoRespondersError:
                    # A stock worker keeps no previous version: upgrade it to the uri the
                    # previous version came from, when its listing recorded one.
                    if not request.uri:
                        raise node_failure(
                            ROLLBACK_UNAVAILABLE,
                            f"node {node_id} keeps no previous version of {request.backend} "
                            f"(no responder on {subject}) and no previous uri is recorded",
                        ) from None
                    rolled_back_by_uri = True
                    subject = subjects.upgrade(node_id)
            try:
                msg = await self._request(subject, request.to_wire(), input, tracker)
                return self._result(input, msg.data, False, tracker, fallback=rolled_back_by_uri)
            except NoRespondersError:
                forced = BackendInstallRequest(
                    backend=request.backend,
                    backend_galleries=request.backend_galleries,
                    uri=request.uri,
                    name=request.name,
                    alias=request.alias,
                    replica_index=request.replica_index,
                    force=True,
                    op_id=request.op_id,
                )
                activity.logger.info(
                    "node %s has no backend.upgrade responder; sending backend.install with "
                    "force:true and the same op id",
                    node_id,
                )
                subject = subjects.install(node_id)
                msg = await self._request(subject, forced.to_wire(), input, tracker)
                return self._result(input, msg.data, True, tracker, fallback=True)
        except NoRespondersError as err:
            raise node_failure(
                NODE_UNREACHABLE,
                f"node {node_id} is unreachable: nothing answers on {subject} "
                "(node down or not connected to NATS)",
            ) from err
        except NatsTimeoutError as err:
            raise node_failure(
                WORKER_STILL_INSTALLING,
                f"node {node_id} did not reply within {input.timeout_seconds:g}s; the {what} "
                f"of {request.backend} may still be running ({tracker.event_count} progress "
                "events so far)",
                tracker.snapshot(),
            ) from err

    async def _request(
        self, subject: str, body: bytes, input: UpgradeActivityInput, tracker: ProgressTracker
    ) -> Msg:
        """The reply, watched like an install's: an agent that restarted or went silent while
        we waited ends the wait early (``activities/liveness.py``), long before the timeout."""
        request = input.request
        reply = asyncio.create_task(
            self._nc.request(subject, body, timeout=input.timeout_seconds),
            name=f"upgrade-request-{request.op_id}",
        )
        status = InstallStatusRequest(op_id=request.op_id, backend=request.backend)
        try:
            return await wait_watching(
                self._nc,
                reply,
                input.node_id,
                status,
                input.liveness_check_interval_seconds,
                tracker,
            )
        except NodeGone as gone:
            raise _node_gone(input, gone.finding, tracker) from gone
        finally:
            await stop_task(reply)

    def _result(
        self,
        input: UpgradeActivityInput,
        data: bytes,
        install_reply: bool,
        tracker: ProgressTracker,
        *,
        fallback: bool,
    ) -> UpgradeActivityResult:
        node_id, backend = input.node_id, input.request.backend
        what = "roll back" if input.rollback else "upgrade"
        try:
            if install_reply:
                install = BackendInstallReply.model_validate_json(data)
                reply = BackendUpgradeReply(success=install.success, error=install.error)
            else:
                reply = BackendUpgradeReply.model_validate_json(data)
        except ValidationError as err:
            raise node_failure(
                INSTALL_FAILED, f"node {node_id} sent an unreadable {what} reply"
            ) from err
        if not reply.success:
            raise node_failure(
                classify_node_error(reply.error),
                f"node {node_id} failed to {what} {backend}: {reply.error or 'no error text'}",
                list(reply.stopped_process_keys or []),
            )
        return UpgradeActivityResult(
            stopped_process_keys=list(reply.stopped_process_keys or [])[:MAX_INSPECTED_SLOTS],
            reports_stopped_processes=reply.reports_stopped_processes,
            used_install_fallback=fallback,
            progress=tracker.snapshot(),
        )

    @activity.defn(name=INSPECT_BACKEND_ACTIVITY)
    async def inspect_backend(self, input: InspectBackendInput) -> InspectBackendResult:
        """The node's ``backend.list`` row of the backend and the slots running it.

        The node agent's status extension says, slot by slot, whether a running process runs
        this backend; a stock worker does not answer it, and then ``slots`` stays empty
        (``slots_known`` false) and the upgrade relies on the keys its reply says it stopped.
        """
        node_id, timeout = input.node_id, input.timeout_seconds
        try:
            listing_msg = await self._nc.request(
                subjects.backend_list(node_id), b"{}", timeout=timeout
            )
            running_msg = await self._nc.request(
                subjects.models_running(node_id), b"{}", timeout=timeout
            )
        except (NoRespondersError, NatsTimeoutError):
            return InspectBackendResult(reachable=False, version=BackendVersion())
        try:
            listing = BackendListReply.model_validate_json(listing_msg.data)
            running = ModelsRunningReply.model_validate_json(running_msg.data)
        except ValidationError:
            return InspectBackendResult(reachable=False, version=BackendVersion())
        row = next((b for b in listing.backends or [] if b.name == input.backend), None)
        running_slots = [
            SlotRef(model_id=m.model_id, replica_index=m.replica_index)
            for m in (running.models or [])[:MAX_INSPECTED_SLOTS]
        ]
        result = InspectBackendResult(
            reachable=True, version=BackendVersion.of(row), running=running_slots
        )
        in_flight = await self._status(
            node_id, InstallStatusRequest(op_id=input.op_id, backend=input.backend), timeout
        )
        if in_flight is None:
            return result
        slots: list[SlotRef] = []
        for model in (running.models or [])[:MAX_INSPECTED_SLOTS]:
            status = await self._status(
                node_id,
                InstallStatusRequest(
                    backend=input.backend,
                    model_id=model.model_id if model.model_id != input.backend else "",
                    replica_index=model.replica_index,
                ),
                timeout,
            )
            if status is not None and status.state is NodeSlotState.RUNNING:
                slots.append(
                    SlotRef.from_process_key(
                        f"{model.model_id}#{model.replica_index}", input.backend
                    )
                    or SlotRef()
                )
        return result.model_copy(
            update={
                "slots": slots,
                "slots_known": True,
                "upgrade_in_flight": bool(input.op_id)
                and in_flight.state is NodeSlotState.IN_FLIGHT,
            }
        )

    async def _status(
        self, node_id: str, request: InstallStatusRequest, wait: float
    ) -> InstallStatusReply | None:
        """The status extension's answer, or None from a stock worker (or a garbled reply)."""
        try:
            msg = await self._nc.request(
                subjects.install_status(node_id), request.to_wire(), timeout=wait
            )
            return InstallStatusReply.model_validate_json(msg.data)
        except (NoRespondersError, NatsTimeoutError, ValidationError):
            return None

    @activity.defn(name=DROP_PREVIOUS_ACTIVITY)
    async def drop_previous_version(self, input: DropPreviousInput) -> bool:
        """Best effort: a stock worker keeps nothing and has no responder; that is fine."""
        body = BackendPreviousDropRequest(backend=input.backend).to_wire()
        try:
            await self._nc.request(subjects.previous_drop(input.node_id), body, timeout=10)
        except (NoRespondersError, NatsTimeoutError):
            return False
        return True


@activity.defn(name=CHECK_HEALTH_ACTIVITY)
async def check_slot_health(input: HealthCheckInput) -> HealthCheckResult:
    """gRPC ``Health`` of each address, answered ``OK`` or not; never raises for a node."""
    results = await asyncio.gather(
        *(_healthy(address, input.call_timeout_seconds) for address in input.addresses)
    )
    return HealthCheckResult(healthy=dict(zip(input.addresses, results, strict=True)))


async def _healthy(address: str, call_timeout: float) -> bool:
    """One ``Health`` call on a fresh channel (the empty request, reply field 1 = ``OK``)."""
    try:
        async with grpc_aio.insecure_channel(address) as channel:
            stub = channel.unary_unary(
                HEALTH, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            reply: bytes = await stub(b"", timeout=call_timeout)
    except Exception:  # any failure to answer is "not healthy"; the workflow reports it
        return False
    return reply[:4] == b"\x0a\x02OK"


def _node_gone(
    input: UpgradeActivityInput, finding: Finding, tracker: ProgressTracker
) -> ApplicationError:
    """The failure that ends an upgrade's wait: the workflow inspects or backs off next."""
    node_id, backend, op_id = input.node_id, input.request.backend, input.request.op_id
    if finding.liveness is Liveness.UNREACHABLE:
        return node_failure(
            NODE_UNREACHABLE,
            f"node {node_id} became unreachable during the upgrade of {backend}: {finding.reason}",
            tracker.snapshot(),
        )
    return node_failure(
        WORKER_STILL_INSTALLING,
        f"node {node_id} no longer has op {op_id} for {backend} in flight: {finding.reason}; "
        f"the workflow inspects before sending the upgrade again ({tracker.event_count} "
        "progress events so far)",
        tracker.snapshot(),
    )
