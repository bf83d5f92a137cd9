"""Knowing when a worker is at capacity: a log line, gauges, and a worker that slows down.

A worker is at capacity when every activity slot is taken (new installs wait in the task
queue; their requests are out and their replies kept, so they are slower, not lost) or when
its one Python thread falls behind: the event loop wakes up late, and everything it does,
workflow tasks included, waits. Both are measured every few seconds. At capacity the worker
says so once a minute at most, with what to do, and again when it is below capacity; the
same figures are gauges (``backend_install.worker.*``), so an operator alerts on them. While
the loop is late, the forwarding budget (``activities/budget.py``) spaces heartbeats and
progress reports further apart: the worker slows its own chatter before its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from activities.budget import ForwardBudget

CHECK_INTERVAL = 5.0
"""Seconds between two measurements."""

LATE_LIMIT = 1.0
"""The event loop waking this much later than asked for is a worker behind on its work."""

LOG_EVERY = 60.0
"""At most one "at capacity" line per this many seconds while it lasts."""

MAX_PRESSURE = 8.0
"""The forwarding budget's intervals stretch at most this many times."""

log = logging.getLogger(__name__)


class ActivityCount(Interceptor):
    """Counts the activities this worker runs right now (the SDK does not say in Python)."""

    def __init__(self) -> None:
        self.running = 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Counting(next, self)


class _Counting(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, count: ActivityCount) -> None:
        super().__init__(next)
        self._count = count

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if activity.info().is_local:  # fast-path requests have slots of their own
            return await self.next.execute_activity(input)
        self._count.running += 1
        try:
            return await self.next.execute_activity(input)
        finally:
            self._count.running -= 1


class CapacityMonitor:
    """Measures one worker's load and says when it is at capacity."""

    def __init__(self, budget: ForwardBudget, activity_slots: int) -> None:
        self.budget = budget
        self.activity_slots = activity_slots
        self.activities = ActivityCount()
        self.late = 0.0
        """How late the event loop woke up at the last measurement, in seconds."""
        self.at_capacity = False
        self.late_max = 0.0
        """The latest the event loop woke up since the worker started (for the benchmarks)."""
        self._last_logged = -LOG_EVERY

    def instrument(self, meter: Meter) -> None:
        """Gauges of the figures, read when the metrics are collected."""

        def gauge(name: str, unit: str, description: str, value: Any) -> None:
            def observe(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(value())]

            meter.create_observable_gauge(
                f"backend_install.worker.{name}", [observe], unit=unit, description=description
            )

        gauge(
            "activities", "{activity}", "Activities running now.", lambda: self.activities.running
        )
        gauge(
            "activity_slots",
            "{activity}",
            "Activities the worker runs at most.",
            lambda: self.activity_slots,
        )
        gauge(
            "installs_following",
            "{install}",
            "Installs following their node's progress.",
            lambda: self.budget.in_flight,
        )
        gauge(
            "event_loop_late", "s", "How late the worker's event loop woke up.", lambda: self.late
        )
        gauge(
            "at_capacity", "1", "1 while the worker is at capacity.", lambda: int(self.at_capacity)
        )

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        """Measure every ``interval`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(interval)
            self.measure(max(loop.time() - asked - interval, 0.0))

    def measure(self, late: float) -> None:
        """Take one measurement: ``late`` is how much later than asked the loop woke up."""
        self.late = late
        self.late_max = max(self.late_max, late)
        full = self.activities.running >= self.activity_slots
        behind = late >= LATE_LIMIT
        self.budget.pressure = min(max(1.0, late / (LATE_LIMIT / 4)), MAX_PRESSURE)
        was, self.at_capacity = self.at_capacity, full or behind
        now = time.monotonic()
        if self.at_capacity and (not was or now - self._last_logged >= LOG_EVERY):
            self._last_logged = now
            log.warning(
                "worker at capacity: %d of %d activity slots in use, %d installs following "
                "their nodes, event loop %.1fs late; %s",
                self.activities.running,
                self.activity_slots,
                self.budget.in_flight,
                late,
                "new installs wait in the task queue (their requests are out, their replies "
                "kept): add a worker to the task queue (docs/operating/scale.md)"
                if full
                else "heartbeats and progress reports are spaced out; add a worker to the "
                "task queue (docs/operating/scale.md)",
            )
        elif was and not self.at_capacity:
            log.info(
                "worker below capacity again: %d of %d activity slots in use, event loop "
                "%.1fs late",
                self.activities.running,
                self.activity_slots,
                late,
            )


@contextlib.asynccontextmanager
async def monitoring(monitor: CapacityMonitor | None) -> Any:
    """Run ``monitor`` for the block (nothing when None)."""
    if monitor is None:
        yield
        return
    task = asyncio.create_task(monitor.run(), name="capacity-monitor")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
