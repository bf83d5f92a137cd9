"""Upgrade inputs, alone and in a rollout, are bounded and fail at once naming the field."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.rollout import RolloutInput
from durable_installs.contracts.upgrade import SlotRef, UpgradeBackendInput
from workflows.rollout import RolloutBackendWorkflow
from workflows.upgrade_backend import UpgradeBackendWorkflow


def upgrade_problems(**fields: Any) -> list[str]:
    input = UpgradeBackendInput.model_validate({"node_id": "n1", "backend": "b", **fields})
    return [field for field, _ in input.problems()]


def rollout_problems(**fields: Any) -> list[str]:
    input = RolloutInput.model_validate({"backend": "b", "action": "upgrade", **fields})
    return [field for field, _ in input.problems()]


def test_a_minimal_upgrade_and_a_rollout_with_targets_omitted_are_valid() -> None:
    assert upgrade_problems() == []
    assert rollout_problems() == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"node_id": "a.*"}, "node_id"),
        ({"backend": ""}, "backend"),
        ({"op_id": "a b"}, "op_id"),
        ({"deadline_seconds": float("nan")}, "deadline_seconds"),
        ({"upgrade_timeout_seconds": 1e300}, "upgrade_timeout_seconds"),
        ({"health_gate_seconds": 0}, "health_gate_seconds"),
        ({"liveness_check_interval_seconds": 0.5}, "liveness_check_interval_seconds"),
        ({"expected_version": "v" * 257}, "expected_version"),
        ({"previous_uri": "u" * 4097}, "previous_uri"),
        ({"install_options": {"model_id": "x"}}, "install_options.model_id"),
        (
            {"restore_slots": [SlotRef(model_id="m", replica_index=-1)]},
            "restore_slots[0].replica_index",
        ),
        ({"restore_slots": [SlotRef()] * 1001}, "restore_slots"),
    ],
)
def test_an_upgrade_field_out_of_bounds_is_named(fields: dict[str, Any], field: str) -> None:
    assert field in upgrade_problems(**fields)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_unavailable": 0}, "max_unavailable"),
        ({"max_unavailable": 10**12}, "max_unavailable"),
        ({"targets": [{"node_id": "a>"}]}, "targets[0].node_id"),
        ({"targets": [{"node_id": f"n{i}"} for i in range(10_001)]}, "targets"),
        ({"health_gate_seconds": float("inf")}, "health_gate_seconds"),
        ({"upgrade_options": {"rollback": True}}, "upgrade_options.rollback"),
        ({"upgrade_options": {"deadline_seconds": "soon"}}, "upgrade_options.deadline_seconds"),
        ({"upgrade_options": {"deadline_seconds": 0}}, "deadline_seconds"),
    ],
)
def test_a_rolling_upgrade_field_out_of_bounds_is_named(fields: dict[str, Any], field: str) -> None:
    assert field in rollout_problems(**fields)


async def test_an_invalid_upgrade_fails_at_once_with_invalid_input(
    client: Client, task_queue: str
) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await client.execute_workflow(
            UpgradeBackendWorkflow.run,
            UpgradeBackendInput(node_id="a.*", backend="b"),
            id=f"upgrade-invalid-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert cause.message.startswith("invalid input: node_id: ")


async def test_a_missing_upgrade_input_and_a_bad_rolling_bound_fail_with_invalid_input(
    client: Client, task_queue: str
) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await client.execute_workflow(
            "UpgradeBackendWorkflow",
            id=f"upgrade-missing-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert '{"node_id": "node-1", "backend": "llama-cpp"}' in cause.message
    with pytest.raises(WorkflowFailureError) as rollout_failure:
        await client.execute_workflow(
            RolloutBackendWorkflow.run,
            RolloutInput(backend="b", action="upgrade", max_unavailable=0),
            id=f"rollout-invalid-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
    rollout_cause = rollout_failure.value.cause
    assert isinstance(rollout_cause, ApplicationError)
    assert rollout_cause.type == "InvalidInput" and "max_unavailable" in rollout_cause.message
