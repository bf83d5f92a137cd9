"""A scripted node over real NATS: answers the stock subjects the way a LocalAI worker does.

Each test scripts what the node does with an install request (reply at once, stream progress
and stay silent, fail, ...) and then inspects exactly what reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendDeleteReply,
    BackendInstallProgressEvent,
    BackendInstallReply,
    BackendInstallRequest,
    BackendListReply,
    InstallStatusReply,
    ModelsRunningReply,
    NodeBackendInfo,
    RunningModelInfo,
)

InstallScript = Callable[[BackendInstallRequest, int], Awaitable[BackendInstallReply | None]]
"""Given the request and its 1-based number, the reply to send, or None to stay silent."""


class FakeNode:
    """A stock-protocol node (no status extension) driven by a test script.

    Every started node is in :attr:`live` until it stops; ``tests/conftest.py`` stops the ones a
    failing test left behind, so their subscriptions never leak into later tests.
    """

    live: ClassVar[set[FakeNode]] = set()

    def __init__(self, nc: NATS, node_id: str, advertise_host: str = "10.0.0.7") -> None:
        self.nc = nc
        self.node_id = node_id
        self.advertise_host = advertise_host
        self.install_bodies: list[dict[str, Any]] = []
        self.status_requests: list[dict[str, Any]] = []
        self.running: list[RunningModelInfo] = []
        self.backends: list[NodeBackendInfo] | None = None
        self.script: InstallScript = self.reply_running
        self.status_reply = InstallStatusReply(state="absent")
        self.status_answers = 0
        """Status requests answered so far (a request is recorded before its answer is sent)."""
        self.running_requests = 0
        self.log: list[str] = []
        """Every request in the order it arrived: ``install``, ``models.running``, ``backend.list``
        and ``status`` (the extension), so a test can check what came before what."""
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def install_requests(self) -> list[BackendInstallRequest]:
        return [BackendInstallRequest.model_validate(body) for body in self.install_bodies]

    async def start(self) -> FakeNode:
        self._subs = [
            await self.nc.subscribe(subjects.install(self.node_id), cb=self._on_install),
            await self.nc.subscribe(subjects.models_running(self.node_id), cb=self._on_running),
            await self.nc.subscribe(subjects.backend_list(self.node_id), cb=self._on_list),
        ]
        # A flush alone does not guarantee that requests from *other* connections already see
        # the new interest (about 1 in 100 got "no responders"); a round trip through the
        # server to one of our own subjects does.
        await self.nc.request(subjects.models_running(self.node_id), b"{}", timeout=5)
        self.log.clear()  # that round trip was ours, not the controller's
        FakeNode.live.add(self)
        return self

    async def __aenter__(self) -> FakeNode:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def answer_status(self, reply: InstallStatusReply) -> None:
        """Speak the node agent's status extension, answering ``reply`` until a test changes
        :attr:`status_reply`."""
        self.status_reply = reply

        async def respond(msg: Msg) -> None:
            self.log.append("status")
            self.status_requests.append(json.loads(msg.data))
            await msg.respond(self.status_reply.to_wire())
            self.status_answers += 1

        self._subs.append(
            await self.nc.subscribe(subjects.install_status(self.node_id), cb=respond)
        )
        await self.nc.flush()

    async def stop(self) -> None:
        FakeNode.live.discard(self)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        self._subs = []

    async def obey_stop_and_delete(self) -> None:
        """Answer ``backend.delete`` (success, the list empties) and obey ``backend.stop``
        (every slot stops), as a stock worker does (issue 13)."""

        async def on_stop(msg: Msg) -> None:
            self.running = []

        async def on_delete(msg: Msg) -> None:
            self.backends = None
            await msg.respond(BackendDeleteReply(success=True).to_wire())

        self._subs.append(await self.nc.subscribe(subjects.backend_stop(self.node_id), cb=on_stop))
        self._subs.append(
            await self.nc.subscribe(subjects.backend_delete(self.node_id), cb=on_delete)
        )
        await self.nc.flush()

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` in the background for the node's lifetime."""

        async def runner() -> None:
            await coro

        task = asyncio.create_task(runner())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reply_running(
        self, request: BackendInstallRequest, number: int
    ) -> BackendInstallReply:
        """The fast path: the slot runs (now), reply with the routable address."""
        self.mark_running(request)
        return BackendInstallReply(success=True, address=f"{self.advertise_host}:50051")

    def mark_running(self, request: BackendInstallRequest, port: int = 50051) -> None:
        base = request.model_id or request.backend
        if not any(
            m.model_id == base and m.replica_index == request.replica_index for m in self.running
        ):
            self.running.append(
                RunningModelInfo(
                    model_id=base,
                    replica_index=request.replica_index,
                    address=f"127.0.0.1:{port}",
                )
            )

    async def publish_progress(
        self, op_id: str, backend: str, percentage: float, phase: str = "downloading"
    ) -> None:
        event = BackendInstallProgressEvent(
            op_id=op_id,
            node_id=self.node_id,
            backend=backend,
            file_name=f"{backend}.tar.partial",
            current=f"{percentage:.1f} MiB",
            total="100.0 MiB",
            percentage=percentage,
            phase=phase,
        )
        await self.nc.publish(subjects.progress(self.node_id, op_id), event.to_wire())

    async def stream_progress(
        self, op_id: str, backend: str, until: asyncio.Event, interval: float = 0.2
    ) -> int:
        """Publish rising progress every ``interval`` until ``until`` is set; count events."""
        count = 0
        while not until.is_set():
            count += 1
            await self.publish_progress(op_id, backend, min(99.0, count * 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), interval)
        return count

    async def _on_install(self, msg: Msg) -> None:
        self.log.append("install")
        self.install_bodies.append(json.loads(msg.data))
        request = BackendInstallRequest.model_validate_json(msg.data)
        number = len(self.install_bodies)

        async def answer() -> None:
            reply = await self.script(request, number)
            if reply is not None:
                await msg.respond(reply.to_wire())

        self.spawn(answer())

    async def _on_running(self, msg: Msg) -> None:
        self.log.append("models.running")
        self.running_requests += 1
        await msg.respond(ModelsRunningReply(models=list(self.running)).to_wire())

    async def _on_list(self, msg: Msg) -> None:
        self.log.append("backend.list")
        await msg.respond(BackendListReply(backends=self.backends).to_wire())


class StockWorker:
    """A LocalAI worker's install semantics, for :attr:`FakeNode.script`.

    Installs of one backend name are serialised by a lock held until the reply (reference
    §4.1): a duplicate request for the same op waits behind the first and then finds the slot
    running. A missing backend takes ``install_seconds`` with a progress event every
    ``progress_interval``; there is no status extension and no cancel subject, so the
    controller learns of the install only from replies, ``models.running``, ``backend.list``
    and progress, as from a stock worker.
    """

    def __init__(
        self, node: FakeNode, install_seconds: float, progress_interval: float = 0.5
    ) -> None:
        self.node = node
        self.install_seconds = install_seconds
        self.progress_interval = progress_interval
        self._locks: dict[str, asyncio.Lock] = {}
        self.installed: set[str] = set()
        node.backends = []
        node.script = self.install

    async def install(self, request: BackendInstallRequest, number: int) -> BackendInstallReply:
        lock = self._locks.setdefault(request.backend, asyncio.Lock())
        async with lock:
            if request.backend not in self.installed:
                await self._pull(request)
            self.node.mark_running(request)
            return BackendInstallReply(success=True, address=f"{self.node.advertise_host}:50051")

    async def _pull(self, request: BackendInstallRequest) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.install_seconds
        while (left := end - loop.time()) > 0:
            if request.op_id:
                done = 100.0 * (1 - left / self.install_seconds)
                await self.node.publish_progress(request.op_id, request.backend, done)
            await asyncio.sleep(min(self.progress_interval, left))
        self.installed.add(request.backend)
        assert self.node.backends is not None
        self.node.backends.append(NodeBackendInfo(name=request.backend))
