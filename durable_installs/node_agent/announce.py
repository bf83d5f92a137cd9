"""The agent's entry in the node registry: put on start and every 10 s, deleted on clean stop.

The entry (:class:`protocol.announce.NodeAnnouncement`) says who this agent is and what it has
installed and running, so the orchestrator finds the fleet (``list_nodes``) and a rollout's
``upgrade``/``delete`` finds the nodes that report a backend. Announcing is best effort: a
server without JetStream, or a user not allowed to write the bucket, costs a warning and a
retry on the next round, never the agent's service.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from durable_installs.protocol.announce import (
    MAX_ANNOUNCED_BACKENDS,
    MAX_ANNOUNCED_GALLERIES,
    MAX_ANNOUNCED_RUNNING,
    AnnouncedGallery,
    NodeAnnouncement,
    announcement_key,
    open_registry,
)
from durable_installs.protocol.messages import GalleryConfig, NodeBackendInfo, RunningModelInfo

log = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT = 5.0
"""Bound on one put (or the final delete); a slow server must not hold up start or stop."""


def agent_version() -> str:
    """The installed package's version (``0.1.0``), or ``unknown`` from a bare checkout."""
    try:
        return importlib.metadata.version("durable-backend-installs")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` removed: the bucket is readable by the fleet."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Announcer:
    """Keeps this agent's registry entry fresh while the agent runs."""

    def __init__(
        self,
        nc: NATS,
        node_id: str,
        instance_id: str,
        capability: str,
        hostname: str,
        inventory: Callable[[], tuple[list[NodeBackendInfo], list[RunningModelInfo]]],
        interval: float,
        galleries: list[GalleryConfig] | None = None,
    ) -> None:
        self._nc = nc
        self._key = announcement_key(node_id, instance_id)
        self._base = dict(
            node_id=node_id,
            instance_id=instance_id,
            agent_version=agent_version(),
            capability=capability,
            hostname=hostname[:256],
            started_at=datetime.now(UTC),
            galleries=[
                AnnouncedGallery(name=g.name, url=_without_credentials(g.url))
                for g in (galleries or [])[:MAX_ANNOUNCED_GALLERIES]
            ],
        )
        self._inventory = inventory
        self._interval = interval
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self.announced = 0
        """Puts that succeeded (tests wait on it)."""

    @property
    def key(self) -> str:
        """``<node_id>.<instance_id>``."""
        return self._key

    async def start(self) -> None:
        """Announce once now (so a started agent is visible at once), then periodically."""
        await self.announce()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.announce()

    def snapshot(self) -> NodeAnnouncement:
        """The entry as of now."""
        backends, running = self._inventory()
        return NodeAnnouncement.model_validate(
            {
                **self._base,
                "announced_at": datetime.now(UTC),
                "backends": backends[:MAX_ANNOUNCED_BACKENDS],
                "running": running[:MAX_ANNOUNCED_RUNNING],
            }
        )

    async def announce(self) -> None:
        """One put; a failure is logged (once until the next success) and left for next round."""
        try:
            async with asyncio.timeout(ANNOUNCE_TIMEOUT):
                if self._kv is None:
                    self._kv = await open_registry(self._nc, create=True)
                await self._kv.put(self._key, self.snapshot().to_wire())
        except Exception as err:  # JetStream off, permissions, connection trouble
            self._kv = None
            level = logging.DEBUG if self._warned else logging.WARNING
            log.log(
                level,
                "could not announce %s in the node registry (is JetStream on, -js?): %s",
                self._key,
                err or type(err).__name__,
            )
            self._warned = True
            return
        self._warned = False
        self.announced += 1

    async def stop(self) -> None:
        """Stop re-announcing and delete the entry, so the fleet view drops this agent now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kv is None:
            return
        try:
            async with asyncio.timeout(ANNOUNCE_TIMEOUT):
                await self._kv.delete(self._key)
        except Exception as err:  # the TTL removes it anyway
            log.warning("could not remove %s from the node registry: %s", self._key, err)
