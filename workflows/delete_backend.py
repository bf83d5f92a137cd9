"""``DeleteBackendWorkflow``: remove one backend from one node, and prove it is gone.

LocalAI's ``backend.delete`` stops whatever runs the backend and removes it, so a delete sent
blindly kills serving slots, and its ``success`` says nothing about what is left. Here:

1. ask the node what it has of the backend (``backend.list`` + ``models.running``);
2. nothing there: succeed with outcome ``absent`` (deleting twice is fine);
3. slots running it and no ``force``: fail with ``DeleteRefused`` naming them, nothing sent;
4. with ``force``: ``backend.stop`` each slot, wait (durable timers) until none runs;
5. ``backend.delete`` ("backend not found" counts as already gone);
6. ask again: anything still listed or running fails with ``DeleteIncomplete``.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from durable_installs.contracts.failures import (
        DELETE_FAILED,
        DELETE_INCOMPLETE,
        DELETE_REFUSED,
        INVALID_INPUT,
    )
    from durable_installs.contracts.install import missing_input_message
    from durable_installs.contracts.lifecycle import (
        MINIMAL_DELETE_INPUT,
        DeleteActivityInput,
        DeleteActivityResult,
        DeleteBackendInput,
        DeleteBackendResult,
        DeleteOutcome,
        NodeInventory,
        NodeInventoryInput,
        StopSlotsInput,
    )
    from durable_installs.contracts.names import (
        DELETE_ACTIVITY,
        DELETE_WORKFLOW,
        NODE_INVENTORY_ACTIVITY,
        STOP_BACKEND_ACTIVITY,
    )

NODE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=[DELETE_FAILED],
)
"""A silent or unreachable node is asked a few times, then the delete fails naming why."""

MAX_LISTED_SLOTS = 20
"""Slots named in a refusal message; the rest are counted."""


def _slots_text(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_SLOTS])
    hidden = len(keys) - MAX_LISTED_SLOTS
    return f"{shown} and {hidden} more" if hidden > 0 else shown


@workflow.defn(name=DELETE_WORKFLOW)
class DeleteBackendWorkflow:
    """One backend, one node: refuse while it serves unless forced; verify it is gone."""

    def __init__(self) -> None:
        self._phase = "starting"

    @workflow.query(name="progress")
    def progress(self) -> str:
        """The current step: checking, stopping, deleting, verifying, done."""
        return self._phase

    @workflow.run
    async def run(self, input: DeleteBackendInput | None = None) -> DeleteBackendResult:
        if input is None:
            raise ApplicationError(
                missing_input_message(MINIMAL_DELETE_INPUT), type=INVALID_INPUT, non_retryable=True
            )
        invalid = input.describe_problems()
        if invalid:
            raise ApplicationError(invalid, type=INVALID_INPUT, non_retryable=True)
        node, backend = input.node_id, input.backend
        workflow.set_current_details(f"delete **{backend}** from **{node}**: checking")

        self._phase = "checking"
        before = await self._inventory(input, "check")
        if not before.installed and not before.running:
            return self._finish(
                input,
                DeleteOutcome.ABSENT,
                f"{backend} is not installed on {node}; nothing to delete",
            )

        stopped: list[str] = []
        if before.running:
            keys = before.running_keys()
            if not input.force:
                raise ApplicationError(
                    f"{backend} is serving on {node} (slots {_slots_text(keys)}); stop them "
                    "first, or delete with --force (input force: true) to stop them and delete",
                    keys,
                    type=DELETE_REFUSED,
                    non_retryable=True,
                )
            self._phase = "stopping"
            workflow.set_current_details(
                f"delete **{backend}** from **{node}**: stopping {_slots_text(keys)}"
            )
            await workflow.execute_activity(
                STOP_BACKEND_ACTIVITY,
                StopSlotsInput(node_id=node, process_keys=keys),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=NODE_RETRY,
                summary=f"stop {len(keys)} slot(s) of {backend} on {node}",
            )
            stopped = keys
            await self._wait_stopped(input)

        self._phase = "deleting"
        workflow.set_current_details(f"delete **{backend}** from **{node}**: deleting")
        deleted: DeleteActivityResult = await workflow.execute_activity(
            DELETE_ACTIVITY,
            DeleteActivityInput(
                node_id=node, backend=backend, timeout_seconds=input.request_timeout_seconds
            ),
            result_type=DeleteActivityResult,
            start_to_close_timeout=timedelta(seconds=input.request_timeout_seconds + 30),
            retry_policy=NODE_RETRY,
            summary=f"backend.delete {backend} on {node}",
        )

        self._phase = "verifying"
        after = await self._inventory(input, "verify")
        if after.installed or after.running:
            left = [*after.installed, *after.running_keys()]
            raise ApplicationError(
                f"{node} still has {backend} after backend.delete: {_slots_text(left)}",
                left,
                type=DELETE_INCOMPLETE,
                non_retryable=True,
            )
        if not deleted.deleted:
            return self._finish(
                input,
                DeleteOutcome.ABSENT,
                f"{backend} was already gone from {node} when the delete arrived",
                removed=before.installed,
                stopped=stopped,
            )
        return self._finish(
            input,
            DeleteOutcome.DELETED,
            f"deleted {backend} from {node}"
            + (f" after stopping {len(stopped)} slot(s)" if stopped else ""),
            removed=before.installed,
            stopped=stopped,
        )

    async def _inventory(self, input: DeleteBackendInput, why: str) -> NodeInventory:
        inventory: NodeInventory = await workflow.execute_activity(
            NODE_INVENTORY_ACTIVITY,
            NodeInventoryInput(
                node_id=input.node_id,
                backend=input.backend,
                galleries_json=input.galleries_json,
                timeout_seconds=input.request_timeout_seconds,
            ),
            result_type=NodeInventory,
            start_to_close_timeout=timedelta(seconds=2 * input.request_timeout_seconds + 30),
            retry_policy=NODE_RETRY,
            summary=f"{why}: what {input.node_id} has of {input.backend}",
        )
        return inventory

    async def _wait_stopped(self, input: DeleteBackendInput) -> None:
        """Poll until no slot runs the backend; give up after ``stop_wait_seconds``."""
        deadline = workflow.now() + timedelta(seconds=input.stop_wait_seconds)
        while True:
            inventory = await self._inventory(input, "wait for stop")
            if not inventory.running:
                return
            if workflow.now() >= deadline:
                raise ApplicationError(
                    f"slots {_slots_text(inventory.running_keys())} of {input.backend} on "
                    f"{input.node_id} still run {input.stop_wait_seconds:g}s after backend.stop; "
                    "nothing was deleted",
                    type=DELETE_INCOMPLETE,
                    non_retryable=True,
                )
            await workflow.sleep(
                timedelta(seconds=input.poll_interval_seconds), summary="wait for slots to stop"
            )

    def _finish(
        self,
        input: DeleteBackendInput,
        outcome: DeleteOutcome,
        message: str,
        removed: list[str] | None = None,
        stopped: list[str] | None = None,
    ) -> DeleteBackendResult:
        self._phase = "done"
        workflow.set_current_details(message)
        return DeleteBackendResult(
            node_id=input.node_id,
            backend=input.backend,
            outcome=outcome,
            message=message,
            removed=removed or [],
            stopped_slots=stopped or [],
        )
