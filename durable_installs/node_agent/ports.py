"""gRPC port allocation with quarantine and per-slot affinity (docs/protocol.md §9).

A released port is not handed to another slot for ``quarantine`` seconds, and is withheld
from other slots for ``affinity`` seconds while its previous slot may come back for it: the
orchestrator's routing rows name ports, and a recycled port must not silently route model A's
traffic to model B's new process. The previous owner may take its own port back at once,
because its rows already point there.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from durable_installs.node_agent.errors import AgentError

log = logging.getLogger(__name__)


@dataclass
class _Released:
    owner: str
    at: float


def port_is_bindable(port: int) -> bool:
    """Whether nothing on this host listens on ``port`` (ours or anybody else's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out ports of ``[low, high]`` to process keys."""

    def __init__(
        self,
        low: int,
        high: int,
        quarantine: float = 15.0,
        affinity: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        is_free: Callable[[int], bool] = port_is_bindable,
    ) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"invalid port range {low}-{high}")
        self.low, self.high = low, high
        self._quarantine = quarantine
        self._affinity = affinity
        self._clock = clock
        self._is_free = is_free
        self._in_use: dict[int, str] = {}
        self._released: dict[int, _Released] = {}

    def in_use(self) -> dict[int, str]:
        """Ports currently held, by port."""
        return dict(self._in_use)

    def allocate(self, key: str) -> int:
        """A port for ``key``: own previous port, a free released one, a fresh one, a stolen one.

        Raises the catalogue's "no free gRPC port" error when the range is exhausted.
        """
        now = self._clock()
        for port in self._candidates(key, now):
            if self._is_free(port):
                self._released.pop(port, None)
                self._in_use[port] = key
                return port
        quarantined = sum(1 for r in self._released.values() if now - r.at < self._quarantine)
        raise AgentError(
            f"allocating gRPC port for backend {key}: no free gRPC port in range: "
            f"{self.low}-{self.high} is fully consumed by {len(self._in_use)} running "
            f"backend(s) and {quarantined} port(s) still in quarantine; "
            "raise LOCALAI_GRPC_MAX_PORT to widen the range"
        )

    def _candidates(self, key: str, now: float) -> Iterator[int]:
        own = [p for p, r in self._released.items() if r.owner == key]
        yield from own
        cooled = sorted(
            p
            for p, r in self._released.items()
            if r.owner != key and now - r.at >= self._quarantine
        )
        unowned = [p for p in cooled if now - self._released[p].at >= self._affinity]
        yield from unowned
        for port in range(self.low, self.high + 1):
            if port not in self._in_use and port not in self._released:
                yield port
        for port in cooled:
            if port not in unowned:
                log.warning("port range exhausted; taking port %s released by another slot", port)
                yield port

    def reserve(self, port: int, key: str) -> bool:
        """Hold ``port`` for ``key`` because a process already listens there (adoption).

        False when another key holds it. A port outside the range is held all the same (the
        range may have changed since the process started) and dropped when released.
        """
        holder = self._in_use.get(port)
        if holder is not None and holder != key:
            return False
        self._released.pop(port, None)
        self._in_use[port] = key
        return True

    def release(self, port: int, key: str) -> None:
        """Return ``port`` (held by ``key``): quarantined for others, kept for ``key``."""
        if self._in_use.get(port) == key:
            del self._in_use[port]
            if self.low <= port <= self.high:
                self._released[port] = _Released(owner=key, at=self._clock())
