"""Single flight of installs, per-backend locks, and cancellation by op.

A :class:`Flight` is one unit of work (an install for a slot, an upgrade of a backend) that
any number of requests wait on. A second request for the same slot joins the flight and
receives the same reply, so a duplicate never downloads twice. Each waiter belongs to an op;
cancelling an op detaches its waiters with a ``cancelled`` reply, and when no other op is
left waiting the work itself is cancelled and its clean-up finishes *before* the reply, so a
``cancelled`` reply means the staging directory is already gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from durable_installs.node_agent.progress import ProgressPublisher, Tick

R = TypeVar("R")


@dataclass
class _Waiter(Generic[R]):
    op_id: str
    future: asyncio.Future[R]


@dataclass(eq=False)
class Flight(Generic[R]):
    """Work shared by every request that joined it."""

    kind: str
    slot: str
    backend: str
    cancelled_reply: Callable[[str], R]
    publisher: ProgressPublisher
    ops: dict[str, str] = field(default_factory=dict)
    """op_id → the ``backend`` string of that op's request; progress goes to each."""
    waiters: list[_Waiter[R]] = field(default_factory=list)
    task: asyncio.Task[R] | None = None

    def join(self, op_id: str, backend: str) -> asyncio.Future[R]:
        """Register a waiter; its future resolves with the flight's reply."""
        if op_id:
            self.ops.setdefault(op_id, backend)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.waiters.append(_Waiter(op_id, future))
        return future

    @property
    def latest(self) -> Tick | None:
        """The most recent progress tick."""
        return self.publisher.latest

    def cancel_op(self, op_id: str, reason: str) -> bool:
        """Cancel ``op_id``'s part of this flight; True if it was part of it."""
        mine = [w for w in self.waiters if w.op_id == op_id]
        if not mine and op_id not in self.ops:
            return False
        others = [w for w in self.waiters if w.op_id != op_id]
        if not others and self.task is not None:
            self.task.cancel(reason)  # the work's clean-up runs, then every waiter is answered
            return True
        self.waiters = others
        self.ops.pop(op_id, None)
        for waiter in mine:
            if not waiter.future.done():
                waiter.future.set_result(self.cancelled_reply(reason))
        return True

    def finish(self, task: asyncio.Task[R]) -> None:
        """Done-callback of the work: answer every remaining waiter."""
        for waiter in self.waiters:
            if waiter.future.done():
                continue
            if task.cancelled():
                waiter.future.set_result(self.cancelled_reply("cancelled"))
            elif (err := task.exception()) is not None:
                waiter.future.set_exception(err)
            else:
                waiter.future.set_result(task.result())


class FlightTable(Generic[R]):
    """In-flight work by key; a key names a slot (installs) or a backend (upgrades)."""

    def __init__(self) -> None:
        self._flights: dict[tuple[str, ...], Flight[R]] = {}

    def get(self, key: tuple[str, ...]) -> Flight[R] | None:
        """The flight running under ``key``."""
        return self._flights.get(key)

    def start(
        self,
        key: tuple[str, ...],
        flight: Flight[R],
        work: Callable[[Flight[R]], Awaitable[R]],
    ) -> None:
        """Run ``work`` for ``flight`` and drop the flight from the table when it ends."""

        async def run() -> R:
            return await work(flight)

        self._flights[key] = flight
        task = asyncio.create_task(run())
        flight.task = task

        def done(finished: asyncio.Task[R]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.finish(finished)

        task.add_done_callback(done)

    def all(self) -> list[Flight[R]]:
        """Every flight in progress."""
        return list(self._flights.values())


class KeyedLocks:
    """One ``asyncio.Lock`` per name, created on demand and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold the lock of ``name`` for the block."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        self._users[name] = self._users.get(name, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[name] -= 1
            if not self._users[name]:
                del self._users[name], self._locks[name]

    def held(self, name: str) -> bool:
        """Whether someone holds or waits for ``name``."""
        return name in self._users
