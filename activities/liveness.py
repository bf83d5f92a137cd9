"""Is the node still working on our op? Asked while an install request is outstanding.

A node agent killed mid-install never answers its request: without this check the activity
waits the whole ``install_timeout_seconds`` (15 minutes by default) for nothing. So when no
progress event has arrived for a while, the activity asks the node agent's status extension
about the op, and, for nodes without the extension, whether anything answers at all.

What counts as gone, and why:

* the agent answers with another **instance id** than its first answer: it restarted and
  forgot every request it had (conclusive at once);
* the agent answers that the op is **not in flight**: it forgot it, or it just finished and
  the reply is on its way. Only a second such answer a moment later counts;
* **nothing answers**, neither the status extension nor stock ``models.running`` (no
  responders on both, twice): the node is down.

A stock LocalAI worker has no status extension: if ``models.running`` answers, the node is
alive and we keep waiting; nothing is guessed. Silence within the timeout (a slow node or a
slow network) is not evidence either way and never ends the wait.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError

from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    InstallStatusReply,
    InstallStatusRequest,
    NodeSlotState,
)

CONFIRM_DELAY = 2.0
"""How soon a suspicious answer is checked again; only two in a row end the wait."""

ANSWER_TIMEOUT = 5.0
"""How long one status or ``models.running`` request waits; silence is no evidence."""

log = logging.getLogger(__name__)


class Liveness(Enum):
    """What one check concluded."""

    ALIVE = "alive"
    """Working on the op, or alive without the status extension, or silent: keep waiting."""
    SUSPECT = "suspect"
    """Looks gone; check again after ``CONFIRM_DELAY`` before giving up."""
    FORGOT = "forgot"
    """The node is up but no longer has the op: the workflow probes and re-sends."""
    UNREACHABLE = "unreachable"
    """Nothing answers on the node's subjects."""


@dataclass(frozen=True)
class Finding:
    """A check's conclusion and, when not alive, why (our words, never the node's)."""

    liveness: Liveness
    reason: str = ""
    conclusive: bool = True
    """False: the answer may be a race (reply in transit, a routing blip); confirm first."""


class NodeWatch:
    """The liveness checks of one install request on one node."""

    def __init__(
        self, nc: NATS, node_id: str, request: InstallStatusRequest, timeout: float
    ) -> None:
        self._nc = nc
        self._node_id = node_id
        self._request = request
        self._timeout = timeout
        self._instance_id: str | None = None
        """The instance id of the agent's first answer ("" for an agent that sends none)."""
        self._suspect: Finding | None = None

    def working(self) -> None:
        """A progress event arrived: the node has the op, whatever a check said before."""
        self._suspect = None

    async def check(self) -> Finding:
        """Ask the node; an inconclusive finding counts only when seen twice in a row."""
        finding = await self._observe()
        if finding.liveness is Liveness.ALIVE:
            self._suspect = None
            return finding
        if finding.conclusive or self._suspect is not None:
            return finding
        self._suspect = finding
        return Finding(Liveness.SUSPECT, finding.reason)

    async def _observe(self) -> Finding:
        try:
            msg = await self._nc.request(
                subjects.install_status(self._node_id),
                self._request.to_wire(),
                timeout=self._timeout,
            )
            reply = InstallStatusReply.model_validate_json(msg.data)
        except NoRespondersError:
            return await self._stock_liveness()
        except (NatsTimeoutError, ValidationError):
            return Finding(Liveness.ALIVE)
        except NatsError as err:  # our own connection is in trouble: no evidence about the node
            log.info("liveness check of node %s not possible: %s", self._node_id, err)
            return Finding(Liveness.ALIVE)
        if self._instance_id is None:
            self._instance_id = reply.instance_id
        elif reply.instance_id != self._instance_id:
            return Finding(
                Liveness.FORGOT, "the node agent restarted since the request (new instance id)"
            )
        if reply.state is NodeSlotState.IN_FLIGHT:
            return Finding(Liveness.ALIVE)
        return Finding(
            Liveness.FORGOT,
            f"the node agent reports the slot {reply.state.value} and no install in flight",
            conclusive=False,
        )

    async def _stock_liveness(self) -> Finding:
        """No status extension: alive if ``models.running`` answers, gone if nothing does."""
        try:
            await self._nc.request(
                subjects.models_running(self._node_id), b"{}", timeout=self._timeout
            )
        except NoRespondersError:
            return Finding(
                Liveness.UNREACHABLE,
                "nothing answers on the node's status or models.running subjects",
                conclusive=False,
            )
        except NatsError:  # a timeout or our own connection's trouble: no evidence
            pass
        return Finding(Liveness.ALIVE)
