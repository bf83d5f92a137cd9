"""A rollout's input is bounded as a whole and checked once per shared field, per slot after."""

from __future__ import annotations

from typing import Any

import pytest

from durable_installs.contracts.rollout import RolloutInput, RolloutTarget


def fields_with_problems(**fields: Any) -> list[str]:
    input = RolloutInput.model_validate(
        {"backend": "b", "targets": [{"node_id": "n1", "model_id": "m"}], **fields}
    )
    return [field for field, _ in input.problems()]


def test_a_minimal_rollout_is_valid() -> None:
    assert fields_with_problems() == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": 10**12}, "max_in_flight"),
        ({"max_failures": 10**12}, "max_failures"),
        ({"carried_runs": -1}, "carried_runs"),
        ({"targets": [{"node_id": "n1", "replica_indexes": list(range(10_001))}]}, "targets"),
        ({"targets": [{"node_id": f"n{i}"} for i in range(10_001)]}, "targets"),
        ({"backend": "b" * 257}, "backend"),
        ({"uri": "u" * 4097}, "uri"),
        ({"backend_galleries": [{"url": "", "name": "g"}]}, "backend_galleries[0].url"),
        ({"install_options": {"deadline_seconds": "Infinity"}}, "install_options.deadline_seconds"),
        ({"install_options": {"deadline_seconds": "soon"}}, "install_options.deadline_seconds"),
        ({"install_options": {"deadline": 60}}, "install_options.deadline"),
        ({"install_options": {"op_id": "shared"}}, "install_options.op_id"),
        ({"install_options": {"resume": {}}}, "install_options.resume"),
        ({"install_options": {"backend": "other"}}, "install_options.backend"),
        ({"targets": [{"node_id": "a.*"}]}, "targets[0].node_id"),
        ({"targets": [{"node_id": "n1", "model_id": "m" * 257}]}, "targets[0].model_id"),
        ({"targets": [{"node_id": "n1", "replica_indexes": [0, -1]}]}, "targets[0].replica_index"),
    ],
)
def test_each_out_of_bounds_field_is_named(fields: dict[str, Any], field: str) -> None:
    assert fields_with_problems(**fields) == [field]


def test_a_derived_install_workflow_id_over_the_servers_limit_names_the_target() -> None:
    input = RolloutInput(
        backend="\U0001f680" * 10,
        targets=[RolloutTarget(node_id="n1", model_id="\U0001f680" * 100)],
    )
    [(field, reason)] = input.problems()
    assert field == "targets[0]" and "1000" in reason
