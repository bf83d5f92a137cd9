"""Activities of ``DeleteBackendWorkflow``: what a node has of a backend, stop, delete.

Each activity is one short exchange with one node; the workflow decides. Node answers are
validated against the protocol models; error texts quote the node's ``error`` field (the
node's own words, bounded) but never raw bytes of an unreadable reply.
"""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client as NATS
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.probe import NodeAnswer, ask_node, installed_name
from durable_installs.contracts.failures import DELETE_FAILED, NODE_SILENT, NODE_UNREACHABLE
from durable_installs.contracts.lifecycle import (
    DeleteActivityInput,
    DeleteActivityResult,
    NodeInventory,
    NodeInventoryInput,
    StopSlotsInput,
)
from durable_installs.contracts.names import (
    DELETE_ACTIVITY,
    NODE_INVENTORY_ACTIVITY,
    STOP_BACKEND_ACTIVITY,
)
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendDeleteReply,
    BackendDeleteRequest,
    BackendListReply,
    BackendStopRequest,
    ModelsRunningReply,
    RunningModelInfo,
)
from durable_installs.protocol.wire import WireModel
from durable_installs.telemetry import Telemetry

R = TypeVar("R", bound=WireModel)

MAX_NODE_ERROR_CHARS = 500
"""A node's error text is cut to this many characters before it enters a failure."""

NOT_FOUND_MARKER = "backend not found"
"""LocalAI's and the agent's ``backend.delete`` text for a backend that is not installed."""


def node_error_text(text: str) -> str:
    """The node's error, printable and bounded, for a failure message."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    if len(cleaned) > MAX_NODE_ERROR_CHARS:
        return cleaned[:MAX_NODE_ERROR_CHARS] + "…"
    return cleaned


def require_answer(answer: NodeAnswer[R], node_id: str) -> R:
    """The reply, or the retryable failure matching why a node did not answer."""
    if answer.reply is not None:
        return answer.reply
    error_type = NODE_UNREACHABLE if answer.offline else NODE_SILENT
    raise ApplicationError(f"node {node_id}: {answer.note}", type=error_type)


def runs_backend(model: RunningModelInfo, backend: str, installed: list[str]) -> bool:
    """Whether a running slot belongs to ``backend``.

    Node agents say which backend a process runs (``backend``, an extension); a stock worker
    does not, and only an admin slot (named after the backend itself) can be attributed.
    """
    names = {backend.lower(), *(name.lower() for name in installed)}
    if model.backend:
        return model.backend.lower() in names
    return model.model_id.lower() in names


class LifecycleActivities:
    """Inventory, stop and delete on one node; holds the worker's NATS connection."""

    def __init__(self, nc: NATS, telemetry: Telemetry | None = None) -> None:
        self._nc = nc
        self._tracer = (telemetry or Telemetry()).tracer()

    @activity.defn(name=NODE_INVENTORY_ACTIVITY)
    async def node_inventory(self, input: NodeInventoryInput) -> NodeInventory:
        """The listed names and running slots of ``input.backend`` on one node.

        Both requests must be answered: a delete decided on a partial picture could report
        "absent" for a node that merely did not reply.
        """
        node = input.node_id
        listed = await ask_node(
            self._nc,
            self._tracer,
            "backend.list",
            subjects.backend_list(node),
            BackendListReply,
            input.timeout_seconds,
        )
        listing = require_answer(listed, node)
        answer = await ask_node(
            self._nc,
            self._tracer,
            "models.running",
            subjects.models_running(node),
            ModelsRunningReply,
            input.timeout_seconds,
        )
        running = require_answer(answer, node)
        notes: list[str] = []
        if listing.error:
            raise ApplicationError(
                f"node {node}: backend.list failed: {node_error_text(listing.error)}",
                type=DELETE_FAILED,
            )
        installed: list[str] = []
        name = await installed_name(listing, input.backend, input.galleries_json, notes)
        if name:
            installed.append(name)
        slots = [m for m in running.models or [] if runs_backend(m, input.backend, installed)]
        return NodeInventory(
            node_id=node, backend=input.backend, installed=installed, running=slots, notes=notes
        )

    @activity.defn(name=STOP_BACKEND_ACTIVITY)
    async def stop_backend(self, input: StopSlotsInput) -> None:
        """Publish ``backend.stop`` for each exact process key (publish-only, no reply).

        The workflow checks ``models.running`` afterwards; a flush makes sure the server has
        the messages before the activity reports success.
        """
        subject = subjects.backend_stop(input.node_id)
        for key in input.process_keys:
            await self._nc.publish(subject, BackendStopRequest(backend=key, force=True).to_wire())
        await self._nc.flush(timeout=10)

    @activity.defn(name=DELETE_ACTIVITY)
    async def delete_backend(self, input: DeleteActivityInput) -> DeleteActivityResult:
        """One ``backend.delete``; "backend not found" counts as already absent."""
        node = input.node_id
        answer = await ask_node(
            self._nc,
            self._tracer,
            "backend.delete",
            subjects.backend_delete(node),
            BackendDeleteReply,
            input.timeout_seconds,
            body=BackendDeleteRequest(backend=input.backend).to_wire(),
        )
        reply = require_answer(answer, node)
        stopped = list(reply.stopped_process_keys or [])[:1000]
        if reply.success:
            return DeleteActivityResult(deleted=True, stopped_process_keys=stopped)
        if NOT_FOUND_MARKER in reply.error.lower():
            return DeleteActivityResult(deleted=False, already_absent=True)
        raise ApplicationError(
            f"node {node} refused to delete {input.backend}: {node_error_text(reply.error)}",
            type=DELETE_FAILED,
            non_retryable=True,
        )
