"""Debounced progress events of one install (docs/protocol.md §8).

Leading-edge debounce: the first tick after a quiet window goes out at once, later ticks in
the window replace one pending event that a trailing timer sends at the window's end, so a
subscriber sees at most ~4 events/s and always the freshest values. Two additions:

* a **phase change** is never swallowed: the pending tick of the old phase and the first tick
  of the new phase are both sent at once, so a sub-second install still shows every phase;
* :meth:`ProgressPublisher.flush` sends whatever is pending (the final 100 %) before the reply.

Publishing goes through one sender task, so events leave in the order they were produced and
a slow NATS write never blocks the download thread that produced the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from durable_installs.protocol.messages import (
    BackendInstallProgressEvent,
    ProgressPhase,
    format_size,
)


@dataclass(frozen=True)
class Tick:
    """One progress observation, not yet addressed to any op."""

    phase: ProgressPhase
    file_name: str
    current: int = 0
    total: int = 0
    percentage: float = 0.0

    def event(self, op_id: str, node_id: str, backend: str) -> BackendInstallProgressEvent:
        """The wire event for one op listening to this install."""
        return BackendInstallProgressEvent(
            op_id=op_id,
            node_id=node_id,
            backend=backend,
            file_name=self.file_name,
            current=format_size(self.current) if self.current or self.total else "",
            total=format_size(self.total) if self.total else "",
            percentage=round(self.percentage, 2),
            phase=self.phase.value,
        )


Sender = Callable[[Tick], Awaitable[None]]


class ProgressPublisher:
    """Debounces :class:`Tick` values and hands them to ``send`` in order."""

    def __init__(
        self, send: Sender, window: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._send = send
        self._window = window
        self._clock = clock
        self._last_sent = float("-inf")
        self._last_phase: ProgressPhase | None = None
        self._pending: Tick | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[Tick | None] = asyncio.Queue()
        self._sender = asyncio.create_task(self._drain())
        self.latest: Tick | None = None

    def tick(self, tick: Tick) -> None:
        """Record a tick; call on the event loop (threads use ``call_soon_threadsafe``)."""
        self.latest = tick
        previous = self._pending
        if previous is not None and previous.phase != tick.phase:
            self._cancel_timer()
            self._emit(previous)
            self._emit(tick)
            return
        quiet = self._clock() - self._last_sent >= self._window
        if self._pending is None and (quiet or tick.phase != self._last_phase):
            self._emit(tick)
            return
        self._pending = tick
        if self._timer is None:
            delay = max(0.0, self._last_sent + self._window - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pending is not None:
            self._emit(self._pending)

    def _emit(self, tick: Tick) -> None:
        self._pending = None
        self._last_sent = self._clock()
        self._last_phase = tick.phase
        self._queue.put_nowait(tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _drain(self) -> None:
        while (tick := await self._queue.get()) is not None:
            with contextlib.suppress(Exception):  # publish errors never fail an install
                await self._send(tick)

    async def flush(self) -> None:
        """Send the pending tick, wait until everything queued is out, stop the sender."""
        self._cancel_timer()
        if self._pending is not None:
            self._emit(self._pending)
        self._queue.put_nowait(None)
        await asyncio.shield(self._sender)
