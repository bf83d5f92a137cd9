"""The probe activity: ask a node what it already has for a slot before any retry.

Prefers the node agent's ``backend.install.status`` extension, which knows about in-flight
ops exactly. Stock LocalAI workers do not answer it, so the fallback combines what they do
answer: ``models.running`` (slot running?), ``backend.list`` (backend on disk?) and a short
listen on the op's progress subject (events still arriving means an install is in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import Tracer
from pydantic import ValidationError
from temporalio import activity

from durable_installs.contracts.activities import ProbeInput, ProbeResult, ProbeState
from durable_installs.contracts.names import PROBE_ACTIVITY
from durable_installs.protocol import subjects
from durable_installs.protocol.gallery import (
    GalleryEntry,
    GalleryIndexError,
    candidate_concrete_names,
    parse_index,
    read_index_source,
)
from durable_installs.protocol.messages import (
    BackendInstallProgressEvent,
    BackendListReply,
    InstallStatusReply,
    InstallStatusRequest,
    ModelsRunningReply,
    NodeSlotState,
    RunningModelInfo,
    decode_galleries,
    process_key,
)
from durable_installs.protocol.wire import WireModel
from durable_installs.telemetry import InstallMetrics, Telemetry, bind_fields, request_span

GALLERY_FETCH_TIMEOUT = 5.0
"""The probe only needs gallery indexes to map meta/alias names; it must stay quick."""

_STATUS_TO_PROBE = {
    NodeSlotState.RUNNING: ProbeState.RUNNING,
    NodeSlotState.IN_FLIGHT: ProbeState.IN_FLIGHT,
    NodeSlotState.INSTALLED: ProbeState.INSTALLED,
    NodeSlotState.ABSENT: ProbeState.ABSENT,
}


_Reply = TypeVar("_Reply", bound=WireModel)


@dataclass(frozen=True)
class NodeAnswer(Generic[_Reply]):
    """A stock request's reply, or why there is none."""

    reply: _Reply | None
    note: str = ""
    offline: bool = False


class _Listener:
    """Counts progress events of one op during the probe's listen window."""

    def __init__(self) -> None:
        self.count = 0
        self.last: BackendInstallProgressEvent | None = None

    async def on_message(self, msg: Msg) -> None:
        try:
            self.last = BackendInstallProgressEvent.model_validate_json(msg.data)
        except ValidationError:
            return
        self.count += 1


class ProbeActivities:
    """The idempotency probe; holds the worker's shared NATS connection."""

    def __init__(self, nc: NATS, telemetry: Telemetry | None = None) -> None:
        self._nc = nc
        telemetry = telemetry or Telemetry()
        self._tracer = telemetry.tracer()
        self._metrics = InstallMetrics(telemetry.meter())

    @activity.defn(name=PROBE_ACTIVITY)
    async def probe_slot(self, input: ProbeInput) -> ProbeResult:
        """What the node has for the slot: running, in flight, installed, absent or unknown.

        Each NATS request is a span carrying its context to the node; the result is counted.
        """
        with bind_fields(
            workflow_id=activity.info().workflow_id or "",
            op_id=input.op_id,
            node=input.node_id,
            slot=process_key(input.backend, input.model_id, input.replica_index),
            backend=input.backend,
        ):
            result = await self._ask_status(input)
            if result is None:
                result = await self._probe_stock(input)
        self._metrics.probes.add(1, {"result": result.state.value, "source": result.source})
        return result

    async def _ask_status(self, input: ProbeInput) -> ProbeResult | None:
        """The node agent's answer, or None when the node does not speak the extension."""
        request = InstallStatusRequest(
            op_id=input.op_id,
            backend=input.backend,
            model_id=input.model_id,
            replica_index=input.replica_index,
        )
        subject = subjects.install_status(input.node_id)
        try:
            with request_span(self._tracer, "backend.install.status", subject) as call:
                msg = await self._nc.request(
                    subject,
                    request.to_wire(),
                    timeout=input.status_timeout_seconds,
                    headers=call.headers,
                )
                reply = InstallStatusReply.model_validate_json(msg.data)
                call.outcome = reply.state.value
        except (NoRespondersError, NatsTimeoutError, ValidationError):
            return None
        progress = reply.progress
        return ProbeResult(
            state=_STATUS_TO_PROBE[reply.state],
            source="status",
            address=reply.address,
            node_answered=True,
            events_seen=1 if progress is not None else 0,
            last_event=progress,
            notes=[reply.error] if reply.error else [],
            probed_at=datetime.now(UTC),
        )

    async def _probe_stock(self, input: ProbeInput) -> ProbeResult:
        listener = _Listener()
        subscription = None
        if input.op_id:
            with contextlib.suppress(Exception):
                subscription = await self._nc.subscribe(
                    subjects.progress(input.node_id, input.op_id), cb=listener.on_message
                )
        try:
            running, listing, _ = await asyncio.gather(
                self._ask(
                    "models.running",
                    subjects.models_running(input.node_id),
                    ModelsRunningReply,
                    input.running_timeout_seconds,
                ),
                self._ask(
                    "backend.list",
                    subjects.backend_list(input.node_id),
                    BackendListReply,
                    input.list_timeout_seconds,
                ),
                asyncio.sleep(input.listen_seconds if input.op_id else 0),
            )
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

        notes = [answer.note for answer in (running, listing) if answer.note]
        running_reply, listing_reply = running.reply, listing.reply
        slot = _find_slot(running_reply, input) if running_reply is not None else None
        installed = ""
        if listing_reply is not None:
            installed = await _installed_name(listing_reply, input, notes)

        if slot is not None:
            state = ProbeState.RUNNING
        elif listener.count:
            state = ProbeState.IN_FLIGHT
        elif running_reply is None:
            state = ProbeState.UNKNOWN
        elif installed:
            state = ProbeState.INSTALLED
        else:
            state = ProbeState.ABSENT
            if listing_reply is None:
                notes.append("backend.list did not answer; absence not confirmed")
        return ProbeResult(
            state=state,
            source="stock",
            address=slot.address if slot else "",
            node_answered=running_reply is not None or listing_reply is not None,
            node_offline=running.offline,
            running_slot=slot,
            installed_backend=installed,
            events_seen=listener.count,
            last_event=listener.last,
            notes=notes,
            probed_at=datetime.now(UTC),
        )

    async def _ask(
        self, what: str, subject: str, reply_type: type[_Reply], wait: float
    ) -> NodeAnswer[_Reply]:
        return await ask_node(self._nc, self._tracer, what, subject, reply_type, wait)


async def ask_node(
    nc: NATS,
    tracer: Tracer,
    what: str,
    subject: str,
    reply_type: type[_Reply],
    wait: float,
    body: bytes = b"{}",
) -> NodeAnswer[_Reply]:
    """One request to a node; silence is recorded, never turned into "absent".

    Shared by the probe and the delete/drift activities. The reply is validated against
    ``reply_type``; an unreadable one is a note that never echoes the node's bytes.
    """
    try:
        with request_span(tracer, what, subject) as call:
            msg = await nc.request(subject, body, timeout=wait, headers=call.headers)
            return NodeAnswer(reply_type.model_validate_json(msg.data))
    except NoRespondersError:
        return NodeAnswer(None, f"{what}: no responders (node offline)", offline=True)
    except NatsTimeoutError:
        return NodeAnswer(None, f"{what}: no answer within {wait:g}s")
    except ValidationError:
        return NodeAnswer(None, f"{what}: unreadable reply")


async def _installed_name(listing: BackendListReply, input: ProbeInput, notes: list[str]) -> str:
    """The listed backend that ``input.backend`` means, mapping meta and alias names."""
    return await installed_name(listing, input.backend, input.galleries_json, notes)


async def installed_name(
    listing: BackendListReply, backend: str, galleries_json: str, notes: list[str]
) -> str:
    """The listed backend that ``backend`` means, mapping meta and alias names ("" if none)."""
    listed = {b.name.lower(): b.name for b in listing.backends or []}
    wanted = backend.lower()
    if wanted in listed:
        return listed[wanted]
    entries = await asyncio.to_thread(_gallery_entries, galleries_json, notes)
    if entries:
        for name in sorted(candidate_concrete_names(entries, backend)):
            if name in listed:
                return listed[name]
        return ""
    # No gallery to consult: gallery naming puts the variant first (cpu-llama-cpp for
    # llama-cpp), so a listed name ending in "-<backend>" is most likely its concrete.
    for name, original in sorted(listed.items()):
        if name.endswith(f"-{wanted}"):
            notes.append(f"{original} taken as the concrete of {backend} by its name")
            return original
    return ""


def _find_slot(reply: ModelsRunningReply, input: ProbeInput) -> RunningModelInfo | None:
    base = input.model_id or input.backend
    for model in reply.models or []:
        if model.model_id == base and model.replica_index == input.replica_index:
            return model
    return None


def _gallery_entries(galleries_json: str, notes: list[str]) -> list[GalleryEntry]:
    """Entries of the request's galleries that can be read quickly; others are noted."""
    try:
        galleries = decode_galleries(galleries_json)
    except ValidationError:
        notes.append("backend_galleries is not a list of galleries")
        return []
    entries: list[GalleryEntry] = []
    for gallery in galleries:
        try:
            entries += parse_index(
                read_index_source(gallery.url, GALLERY_FETCH_TIMEOUT), gallery.url
            )
        except GalleryIndexError as err:
            notes.append(str(err))
    return entries
