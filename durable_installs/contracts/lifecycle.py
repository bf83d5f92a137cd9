"""Deleting a backend from one node: the workflow's input and result, its activities' shapes.

``DeleteBackendWorkflow`` refuses while slots run the backend unless ``force``; with ``force``
it stops them first, then sends ``backend.delete``, then checks with ``backend.list`` and
``models.running`` that nothing of the backend remains. Deleting what is absent succeeds and
says so.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from durable_installs.contracts.install import describe_problems, gallery_problems
from durable_installs.contracts.limits import (
    MAX_GALLERIES,
    MAX_INTERVAL_SECONDS,
    MAX_NAME_LENGTH,
    MIN_DURATION_SECONDS,
    Keywords,
    between,
    items_bounds,
    number_problem,
    text_bounds,
    text_problem,
    with_bounds,
)
from durable_installs.contracts.model import ContractModel
from durable_installs.protocol.messages import GalleryConfig, RunningModelInfo, encode_galleries
from durable_installs.protocol.subjects import MAX_TOKEN_LENGTH, token_problem

MINIMAL_DELETE_INPUT = {"node_id": "node-1", "backend": "llama-cpp"}
"""The smallest valid input, shown to whoever starts a delete without one."""

MAX_STOP_WAIT_SECONDS = 3_600.0
"""Longest wait for a forced stop to take the backend's processes down."""


def delete_workflow_id(node_id: str, backend: str) -> str:
    """``delete/<node>/<backend>``: one delete of a backend on a node at a time."""
    return f"delete/{node_id}/{backend}"


class DeleteBackendInput(ContractModel):
    """Remove ``backend`` from node ``node_id``. Durations are seconds."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra=with_bounds(lambda: DELETE_INPUT_BOUNDS)
    )

    node_id: str
    """Node to delete from: a NATS subject token."""
    backend: str
    """The backend as ``backend.list`` shows it (or a meta or alias name with
    ``backend_galleries``)."""
    force: bool = False
    """Stop the slots running the backend first; without it a running backend is refused."""
    backend_galleries: list[GalleryConfig] | None = None
    """Galleries that map a meta or alias name to the concrete names ``backend.list`` shows."""
    request_timeout_seconds: float = 30.0
    """How long each request to the node (list, running, delete) waits for the answer."""
    stop_wait_seconds: float = 60.0
    """With ``force``: how long the stopped slots may take to disappear from ``models.running``."""
    poll_interval_seconds: float = 1.0
    """Wait between checks while stopped slots are still going down."""

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field with the reason; empty when valid. Values are never echoed."""
        found: list[tuple[str, str]] = []
        node_problem = token_problem(self.node_id)
        if node_problem:
            found.append(("node_id", node_problem))
        backend_problem = text_problem(self.backend, MAX_NAME_LENGTH, required=True)
        if backend_problem:
            found.append(("backend", backend_problem))
        found += gallery_problems(self.backend_galleries)
        for field, low, high in (
            ("request_timeout_seconds", MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
            ("stop_wait_seconds", MIN_DURATION_SECONDS, MAX_STOP_WAIT_SECONDS),
            ("poll_interval_seconds", MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
        ):
            problem = number_problem(getattr(self, field), low, high, "seconds")
            if problem:
                found.append((field, problem))
        return found

    def describe_problems(self) -> str:
        """One line naming every invalid field, or "" when valid."""
        problems = self.problems()
        return f"invalid input: {describe_problems(problems)}" if problems else ""

    @property
    def galleries_json(self) -> str:
        """The galleries as the JSON string the protocol carries ("" for none)."""
        return encode_galleries(self.backend_galleries or [])


DELETE_INPUT_BOUNDS: dict[str, Keywords] = {
    "node_id": text_bounds(MAX_TOKEN_LENGTH, required=True),
    "backend": text_bounds(MAX_NAME_LENGTH, required=True),
    "backend_galleries": items_bounds(MAX_GALLERIES),
    "request_timeout_seconds": between(MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "stop_wait_seconds": between(MIN_DURATION_SECONDS, MAX_STOP_WAIT_SECONDS),
    "poll_interval_seconds": between(MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
}
"""The bounds ``problems()`` checks, as JSON Schema keywords (the generated reference)."""


class DeletePhase(StrEnum):
    """Where a delete stands: what its ``progress`` query answers (``backendctl delete`` prints
    each new one). The values are the strings the query has always returned."""

    STARTING = "starting"
    CHECKING = "checking"
    """Asking the node what it has of the backend."""
    STOPPING = "stopping"
    """With ``force``: stopping the slots that run it, then waiting until none does."""
    DELETING = "deleting"
    VERIFYING = "verifying"
    """Asking the node again: nothing of the backend may remain."""
    DONE = "done"


class DeleteOutcome(StrEnum):
    """What a delete found and did."""

    DELETED = "deleted"
    ABSENT = "absent"
    """Nothing of the backend was on the node; nothing was sent but the checks."""


class DeleteBackendResult(ContractModel):
    """What was removed, what was stopped first, and the proof that nothing remains."""

    node_id: str
    """The node."""
    backend: str
    """The backend as requested."""
    outcome: DeleteOutcome
    """``deleted``, or ``absent`` when nothing of it was there."""
    message: str
    """What was done, in a sentence."""
    removed: list[str] = Field(default_factory=list)
    """Names ``backend.list`` showed for the backend before the delete."""
    stopped_slots: list[str] = Field(default_factory=list)
    """Process keys stopped because ``force`` was set."""


# --- activities ------------------------------------------------------------------------------


class NodeInventoryInput(ContractModel):
    """Which node to ask and which backend its answer is matched against."""

    node_id: str
    """The node to ask."""
    backend: str
    """The backend the answers are matched against."""
    galleries_json: str = ""
    """The galleries as the protocol's JSON string, to map meta and alias names; empty for none."""
    timeout_seconds: float = 30.0
    """How long each request may take."""


class NodeInventory(ContractModel):
    """What one node has of one backend: listed names and running slots."""

    node_id: str
    """The node asked."""
    backend: str
    """The backend matched."""
    installed: list[str] = Field(default_factory=list)
    """Names from ``backend.list`` that mean the backend (itself, or its concrete build)."""
    running: list[RunningModelInfo] = Field(default_factory=list)
    """Slots from ``models.running`` that run it (see :func:`runs_backend`)."""
    notes: list[str] = Field(default_factory=list)
    """What the node could not tell (e.g. a stock worker's slots that cannot be attributed)."""

    def running_keys(self) -> list[str]:
        """``model#replica`` of each running slot, sorted."""
        return sorted(f"{m.model_id}#{m.replica_index}" for m in self.running)


class StopSlotsInput(ContractModel):
    """``backend.stop`` for these exact process keys on one node."""

    node_id: str
    """The node."""
    process_keys: list[str]
    """The slots to stop, as process keys ``<model>#<replica>``."""


class DeleteActivityInput(ContractModel):
    """One ``backend.delete`` request."""

    node_id: str
    """The node."""
    backend: str
    """The backend to delete, as the node lists it."""
    timeout_seconds: float = 30.0
    """How long the request may take."""


class DeleteActivityResult(ContractModel):
    """The node's answer: deleted, or already absent (``backend not found``)."""

    deleted: bool
    """The node deleted the backend."""
    already_absent: bool = False
    """The node answered "backend not found": it was already gone."""
    stopped_process_keys: list[str] = Field(default_factory=list)
    """Processes the node stopped to delete it."""
