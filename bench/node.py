"""The benchmarks' node side: one NATS connection answering installs for every node id.

A wildcard subscription on ``nodes.*.backend.install`` stands in for any number of nodes, so
the fake costs one callback per request and the benchmark measures the orchestrator. An
install either gets its reply at once (the node's fast path) or is held: a progress event
goes out every ``event_interval`` seconds until ``hold_seconds`` have passed, then the reply.
A second request for an op that is held joins it, and one for an op that is done is answered
at once (the slot runs), as on a node agent: after a lost reply the workflow probes and sends
the same op again. The node answers the stock probe as a LocalAI worker does (no status
extension): ``models.running`` lists the slots of the installs it has answered and
``backend.list`` the backends they installed; every request and probe is logged per node, so
a test can check that a re-send came only after a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendListReply,
    ModelsRunningReply,
    NodeBackendInfo,
    RunningModelInfo,
)

REPLY = BackendInstallReply(success=True, address="10.0.0.7:50051").to_wire()
BACKEND = "llama-cpp"
INSTALL = "install"
PROBE = "probe"


@dataclass
class HeldInstall:
    """An install the node is "downloading": where to reply and when."""

    node_id: str
    op_id: str
    reply_to: str
    due: float
    events: int = 0
    joined: list[str] = field(default_factory=list)
    """Reply subjects of later requests for the same op, answered with the first."""

    def reply_subjects(self) -> list[str]:
        return [self.reply_to, *self.joined]


def progress_body(node_id: str, op_id: str, seq: int) -> bytes:
    """A progress event whose ``current`` carries the publish wall-clock time, for lag."""
    return json.dumps(
        {
            "op_id": op_id,
            "node_id": node_id,
            "backend": BACKEND,
            "file_name": "llama-cpp.tar.partial",
            "current": f"{time.time():.6f}",
            "total": "100.0 MiB",
            "percentage": min(99.0, seq * 0.01),
            "phase": "downloading",
        }
    ).encode()


def resends_without_probe(log: Sequence[str]) -> int:
    """Install requests in a node's request log that came right after another install, with no
    probe between (every other entry of such a log is a probe: ``models.running``,
    ``backend.list``, the status extension)."""
    return sum(1 for before, entry in itertools.pairwise(log) if before == entry == INSTALL)


class WildcardNode:
    """Every node at once: answers or holds ``backend.install`` requests."""

    def __init__(self, nc: NATS, hold_seconds: float = 0.0, event_interval: float = 1.0) -> None:
        self.nc = nc
        self.hold_seconds = hold_seconds
        self.event_interval = event_interval
        self.requests = 0
        self.held: dict[str, HeldInstall] = {}
        self._by_op: dict[tuple[str, str], str] = {}
        """(node, op) to the key of the held install, so a repeated op joins it."""
        self.max_held = 0
        self.events_published = 0
        self.done: set[tuple[str, str]] = set()
        """(node, op) of installs answered: the slot runs, a repeat is answered at once."""
        self.running: set[str] = set()
        """Nodes with an answered install: their slot runs."""
        self.arrived = asyncio.Event()
        self.log: dict[str, list[str]] = {}
        """Per node, ``install`` for each request and ``probe`` for each probe, in order."""
        self._subs: list[object] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> WildcardNode:
        self._subs = [
            await self.nc.subscribe("nodes.*.backend.install", cb=self._on_install),
            await self.nc.subscribe("nodes.*.models.running", cb=self._on_running),
            await self.nc.subscribe("nodes.*.backend.list", cb=self._on_list),
        ]
        await self.nc.flush()
        if self.hold_seconds > 0 and self.event_interval > 0:
            self._ticker = asyncio.create_task(self._tick())
        return self

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]

    def resent_without_probe(self) -> list[str]:
        """Nodes that got a second install request with no probe since the one before."""
        return [node_id for node_id, log in self.log.items() if resends_without_probe(log)]

    def _record(self, node_id: str, entry: str) -> None:
        entries = self.log.setdefault(node_id, [])
        if entry == PROBE and entries and entries[-1] == PROBE:
            return
        entries.append(entry)

    async def _on_running(self, msg: Msg) -> None:
        node_id = msg.subject.split(".")[1]
        self._record(node_id, PROBE)
        models = [RunningModelInfo(model_id=BACKEND, address="127.0.0.1:50051")]
        reply = ModelsRunningReply(models=models if node_id in self.running else [])
        await msg.respond(reply.to_wire())

    async def _on_list(self, msg: Msg) -> None:
        node_id = msg.subject.split(".")[1]
        self._record(node_id, PROBE)
        backends = [NodeBackendInfo(name=BACKEND)] if node_id in self.running else None
        await msg.respond(BackendListReply(backends=backends).to_wire())

    async def release_all(self) -> None:
        """Reply to every held install now."""
        for key in list(self.held):
            held = self.held.pop(key)
            self.done.add((held.node_id, held.op_id))
            self.running.add(held.node_id)
            for subject in held.reply_subjects():
                await self.nc.publish(subject, REPLY)
        await self.nc.flush()

    async def _on_install(self, msg: Msg) -> None:
        self.requests += 1
        node_id = msg.subject.split(".")[1]
        self._record(node_id, INSTALL)
        if self.hold_seconds <= 0:
            self.running.add(node_id)
            await msg.respond(REPLY)
            return
        op_id = json.loads(msg.data).get("op_id", "")
        if (node_id, op_id) in self.done:
            await msg.respond(REPLY)
            return
        holding = self.held.get(self._by_op.get((node_id, op_id), "")) if op_id else None
        if holding is not None:
            holding.joined.append(msg.reply)
            return
        if op_id:
            self._by_op[(node_id, op_id)] = msg.reply
        self.held[msg.reply] = HeldInstall(
            node_id, op_id, msg.reply, time.monotonic() + self.hold_seconds
        )
        self.max_held = max(self.max_held, len(self.held))
        self.arrived.set()

    async def _tick(self) -> None:
        """One pass a tick: an event for every held install, replies for those due."""
        next_tick = time.monotonic()
        while True:
            next_tick += self.event_interval
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            for key, held in list(self.held.items()):
                if held.due <= now:
                    del self.held[key]
                    self.done.add((held.node_id, held.op_id))
                    self.running.add(held.node_id)
                    for subject in held.reply_subjects():
                        await self.nc.publish(subject, REPLY)
                    continue
                if held.op_id:
                    held.events += 1
                    self.events_published += 1
                    await self.nc.publish(
                        subjects.progress(held.node_id, held.op_id),
                        progress_body(held.node_id, held.op_id, held.events),
                    )
