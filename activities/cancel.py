"""Telling a node to stop an op, the moment the workflow that owns it is cancelled.

The install activity tells the node when it learns of its cancellation (with a heartbeat's
answer). But after a request timed out, while the workflow probes, waits or backs off, no
activity runs at all and the node may well still be pulling the op. An install workflow
cancelled then runs this as a local activity before it ends, so the node agent stops the
download instead of finishing it for nobody. Stock LocalAI workers have no cancel subject;
for them the publish reaches nobody and nothing changes (reference §8).
"""

from __future__ import annotations

import contextlib
import logging

from nats.aio.client import Client as NATS
from temporalio import activity

from activities.replies import OpReplies
from durable_installs.contracts.activities import CancelOpInput
from durable_installs.contracts.names import CANCEL_OP_ACTIVITY
from durable_installs.protocol import subjects

FLUSH_TIMEOUT = 2

log = logging.getLogger(__name__)


class CancelActivities:
    """The cancel activity on the worker's shared NATS connection."""

    def __init__(self, nc: NATS, replies: OpReplies | None = None) -> None:
        self._nc = nc
        self._replies = replies

    @activity.defn(name=CANCEL_OP_ACTIVITY)
    async def cancel_op(self, input: CancelOpInput) -> bool:
        """Publish the op's cancel; True when the server took it. Never raises: a node that
        is gone has nothing to stop, and the workflow ends cancelled either way."""
        if self._replies is not None:
            await self._replies.drop(input.node_id, input.op_id)
        try:
            await self._nc.publish(subjects.cancel(input.node_id, input.op_id), b"{}")
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=FLUSH_TIMEOUT)
        except Exception as err:
            log.warning("could not tell node %s to stop op %s: %s", input.node_id, input.op_id, err)
            return False
        log.info("told node %s to stop op %s", input.node_id, input.op_id)
        return True
