"""How often a worker forwards its nodes' progress: a budget for the whole worker.

Every install (or upgrade) in flight on a worker follows its op's progress and forwards it
two ways: heartbeats (the pending activity's details in the UI, and the only way a cancel
reaches a running activity) and progress reports (signals, so a workflow task each and an
event in the install's history, for the ``progress`` query and the current details). Forwarded
per install at fixed intervals, the cost grows with the installs in flight: at 5,000 with a
report every few seconds the worker spends its workflow task slots on reports and falls
behind on everything else. So each kind has a rate for the whole worker, and the interval of
each install stretches as the installs in flight grow:

* heartbeats: at most :data:`HEARTBEATS_PER_SECOND` for the worker, never less often than the
  activity's own idle interval allows, at least a second apart (the SDK's throttle, see
  ``orchestrator/worker.py``). With a few hundred installs in flight each heartbeats every
  second, so a cancel reaches the activity within about a second and the UI's pending
  activity shows what the node said a second ago;
* reports: at most :data:`REPORTS_PER_SECOND` for the worker, never more often than the
  install asks for, and slower as an install ages. A change of phase (downloading →
  extracting → starting) is reported at once whatever the budget.

The budget is shared by one worker's activities; nothing here talks to Temporal or NATS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

HEARTBEATS_PER_SECOND = 200.0
"""Heartbeat RPCs a worker sends per second at most, with many installs in flight."""

REPORTS_PER_SECOND = 20.0
"""Progress reports (signals, so workflow tasks) a worker sends per second at most."""

MIN_HEARTBEAT_INTERVAL = 1.0
"""Seconds between two heartbeats of one install at least: the SDK sends no more often."""

HEARTBEAT_SHARE = 0.6
"""Heartbeats never further apart than this share of the heartbeat timeout (the SDK's own
throttle uses 0.8): late timers on a busy worker still leave a margin."""

REPORT_SPREAD = 30
"""Reports slow down as an install ages: the interval is at least the elapsed time divided by
this, so a six-hour pull sends a few hundred reports, not thousands."""


class ForwardBudget:
    """The installs in flight on one worker, and the intervals that keep within the rates."""

    def __init__(
        self,
        heartbeats_per_second: float = HEARTBEATS_PER_SECOND,
        reports_per_second: float = REPORTS_PER_SECOND,
    ) -> None:
        self._heartbeats_per_second = heartbeats_per_second
        self._reports_per_second = reports_per_second
        self.in_flight = 0
        self.heartbeats = 0
        """Heartbeats sent so far (for the capacity log and the benchmarks)."""
        self.reports = 0
        """Progress reports (signals) sent so far."""
        self.pressure = 1.0
        """How many times further apart to space both while the worker is behind on its
        work (set by ``durable_installs.orchestrator.capacity``; 1 when it keeps up)."""

    @contextlib.contextmanager
    def following(self) -> Iterator[None]:
        """Count one install following its op's progress for as long as the block runs."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def heartbeat_interval(self, longest: float) -> float:
        """Seconds between one install's heartbeats: its share of the worker's rate, between a
        second and ``longest`` (what its heartbeat timeout allows)."""
        share = self.in_flight / self._heartbeats_per_second * self.pressure
        return max(MIN_HEARTBEAT_INTERVAL, min(share, longest))

    def report_interval(self, requested: float, elapsed: float) -> float:
        """Seconds between one install's progress reports: what it asked for, stretched by its
        share of the worker's rate and by its age."""
        share = self.in_flight / self._reports_per_second
        return max(requested, share, elapsed / REPORT_SPREAD) * self.pressure
