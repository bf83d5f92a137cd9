"""Blocks of 20 backend ports for node agents started by tests, never shared by two tests.

Servers (NATS, Temporal, HTTP) bind port 0 or take ``free_port()``; only backend port ranges
are handed out here, because an agent needs a whole range up front. Each ``pytest-xdist``
worker gets its own slice of every pool, so parallel workers cannot hand out the same block;
within a slice the start is random, so a block left busy by a killed run is unlikely to be
reused at once.
"""

import itertools
import os
import random
from collections.abc import Iterator

BLOCK = 20


def _worker() -> tuple[int, int]:
    """This worker's index and the number of workers: ``(3, 4)`` for ``gw3`` of ``-n 4``."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return int(name.removeprefix("gw") or 0), max(count, 1)


class PortPool:
    """Hands out consecutive blocks from this worker's slice of ``[low, high)``."""

    def __init__(self, low: int, high: int) -> None:
        index, workers = _worker()
        slice_size = (high - low) // workers
        start = low + index * slice_size
        # Start anywhere in the first fifth of the slice; the rest is the head-room.
        offset = random.randrange(0, max(slice_size // 5 // BLOCK, 1)) * BLOCK
        self._next: Iterator[int] = itertools.count(start + offset, BLOCK)
        self._end = start + slice_size

    def block(self) -> tuple[int, int]:
        """The next free block: ``(first, last)`` port, both inclusive."""
        low = next(self._next)
        if low + BLOCK > self._end:
            raise RuntimeError("this worker's backend ports are used up; widen its pool")
        return low, low + BLOCK - 1


AGENT_PORTS = PortPool(40000, 60000)
"""The node agent tests' backends."""

CHAOS_PORTS = PortPool(20000, 32000)
"""The chaos suite's backends, apart from the agent tests'."""
