"""The NATS side of the node agent: subscriptions, decoding, replies.

Every message is handled in its own task, so the NATS callback returns at once: a
multi-minute download must never hold up ``models.running`` or another backend's install
(docs/protocol.md §5). Decoding failures become ``invalid request: …`` replies (or are ignored on
the publish-only stop subject) and never stop the agent.

Use in tests::

    from durable_installs.node_agent import Agent, AgentConfig, NatsOptions
    from durable_installs.protocol.messages import GalleryConfig

    agent = Agent(
        AgentConfig(
            node_id=node_id,                      # a valid subject token
            backends_dir=tmp_path / "backends",
            galleries=(GalleryConfig(name="local", url=gallery_file.as_uri()),),
            advertise_host="127.0.0.1",           # host part of every reply's address
            port_range=(52000, 52019),
            nats=NatsOptions(url=nats_url),
        )
    )
    await agent.start()   # returns once the agent's subjects are routed to it
    ...
    await agent.stop()    # cancels in-flight installs, stops every backend process
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from durable_installs.node_agent.announce import Announcer
from durable_installs.node_agent.config import AgentConfig
from durable_installs.node_agent.duplicates import (
    DuplicateAgent,
    Instance,
    instance_subject,
    other_instances,
)
from durable_installs.node_agent.errors import AgentError
from durable_installs.node_agent.files import FileServer, space_reply
from durable_installs.node_agent.service import NodeService
from durable_installs.protocol import subjects
from durable_installs.protocol.connection import NatsStartupError, permissions_violation
from durable_installs.protocol.messages import (
    BackendDeleteRequest,
    BackendInstallRequest,
    BackendPreviousDropRequest,
    BackendRollbackRequest,
    BackendStopRequest,
    BackendUpgradeRequest,
    InstallStatusRequest,
    NodeBackendInfo,
    RunningModelInfo,
    error_body,
    process_key,
)
from durable_installs.protocol.nats_auth import node_inbox_prefix
from durable_installs.protocol.wire import WireModel
from durable_installs.telemetry import bind_fields, context_from_headers, server_span
from durable_installs.telemetry.propagation import workflow_id_of
from durable_installs.telemetry.spans import annotate_current_span, set_outcome

log = logging.getLogger(__name__)

M = TypeVar("M", bound=WireModel)
Handler = Callable[[Msg], Awaitable[None]]


def decode(model: type[M], data: bytes) -> M:
    """Decode a request body, raising the catalogue's ``invalid request: …`` on failure."""
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise AgentError(f"invalid request: {where}: {first['msg']}") from err


def node_stop_body_ok(data: bytes) -> bool:
    """Whether a ``nodes.<node>.stop`` body asks for a stop: empty, ``null`` or ``{}``."""
    body = data.strip()
    if body in (b"", b"null"):
        return True
    try:
        parsed: object = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return parsed == {}


class Agent:
    """One node agent: a :class:`NodeService` answering on ``nodes.<node_id>.…``.

    ``nc`` may be an existing connection (it is then left open on :meth:`stop`); otherwise
    :meth:`start` connects with ``config.nats``.
    """

    def __init__(self, config: AgentConfig, nc: NATS | None = None) -> None:
        subjects.check_token("node_id", config.node_id)
        self.config = config
        self._nc = nc
        self._owns_connection = nc is None
        self._subscriptions: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._stopping = False
        self.left_running = 0
        """Backend processes the stopped agent left running (``keep_backends``)."""
        self.service = NodeService(config, self._publish)
        self._tracer = config.telemetry.tracer()
        self.instance = Instance(
            self.service.instance_id, socket.gethostname(), os.getpid(), time.time()
        )
        self.conflict = ""
        """Why this agent stopped serving because an older one has its node id ("" if not)."""
        self._duplicate_watch: asyncio.Task[None] | None = None
        self.announcer: Announcer | None = None
        """This agent's node registry entry (after :meth:`start`, unless announcing is off)."""
        self.files: FileServer | None = None
        """The file-transfer HTTP server (after :meth:`start`; None without a files token)."""

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def nc(self) -> NATS:
        """The NATS connection (after :meth:`start`)."""
        if self._nc is None:
            raise RuntimeError("agent not started")
        return self._nc

    async def start(self) -> None:
        """Connect, make sure no other agent serves this node id, clean leftovers, subscribe.

        Returns once the server knows the subscriptions. Raises :class:`DuplicateAgent`
        (before touching the backends directory) when another agent answers for the node id,
        ``FilesStartupError`` (before that too) when the file-transfer server cannot listen,
        and :class:`NatsStartupError` when the server denies one of the node's subjects.
        """
        node = self.config.node_id
        if self._nc is None:
            self._nc = await self.config.nats.connect(
                f"node-agent-{node}", inbox_prefix=node_inbox_prefix(node)
            )
        before = self.nc.last_error
        await self._refuse_if_taken()
        await self._start_files()
        try:
            await self._serve_subjects(before)
        except BaseException:
            if self.files is not None:  # a failed start leaves nothing listening
                await self.files.stop()
                self.files = None
            raise

    async def _serve_subjects(self, before: Exception | None) -> None:
        """Recover, subscribe, confirm, then watch for duplicates and announce."""
        node = self.config.node_id
        self._subscriptions.append(
            await self.nc.subscribe(instance_subject(node), cb=self._on_instance)
        )
        await self.service.recover()
        routes: list[tuple[str, Handler]] = [
            (subjects.install(node), self._on_install),
            (subjects.upgrade(node), self._on_upgrade),
            (subjects.backend_list(node), self._on_list),
            (subjects.models_running(node), self._on_running),
            (subjects.backend_stop(node), self._on_stop),
            (subjects.backend_delete(node), self._on_delete),
            (subjects.install_status(node), self._on_status),
            (subjects.rollback(node), self._on_rollback),
            (subjects.previous_drop(node), self._on_previous_drop),
            (f"nodes.{node}.backend.install.*.cancel", self._on_cancel),
            (subjects.node_stop(node), self._on_node_stop),
            (subjects.files_space(node), self._on_files_space),
        ]
        for subject, handler in routes:
            operation = subject.removeprefix(f"nodes.{node}.")
            self._subscriptions.append(
                await self.nc.subscribe(subject, cb=self._dispatcher(handler, operation))
            )
        await self._refuse_if_denied(
            before, [instance_subject(node), *(subject for subject, _ in routes)]
        )
        try:
            await self._confirm_subscriptions()
        except (RuntimeError, nats.errors.Error):
            await self._refuse_if_denied(before, [subjects.models_running(node)])
            raise
        if self.config.duplicate_check_interval > 0:
            self._duplicate_watch = asyncio.create_task(self._watch_duplicates())
        if self.config.announce_interval > 0:
            self.announcer = Announcer(
                self.nc,
                node,
                self.service.instance_id,
                self.config.capability,
                self.instance.host,
                self._inventory,
                self.config.announce_interval,
                list(self.config.galleries),
            )
            await self.announcer.start()
        log.info("node agent %s listening (%s)", node, self.instance.describe())

    async def _start_files(self) -> None:
        """Start the file-transfer server when a token is configured; refuse to start if the
        server cannot listen (an operator asked for it, so a node without it would be wrong)."""
        config = self.config
        if not config.files.enabled:
            log.info(
                "file transfer is off (no --files-token); nodes.%s.files.space still answers",
                config.node_id,
            )
            return
        server = FileServer(
            config.files,
            config.file_roots,
            config.files.listen_address(config.bind_host, config.port_range),
            config.advertise_host,
        )
        try:
            await server.start()
        except Exception:
            if self._owns_connection:
                with contextlib.suppress(Exception):
                    await self.nc.close()
            raise
        self.files = server

    async def _refuse_if_taken(self) -> None:
        others = await other_instances(
            self.nc,
            self.config.node_id,
            self.instance,
            self.config.duplicate_check_window,
            first_only=True,
        )
        if others:
            if self._owns_connection:
                with contextlib.suppress(Exception):
                    await self.nc.close()
            raise DuplicateAgent(
                f"node id {self.config.node_id} is already served by agent "
                f"{others[0].describe()}; stop that agent or start this one with another "
                "--node-id"
            )

    async def _on_instance(self, msg: Msg) -> None:
        """Tell an agent that asks for this node id who serves it."""
        await self._respond(msg, self.instance.to_wire())

    async def _watch_duplicates(self) -> None:
        """Ask again periodically: agents that started at the same moment both heard nothing."""
        node = self.config.node_id
        while True:
            await asyncio.sleep(self.config.duplicate_check_interval)
            try:
                others = await other_instances(
                    self.nc, node, self.instance, self.config.duplicate_check_window
                )
            except Exception as err:  # connection trouble; the next round asks again
                log.warning("checking for another agent with node id %s failed: %s", node, err)
                continue
            older = [o for o in others if o.older_than(self.instance)]
            if older:
                self.conflict = (
                    f"node id {node} is also served by the older agent {older[0].describe()}; "
                    f"this agent ({self.instance.describe()}) stopped serving"
                )
                log.error("%s", self.conflict)
                await self.stop()
                return
            for other in others:
                log.error(
                    "node id %s is also served by the younger agent %s; it stops by itself",
                    node,
                    other.describe(),
                )

    async def _refuse_if_denied(self, before: Exception | None, wanted: list[str]) -> None:
        """Refuse to start when the server denied one of our subjects (it says so only async).

        A node whose user may not subscribe its own subjects would look healthy and never
        answer; the message names the subject and the permission the node's user needs.
        """
        denied = await permissions_violation(self.nc, before)
        if denied is None:
            return
        subject = next((s for s in wanted if f'"{s}"' in denied), "one of its subjects")
        node = self.config.node_id
        raise NatsStartupError(
            f"NATS refused node {node} the use of {subject} (permissions violation): its NATS "
            f"user must be allowed to subscribe nodes.{node}.> and publish "
            f"nodes.{node}.models.running and nodes.{node}.agent.> (backend-nats-auth "
            "writes such a configuration)"
        )

    async def _confirm_subscriptions(self) -> None:
        """Round-trip a request through the server to ourselves before declaring readiness.

        ``flush()`` alone proved not to be enough: right after start a request from another
        connection occasionally got *no responders*. A reply to our own ``models.running``
        shows the server routes our subjects.
        """
        probe = subjects.models_running(self.config.node_id)
        for _ in range(250):
            try:
                await self.nc.request(probe, b"{}", timeout=5)
                return
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.02)
        raise RuntimeError(f"NATS does not route {probe} to this agent")

    async def stop(self) -> None:
        """Stop answering, cancel in-flight work, stop every backend process (or, with
        ``keep_backends``, leave them for the next agent), disconnect."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        watch = self._duplicate_watch
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if self.announcer is not None:
            await self.announcer.stop()
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.files is not None:
            await self.files.stop()
        self.left_running = await self.service.close(keep_backends=self.config.keep_backends)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_connection and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until the agent has stopped (e.g. after ``nodes.<node>.stop``)."""
        await self._stopped.wait()

    def _inventory(self) -> tuple[list[NodeBackendInfo], list[RunningModelInfo]]:
        """What the registry entry carries: ``backend.list`` and ``models.running``."""
        return (
            list(self.service.list_backends().backends or []),
            list(self.service.running().models or []),
        )

    # --- plumbing ----------------------------------------------------------------------------

    def _dispatcher(self, handler: Handler, operation: str) -> Callable[[Msg], Awaitable[None]]:
        async def dispatch(msg: Msg) -> None:
            task = asyncio.create_task(self._guarded(handler, msg, operation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return dispatch

    async def _guarded(self, handler: Handler, msg: Msg, operation: str) -> None:
        """Handle one message in a span continuing the sender's trace, with its log fields."""
        remote = context_from_headers(msg.headers)
        with (
            bind_fields(node=self.config.node_id, workflow_id=workflow_id_of(remote)),
            server_span(self._tracer, operation, msg.subject, remote),
        ):
            try:
                await handler(msg)
            except AgentError as err:
                set_outcome("invalid_request")
                await self._respond(msg, error_body(err.message))
            except Exception as err:  # one bad message must never stop the agent
                set_outcome("internal_error")
                log.exception("handling %s failed", msg.subject)
                await self._respond(msg, error_body(f"internal error: {type(err).__name__}"))

    async def _respond(self, msg: Msg, body: bytes) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(body)
        except Exception as err:  # connection gone; the orchestrator will probe
            log.warning("could not reply on %s: %s", msg.subject, err)

    async def _publish(self, subject: str, body: bytes) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.publish(subject, body)

    # --- handlers ----------------------------------------------------------------------------

    async def _on_install(self, msg: Msg) -> None:
        request = decode(BackendInstallRequest, msg.data)
        slot = process_key(request.backend, request.model_id, request.replica_index)
        with bind_fields(op_id=request.op_id, slot=slot, backend=request.backend):
            annotate_current_span()
            reply = await self.service.install(request)
        outcome = "succeeded" if reply.success else "failed"
        set_outcome(outcome)
        self.service.metrics.installs.add(1, {"outcome": outcome})
        await self._respond(msg, reply.to_wire())

    async def _on_upgrade(self, msg: Msg) -> None:
        reply = await self.service.upgrade(decode(BackendUpgradeRequest, msg.data))
        await self._respond(msg, reply.to_wire())

    async def _on_rollback(self, msg: Msg) -> None:
        reply = await self.service.rollback(decode(BackendRollbackRequest, msg.data))
        await self._respond(msg, reply.to_wire())

    async def _on_previous_drop(self, msg: Msg) -> None:
        reply = await self.service.drop_previous(decode(BackendPreviousDropRequest, msg.data))
        await self._respond(msg, reply.to_wire())

    async def _on_list(self, msg: Msg) -> None:
        await self._respond(msg, self.service.list_backends().to_wire())

    async def _on_running(self, msg: Msg) -> None:
        await self._respond(msg, self.service.running().to_wire())

    async def _on_delete(self, msg: Msg) -> None:
        reply = await self.service.delete(decode(BackendDeleteRequest, msg.data))
        await self._respond(msg, reply.to_wire())

    async def _on_status(self, msg: Msg) -> None:
        reply = self.service.status(decode(InstallStatusRequest, msg.data))
        await self._respond(msg, reply.to_wire())

    async def _on_stop(self, msg: Msg) -> None:
        """Publish-only: empty body or ``null`` = stop all; malformed JSON is ignored."""
        body = msg.data.strip()
        request: BackendStopRequest | None = None
        if body and body != b"null":
            try:
                request = decode(BackendStopRequest, body)
            except AgentError as err:
                log.warning("ignoring malformed backend.stop: %s", err)
                return
        stopped = await self.service.stop(request)
        log.info("backend.stop stopped %s", stopped)

    async def _on_cancel(self, msg: Msg) -> None:
        op_id = msg.subject.split(".")[-2]
        found = self.service.cancel(op_id)
        ack = {"op_id": op_id, "cancelled": found}
        if not found:
            ack["error"] = f"no install or upgrade in flight for op {op_id}"
        await self._respond(msg, json.dumps(ack).encode())

    async def _on_files_space(self, msg: Msg) -> None:
        """Free space on the models filesystem; the body is ignored (there is nothing to ask)."""
        address = self.files.advertised_address if self.files is not None else ""
        reply = space_reply(self.config.files, self.config.file_roots, address)
        await self._respond(msg, reply.to_wire())

    async def _on_node_stop(self, msg: Msg) -> None:
        """Publish-only: shut down, but only if started with ``--allow-remote-stop``.

        Off by default: with NATS's default (no auth) anyone who can publish could otherwise
        take a node out of the cluster with one message. A body other than empty, ``null``
        or ``{}`` is malformed and ignored, as on ``backend.stop``.
        """
        node = self.config.node_id
        if not self.config.allow_remote_stop:
            log.warning(
                "ignoring nodes.%s.stop: remote stop is off (start the agent with "
                "--allow-remote-stop to obey it)",
                node,
            )
            return
        if not node_stop_body_ok(msg.data):
            log.warning("ignoring malformed nodes.%s.stop (body is not null or {})", node)
            return
        log.info("nodes.%s.stop received; shutting down", node)
        current = asyncio.current_task()
        if current is not None:
            self._tasks.discard(current)  # stop() waits for handlers; not for this one
        await self.stop()
