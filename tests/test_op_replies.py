"""The op reply subscriptions a worker holds between the fast path and the install activity."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from activities import replies as replies_module
from activities.replies import OpReplies
from durable_installs.protocol import subjects
from tests.workflow_helpers import wait_for


@pytest.fixture
async def own_nc(nats_url: str):
    """A connection of the test's own, so its subscriptions can be counted."""
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


def subscribed(conn: NATS) -> set[str]:
    return {sub.subject for sub in conn._subs.values()}


async def test_the_reply_subject_is_the_ops_on_the_connections_inbox_prefix(own_nc: NATS) -> None:
    replies = OpReplies(own_nc)

    assert replies.subject("node-1", "op-1") == "_INBOX.op.node-1.op-1"
    assert replies.subject("node-1", "").startswith("_INBOX."), "no op: a fresh inbox"


async def test_a_request_to_a_node_nobody_serves_is_no_responders(
    own_nc: NATS, node_id: str
) -> None:
    reply = await OpReplies(own_nc).open(node_id, "op-1")
    await own_nc.publish(subjects.install(node_id), b"{}", reply=reply.subject)

    with pytest.raises(NoRespondersError):
        await reply.wait(5)
    await reply.close()


async def test_a_wait_that_times_out_keeps_listening_for_the_reply(own_nc: NATS, nc: NATS) -> None:
    reply = await OpReplies(own_nc).open("node-1", f"op-{uuid.uuid4().hex[:6]}")
    with pytest.raises(NatsTimeoutError):
        await reply.wait(0.1)
    await own_nc.flush()
    await nc.publish(reply.subject, b'{"success": true}')

    assert (await reply.wait(5)).data == b'{"success": true}'
    await reply.close()
    assert reply.subject not in subscribed(own_nc)


async def test_a_kept_reply_nobody_takes_over_is_closed_after_its_time(own_nc: NATS) -> None:
    replies = OpReplies(own_nc)
    reply = await replies.open("node-1", "op-1")
    replies.keep(reply, seconds=0.1)

    await wait_for(lambda: replies.kept == 0 and reply.subject not in subscribed(own_nc))


async def test_beyond_the_limit_the_oldest_kept_reply_is_closed(
    own_nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replies_module, "MAX_KEPT", 2)
    replies = OpReplies(own_nc)
    kept = [await replies.open("node-1", f"op-{n}") for n in range(3)]
    for reply in kept:
        replies.keep(reply)

    await wait_for(lambda: kept[0].subject not in subscribed(own_nc))
    assert replies.kept == 2
    taken = await replies.open("node-1", "op-1")
    assert taken is kept[1], "opening a kept op takes its subscription over"
    await replies.drop("node-1", "op-2")
    assert replies.kept == 0
    await taken.close()
    await asyncio.sleep(0)
