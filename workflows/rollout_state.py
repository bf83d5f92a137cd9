"""What a rollout knows, and every decision it makes that needs no Temporal call.

A rollout has two drivers behind one workflow type (``workflows/rollout.py``): an *install*
rollout tracks slots (:class:`SlotBook`), an *upgrade* or *delete* rollout tracks nodes
(:class:`NodeBook`). Both books are plain deterministic code, passed through the sandbox like
the install's core (``workflows/install_state.py``) and tested without a server
(``tests/workflows/test_rollout_state.py``); ``tests/test_architecture.py`` checks that they
read no clock, randomness or environment.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import root_application_error, root_message
from durable_installs.contracts.install import MAX_PROBLEMS_SHOWN, describe_problems
from durable_installs.contracts.limits import MAX_ROLLOUT_SLOTS
from durable_installs.contracts.nodes import FleetView
from durable_installs.contracts.rollout import (
    FINISHED_STATES,
    AddTargetsResult,
    FailurePolicy,
    NodeOutcome,
    NodeState,
    RollbackState,
    RolloutInput,
    RolloutStatus,
    RolloutTarget,
    SlotReport,
    SlotsStarted,
    SlotState,
    SlotStatus,
    expand_slots,
)
from durable_installs.contracts.upgrade import BACKEND_NOT_INSTALLED, ROLLOUT_NODES_FAILED, SlotRef
from workflows.rollout_steps import BATCH_SIZE, DETAIL_ROWS


def counts(slots: Iterable[SlotStatus]) -> dict[str, int]:
    """Slots per state, every state present, in the order of ``SlotState``."""
    counted = Counter(slot.state.value for slot in slots)
    return {state.value: counted[state.value] for state in SlotState}


class SlotBook:
    """An install rollout's slots: queued, in flight, finished, and what this run started."""

    def __init__(self, input: RolloutInput) -> None:
        self.input = input
        slots = input.carried_slots or expand_slots(input.targets, input.backend, input.action)
        self.slots = {slot.workflow_id: slot for slot in slots}
        self.queue = deque(s.workflow_id for s in slots if s.state is SlotState.QUEUED)
        self.in_flight: set[str] = set()
        """Slots handed to a batch and not finished: what ``max_in_flight`` bounds."""
        self.started: set[str] = set()
        """Installs this run started itself; cancelling the rollout cancels these."""
        self.cancelled = False
        self.stopped = input.carried_stopped
        self.runs = input.carried_runs + 1
        self.changed = True

    # --- driving -------------------------------------------------------------------------------

    def next_batch(self) -> list[SlotStatus]:
        """The next slots to hand to a batch (marked installing), or [] when none may start."""
        if not self.queue or len(self.in_flight) >= self.input.max_in_flight:
            return []
        room = min(self.input.max_in_flight - len(self.in_flight), BATCH_SIZE)
        batch = [self.slots[self.queue.popleft()] for _ in range(min(room, len(self.queue)))]
        for slot in batch:
            slot.state = SlotState.INSTALLING
            self.in_flight.add(slot.workflow_id)
        self.changed = True
        return batch

    def apply(self, report: SlotReport) -> None:
        """Take one slot's news; a finished slot never changes again."""
        slot = self.slots.get(report.workflow_id)
        if slot is None or slot.state in FINISHED_STATES:
            return
        slot.state = report.state
        slot.detail = report.detail
        if report.state in FINISHED_STATES:
            slot.address = report.address
            slot.error = report.error
            self.in_flight.discard(slot.workflow_id)
            if report.state is SlotState.FAILED:
                self._apply_failure_policy()
        self.changed = True

    def batch_ended(self, batch: list[SlotStatus], state: SlotState, error: str) -> None:
        """A batch activity ended: its slots it did not report end with its outcome."""
        for slot in batch:
            self.apply(SlotReport(workflow_id=slot.workflow_id, state=state, error=error))
        self.changed = True

    def slots_started(self, started: SlotsStarted) -> None:
        """A batch's installs run: those this rollout started, and those it joined."""
        self.started.update(started.started)
        for workflow_id in started.joined:
            slot = self.slots.get(workflow_id)
            if slot is not None and slot.state not in FINISHED_STATES:
                slot.shared = True
                self.changed = True

    def _apply_failure_policy(self) -> None:
        if self.input.effective_policy() is not FailurePolicy.STOP or self.stopped:
            return
        failed = sum(1 for s in self.slots.values() if s.state is SlotState.FAILED)
        if failed >= self.input.max_failures:
            self.stopped = f"stopped after {failed} failed slot(s) (failure policy: stop)"
            self.skip_queued()

    def skip_queued(self) -> None:
        while self.queue:
            self.slots[self.queue.popleft()].state = SlotState.SKIPPED

    def cancel(self) -> list[str]:
        """Start nothing more; the installs in flight this run started, to cancel."""
        self.cancelled = True
        self.skip_queued()
        return sorted(self.started & self.in_flight)

    # --- targets added while it runs -----------------------------------------------------------

    def add_targets(self, targets: list[RolloutTarget]) -> AddTargetsResult:
        """Queue more slots; slots the rollout already knows are not installed twice."""
        added = already = 0
        for slot in expand_slots(targets, self.input.backend, self.input.action):
            if slot.workflow_id in self.slots:
                already += 1
                continue
            self.slots[slot.workflow_id] = slot
            self.queue.append(slot.workflow_id)
            added += 1
        self.changed = True
        return AddTargetsResult(added=added, already_known=already)

    def targets_problem(self, targets: list[RolloutTarget]) -> str | None:
        """Why ``targets`` may not be added now, or None."""
        if not self.input.action.per_slot:
            return "targets are added to install and load rollouts only"
        if self.cancelled or self.stopped:
            return "the rollout no longer starts slots"
        update = self.input.model_copy(update={"targets": targets})
        if len(self.slots) + update.slot_count() > MAX_ROLLOUT_SLOTS:
            return f"targets: the rollout would track more than {MAX_ROLLOUT_SLOTS} slots"
        problems = update.problems()
        return describe_problems(problems) if problems else None

    # --- history and presentation --------------------------------------------------------------

    def carry_over(self) -> RolloutInput:
        """The next run's input after continue-as-new: every slot's status, the same runs."""
        return self.input.model_copy(
            update={
                "targets": [],
                "carried_slots": list(self.slots.values()),
                "carried_runs": self.runs,
                "carried_stopped": self.stopped,
            }
        )

    def details(self) -> str:
        """The rollout at a glance: counts, then up to DETAIL_ROWS slots, unfinished first.

        Built straight from the slot list (no status model) because it runs on every wake-up
        of a rollout that may track thousands of slots.
        """
        slots = list(self.slots.values())
        summary = " · ".join(f"{state}: {n}" for state, n in counts(slots).items() if n)
        lines = [f"**Rollout of `{self.input.backend}`** · {len(slots)} slots · {summary}"]
        if self.cancelled:
            lines.append("\n**cancelled**")
        if self.stopped:
            lines.append(f"\n**{self.stopped}**")
        shown = [s for s in slots if s.state is not SlotState.SUCCEEDED][:DETAIL_ROWS]
        shown += [s for s in slots if s.state is SlotState.SUCCEEDED][: DETAIL_ROWS - len(shown)]
        lines += [
            "",
            "| node | model | replica | state | address / error |",
            "|---|---|---|---|---|",
        ]
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


class NodeBook:
    """An upgrade or delete rollout's nodes: one row per node, in the order they are worked on."""

    def __init__(self, input: RolloutInput) -> None:
        self.input = input
        self.rows: dict[str, NodeOutcome] = {}
        self.stopped = input.carried_stopped
        self.cancelled = False
        self.changed = True

    def target(self, nodes: list[str]) -> None:
        self.rows = {node: NodeOutcome(node_id=node) for node in nodes}

    def halted(self) -> bool:
        return bool(self.stopped) or self.cancelled

    def succeeded(self, node: str) -> None:
        self.rows[node].state = NodeState.SUCCEEDED

    def failed(self, node: str, err: BaseException) -> None:
        """A node's upgrade or delete failed: what it had and said, from the failure details."""
        row = self.rows[node]
        cause = root_application_error(err)
        row.error = root_message(err)
        if cause is not None and cause.details:
            _read_failure_details(row, cause.details[0])
        if cause is not None and cause.type == BACKEND_NOT_INSTALLED:
            row.state = NodeState.NOT_INSTALLED
            return
        row.state = NodeState.FAILED
        failed = sum(1 for r in self.rows.values() if r.state is NodeState.FAILED)
        if (
            self.input.effective_policy() is FailurePolicy.STOP
            and failed >= self.input.max_failures
        ):
            self.stopped = self.stopped or (
                f"stopped after {failed} failed node(s) (failure policy: stop)"
            )

    def cancel_rest(self) -> None:
        """Cancelled: queued nodes are skipped, running ones cancelled."""
        for row in self.rows.values():
            if row.state in (NodeState.QUEUED, NodeState.RUNNING):
                row.state = (
                    NodeState.SKIPPED if row.state is NodeState.QUEUED else NodeState.CANCELLED
                )

    def failures(self) -> list[NodeOutcome]:
        return [r for r in self.rows.values() if r.state is NodeState.FAILED]

    def rolled_back_candidates(self) -> list[NodeOutcome]:
        """Nodes with a kept previous version: re-pulled, whether they passed the gate or not."""
        return [r for r in self.rows.values() if r.repulled]

    def touched(self) -> list[str]:
        """Nodes the rollout worked on (their kept previous versions are dropped at the end)."""
        return [
            r.node_id
            for r in self.rows.values()
            if r.state not in (NodeState.QUEUED, NodeState.SKIPPED, NodeState.NOT_INSTALLED)
        ]

    def failure_error(self, status: RolloutStatus) -> ApplicationError | None:
        """The rollout's own failure when nodes failed and the policy does not continue."""
        failed = self.failures()
        if not failed or self.input.effective_policy() is FailurePolicy.CONTINUE:
            return None
        listed = "; ".join(f"{r.node_id}: {r.error}" for r in failed[:MAX_PROBLEMS_SHOWN])
        more = (
            f" (and {len(failed) - MAX_PROBLEMS_SHOWN} more)"
            if len(failed) > MAX_PROBLEMS_SHOWN
            else ""
        )
        rolled = sum(1 for r in self.rows.values() if r.rollback is RollbackState.ROLLED_BACK)
        return ApplicationError(
            f"{self.input.action.value} of {self.input.backend} failed on {len(failed)} node(s): "
            f"{listed}{more}" + (f"; {rolled} node(s) rolled back" if rolled else ""),
            status,
            type=ROLLOUT_NODES_FAILED,
            non_retryable=True,
        )

    def details(self) -> str:
        """An upgrade or delete rollout at a glance: one row per node, failures first."""
        rows = list(self.rows.values())
        counted = Counter(row.state.value for row in rows)
        summary = " · ".join(f"{state}: {n}" for state, n in counted.items())
        lines = [
            f"**{self.input.action.value.capitalize()} of `{self.input.backend}`** · "
            f"{len(rows)} nodes · max unavailable {self.input.max_unavailable} · {summary}"
        ]
        if self.stopped:
            lines.append(f"\n**{self.stopped}**")
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
                f"| {row.node_id} | {row.state.value.replace('_', ' ')} | "
                f"{row.before_version or '-'} | {row.after_version or '-'} | "
                f"{row.rollback.value.replace('_', ' ')} | {error} |"
            )
        if len(rows) > DETAIL_ROWS:
            lines.append(f"\n… {len(rows) - DETAIL_ROWS} more nodes in the `status` query")
        return "\n".join(lines)


def nodes_reporting(fleet: FleetView, backend: str) -> list[str]:
    """Every announced node that reports ``backend`` installed, once, in the fleet's order."""
    found = [n.node_id for n in fleet.nodes if backend in {b.name for b in n.backends}]
    return list(dict.fromkeys(found))[:MAX_ROLLOUT_SLOTS]


def _read_failure_details(row: NodeOutcome, detail: Any) -> None:
    """The upgrade's status, as its failure carries it: versions before and after, slots."""
    if not isinstance(detail, dict):
        return
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
