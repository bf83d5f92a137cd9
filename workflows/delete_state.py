"""What a delete knows, every decision it makes, and each step's input and timeouts.

``DeleteBackendWorkflow`` is split like the install: this module is the core (the phase the
``progress`` query returns, the refusal while slots serve, the wait for forced stops, the
verification that nothing remains, the result), and ``workflows/delete_backend.py`` is the
shell that calls the activities and sleeps. The delete is small enough for its steps' inputs
and timeouts to live here too. The core takes the time as an argument and calls nothing of
``temporalio`` but its exception types and retry policy, so the sandbox passes it through
(imported once per worker) and tests check its decisions without a server
(``tests/workflows/test_delete_state.py``).
"""

from datetime import datetime, timedelta
from enum import Enum

from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import DELETE_FAILED, DELETE_INCOMPLETE, DELETE_REFUSED
from durable_installs.contracts.lifecycle import (
    DeleteActivityInput,
    DeleteActivityResult,
    DeleteBackendInput,
    DeleteBackendResult,
    DeleteOutcome,
    DeletePhase,
    NodeInventory,
    NodeInventoryInput,
    StopSlotsInput,
)

NODE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=[DELETE_FAILED],
)
"""A silent or unreachable node is asked a few times, then the delete fails naming why."""

STOP_TIMEOUT = timedelta(seconds=30)
"""Bound on publishing ``backend.stop`` for the slots (the wait for them to go is separate)."""

REQUEST_MARGIN_SECONDS = 30.0
"""Slack between the node requests' own timeouts and their activity's start-to-close."""

MAX_LISTED_SLOTS = 20
"""Slots named in a refusal message; the rest are counted."""


class NextStep(Enum):
    """What the delete does after its first look at the node (``DeleteState.after_check``)."""

    STOP = "stop"
    """Slots run the backend and ``force`` is set: stop them, wait until none runs, delete."""
    DELETE = "delete"
    """Nothing runs the backend: delete it."""


def slots_text(keys: list[str]) -> str:
    """The first ``MAX_LISTED_SLOTS`` keys, then how many more: a message stays readable."""
    shown = ", ".join(keys[:MAX_LISTED_SLOTS])
    hidden = len(keys) - MAX_LISTED_SLOTS
    return f"{shown} and {hidden} more" if hidden > 0 else shown


# --- each step's input and timeouts ---------------------------------------------------------


def inventory_input(input: DeleteBackendInput) -> NodeInventoryInput:
    """What one look at the node asks: its ``backend.list`` and ``models.running``."""
    return NodeInventoryInput(
        node_id=input.node_id,
        backend=input.backend,
        galleries_json=input.galleries_json,
        timeout_seconds=input.request_timeout_seconds,
    )


def inventory_timeout(input: DeleteBackendInput) -> timedelta:
    """Two requests to the node, one after the other, plus slack."""
    return timedelta(seconds=2 * input.request_timeout_seconds + REQUEST_MARGIN_SECONDS)


def stop_input(input: DeleteBackendInput, keys: list[str]) -> StopSlotsInput:
    """``backend.stop`` for exactly the slots found running."""
    return StopSlotsInput(node_id=input.node_id, process_keys=keys)


def delete_activity_input(input: DeleteBackendInput) -> DeleteActivityInput:
    """The one ``backend.delete`` request."""
    return DeleteActivityInput(
        node_id=input.node_id,
        backend=input.backend,
        timeout_seconds=input.request_timeout_seconds,
    )


def delete_timeout(input: DeleteBackendInput) -> timedelta:
    """One request to the node, plus slack."""
    return timedelta(seconds=input.request_timeout_seconds + REQUEST_MARGIN_SECONDS)


def stand_in_input() -> DeleteBackendInput:
    """What an invalid delete holds in place of its input: nothing of it is used."""
    return DeleteBackendInput(node_id="", backend="")


# --- the state -------------------------------------------------------------------------------


class DeleteState:
    """The phase of one delete, what the node had before, and the slots it stopped."""

    def __init__(self, input: DeleteBackendInput) -> None:
        self.input = input
        self.phase = DeletePhase.STARTING
        self.details = ""
        """The UI's current details ("" until the delete starts checking)."""
        self.before: NodeInventory | None = None
        """The node's first answer: what it had of the backend."""
        self.running_keys: list[str] = []
        """The slots that ran the backend at the first look (``model#replica``)."""
        self.stopped: list[str] = []
        """The slots stopped because ``force`` was set."""
        self.stop_deadline: datetime | None = None

    def enter(self, phase: DeletePhase) -> None:
        """Record the phase and the details line that goes with it.

        Verifying keeps the line that says the delete was sent: the result replaces it
        moments later, or a failure explains what remained.
        """
        self.phase = phase
        doing = {
            DeletePhase.CHECKING: "checking",
            DeletePhase.STOPPING: f"stopping {slots_text(self.running_keys)}",
            DeletePhase.DELETING: "deleting",
        }.get(phase)
        if doing is not None:
            self.details = f"delete **{self.input.backend}** from **{self.input.node_id}**: {doing}"

    # --- decisions -----------------------------------------------------------------------------

    def after_check(self, before: NodeInventory) -> DeleteBackendResult | NextStep:
        """What the first look decides: nothing there succeeds at once (deleting twice is
        fine); serving slots refuse the delete unless ``force``, naming them, with nothing
        sent; forced, they are stopped first."""
        self.before = before
        node, backend = self.input.node_id, self.input.backend
        if not before.installed and not before.running:
            return self.finish(
                DeleteOutcome.ABSENT, f"{backend} is not installed on {node}; nothing to delete"
            )
        if not before.running:
            return NextStep.DELETE
        self.running_keys = before.running_keys()
        if not self.input.force:
            raise ApplicationError(
                f"{backend} is serving on {node} (slots {slots_text(self.running_keys)}); stop "
                "them first, or delete with --force (input force: true) to stop them and delete",
                self.running_keys,
                type=DELETE_REFUSED,
                non_retryable=True,
            )
        return NextStep.STOP

    def slots_stopped(self, now: datetime) -> None:
        """``backend.stop`` went out: the slots have ``stop_wait_seconds`` from ``now`` to go."""
        self.stopped = self.running_keys
        self.stop_deadline = now + timedelta(seconds=self.input.stop_wait_seconds)

    def all_stopped(self, inventory: NodeInventory, now: datetime) -> bool:
        """Whether no slot runs the backend any more (else the caller polls again); slots still
        running after the wait fail the delete before anything is deleted."""
        if not inventory.running:
            return True
        if self.stop_deadline is not None and now >= self.stop_deadline:
            raise ApplicationError(
                f"slots {slots_text(inventory.running_keys())} of {self.input.backend} on "
                f"{self.input.node_id} still run {self.input.stop_wait_seconds:g}s after "
                "backend.stop; nothing was deleted",
                type=DELETE_INCOMPLETE,
                non_retryable=True,
            )
        return False

    def after_verify(
        self, deleted: DeleteActivityResult, after: NodeInventory
    ) -> DeleteBackendResult:
        """The result once the node was asked again: anything still listed or running fails
        with ``DeleteIncomplete``; a node that no longer had it says it was already gone."""
        node, backend = self.input.node_id, self.input.backend
        if after.installed or after.running:
            left = [*after.installed, *after.running_keys()]
            raise ApplicationError(
                f"{node} still has {backend} after backend.delete: {slots_text(left)}",
                left,
                type=DELETE_INCOMPLETE,
                non_retryable=True,
            )
        removed = self.before.installed if self.before is not None else []
        if not deleted.deleted:
            return self.finish(
                DeleteOutcome.ABSENT,
                f"{backend} was already gone from {node} when the delete arrived",
                removed=removed,
            )
        return self.finish(
            DeleteOutcome.DELETED,
            f"deleted {backend} from {node}"
            + (f" after stopping {len(self.stopped)} slot(s)" if self.stopped else ""),
            removed=removed,
        )

    def finish(
        self, outcome: DeleteOutcome, message: str, removed: list[str] | None = None
    ) -> DeleteBackendResult:
        """The result; the message becomes the details."""
        self.phase = DeletePhase.DONE
        self.details = message
        return DeleteBackendResult(
            node_id=self.input.node_id,
            backend=self.input.backend,
            outcome=outcome,
            message=message,
            removed=removed or [],
            stopped_slots=self.stopped,
        )
