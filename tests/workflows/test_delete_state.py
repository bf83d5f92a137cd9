"""The delete's decisions, checked without a server: ``workflows/delete_state.py`` is plain
code (``workflows/delete_backend.py`` is the shell that turns each decision into Temporal
commands)."""

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import DELETE_INCOMPLETE, DELETE_REFUSED
from durable_installs.contracts.lifecycle import (
    DeleteActivityResult,
    DeleteBackendInput,
    DeleteOutcome,
    DeletePhase,
    NodeInventory,
)
from durable_installs.protocol.messages import RunningModelInfo
from workflows.delete_state import (
    DeleteState,
    NextStep,
    delete_timeout,
    inventory_timeout,
    slots_text,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GONE = NodeInventory(node_id="n1", backend="b")
DELETED = DeleteActivityResult(deleted=True)


def state(**fields: object) -> DeleteState:
    return DeleteState(
        DeleteBackendInput.model_validate({"node_id": "n1", "backend": "b", **fields})
    )


def inventory(
    installed: list[str] | None = None, running: list[str] | None = None
) -> NodeInventory:
    return NodeInventory(
        node_id="n1",
        backend="b",
        installed=installed or [],
        running=[
            RunningModelInfo(model_id=key.split("#")[0], replica_index=int(key.split("#")[1]))
            for key in running or []
        ],
    )


def test_the_phases_answer_the_strings_the_query_has_always_returned() -> None:
    assert [phase.value for phase in DeletePhase] == [
        "starting",
        "checking",
        "stopping",
        "deleting",
        "verifying",
        "done",
    ]
    assert state().phase == "starting"


def test_a_backend_that_is_not_there_is_deleted_at_once_and_says_so() -> None:
    delete = state()
    result = delete.after_check(GONE)
    assert not isinstance(result, NextStep)
    assert (result.outcome, result.message) == (
        DeleteOutcome.ABSENT,
        "b is not installed on n1; nothing to delete",
    )
    assert (delete.phase, delete.details) == (DeletePhase.DONE, result.message)


def test_an_installed_backend_nothing_runs_is_deleted_without_stopping() -> None:
    assert state().after_check(inventory(installed=["b"])) is NextStep.DELETE


def test_a_serving_backend_is_refused_naming_the_slots_and_nothing_is_sent() -> None:
    with pytest.raises(ApplicationError) as raised:
        state().after_check(inventory(installed=["b"], running=["m#1", "m#0"]))
    assert (raised.value.type, raised.value.non_retryable) == (DELETE_REFUSED, True)
    assert raised.value.message == (
        "b is serving on n1 (slots m#0, m#1); stop them first, or delete with --force "
        "(input force: true) to stop them and delete"
    )
    assert raised.value.details == (["m#0", "m#1"],)


def test_forced_the_serving_slots_are_stopped_first() -> None:
    delete = state(force=True)
    assert delete.after_check(inventory(installed=["b"], running=["m#0"])) is NextStep.STOP
    delete.enter(DeletePhase.STOPPING)
    assert delete.details == "delete **b** from **n1**: stopping m#0"


def test_a_refusal_names_twenty_slots_and_counts_the_rest() -> None:
    keys = [f"m#{i}" for i in range(25)]
    assert slots_text(keys) == ", ".join(keys[:20]) + " and 5 more"


def test_stopped_slots_are_waited_for_until_the_stop_wait_is_over() -> None:
    delete = state(force=True, stop_wait_seconds=10)
    delete.after_check(inventory(installed=["b"], running=["m#0"]))
    delete.slots_stopped(NOW)
    assert not delete.all_stopped(inventory(running=["m#0"]), NOW + timedelta(seconds=9))
    assert delete.all_stopped(inventory(), NOW + timedelta(seconds=9))
    with pytest.raises(ApplicationError) as raised:
        delete.all_stopped(inventory(running=["m#0"]), NOW + timedelta(seconds=10))
    assert raised.value.type == DELETE_INCOMPLETE
    assert raised.value.message == (
        "slots m#0 of b on n1 still run 10s after backend.stop; nothing was deleted"
    )


def test_anything_left_after_the_delete_fails_it_naming_what_remains() -> None:
    delete = state()
    delete.after_check(inventory(installed=["b"]))
    with pytest.raises(ApplicationError) as raised:
        delete.after_verify(DELETED, inventory(installed=["b"], running=["m#0"]))
    assert raised.value.type == DELETE_INCOMPLETE
    assert raised.value.message == "n1 still has b after backend.delete: b, m#0"
    assert raised.value.details == (["b", "m#0"],)


def test_a_verified_delete_says_what_was_removed_and_stopped() -> None:
    delete = state(force=True)
    delete.after_check(inventory(installed=["b"], running=["m#0"]))
    delete.slots_stopped(NOW)
    result = delete.after_verify(DELETED, GONE)
    assert (result.outcome, result.removed, result.stopped_slots) == (
        DeleteOutcome.DELETED,
        ["b"],
        ["m#0"],
    )
    assert result.message == "deleted b from n1 after stopping 1 slot(s)"
    assert delete.phase is DeletePhase.DONE


def test_a_backend_gone_before_the_delete_arrived_is_absent() -> None:
    delete = state()
    delete.after_check(inventory(installed=["b"]))
    result = delete.after_verify(DeleteActivityResult(deleted=False, already_absent=True), GONE)
    assert (result.outcome, result.removed) == (DeleteOutcome.ABSENT, ["b"])
    assert result.message == "b was already gone from n1 when the delete arrived"


def test_the_details_follow_the_steps_and_end_with_the_result() -> None:
    delete = state()
    shown = []
    for phase in (DeletePhase.CHECKING, DeletePhase.DELETING, DeletePhase.VERIFYING):
        delete.enter(phase)
        shown.append(delete.details)
    assert shown == [
        "delete **b** from **n1**: checking",
        "delete **b** from **n1**: deleting",
        "delete **b** from **n1**: deleting",
    ]


def test_each_request_to_the_node_gets_its_own_timeout_plus_slack() -> None:
    input = DeleteBackendInput(node_id="n1", backend="b", request_timeout_seconds=5)
    assert inventory_timeout(input) == timedelta(seconds=40)
    assert delete_timeout(input) == timedelta(seconds=35)
