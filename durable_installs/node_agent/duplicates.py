"""Noticing a second agent that serves the same node id.

Two agents with one node id would both answer every request and both download: the
orchestrator would get two addresses for one slot and nothing would say why. Each agent
therefore has an instance (random id, host, pid, start time) and answers
``nodes.<node>.agent.instance`` with it. At start-up, before subscribing to anything else,
an agent asks that subject; an answer means the node id is taken and the agent refuses to
start. Two agents that asked at the same moment both hear nothing, so a running agent asks
again periodically: the younger of two (later start, then larger instance id, an order both
agree on) stops, the older logs an error.

Replies arrive over NATS and are not trusted: each is bounded in size, decoded into checked
fields, and only those fields (never the raw body) go into logs and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

MAX_REPLY_BYTES = 1024
MAX_REPLIES = 16
"""Replies kept per check; more than one other agent is already an error."""

_INSTANCE_ID = re.compile(r"^[0-9a-f]{1,64}$")
_HOST = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,253}$")


def instance_subject(node_id: str) -> str:
    """The subject every agent of ``node_id`` answers with its instance."""
    return f"nodes.{node_id}.agent.instance"


class DuplicateAgent(Exception):
    """Another agent already serves this node id; the message names it."""


@dataclass(frozen=True)
class Instance:
    """Who one running agent is."""

    instance_id: str
    host: str
    pid: int
    started_at: float
    """Unix time."""

    def to_wire(self) -> bytes:
        return json.dumps(
            {
                "instance_id": self.instance_id,
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
            }
        ).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> Instance | None:
        """The instance in a reply, or None for anything malformed or out of bounds."""
        if len(data) > MAX_REPLY_BYTES:
            return None
        try:
            raw = json.loads(data)
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        instance_id, host = raw.get("instance_id"), raw.get("host")
        pid, started_at = raw.get("pid"), raw.get("started_at")
        if not (isinstance(instance_id, str) and _INSTANCE_ID.match(instance_id)):
            return None
        if not (isinstance(host, str) and _HOST.match(host)):
            return None
        if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**22):
            return None
        if not (isinstance(started_at, int | float) and 0 <= started_at < 2**33):
            return None
        return cls(instance_id, host, pid, float(started_at))

    def describe(self) -> str:
        """``instance <id> on host <h>, pid <p>, started <iso time>``."""
        started = datetime.fromtimestamp(self.started_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"instance {self.instance_id} on host {self.host}, pid {self.pid}, started {started}"

    def older_than(self, other: Instance) -> bool:
        """The order both agents agree on: earlier start wins, the instance id breaks ties."""
        return (self.started_at, self.instance_id) < (other.started_at, other.instance_id)


async def other_instances(
    nc: NATS, node_id: str, me: Instance, window: float, first_only: bool = False
) -> list[Instance]:
    """Other agents answering for ``node_id`` within ``window`` seconds.

    Returns at once when the server says nobody listens; with ``first_only`` also at the
    first other agent.
    """
    found: list[Instance] = []
    done = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status") == "503":  # no responders
            done.set()
            return
        other = Instance.from_wire(msg.data)
        if other is not None and other.instance_id != me.instance_id:
            found.append(other)
            if first_only or len(found) >= MAX_REPLIES:
                done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(instance_subject(node_id), me.to_wire(), reply=inbox)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                await done.wait()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found[:MAX_REPLIES]
