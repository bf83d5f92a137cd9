"""Each op's reply subject: one ``backend.install`` per op, heard by whoever waits for it.

A stock worker answers a request exactly once, on the reply subject the request named. With a
random inbox per request, a requester that stops waiting (the fast path after its 1 s bound)
loses the answer for good, and the only way to hear from the node again is to ask again:
a second request while the node may still be working on the first. So the request names a
subject derived from the op (:func:`protocol.subjects.op_reply`), and the fast path and the
install activity that follows it both listen there. The fast path leaves its subscription
with this worker when it gives up waiting, so the install activity, which usually runs on the
same worker (eager activity dispatch), takes it over without a gap; on another worker it
subscribes to the same subject. A reply that lands in the gap between two subscriptions is
lost, and the install activity then times out and the workflow probes before anything is
sent again, as after any timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from durable_installs.protocol import subjects

STATUS_HEADER = "Status"
NO_RESPONDERS = "503"
"""The status a NATS server sends to the reply subject when nothing subscribes to the subject
a request went to (servers >= 2.2, clients that announce ``no_responders``)."""

KEEP_SECONDS = 300.0
"""How long a reply subscription the fast path left behind waits for the install activity
to take it over before it is closed; past that the activity subscribes afresh."""

MAX_KEPT = 20_000
"""Most reply subscriptions kept at once; beyond this the oldest is closed (its op then ends
in the timeout and probe path if its reply came in that gap)."""

log = logging.getLogger(__name__)


class OpReply:
    """The subscription on one op's reply subject and the first reply it received."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self._answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._subscription: Subscription | None = None

    async def _on_message(self, msg: Msg) -> None:
        """NATS callback: the first message wins; a no-responders status is an error."""
        if self._answer.done():
            return
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS:
            self._answer.set_exception(NoRespondersError())
        else:
            self._answer.set_result(msg)

    async def wait(self, seconds: float) -> Msg:
        """The node's reply; ``NatsTimeoutError`` after ``seconds``, the reply kept coming
        to this subscription meanwhile (it may be waited for again)."""
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.shield(self._answer)
        except TimeoutError:
            raise NatsTimeoutError from None

    @property
    def answered(self) -> bool:
        return self._answer.done()

    async def close(self) -> None:
        """Stop listening; a reply that arrives later is dropped."""
        if self._answer.done() and not self._answer.cancelled():
            self._answer.exception()  # retrieved, so asyncio never logs it as unretrieved
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


class OpReplies:
    """The reply subscriptions of one worker's NATS connection, by op."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._kept: OrderedDict[str, tuple[OpReply, asyncio.TimerHandle]] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._prefix = ""

    def subject(self, node_id: str, op_id: str) -> str:
        """The op's reply subject on this connection's inbox prefix (a fresh inbox without an
        op id: such a request is never followed by anyone else)."""
        if not op_id:
            return self._nc.new_inbox()
        if not self._prefix:  # ``_INBOX`` or whatever the connection was given
            self._prefix = self._nc.new_inbox().rsplit(".", 1)[0]
        return subjects.op_reply(self._prefix, node_id, op_id)

    async def open(self, node_id: str, op_id: str) -> OpReply:
        """Listen for the op's reply: the subscription this worker kept for it, else a new one.

        The subscription is registered before this returns; a request published afterwards on
        the same connection cannot be answered before the server knows of it.
        """
        subject = self.subject(node_id, op_id)
        kept = self._kept.pop(subject, None)
        if kept is not None:
            reply, expiry = kept
            expiry.cancel()
            return reply
        reply = OpReply(subject)
        reply._subscription = await self._nc.subscribe(subject, cb=reply._on_message)
        return reply

    def keep(self, reply: OpReply, seconds: float = KEEP_SECONDS) -> None:
        """Leave ``reply`` listening for whoever opens the same op next on this worker."""
        if reply.subject in self._kept:
            return
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(seconds, self._expire, reply.subject)
        self._kept[reply.subject] = (reply, expiry)
        while len(self._kept) > MAX_KEPT:
            _, (oldest, oldest_expiry) = self._kept.popitem(last=False)
            self._close_later(oldest, oldest_expiry)

    async def drop(self, node_id: str, op_id: str) -> None:
        """Stop listening for the op's reply if this worker kept it (the op is over)."""
        entry = self._kept.pop(self.subject(node_id, op_id), None) if op_id else None
        if entry is not None:
            reply, expiry = entry
            expiry.cancel()
            await reply.close()

    @property
    def kept(self) -> int:
        """Reply subscriptions waiting to be taken over (a gauge for the bench and metrics)."""
        return len(self._kept)

    def _expire(self, subject: str) -> None:
        entry = self._kept.pop(subject, None)
        if entry is not None:
            log.info("nobody took over the reply subscription %s; closing it", subject)
            self._close_later(*entry)

    def _close_later(self, reply: OpReply, expiry: asyncio.TimerHandle) -> None:
        expiry.cancel()
        task = asyncio.get_running_loop().create_task(reply.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
