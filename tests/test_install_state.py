"""The install's decisions, checked without a server: ``workflows/install_state.py`` is plain
code (the workflow module is the shell that turns each decision into Temporal commands)."""

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError, TimeoutError, TimeoutType

from durable_installs.contracts.activities import ProbeResult, ProbeState
from durable_installs.contracts.failures import (
    INSTALL_FAILED,
    INSTALL_REJECTED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
)
from durable_installs.contracts.install import InstallBackendInput, InstallPhase
from durable_installs.contracts.rollout import SlotState
from durable_installs.contracts.search_attributes import INSTALL_PHASE, NODE_ID, ROLLOUT_ID
from workflows.install_state import InstallState, check_input
from workflows.install_steps import NextStep

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def state(**fields: object) -> InstallState:
    input = InstallBackendInput.model_validate({"node_id": "n1", "backend": "b", **fields})
    return InstallState(input, "install-n1", NOW)


def failure(type: str) -> ApplicationError:
    return ApplicationError(f"node said {type}", type=type)


def test_an_invalid_input_is_replaced_by_a_stand_in_that_keeps_only_its_names() -> None:
    bad = InstallBackendInput(node_id="n1", backend="b", deadline_seconds=float("nan"))
    checked = check_input(bad)
    assert "deadline_seconds" in checked.invalid
    assert (checked.input.node_id, checked.input.backend) == ("n1", "b")
    assert (
        checked.input.deadline_seconds
        == InstallBackendInput(node_id="", backend="").deadline_seconds
    )


def test_a_missing_input_is_named_as_such() -> None:
    assert check_input(None).problems == [("input", "it is missing")]


def test_a_fresh_install_derives_its_op_id_from_the_workflow_id_and_stays_on_it() -> None:
    assert state().status.op_id == state().status.op_id
    assert state().status.op_id != InstallState(state().input, "install-n2", NOW).status.op_id


@pytest.mark.parametrize(
    ("cause", "step"),
    [
        (
            TimeoutError("hung", type=TimeoutType.HEARTBEAT, last_heartbeat_details=[]),
            NextStep.PROBE,
        ),
        (failure(WORKER_STILL_INSTALLING), NextStep.PROBE),
        (failure(NODE_UNREACHABLE), NextStep.BACK_OFF),
        (failure(INSTALL_FAILED), NextStep.BACK_OFF),
        (RuntimeError("worker crashed"), NextStep.BACK_OFF),
    ],
)
def test_a_failed_request_decides_the_next_step_by_its_cause(
    cause: BaseException, step: NextStep
) -> None:
    assert state().after_failure(cause, cause, NOW) is step


def test_a_node_still_installing_resets_the_back_off() -> None:
    install = state()
    install.backoff_streak = 4
    install.after_failure(failure(WORKER_STILL_INSTALLING), Exception(), NOW)
    assert install.backoff_streak == 0


def test_a_final_answer_of_the_node_fails_the_install_with_its_type() -> None:
    with pytest.raises(ApplicationError) as raised:
        state().after_failure(failure(INSTALL_REJECTED), Exception(), NOW)
    assert (raised.value.type, raised.value.non_retryable) == (INSTALL_REJECTED, True)


def test_transient_failures_fail_the_install_once_the_budget_is_spent() -> None:
    install = state(max_failed_attempts=2)
    assert install.transient_failure("first") is NextStep.BACK_OFF
    with pytest.raises(ApplicationError) as raised:
        install.transient_failure("second")
    assert raised.value.type == INSTALL_FAILED
    assert "failed 2 times; last error: second" in raised.value.message


@pytest.mark.parametrize(
    ("probe", "step"),
    [
        (ProbeResult(state=ProbeState.RUNNING, source="status"), NextStep.INSTALL),
        (ProbeResult(state=ProbeState.INSTALLED, source="status"), NextStep.INSTALL),
        (ProbeResult(state=ProbeState.ABSENT, source="status"), NextStep.INSTALL),
        (ProbeResult(state=ProbeState.IN_FLIGHT, source="status"), NextStep.WAIT),
        (ProbeResult(state=ProbeState.UNKNOWN, source="stock"), NextStep.WAIT),
        (
            ProbeResult(state=ProbeState.UNKNOWN, source="error", node_offline=True),
            NextStep.BACK_OFF,
        ),
    ],
)
def test_the_probe_answer_decides_what_is_sent_next(probe: ProbeResult, step: NextStep) -> None:
    assert state().after_probe(probe) is step


def test_a_slot_found_running_is_reported_in_the_result() -> None:
    install = state()
    install.after_probe(ProbeResult(state=ProbeState.RUNNING, source="status"))
    assert install.result(NOW).found_running


def test_the_identity_goes_out_once_with_the_first_phase_written() -> None:
    install = state(rollout_id="rollout-1")
    install.defer_identity()
    first = install.set_phase(InstallPhase.COMPLETED, NOW, "install-n1").attributes
    assert first == [*install.identity(), INSTALL_PHASE.value_set("completed")]
    assert {update.key for update in first} >= {NODE_ID, ROLLOUT_ID}
    assert install.set_phase(InstallPhase.FAILED, NOW, "install-n1").attributes == [
        INSTALL_PHASE.value_set("failed")
    ]


def test_a_phase_already_written_is_not_written_again() -> None:
    install = state()
    install.set_phase(InstallPhase.PROBING, NOW, "install-n1")
    assert install.set_phase(InstallPhase.PROBING, NOW, "install-n1").attributes == []


def test_the_rollout_hears_only_when_the_slot_changes_between_installing_and_still() -> None:
    install = state(rollout_id="rollout-1")
    reports = [
        install.set_phase(phase, NOW, "install-n1").rollout_report
        for phase in (
            InstallPhase.INSTALLING,  # the rollout marked it installing when it started it
            InstallPhase.STILL_INSTALLING,
            InstallPhase.PROBING,
            InstallPhase.WAITING,
            InstallPhase.INSTALLING,
            InstallPhase.COMPLETED,
        )
    ]
    assert [r.state if r else None for r in reports] == [
        None,
        SlotState.STILL_INSTALLING,
        None,
        None,
        SlotState.INSTALLING,
        None,
    ]


def test_continue_as_new_carries_the_op_deadline_and_counters_over() -> None:
    install = state(deadline_seconds=600)
    install.status.attempts, install.status.probes, install.backoff_streak = 3, 2, 1
    carried = InstallState(
        install.input.model_copy(update={"resume": install.carry_over()}),
        "install-n1",
        NOW + timedelta(hours=1),
    )
    assert carried.status.op_id == install.status.op_id
    assert carried.status.deadline_at == NOW + timedelta(seconds=600)
    assert (carried.status.attempts, carried.status.probes, carried.backoff_streak) == (3, 2, 1)


def test_the_deadline_error_says_what_was_last_seen() -> None:
    install = state(deadline_seconds=60)
    install.status.last_error = "node said InstallFailed"
    error = install.deadline_error()
    assert "did not finish within 60s" in error.message
    assert "last error: node said InstallFailed" in error.message
