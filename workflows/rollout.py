"""``RolloutBackendWorkflow``: install one backend on many slots, a bounded number at a time.

Every slot is an ``InstallBackendWorkflow`` whose id is derived from the slot
(:func:`contracts.install.install_workflow_id`), so a re-run or an overlapping rollout can
never install the same slot twice at once. The rollout does not start them as children: it
hands slots in batches to the ``install_slots`` activity, which starts (or joins) each
install like any client would and sends the outcomes back a batch at a time. A child per slot
put three events per slot into this one history, and Temporal updates one workflow's history
serially: a 1,000-slot rollout took 2.4x the time of 1,000 independent starts. The installs
carry the ``RolloutId`` search attribute instead of a parent link. Before the history grows
too large the rollout stops starting slots, lets the batches in flight finish and continues as
new with every slot's status.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections import Counter, deque
from collections.abc import Iterable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    import pydantic

    from durable_installs.contracts.failures import INVALID_INPUT, root_message
    from durable_installs.contracts.install import (
        MAX_PROBLEMS_SHOWN,
        describe_problems,
        missing_input_message,
    )
    from durable_installs.contracts.lifecycle import DeleteBackendInput
    from durable_installs.contracts.limits import (
        MAX_ROLLOUT_SLOTS,
        MAX_SEARCH_ATTRIBUTE_BYTES,
        utf8_problem,
    )
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
    from durable_installs.contracts.rollout import (
        FINISHED_STATES,
        MINIMAL_ROLLOUT_INPUT,
        AddTargetsResult,
        FailurePolicy,
        InstallSlotsInput,
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
        expand_slots,
    )
    from durable_installs.contracts.upgrade import (
        BACKEND_NOT_INSTALLED,
        ROLLOUT_NODES_FAILED,
        DropPreviousInput,
        SlotRef,
        UpgradeBackendResult,
    )

DETAIL_ROWS = 40
"""Slots listed in the UI's current details; the query always has all of them."""

BATCH_SIZE = 100
"""Most slots one ``install_slots`` activity starts: big enough that a large rollout's
history grows per batch, small enough that one activity's input stays a few kilobytes."""

BATCH_MARGIN = timedelta(minutes=5)
"""Slack beyond the installs' own deadline before a batch activity is presumed stuck."""

BATCH_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
"""A batch heartbeats every second (also while its installs stop after a cancel); the
cancellation reaches it with the next heartbeat's answer."""

CANCELLED_ENDS_CANCELLED = "cancelled-rollout-ends-cancelled"
"""Patch id: a rollout cancelled through Temporal (``backendctl cancel``) ends CANCELED once
the installs, upgrades or deletes it started have stopped, its status query still answering
with every slot. Executions started before completed with ``cancelled: true``. The
``cancel_rollout`` signal still stops a rollout and completes it with its table."""


@workflow.defn(name=ROLLOUT_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class RolloutBackendWorkflow:
    """Install a backend on every target slot and report each slot's outcome.

    Runs PINNED on a versioned worker (``orchestrator.worker.WORKFLOW_BEHAVIORS``), like each
    install: a fleet rollout runs for hours and finishes on the worker version that started it
    (continue-as-new keeps the version). The installs it starts are workflows of their own
    and go to the version that is current when each one starts.
    """

    @workflow.init
    def __init__(self, input: RolloutInput | None = None) -> None:
        """Validate first; an invalid input keeps no slot and fails in ``run``.

        ``input`` is optional so that a start with no input fails with ``InvalidInput``
        instead of failing every workflow task.
        """
        if input is None:
            self._problems = [("input", "it is missing")]
            self._invalid = missing_input_message(MINIMAL_ROLLOUT_INPUT)
        else:
            problems = input.problems() + _workflow_id_problems()
            self._problems = problems[:MAX_PROBLEMS_SHOWN]
            self._invalid = f"invalid input: {describe_problems(problems)}" if problems else ""
        if self._invalid or input is None:
            input = RolloutInput(backend="")
        self._input = input
        node_mode = input.action is not RolloutAction.INSTALL
        slots = (
            [] if node_mode else input.carried_slots or expand_slots(input.targets, input.backend)
        )
        self._nodes: dict[str, NodeOutcome] = {}
        """Upgrade/delete: one row per target node, in the order they are worked on."""
        self._slots = {slot.workflow_id: slot for slot in slots}
        self._queue = deque(s.workflow_id for s in slots if s.state is SlotState.QUEUED)
        self._in_flight: set[str] = set()
        """Slots handed to a batch and not finished: what ``max_in_flight`` bounds."""
        self._started: set[str] = set()
        """Installs this run started itself; cancelling the rollout cancels these."""
        self._batches: dict[str, asyncio.Task[None]] = {}
        """Running ``install_slots`` activities, each named by its first slot's workflow id."""
        self._cancelled = False
        self._stopped = input.carried_stopped
        self._runs = input.carried_runs + 1
        self._changed = True

    @workflow.run
    async def run(self, input: RolloutInput | None = None) -> RolloutStatus:
        """Install until every slot is finished, the policy stops it, or it is cancelled."""
        if self._invalid:
            raise ApplicationError(
                self._invalid, self._problems, type=INVALID_INPUT, non_retryable=True
            )
        if self._input.action is not RolloutAction.INSTALL:
            return await self._run_nodes()
        try:
            await self._drive()
        except asyncio.CancelledError:
            await self._cancel_everything()
            if workflow.patched(CANCELLED_ENDS_CANCELLED):
                raise
        if not self._cancelled and self._should_continue_as_new():
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(self._carry_over())
        self._publish()
        return self.status()

    @workflow.query(name=ROLLOUT_STATUS_QUERY)
    def status(self) -> RolloutStatus:
        """Every slot with its state, address or error, and counts by state."""
        return RolloutStatus(
            backend=self._input.backend,
            counts=_counts(self._slots.values()),
            slots=list(self._slots.values()),
            in_flight=len(self._in_flight),
            action=self._input.action,
            nodes=list(self._nodes.values()),
            cancelled=self._cancelled,
            stopped=self._stopped,
            runs=self._runs,
        )

    @workflow.update(name=ADD_TARGETS_UPDATE)
    def add_targets(self, targets: list[RolloutTarget]) -> AddTargetsResult:
        """Queue more slots; slots the rollout already knows are not installed twice."""
        added = already = 0
        for slot in expand_slots(targets, self._input.backend):
            if slot.workflow_id in self._slots:
                already += 1
                continue
            self._slots[slot.workflow_id] = slot
            self._queue.append(slot.workflow_id)
            added += 1
        self._changed = True
        return AddTargetsResult(added=added, already_known=already)

    @add_targets.validator
    def _validate_targets(self, targets: list[RolloutTarget]) -> None:
        if self._input.action is not RolloutAction.INSTALL:
            raise ValueError("targets are added to install rollouts only")
        if self._cancelled or self._stopped or self._invalid:
            raise ValueError("the rollout no longer starts slots")
        update = self._input.model_copy(update={"targets": targets})
        if len(self._slots) + update.slot_count() > MAX_ROLLOUT_SLOTS:
            raise ValueError(
                f"targets: the rollout would track more than {MAX_ROLLOUT_SLOTS} slots"
            )
        problems = update.problems()
        if problems:
            raise ValueError(describe_problems(problems))

    @workflow.signal(name=CANCEL_ROLLOUT_SIGNAL)
    def cancel_rollout(self) -> None:
        """Cancel in-flight installs, start no more, and report what was done."""
        self._cancelled = True
        self._changed = True

    @workflow.signal(name=SLOT_STATE_SIGNAL)
    def slot_state_changed(self, reports: list[SlotReport]) -> None:
        """Installs say they are (still) installing; the batch activities say how slots ended."""
        for report in reports:
            self._apply(report)

    @workflow.signal(name=SLOTS_STARTED_SIGNAL)
    def slots_started(self, started: SlotsStarted) -> None:
        """A batch's installs are running: those this rollout started, and those it joined."""
        self._started.update(started.started)
        for workflow_id in started.joined:
            slot = self._slots.get(workflow_id)
            if slot is not None and slot.state not in FINISHED_STATES:
                slot.shared = True
                self._changed = True

    # --- driving the slots ---------------------------------------------------------------------

    async def _drive(self) -> None:
        while True:
            if self._cancelled:
                await self._cancel_everything()
                return
            draining = self._should_continue_as_new()
            if not draining and not self._stopped:
                self._start_queued()
            if self._changed:
                self._publish()
                self._changed = False
            if not self._batches and (draining or self._stopped or not self._queue):
                return
            await workflow.wait_condition(lambda: self._changed)

    def _start_queued(self) -> None:
        while self._queue and len(self._in_flight) < self._input.max_in_flight:
            room = min(self._input.max_in_flight - len(self._in_flight), BATCH_SIZE)
            batch = [self._slots[self._queue.popleft()] for _ in range(min(room, len(self._queue)))]
            for slot in batch:
                slot.state = SlotState.INSTALLING
                self._in_flight.add(slot.workflow_id)
            name = batch[0].workflow_id
            self._batches[name] = asyncio.create_task(self._install_batch(name, batch))
            self._changed = True

    async def _install_batch(self, name: str, batch: list[SlotStatus]) -> None:
        """Run one ``install_slots`` activity; slots it did not report end with its failure."""
        deadline = timedelta(seconds=self._input.install_input("", "", 0).deadline_seconds)
        targets = [
            RolloutTarget(node_id=s.node_id, model_id=s.model_id, replica_indexes=[s.replica_index])
            for s in batch
        ]
        input = InstallSlotsInput(
            rollout_id=workflow.info().workflow_id,
            task_queue=workflow.info().task_queue,
            batch=self._input.model_copy(
                update={"targets": targets, "carried_slots": [], "carried_stopped": ""}
            ),
        )
        state, error = SlotState.FAILED, "the batch ended without reporting this slot"
        try:
            result = await workflow.execute_activity(
                INSTALL_SLOTS_ACTIVITY,
                input,
                result_type=InstallSlotsResult,
                # Every install of the batch ends by its deadline, so retries (a dead worker,
                # an unreachable frontend) are bounded by it too.
                schedule_to_close_timeout=deadline + BATCH_MARGIN,
                heartbeat_timeout=BATCH_HEARTBEAT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"install {len(batch)} slot(s) of {self._input.backend}",
            )
            for report in result.reports:
                self._apply(report)
        except ActivityError as err:
            if is_cancelled_exception(err):
                state, error = SlotState.CANCELLED, ""
            else:
                error = root_message(err)
        except asyncio.CancelledError:
            state, error = SlotState.CANCELLED, ""
        finally:
            for slot in batch:
                self._apply(SlotReport(workflow_id=slot.workflow_id, state=state, error=error))
            self._batches.pop(name, None)
            self._changed = True

    def _apply(self, report: SlotReport) -> None:
        """Take one slot's news; a finished slot never changes again."""
        slot = self._slots.get(report.workflow_id)
        if slot is None or slot.state in FINISHED_STATES:
            return
        slot.state = report.state
        slot.detail = report.detail
        if report.state in FINISHED_STATES:
            slot.address = report.address
            slot.error = report.error
            self._in_flight.discard(slot.workflow_id)
            if report.state is SlotState.FAILED:
                self._apply_failure_policy()
        self._changed = True

    def _apply_failure_policy(self) -> None:
        if self._input.effective_policy() is not FailurePolicy.STOP or self._stopped:
            return
        failed = sum(1 for s in self._slots.values() if s.state is SlotState.FAILED)
        if failed >= self._input.max_failures:
            self._stopped = f"stopped after {failed} failed slot(s) (failure policy: stop)"
            self._skip_queued()

    def _skip_queued(self) -> None:
        while self._queue:
            self._slots[self._queue.popleft()].state = SlotState.SKIPPED

    async def _cancel_everything(self) -> None:
        """Cancel the installs this rollout started, then the batches waiting for them.

        The installs are cancelled from here at once; a batch only learns of its own
        cancellation at its next heartbeat, and then cancels whatever it started after the
        rollout last heard from it. Joined installs belong to someone else and keep running.
        """
        self._cancelled = True
        self._skip_queued()
        own = sorted(self._started & self._in_flight)
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

    # --- upgrade and delete: node by node -------------------------------------------------------

    async def _run_nodes(self) -> RolloutStatus:
        """Upgrade (or delete) node by node, ``max_unavailable`` at a time, health-gated.

        Each node is one ``UpgradeBackendWorkflow`` child (or ``DeleteBackendWorkflow``), whose
        success already includes the health gate: the node's slots back and answering
        ``Health`` within ``health_gate_seconds``. Nodes are few next to slots, so children
        keep the table exact at a few events per node. On a stop with ``rollback`` the nodes
        already upgraded get their previous version back; the previous versions the agents
        kept are dropped at the end. Fails when any node failed, unless the policy is
        ``continue``.
        """
        input = self._input
        cancel_requested = False
        # Replay-safe and unique to this execution: the workflow's seeded random, not its id
        # (a replayed history may carry another id).
        self._child_tag = workflow.uuid4().hex[:12]
        nodes = input.node_ids() or await self._nodes_reporting_backend()
        self._nodes = {node: NodeOutcome(node_id=node) for node in nodes}
        queue = deque(nodes)
        running: set[str] = set()
        self._publish()
        try:
            while queue or running:
                while queue and len(running) < input.max_unavailable and not self._halted():
                    node = queue.popleft()
                    running.add(node)
                    self._nodes[node].state = NodeState.RUNNING
                    self._batches[node] = asyncio.create_task(self._node(node, running))
                if self._halted():
                    while queue:
                        self._nodes[queue.popleft()].state = NodeState.SKIPPED
                if not running:
                    break
                self._changed = False
                self._publish()
                await workflow.wait_condition(lambda: self._changed or self._cancelled)
                if self._cancelled:
                    break
        except asyncio.CancelledError:
            self._cancelled = cancel_requested = True
        if self._cancelled:
            for task in self._batches.values():
                task.cancel()
            await asyncio.gather(*self._batches.values(), return_exceptions=True)
            for row in self._nodes.values():
                if row.state in (NodeState.QUEUED, NodeState.RUNNING):
                    row.state = (
                        NodeState.SKIPPED if row.state is NodeState.QUEUED else NodeState.CANCELLED
                    )
        failed = [r for r in self._nodes.values() if r.state is NodeState.FAILED]
        if input.action is RolloutAction.UPGRADE:
            if failed and input.rollback and self._stopped and not self._cancelled:
                await self._roll_back()
            await self._drop_previous()
        self._publish()
        if cancel_requested and workflow.patched(CANCELLED_ENDS_CANCELLED):
            raise asyncio.CancelledError("rollout cancelled")
        status = self.status()
        if failed and input.effective_policy() is not FailurePolicy.CONTINUE:
            listed = "; ".join(f"{r.node_id}: {r.error}" for r in failed[:MAX_PROBLEMS_SHOWN])
            more = (
                f" (and {len(failed) - MAX_PROBLEMS_SHOWN} more)"
                if len(failed) > MAX_PROBLEMS_SHOWN
                else ""
            )
            rolled = sum(1 for r in self._nodes.values() if r.rollback is RollbackState.ROLLED_BACK)
            raise ApplicationError(
                f"{input.action.value} of {input.backend} failed on {len(failed)} node(s): "
                f"{listed}{more}" + (f"; {rolled} node(s) rolled back" if rolled else ""),
                status,
                type=ROLLOUT_NODES_FAILED,
                non_retryable=True,
            )
        return status

    def _halted(self) -> bool:
        return bool(self._stopped) or self._cancelled

    async def _nodes_reporting_backend(self) -> list[str]:
        """Every known node that reports the backend installed (the fleet registry)."""
        fleet = await workflow.execute_activity(
            LIST_NODES_ACTIVITY,
            result_type=dict,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_attempts=5),
            summary="list the fleet's nodes",
        )
        found: list[str] = []
        for node in fleet.get("nodes") or []:
            names = {b.get("name") for b in node.get("backends") or [] if isinstance(b, dict)}
            node_id = node.get("node_id")
            if isinstance(node_id, str) and self._input.backend in names:
                found.append(node_id)
        return list(dict.fromkeys(found))[:MAX_ROLLOUT_SLOTS]

    async def _node(self, node: str, running: set[str]) -> None:
        """One node's upgrade (or delete); its row ends with the outcome and the node's words."""
        row = self._nodes[node]
        input = self._input
        try:
            if input.action is RolloutAction.UPGRADE:
                upgrade = input.upgrade_input(node, workflow.info().workflow_id)
                row.workflow_id = self._child_id("upgrade", node)
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
                row.workflow_id = self._child_id("delete", node)
                await workflow.execute_child_workflow(
                    DELETE_WORKFLOW,
                    DeleteBackendInput(node_id=node, backend=input.backend, force=input.force),
                    id=row.workflow_id,
                    static_summary=f"delete {input.backend} on {node}",
                )
            row.state = NodeState.SUCCEEDED
        except (ChildWorkflowError, ApplicationError) as err:
            if is_cancelled_exception(err):
                row.state = NodeState.CANCELLED
            else:
                self._node_failed(row, err)
        except asyncio.CancelledError:
            row.state = NodeState.CANCELLED
        finally:
            running.discard(node)
            self._batches.pop(node, None)
            self._changed = True

    def _node_failed(self, row: NodeOutcome, err: BaseException) -> None:
        cause = _root_application_error(err)
        row.error = root_message(err)
        if cause is not None and cause.details:
            detail = cause.details[0]
            if isinstance(detail, dict):
                before, after = detail.get("before") or {}, detail.get("after") or {}
                row.before_version = str(before.get("version") or "")
                row.before_uri = str(before.get("uri") or "")
                row.after_version = str(after.get("version") or "")
                row.repulled = bool(after.get("listed")) and after != before
                row.slots = [
                    SlotRef(
                        model_id=str(o.get("model_id") or ""),
                        replica_index=int(o.get("replica_index") or 0),
                    )
                    for o in detail.get("slots") or []
                    if isinstance(o, dict)
                ]
        if cause is not None and cause.type == BACKEND_NOT_INSTALLED:
            row.state = NodeState.NOT_INSTALLED
            return
        row.state = NodeState.FAILED
        failed = sum(1 for r in self._nodes.values() if r.state is NodeState.FAILED)
        if (
            self._input.effective_policy() is FailurePolicy.STOP
            and failed >= self._input.max_failures
        ):
            self._stopped = self._stopped or (
                f"stopped after {failed} failed node(s) (failure policy: stop)"
            )

    async def _roll_back(self) -> None:
        """Return every node this rollout re-pulled to its previous version.

        The nodes that succeeded, and the failed ones whose re-pull happened (their new
        version is on disk but did not pass the gate): both have a kept previous version.
        """
        upgraded = [r for r in self._nodes.values() if r.repulled]
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
                id=self._child_id("rollback", row.node_id),
                result_type=UpgradeBackendResult,
                static_summary=f"roll back {self._input.backend} on {row.node_id}",
            )
            row.rollback = RollbackState.ROLLED_BACK
        except ChildWorkflowError as err:
            row.rollback = RollbackState.FAILED
            row.rollback_error = root_message(err)

    async def _drop_previous(self) -> None:
        """The rollout is over: the agents forget the versions kept for a rollback."""
        touched = [
            r.node_id
            for r in self._nodes.values()
            if r.state not in (NodeState.QUEUED, NodeState.SKIPPED, NodeState.NOT_INSTALLED)
        ]
        await asyncio.gather(
            *(
                workflow.execute_activity(
                    DROP_PREVIOUS_ACTIVITY,
                    DropPreviousInput(node_id=node, backend=self._input.backend),
                    result_type=bool,
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                    summary=f"drop the previous version of {self._input.backend} on {node}",
                )
                for node in touched
            ),
            return_exceptions=True,
        )

    def _child_id(self, verb: str, node: str) -> str:
        """A child id unique to this rollout and node, short whatever the rollout's id."""
        parts = (verb, node, self._input.backend, self._child_tag)
        return "/".join(urllib.parse.quote(part, safe="") for part in parts)

    # --- history and presentation --------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        return bool(self._queue) and workflow.info().is_continue_as_new_suggested()

    def _carry_over(self) -> RolloutInput:
        return self._input.model_copy(
            update={
                "targets": [],
                "carried_slots": list(self._slots.values()),
                "carried_runs": self._runs,
                "carried_stopped": self._stopped,
            }
        )

    def _publish(self) -> None:
        if self._input.action is not RolloutAction.INSTALL:
            workflow.set_current_details(
                _nodes_markdown(self._input, list(self._nodes.values()), self._stopped)
            )
            return
        workflow.set_current_details(
            _details_markdown(
                self._input.backend, list(self._slots.values()), self._cancelled, self._stopped
            )
        )


def _workflow_id_problems() -> list[tuple[str, str]]:
    """The rollout's own id becomes every install's ``RolloutId`` search attribute."""
    problem = utf8_problem(workflow.info().workflow_id, MAX_SEARCH_ATTRIBUTE_BYTES)
    return [("workflow id", f"{problem} (it is every install's RolloutId)")] if problem else []


def _counts(slots: Iterable[SlotStatus]) -> dict[str, int]:
    """Slots per state, every state present, in the order of ``SlotState``."""
    counted = Counter(slot.state.value for slot in slots)
    return {state.value: counted[state.value] for state in SlotState}


def _root_application_error(err: BaseException) -> ApplicationError | None:
    """The innermost ``ApplicationError`` of a failure chain, if any."""
    found: ApplicationError | None = None
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            found = cause
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return found


def _nodes_markdown(input: RolloutInput, rows: list[NodeOutcome], stopped: str) -> str:
    """An upgrade or delete rollout at a glance: one row per node, failures first."""
    counted = Counter(row.state.value for row in rows)
    summary = " · ".join(f"{state}: {n}" for state, n in counted.items())
    lines = [
        f"**{input.action.value.capitalize()} of `{input.backend}`** · {len(rows)} nodes · "
        f"max unavailable {input.max_unavailable} · {summary}"
    ]
    if stopped:
        lines.append(f"\n**{stopped}**")
    order = {NodeState.FAILED: 0, NodeState.RUNNING: 1}
    shown = sorted(rows, key=lambda r: order.get(r.state, 2))[:DETAIL_ROWS]
    lines += [
        "",
        "| node | state | before | after | rollback | error |",
        "|---|---|---|---|---|---|",
    ]
    for row in shown:
        error = row.error + (f" · rollback: {row.rollback_error}" if row.rollback_error else "")
        error = error.replace("|", "\\|").replace("\n", " ")[:160]
        lines.append(
            f"| {row.node_id} | {row.state.value.replace('_', ' ')} | {row.before_version or '-'} "
            f"| {row.after_version or '-'} | {row.rollback.value.replace('_', ' ')} | {error} |"
        )
    if len(rows) > DETAIL_ROWS:
        lines.append(f"\n… {len(rows) - DETAIL_ROWS} more nodes in the `status` query")
    return "\n".join(lines)


def _details_markdown(backend: str, slots: list[SlotStatus], cancelled: bool, stopped: str) -> str:
    """The rollout at a glance: counts, then up to DETAIL_ROWS slots, unfinished first.

    Built straight from the slot list (no status model) because it runs on every wake-up of
    a rollout that may track thousands of slots.
    """
    summary = " · ".join(f"{state}: {n}" for state, n in _counts(slots).items() if n)
    lines = [f"**Rollout of `{backend}`** · {len(slots)} slots · {summary}"]
    if cancelled:
        lines.append("\n**cancelled**")
    if stopped:
        lines.append(f"\n**{stopped}**")
    shown = [s for s in slots if s.state is not SlotState.SUCCEEDED][:DETAIL_ROWS]
    shown += [s for s in slots if s.state is SlotState.SUCCEEDED][: DETAIL_ROWS - len(shown)]
    lines += ["", "| node | model | replica | state | address / error |", "|---|---|---|---|---|"]
    for slot in shown:
        outcome = slot.address or slot.error or slot.detail
        outcome = outcome.replace("|", "\\|").replace("\n", " ")[:120]
        state = slot.state.value.replace("_", " ") + (" (shared)" if slot.shared else "")
        lines.append(
            f"| {slot.node_id} | {slot.model_id or '-'} | {slot.replica_index} | {state} "
            f"| {outcome} |"
        )
    if len(slots) > DETAIL_ROWS:
        lines.append(f"\n… {len(slots) - DETAIL_ROWS} more slots in the `status` query")
    return "\n".join(lines)
