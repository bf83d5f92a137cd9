"""``RolloutBackendWorkflow``: one backend across the fleet, a bounded number at a time.

One workflow type, two drivers. An **install** rollout (:class:`SlotDriver`) installs a
backend on many slots: every slot is an ``InstallBackendWorkflow`` whose id is derived from
the slot (:func:`contracts.install.install_workflow_id`), so a re-run or an overlapping
rollout can never install the same slot twice at once. It does not start them as children:
it hands slots in batches to the ``install_slots`` activity, which starts (or joins) each
install like any client would and sends the outcomes back a batch at a time: a child per slot
made this one history the bottleneck (bench/README.md, "Rollout over 1,000 slots"). The
installs carry the ``RolloutId`` search attribute instead of a parent link. Before the history
grows too large the rollout stops starting slots, lets the batches in flight finish and
continues as new with every slot's status.

An **upgrade** or **delete** rollout (:class:`NodeDriver`) works node by node,
``max_unavailable`` at a time, each node one ``UpgradeBackendWorkflow`` (or
``DeleteBackendWorkflow``) child, health-gated, with rollback.

This module is the shell (activities, children, timers, signals, patches); what the rollout
knows and decides is ``workflows/rollout_state.py``, its steps' inputs and timeouts
``workflows/rollout_steps.py``, both passed through the sandbox.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    import pydantic

    from durable_installs.contracts.failures import INVALID_INPUT, root_message
    from durable_installs.contracts.lifecycle import DeleteBackendInput
    from durable_installs.contracts.limits import MAX_SEARCH_ATTRIBUTE_BYTES, utf8_problem
    from durable_installs.contracts.names import (
        ADD_TARGETS_UPDATE,
        CANCEL_ROLLOUT_SIGNAL,
        DELETE_WORKFLOW,
        DROP_PREVIOUS_ACTIVITY,
        INSTALL_SLOTS_ACTIVITY,
        LIST_NODES_ACTIVITY,
        ROLLOUT_STATUS_QUERY,
        ROLLOUT_WORKFLOW,
        SLOT_STATE_SIGNAL,
        SLOTS_STARTED_SIGNAL,
        UPGRADE_WORKFLOW,
    )
    from durable_installs.contracts.nodes import FleetView
    from durable_installs.contracts.rollout import (
        MINIMAL_ROLLOUT_INPUT,
        AddTargetsResult,
        InstallSlotsResult,
        NodeOutcome,
        NodeState,
        RollbackState,
        RolloutAction,
        RolloutInput,
        RolloutStatus,
        RolloutTarget,
        SlotReport,
        SlotsStarted,
        SlotState,
        SlotStatus,
    )
    from durable_installs.contracts.upgrade import (
        DropPreviousInput,
        SlotRef,
        UpgradeBackendResult,
    )
    from workflows.inputs import check_input
    from workflows.rollout_state import NodeBook, SlotBook, counts, nodes_reporting
    from workflows.rollout_steps import (
        BATCH_HEARTBEAT_TIMEOUT,
        BATCH_RETRY,
        CANCELLED_ENDS_CANCELLED,
        DROP_PREVIOUS_RETRY,
        DROP_PREVIOUS_TIMEOUT,
        LIST_NODES_RETRY,
        LIST_NODES_TIMEOUT,
        batch_deadline,
        batch_input,
        child_id,
    )


@workflow.defn(name=ROLLOUT_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class RolloutBackendWorkflow:
    """Install (or upgrade, or delete) a backend across targets; report each one's outcome.

    Runs PINNED on a versioned worker (``durable_installs.orchestrator.registry``), like
    each install: a fleet rollout runs for hours and finishes on the worker version that
    started it (continue-as-new keeps the version). The installs it starts are workflows of
    their own and go to the version that is current when each one starts.
    """

    @workflow.init
    def __init__(self, input: RolloutInput | None = None) -> None:
        """Validate first; an invalid input keeps no slot and fails in ``run``.

        ``input`` is optional so that a start with no input fails with ``InvalidInput``
        instead of failing every workflow task.
        """
        checked = check_input(input, MINIMAL_ROLLOUT_INPUT, _workflow_id_problems())
        self._problems = checked.problems
        self._invalid = checked.invalid
        input = checked.input or RolloutInput(backend="")
        self._input = input
        node_mode = not input.action.per_slot
        self._slots = SlotBook(input.model_copy(update={"targets": []}) if node_mode else input)
        self._nodes = NodeBook(input)
        self._driver: SlotDriver | NodeDriver = (
            NodeDriver(input, self._nodes) if node_mode else SlotDriver(input, self._slots)
        )

    @workflow.run
    async def run(self, input: RolloutInput | None = None) -> RolloutStatus:
        """Until every target is finished, the policy stops it, or it is cancelled."""
        if self._invalid:
            raise ApplicationError(
                self._invalid, self._problems, type=INVALID_INPUT, non_retryable=True
            )
        return await self._driver.run(self.status)

    @workflow.query(name=ROLLOUT_STATUS_QUERY)
    def status(self) -> RolloutStatus:
        """Every slot (or node) with its state, address or error, and counts by state."""
        slots, nodes = self._slots, self._nodes
        return RolloutStatus(
            backend=self._input.backend,
            counts=counts(slots.slots.values()),
            slots=list(slots.slots.values()),
            in_flight=len(slots.in_flight),
            action=self._input.action,
            nodes=list(nodes.rows.values()),
            cancelled=slots.cancelled or nodes.cancelled,
            stopped=slots.stopped or nodes.stopped,
            runs=slots.runs,
        )

    @workflow.update(name=ADD_TARGETS_UPDATE)
    def add_targets(self, targets: list[RolloutTarget]) -> AddTargetsResult:
        """Queue more slots; slots the rollout already knows are not installed twice."""
        return self._slots.add_targets(targets)

    @add_targets.validator
    def _validate_targets(self, targets: list[RolloutTarget]) -> None:
        if self._invalid and self._input.action.per_slot:
            raise ValueError("the rollout no longer starts slots")
        problem = self._slots.targets_problem(targets)
        if problem:
            raise ValueError(problem)

    @workflow.signal(name=CANCEL_ROLLOUT_SIGNAL)
    def cancel_rollout(self) -> None:
        """Cancel in-flight work, start no more, and report what was done."""
        self._slots.cancelled = self._nodes.cancelled = True
        self._slots.changed = self._nodes.changed = True

    @workflow.signal(name=SLOT_STATE_SIGNAL)
    def slot_state_changed(self, reports: list[SlotReport]) -> None:
        """Installs say they are (still) installing; the batch activities say how slots ended."""
        for report in reports:
            self._slots.apply(report)

    @workflow.signal(name=SLOTS_STARTED_SIGNAL)
    def slots_started(self, started: SlotsStarted) -> None:
        """A batch's installs are running: those this rollout started, and those it joined."""
        self._slots.slots_started(started)


class SlotDriver:
    """An install rollout: batches of slots through ``install_slots``, at most in flight."""

    def __init__(self, input: RolloutInput, book: SlotBook) -> None:
        self._input = input
        self._book = book
        self._batches: dict[str, asyncio.Task[None]] = {}
        """Running ``install_slots`` activities, each named by its first slot's workflow id."""

    async def run(self, status: Callable[[], RolloutStatus]) -> RolloutStatus:
        book = self._book
        try:
            await self._drive()
        except asyncio.CancelledError:
            await self._cancel_everything()
            if workflow.patched(CANCELLED_ENDS_CANCELLED):
                raise
        if not book.cancelled and self._should_continue_as_new():
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(book.carry_over())
        self._publish()
        return status()

    async def _drive(self) -> None:
        book = self._book
        while True:
            if book.cancelled:
                await self._cancel_everything()
                return
            draining = self._should_continue_as_new()
            if not draining and not book.stopped:
                while batch := book.next_batch():
                    name = batch[0].workflow_id
                    self._batches[name] = asyncio.create_task(self._install_batch(name, batch))
            if book.changed:
                self._publish()
                book.changed = False
            if not self._batches and (draining or book.stopped or not book.queue):
                return
            await workflow.wait_condition(lambda: book.changed)

    async def _install_batch(self, name: str, batch: list[SlotStatus]) -> None:
        """Run one ``install_slots`` activity; slots it did not report end with its failure."""
        info = workflow.info()
        state, error = SlotState.FAILED, "the batch ended without reporting this slot"
        try:
            result = await workflow.execute_activity(
                INSTALL_SLOTS_ACTIVITY,
                batch_input(self._input, batch, info.workflow_id, info.task_queue),
                result_type=InstallSlotsResult,
                schedule_to_close_timeout=batch_deadline(self._input),
                heartbeat_timeout=BATCH_HEARTBEAT_TIMEOUT,
                retry_policy=BATCH_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"install {len(batch)} slot(s) of {self._input.backend}",
            )
            for report in result.reports:
                self._book.apply(report)
        except ActivityError as err:
            if is_cancelled_exception(err):
                state, error = SlotState.CANCELLED, ""
            else:
                error = root_message(err)
        except asyncio.CancelledError:
            state, error = SlotState.CANCELLED, ""
        finally:
            self._book.batch_ended(batch, state, error)
            self._batches.pop(name, None)

    async def _cancel_everything(self) -> None:
        """Cancel the installs this rollout started, then the batches waiting for them.

        The installs are cancelled from here at once; a batch only learns of its own
        cancellation at its next heartbeat, and then cancels whatever it started after the
        rollout last heard from it. Joined installs belong to someone else and keep running.
        """
        own = self._book.cancel()
        if own:
            await asyncio.gather(
                *(workflow.get_external_workflow_handle(w).cancel() for w in own),
                return_exceptions=True,
            )
        batches = list(self._batches.values())
        for task in batches:
            task.cancel()
        if batches:
            await asyncio.gather(*batches, return_exceptions=True)
        self._publish()

    def _should_continue_as_new(self) -> bool:
        return bool(self._book.queue) and workflow.info().is_continue_as_new_suggested()

    def _publish(self) -> None:
        workflow.set_current_details(self._book.details())


class NodeDriver:
    """An upgrade or delete rollout: node by node, ``max_unavailable`` at a time."""

    def __init__(self, input: RolloutInput, book: NodeBook) -> None:
        self._input = input
        self._book = book
        self._children: dict[str, asyncio.Task[None]] = {}
        self._child_tag = ""

    async def run(self, status: Callable[[], RolloutStatus]) -> RolloutStatus:
        """Upgrade (or delete) node by node, ``max_unavailable`` at a time, health-gated.

        Each node is one ``UpgradeBackendWorkflow`` child (or ``DeleteBackendWorkflow``), whose
        success already includes the health gate: the node's slots back and answering
        ``Health`` within ``health_gate_seconds``. Nodes are few next to slots, so children
        keep the table exact at a few events per node. On a stop with ``rollback`` the nodes
        already upgraded get their previous version back; the previous versions the agents
        kept are dropped at the end. Fails when any node failed, unless the policy is
        ``continue``.
        """
        input, book = self._input, self._book
        cancel_requested = False
        # Replay-safe and unique to this execution: the workflow's seeded random, not its id
        # (a replayed history may carry another id).
        self._child_tag = workflow.uuid4().hex[:12]
        book.target(input.node_ids() or await self._nodes_reporting_backend())
        queue = deque(book.rows)
        running: set[str] = set()
        self._publish()
        try:
            while queue or running:
                while queue and len(running) < input.max_unavailable and not book.halted():
                    node = queue.popleft()
                    running.add(node)
                    book.rows[node].state = NodeState.RUNNING
                    self._children[node] = asyncio.create_task(self._node(node, running))
                if book.halted():
                    while queue:
                        book.rows[queue.popleft()].state = NodeState.SKIPPED
                if not running:
                    break
                book.changed = False
                self._publish()
                await workflow.wait_condition(lambda: book.changed or book.cancelled)
                if book.cancelled:
                    break
        except asyncio.CancelledError:
            book.cancelled = cancel_requested = True
        if book.cancelled:
            for task in self._children.values():
                task.cancel()
            await asyncio.gather(*self._children.values(), return_exceptions=True)
            book.cancel_rest()
        if input.action is RolloutAction.UPGRADE:
            if book.failures() and input.rollback and book.stopped and not book.cancelled:
                await self._roll_back()
            await self._drop_previous()
        self._publish()
        if cancel_requested and workflow.patched(CANCELLED_ENDS_CANCELLED):
            raise asyncio.CancelledError("rollout cancelled")
        result = status()
        failure = book.failure_error(result)
        if failure is not None:
            raise failure
        return result

    async def _nodes_reporting_backend(self) -> list[str]:
        """Every known node that reports the backend installed (the fleet registry)."""
        fleet = await workflow.execute_activity(
            LIST_NODES_ACTIVITY,
            result_type=FleetView,
            start_to_close_timeout=LIST_NODES_TIMEOUT,
            retry_policy=LIST_NODES_RETRY,
            summary="list the fleet's nodes",
        )
        return nodes_reporting(fleet, self._input.backend)

    async def _node(self, node: str, running: set[str]) -> None:
        """One node's upgrade (or delete); its row ends with the outcome and the node's words."""
        row = self._book.rows[node]
        input = self._input
        try:
            if input.action is RolloutAction.UPGRADE:
                upgrade = input.upgrade_input(node, workflow.info().workflow_id)
                row.workflow_id = child_id("upgrade", node, input.backend, self._child_tag)
                result = await workflow.execute_child_workflow(
                    UPGRADE_WORKFLOW,
                    upgrade,
                    id=row.workflow_id,
                    result_type=UpgradeBackendResult,
                    static_summary=f"upgrade {input.backend} on {node}",
                )
                row.repulled = True
                row.slots = [
                    SlotRef(model_id=o.model_id, replica_index=o.replica_index)
                    for o in result.slots
                ]
                row.before_version = result.before.version
                row.before_uri = result.before.uri
                row.after_version = result.after.version
            else:
                row.workflow_id = child_id("delete", node, input.backend, self._child_tag)
                await workflow.execute_child_workflow(
                    DELETE_WORKFLOW,
                    DeleteBackendInput(node_id=node, backend=input.backend, force=input.force),
                    id=row.workflow_id,
                    static_summary=f"delete {input.backend} on {node}",
                )
            self._book.succeeded(node)
        except (ChildWorkflowError, ApplicationError) as err:
            if is_cancelled_exception(err):
                row.state = NodeState.CANCELLED
            else:
                self._book.failed(node, err)
        except asyncio.CancelledError:
            row.state = NodeState.CANCELLED
        finally:
            running.discard(node)
            self._children.pop(node, None)
            self._book.changed = True

    async def _roll_back(self) -> None:
        """Return every node this rollout re-pulled to its previous version.

        The nodes that succeeded, and the failed ones whose re-pull happened (their new
        version is on disk but did not pass the gate): both have a kept previous version.
        """
        upgraded = self._book.rolled_back_candidates()
        limit = self._input.max_unavailable
        for start in range(0, len(upgraded), limit):
            await asyncio.gather(
                *(self._roll_back_node(r) for r in upgraded[start : start + limit])
            )

    async def _roll_back_node(self, row: NodeOutcome) -> None:
        row.rollback = RollbackState.RUNNING
        self._publish()
        rollback = self._input.upgrade_input(row.node_id, workflow.info().workflow_id).model_copy(
            update={
                "rollback": True,
                "keep_previous": False,
                "expected_version": row.before_version,
                "previous_uri": row.before_uri,
                "restore_slots": row.slots,
            }
        )
        try:
            await workflow.execute_child_workflow(
                UPGRADE_WORKFLOW,
                rollback,
                id=child_id("rollback", row.node_id, self._input.backend, self._child_tag),
                result_type=UpgradeBackendResult,
                static_summary=f"roll back {self._input.backend} on {row.node_id}",
            )
            row.rollback = RollbackState.ROLLED_BACK
        except ChildWorkflowError as err:
            row.rollback = RollbackState.FAILED
            row.rollback_error = root_message(err)

    async def _drop_previous(self) -> None:
        """The rollout is over: the agents forget the versions kept for a rollback."""
        await asyncio.gather(
            *(
                workflow.execute_activity(
                    DROP_PREVIOUS_ACTIVITY,
                    DropPreviousInput(node_id=node, backend=self._input.backend),
                    result_type=bool,
                    start_to_close_timeout=DROP_PREVIOUS_TIMEOUT,
                    retry_policy=DROP_PREVIOUS_RETRY,
                    summary=f"drop the previous version of {self._input.backend} on {node}",
                )
                for node in self._book.touched()
            ),
            return_exceptions=True,
        )

    def _publish(self) -> None:
        workflow.set_current_details(self._book.details())


def _workflow_id_problems() -> list[tuple[str, str]]:
    """The rollout's own id becomes every install's ``RolloutId`` search attribute."""
    problem = utf8_problem(workflow.info().workflow_id, MAX_SEARCH_ATTRIBUTE_BYTES)
    return [("workflow id", f"{problem} (it is every install's RolloutId)")] if problem else []
