"""Node announcements: what a node agent tells the fleet about itself, in a JetStream KV bucket.

Stock LocalAI workers register through LocalAI's own frontend; node agents also put one entry
per agent process into the ``backend-nodes`` key-value bucket, so any worker can learn the
fleet without a new server. Keys are ``<node_id>.<instance_id>``: two agents started with one
node id show up as two keys under the same node prefix instead of overwriting each other. The
bucket's TTL removes the entry of an agent that died without saying goodbye.

This is the one definition of the wire shape (the node agent imports only :mod:`protocol`);
:mod:`contracts.nodes` re-exports it for the orchestrator. Everything read from the bucket is
untrusted: every field is bounded and unknown fields are ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from durable_installs.protocol.messages import (
    MAX_INSTANCE_ID_LENGTH,
    NodeBackendInfo,
    RunningModelInfo,
)
from durable_installs.protocol.subjects import MAX_TOKEN_LENGTH, check_token

NODE_REGISTRY_BUCKET = "backend-nodes"
"""The JetStream key-value bucket node agents announce themselves in."""

NODE_ANNOUNCE_TTL_SECONDS = 30
"""Bucket TTL: an entry not refreshed for this long disappears (the agent is gone)."""

NODE_ANNOUNCE_INTERVAL_SECONDS = 10.0
"""How often an agent re-announces; a third of the TTL, so two lost puts do not drop it."""

MAX_ANNOUNCED_BACKENDS = 1024
MAX_ANNOUNCED_RUNNING = 4096
MAX_ANNOUNCED_GALLERIES = 32
MAX_GALLERY_URL_LENGTH = 2048
MAX_ANNOUNCEMENT_BYTES = 1024 * 1024
"""An entry larger than this is ignored by readers (and the bucket refuses larger values)."""

_Text = Annotated[str, Field(max_length=MAX_TOKEN_LENGTH)]


class AnnouncedGallery(BaseModel):
    """A gallery a node installs from, as announced: its name and index URL."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    name: _Text
    """The gallery's name."""
    url: Annotated[str, Field(max_length=MAX_GALLERY_URL_LENGTH)]
    """Where its index lives."""


class NodeAnnouncement(BaseModel):
    """One agent process: who it is, what it runs and has installed, when it said so."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    node_id: _Text
    """The node id the agent serves."""
    instance_id: Annotated[str, Field(max_length=MAX_INSTANCE_ID_LENGTH)]
    """The agent process (new on every start)."""
    agent_version: _Text = ""
    """The agent's package version."""
    capability: _Text = ""
    """The node's capability (``nvidia``, ``amd``, ``default``, ...), which picks meta backends'
    builds."""
    hostname: _Text = ""
    """The machine's host name."""
    started_at: datetime
    """When the agent process started."""
    announced_at: datetime
    """When this entry was written."""
    backends: Annotated[list[NodeBackendInfo], Field(max_length=MAX_ANNOUNCED_BACKENDS)] = Field(
        default_factory=list
    )
    """What ``backend.list`` shows."""
    running: Annotated[list[RunningModelInfo], Field(max_length=MAX_ANNOUNCED_RUNNING)] = Field(
        default_factory=list
    )
    """What ``models.running`` shows, each slot with the backend it runs."""
    galleries: Annotated[list[AnnouncedGallery], Field(max_length=MAX_ANNOUNCED_GALLERIES)] = Field(
        default_factory=list
    )
    """The galleries the agent installs from (name and index URL, never credentials), so an
    operator's tool can show what the fleet may install without being told where to look."""

    def to_wire(self) -> bytes:
        """The UTF-8 JSON value stored under :func:`announcement_key`."""
        return self.model_dump_json().encode()


def announcement_key(node_id: str, instance_id: str) -> str:
    """``<node_id>.<instance_id>``: both parts must be valid subject tokens."""
    return f"{check_token('node_id', node_id)}.{check_token('instance_id', instance_id)}"


def node_key_filter(node_id: str) -> str:
    """The KV subject filter of every entry of one node id: ``<node_id>.>``."""
    return f"{check_token('node_id', node_id)}.>"


def registry_config() -> KeyValueConfig:
    """The bucket: one value per key, entries expire after the TTL, kept in memory.

    Memory storage is enough: the registry is rebuilt by the agents within one announce
    interval after a server restart, and it needs no disk on the NATS servers.
    """
    return KeyValueConfig(
        bucket=NODE_REGISTRY_BUCKET,
        description="node agents announcing themselves (issue 13)",
        history=1,
        ttl=NODE_ANNOUNCE_TTL_SECONDS,
        max_value_size=MAX_ANNOUNCEMENT_BYTES,
        storage=StorageType.MEMORY,
    )


async def open_registry(nc: NATS, *, create: bool) -> KeyValue:
    """The node registry bucket; created first when missing and ``create`` is set.

    Raises ``BucketNotFoundError`` when it is missing and may not be created here, and the
    client's JetStream errors when the server runs without JetStream (``-js``).
    """
    js = nc.jetstream()
    try:
        return await js.key_value(NODE_REGISTRY_BUCKET)
    except BucketNotFoundError:
        if not create:
            raise
    return await js.create_key_value(registry_config())


REGISTRY_READ_TIMEOUT = 5.0
"""Bound on waiting for the next registry entry while reading the bucket."""


def parse_entry(key: str, value: bytes | None) -> NodeAnnouncement | None:
    """The announcement stored under ``key``, or None when it is not one we may trust: too
    large, not an announcement, or stored under another node's key."""
    if not value or len(value) > MAX_ANNOUNCEMENT_BYTES:
        return None
    try:
        announcement = NodeAnnouncement.model_validate_json(value)
        expected = announcement_key(announcement.node_id, announcement.instance_id)
    except (ValidationError, ValueError):
        return None
    return announcement if expected == key else None


async def read_announcements(kv: KeyValue) -> tuple[list[NodeAnnouncement], int]:
    """Every live announcement in the bucket, sorted by node, start and instance, and how many
    entries were skipped as untrustworthy."""
    watcher = await kv.watchall(ignore_deletes=True)
    nodes: list[NodeAnnouncement] = []
    skipped = 0
    try:
        while True:
            entry = await watcher.updates(timeout=REGISTRY_READ_TIMEOUT)  # type: ignore[no-untyped-call]
            if entry is None:
                break
            announcement = parse_entry(entry.key, entry.value)
            if announcement is None:
                skipped += 1
            else:
                nodes.append(announcement)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    nodes.sort(key=lambda n: (n.node_id, n.started_at, n.instance_id))
    return nodes, skipped
