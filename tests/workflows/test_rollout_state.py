"""The rollout's decisions, without a server: slots (install) and nodes (upgrade, delete)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio.exceptions import ApplicationError

from durable_installs.contracts.nodes import FleetView, NodeAnnouncement
from durable_installs.contracts.rollout import (
    FailurePolicy,
    NodeState,
    RolloutAction,
    RolloutInput,
    RolloutTarget,
    SlotReport,
    SlotsStarted,
    SlotState,
)
from durable_installs.contracts.upgrade import BACKEND_NOT_INSTALLED
from durable_installs.protocol.messages import NodeBackendInfo
from workflows.rollout_state import NodeBook, SlotBook, counts, nodes_reporting
from workflows.rollout_steps import BATCH_SIZE


def rollout(slots: int, **fields: Any) -> RolloutInput:
    targets = [RolloutTarget(node_id=f"node-{i}") for i in range(slots)]
    return RolloutInput(backend="llama-cpp", targets=targets, **fields)


def drain(book: SlotBook) -> list[list[str]]:
    batches = []
    while batch := book.next_batch():
        batches.append([slot.workflow_id for slot in batch])
    return batches


def test_batches_never_put_more_slots_in_flight_than_allowed() -> None:
    book = SlotBook(rollout(30, max_in_flight=12))

    batches = drain(book)

    assert [len(b) for b in batches] == [12]
    assert len(book.in_flight) == 12 and len(book.queue) == 18


def test_a_batch_holds_at_most_a_hundred_slots() -> None:
    book = SlotBook(rollout(250, max_in_flight=250))

    assert [len(b) for b in drain(book)] == [BATCH_SIZE, BATCH_SIZE, 50]


def test_a_finished_slot_never_changes_again() -> None:
    book = SlotBook(rollout(1))
    [[workflow_id]] = drain(book)
    book.apply(SlotReport(workflow_id=workflow_id, state=SlotState.SUCCEEDED, address="a:1"))

    book.apply(SlotReport(workflow_id=workflow_id, state=SlotState.FAILED, error="late"))

    slot = book.slots[workflow_id]
    assert (slot.state, slot.address, slot.error) == (SlotState.SUCCEEDED, "a:1", "")
    assert book.in_flight == set()


def test_policy_stop_skips_the_queued_slots_after_max_failures() -> None:
    book = SlotBook(rollout(5, max_in_flight=2, failure_policy=FailurePolicy.STOP))
    [[first, _]] = drain(book)

    book.apply(SlotReport(workflow_id=first, state=SlotState.FAILED, error="no"))

    assert book.stopped == "stopped after 1 failed slot(s) (failure policy: stop)"
    assert counts(book.slots.values())["skipped"] == 3
    assert drain(book) == []


def test_a_joined_install_is_shared_and_never_cancelled_by_the_rollout() -> None:
    book = SlotBook(rollout(2))
    [[own, joined]] = drain(book)
    book.slots_started(SlotsStarted(started=[own], joined=[joined]))

    to_cancel = book.cancel()

    assert to_cancel == [own]
    assert book.slots[joined].shared and not book.slots[own].shared


def test_targets_already_known_are_not_added_twice() -> None:
    book = SlotBook(rollout(2))

    result = book.add_targets([RolloutTarget(node_id="node-1"), RolloutTarget(node_id="node-9")])

    assert (result.added, result.already_known) == (1, 1)


def test_targets_are_refused_once_the_rollout_stopped_starting_slots() -> None:
    book = SlotBook(rollout(1))
    book.cancel()

    assert book.targets_problem([RolloutTarget(node_id="node-9")]) == (
        "the rollout no longer starts slots"
    )


def test_continue_as_new_carries_every_slot_and_the_run_count() -> None:
    book = SlotBook(rollout(3, max_in_flight=1))
    drain(book)

    carried = book.carry_over()

    assert carried.targets == [] and len(carried.carried_slots) == 3
    assert SlotBook(carried).runs == 2


def node_rollout(**fields: Any) -> RolloutInput:
    return RolloutInput(
        backend="llama-cpp",
        action=RolloutAction.UPGRADE,
        targets=[RolloutTarget(node_id="a"), RolloutTarget(node_id="b")],
        **fields,
    )


def test_a_node_without_the_backend_is_not_installed_not_failed() -> None:
    book = NodeBook(node_rollout())
    book.target(["a", "b"])

    book.failed("a", ApplicationError("not installed", type=BACKEND_NOT_INSTALLED))

    assert book.rows["a"].state is NodeState.NOT_INSTALLED
    assert book.failures() == []


def test_a_failed_upgrade_keeps_the_versions_its_failure_carries() -> None:
    book = NodeBook(node_rollout(failure_policy=FailurePolicy.STOP))
    book.target(["a", "b"])
    details = {
        "before": {"version": "1.0", "uri": "file:///v1", "listed": True},
        "after": {"version": "2.0", "uri": "file:///v2", "listed": True},
        "slots": [{"model_id": "qwen3", "replica_index": 1}],
    }

    book.failed("a", ApplicationError("gate failed", details, type="SlotsNotRestored"))

    row = book.rows["a"]
    assert (row.state, row.before_version, row.after_version) == (NodeState.FAILED, "1.0", "2.0")
    assert row.repulled and row.slots[0].replica_index == 1
    assert book.stopped == "stopped after 1 failed node(s) (failure policy: stop)"
    assert [r.node_id for r in book.rolled_back_candidates()] == ["a"]


def test_only_nodes_that_report_the_backend_are_targeted() -> None:
    now = datetime.now(UTC)

    def node(node_id: str, *backends: str) -> NodeAnnouncement:
        return NodeAnnouncement(
            node_id=node_id,
            instance_id=f"i-{node_id}",
            started_at=now,
            announced_at=now,
            backends=[NodeBackendInfo(name=name) for name in backends],
        )

    fleet = FleetView(nodes=[node("a", "llama-cpp"), node("b", "vllm"), node("a", "llama-cpp")])

    assert nodes_reporting(fleet, "llama-cpp") == ["a"]
