"""``DeleteBackendWorkflow``: remove one backend from one node, and prove it is gone.

LocalAI's ``backend.delete`` stops whatever runs the backend and removes it, so a delete sent
blindly kills serving slots, and its ``success`` says nothing about what is left. Here:

1. ask the node what it has of the backend (``backend.list`` + ``models.running``);
2. nothing there: succeed with outcome ``absent`` (deleting twice is fine);
3. slots running it and no ``force``: fail with ``DeleteRefused`` naming them, nothing sent;
4. with ``force``: ``backend.stop`` each slot, wait (durable timers) until none runs;
5. ``backend.delete`` ("backend not found" counts as already gone);
6. ask again: anything still listed or running fails with ``DeleteIncomplete``.

This module is the shell: every activity and timer. What the delete knows and decides, and
each step's input and timeouts, live in ``workflows/delete_state.py``, passed through the
sandbox.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from durable_installs.contracts.lifecycle import (
        MINIMAL_DELETE_INPUT,
        DeleteActivityResult,
        DeleteBackendInput,
        DeleteBackendResult,
        DeletePhase,
        NodeInventory,
    )
    from durable_installs.contracts.names import (
        DELETE_ACTIVITY,
        DELETE_PROGRESS_QUERY,
        DELETE_WORKFLOW,
        NODE_INVENTORY_ACTIVITY,
        STOP_BACKEND_ACTIVITY,
    )
    from workflows.delete_state import (
        NODE_RETRY,
        STOP_TIMEOUT,
        DeleteState,
        NextStep,
        delete_activity_input,
        delete_timeout,
        inventory_input,
        inventory_timeout,
        stand_in_input,
        stop_input,
    )
    from workflows.inputs import check_input


@workflow.defn(name=DELETE_WORKFLOW)
class DeleteBackendWorkflow:
    """One backend, one node: refuse while it serves unless forced; verify it is gone."""

    @workflow.init
    def __init__(self, input: DeleteBackendInput | None = None) -> None:
        """Validate first; an invalid input fails in ``run`` with ``InvalidInput``.

        ``input`` is optional so that a start with no input reaches ``run`` and fails there;
        an invalid one is replaced by a stand-in, so the query still answers ``starting``.
        """
        self._checked = check_input(input, MINIMAL_DELETE_INPUT)
        valid = self._checked.input
        self._state = DeleteState(valid if valid is not None else stand_in_input())

    @workflow.query(name=DELETE_PROGRESS_QUERY)
    def progress(self) -> DeletePhase:
        """The current step: checking, stopping, deleting, verifying, done."""
        return self._state.phase

    @workflow.run
    async def run(self, input: DeleteBackendInput | None = None) -> DeleteBackendResult:
        """Check, refuse or stop, delete, verify; the result says what was removed."""
        if self._checked.invalid:
            raise self._checked.failure(with_problems=False)
        state = self._state
        input = state.input
        self._enter(DeletePhase.CHECKING)
        step = state.after_check(await self._inventory("check"))
        if isinstance(step, DeleteBackendResult):
            return self._finished(step)

        if step is NextStep.STOP:
            self._enter(DeletePhase.STOPPING)
            keys = state.running_keys
            await workflow.execute_activity(
                STOP_BACKEND_ACTIVITY,
                stop_input(input, keys),
                start_to_close_timeout=STOP_TIMEOUT,
                retry_policy=NODE_RETRY,
                summary=f"stop {len(keys)} slot(s) of {input.backend} on {input.node_id}",
            )
            state.slots_stopped(workflow.now())
            while not state.all_stopped(await self._inventory("wait for stop"), workflow.now()):
                await workflow.sleep(
                    timedelta(seconds=input.poll_interval_seconds),
                    summary="wait for slots to stop",
                )

        self._enter(DeletePhase.DELETING)
        deleted: DeleteActivityResult = await workflow.execute_activity(
            DELETE_ACTIVITY,
            delete_activity_input(input),
            result_type=DeleteActivityResult,
            start_to_close_timeout=delete_timeout(input),
            retry_policy=NODE_RETRY,
            summary=f"backend.delete {input.backend} on {input.node_id}",
        )

        self._enter(DeletePhase.VERIFYING)
        return self._finished(state.after_verify(deleted, await self._inventory("verify")))

    async def _inventory(self, why: str) -> NodeInventory:
        input = self._state.input
        inventory: NodeInventory = await workflow.execute_activity(
            NODE_INVENTORY_ACTIVITY,
            inventory_input(input),
            result_type=NodeInventory,
            start_to_close_timeout=inventory_timeout(input),
            retry_policy=NODE_RETRY,
            summary=f"{why}: what {input.node_id} has of {input.backend}",
        )
        return inventory

    def _enter(self, phase: DeletePhase) -> None:
        self._state.enter(phase)
        workflow.set_current_details(self._state.details)

    def _finished(self, result: DeleteBackendResult) -> DeleteBackendResult:
        workflow.set_current_details(self._state.details)
        return result
