"""The one input check every workflow runs first (``workflows/inputs.py``): the failure it
produces is, word for word, the one each workflow produced with its own check before."""

from collections.abc import Mapping
from typing import Any

import pytest

from durable_installs.contracts.drift import MINIMAL_DRIFT_INPUT, DriftCheckInput
from durable_installs.contracts.failures import INVALID_INPUT
from durable_installs.contracts.install import (
    MAX_PROBLEMS_SHOWN,
    MINIMAL_INSTALL_INPUT,
    InstallBackendInput,
    describe_problems,
    missing_input_message,
)
from durable_installs.contracts.lifecycle import MINIMAL_DELETE_INPUT, DeleteBackendInput
from durable_installs.contracts.rollout import MINIMAL_ROLLOUT_INPUT, RolloutInput
from durable_installs.contracts.upgrade import MINIMAL_UPGRADE_INPUT, UpgradeBackendInput
from workflows import install_state
from workflows.inputs import ChecksItself, check_input

BAD_GALLERIES = [{"name": f"g{i}", "url": "not a url"} for i in range(2 * MAX_PROBLEMS_SHOWN)]
BAD_NODES = [f"node {i}" for i in range(2 * MAX_PROBLEMS_SHOWN)]

CASES = [
    pytest.param(InstallBackendInput, MINIMAL_INSTALL_INPUT, {"node_id": "a.*"}, id="install"),
    pytest.param(UpgradeBackendInput, MINIMAL_UPGRADE_INPUT, {"node_id": "a.*"}, id="upgrade"),
    pytest.param(
        RolloutInput,
        MINIMAL_ROLLOUT_INPUT,
        {"action": "upgrade", "max_unavailable": 0},
        id="rollout",
    ),
    pytest.param(DeleteBackendInput, MINIMAL_DELETE_INPUT, {"backend": "b" * 1000}, id="delete"),
    pytest.param(DriftCheckInput, MINIMAL_DRIFT_INPUT, {"nodes": BAD_NODES}, id="drift"),
]
"""Each workflow's input, its smallest valid example, and fields that make it invalid."""


@pytest.mark.parametrize(("model", "minimal", "bad"), CASES)
def test_a_valid_input_passes_unchanged(
    model: type[Any], minimal: Mapping[str, object], bad: dict[str, Any]
) -> None:
    valid = model.model_validate(minimal)
    checked = check_input(valid, minimal)
    assert (checked.input, checked.invalid, checked.problems) == (valid, "", [])


@pytest.mark.parametrize(("model", "minimal", "bad"), CASES)
def test_a_missing_input_names_the_smallest_valid_one(
    model: type[Any], minimal: Mapping[str, object], bad: dict[str, Any]
) -> None:
    checked: Any = check_input(None, minimal)
    assert checked.input is None
    assert checked.invalid == missing_input_message(minimal)
    assert checked.problems == [("input", "it is missing")]
    assert checked.failure().details == ([("input", "it is missing")],)


@pytest.mark.parametrize(("model", "minimal", "bad"), CASES)
def test_an_invalid_input_names_every_invalid_field_in_one_line(
    model: type[Any], minimal: Mapping[str, object], bad: dict[str, Any]
) -> None:
    input: ChecksItself = model.model_validate({**minimal, **bad})
    checked = check_input(input, minimal)
    assert checked.input is None
    assert checked.invalid == f"invalid input: {describe_problems(input.problems())}"
    assert checked.problems == input.problems()[:MAX_PROBLEMS_SHOWN]
    failure = checked.failure()
    assert (failure.message, failure.type, failure.non_retryable) == (
        checked.invalid,
        INVALID_INPUT,
        True,
    )
    assert failure.details == (checked.problems,)


@pytest.mark.parametrize(
    "input",
    [
        DeleteBackendInput(node_id="a.*", backend="", poll_interval_seconds=float("nan")),
        DriftCheckInput.model_validate({"backend_galleries": [], "nodes": BAD_NODES}),
    ],
)
def test_delete_and_drift_fail_with_the_line_they_always_failed_with(
    input: DeleteBackendInput | DriftCheckInput,
) -> None:
    checked = check_input(input, {})
    assert checked.invalid == input.describe_problems()
    failure = checked.failure(with_problems=False)
    assert (failure.message, failure.type, failure.non_retryable) == (
        input.describe_problems(),
        INVALID_INPUT,
        True,
    )
    assert failure.details == ()


def test_a_long_list_of_problems_is_cut_and_the_rest_counted() -> None:
    input = DriftCheckInput.model_validate({**MINIMAL_DRIFT_INPUT, "nodes": BAD_NODES})
    checked = check_input(input, MINIMAL_DRIFT_INPUT)
    assert len(input.problems()) > MAX_PROBLEMS_SHOWN
    assert len(checked.problems) == MAX_PROBLEMS_SHOWN
    assert checked.invalid.endswith(f"; and {len(input.problems()) - MAX_PROBLEMS_SHOWN} more")
    assert checked.failure().details == (checked.problems,)


@pytest.mark.parametrize(
    "input",
    [
        None,
        InstallBackendInput(node_id="n1", backend="b"),
        InstallBackendInput(node_id="n1", backend="b", deadline_seconds=float("nan")),
        InstallBackendInput.model_validate(
            {"node_id": "n1", "backend": "b", "backend_galleries": BAD_GALLERIES}
        ),
    ],
)
def test_the_install_check_says_the_same_as_the_shared_one(
    input: InstallBackendInput | None,
) -> None:
    """The install still runs its own check (with its stand-in); the words are the same, so
    the install can move to the shared check without a change to its failures."""
    install = install_state.check_input(input)
    shared = check_input(input, MINIMAL_INSTALL_INPUT)
    assert (install.invalid, install.problems) == (shared.invalid, shared.problems)


def test_problems_only_the_workflow_sees_count_after_the_inputs_own() -> None:
    """A rollout checks its own workflow id besides its input."""
    input = RolloutInput(backend="b", action="upgrade", max_unavailable=0)
    checked = check_input(input, MINIMAL_ROLLOUT_INPUT, [("workflow_id", "is too long")])
    assert checked.problems == [*input.problems(), ("workflow_id", "is too long")]
    assert checked.invalid.endswith("; workflow_id: is too long")
    assert check_input(None, MINIMAL_ROLLOUT_INPUT, [("workflow_id", "x")]).problems == [
        ("input", "it is missing")
    ]
