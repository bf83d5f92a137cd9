"""The upgrade's decisions, checked without a server: ``workflows/upgrade_state.py`` is plain
code (``workflows/upgrade_backend.py`` is the shell that turns each decision into Temporal
commands)."""

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError, TimeoutError, TimeoutType

from durable_installs.contracts.activities import InstallProgress
from durable_installs.contracts.failures import (
    INSTALL_DEADLINE_EXCEEDED,
    INSTALL_FAILED,
    INSTALL_REJECTED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
)
from durable_installs.contracts.search_attributes import BACKEND_NAME, NODE_ID, ROLLOUT_ID
from durable_installs.contracts.upgrade import (
    BACKEND_NOT_INSTALLED,
    ROLLBACK_UNAVAILABLE,
    SLOTS_NOT_RESTORED,
    UPGRADE_NOT_APPLIED,
    BackendVersion,
    HealthCheckResult,
    InspectBackendResult,
    SlotOutcome,
    SlotRef,
    UpgradeActivityResult,
    UpgradeBackendInput,
    UpgradePhase,
)
from workflows.upgrade_state import UpgradeState, details_markdown
from workflows.upgrade_steps import (
    OP_ID_NAMESPACE,
    UPGRADE_RETRY,
    NextStep,
    restore_install_input,
    upgrade_op_id,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
V1 = BackendVersion(listed=True, version="1.0.0", installed_at="2026-01-01T00:00:00Z")
V2 = BackendVersion(listed=True, version="2.0.0", installed_at="2026-02-01T00:00:00Z")


def state(**fields: object) -> UpgradeState:
    input = UpgradeBackendInput.model_validate({"node_id": "n1", "backend": "b", **fields})
    return UpgradeState(input, "upgrade-n1", NOW)


def inspected(version: BackendVersion = V1, **fields: object) -> InspectBackendResult:
    return InspectBackendResult.model_validate({"reachable": True, "version": version, **fields})


def failure(type: str) -> ApplicationError:
    return ApplicationError(f"node said {type}", type=type)


def test_the_op_id_of_a_running_upgrade_never_changes() -> None:
    """Derived from the workflow id in the namespace upgrades have always used: a running
    upgrade replayed on new code re-sends under the op id the node already knows."""
    assert str(OP_ID_NAMESPACE) == "0b7c3a52-47c1-4d33-9f0e-2e51c9a7d6b4"
    assert state().op_id == upgrade_op_id("upgrade-n1") == "159b2380-c45b-5a58-8208-372bd738e79b"
    assert state(op_id="given").op_id == "given"


def test_a_node_that_cannot_roll_back_is_not_asked_again() -> None:
    assert ROLLBACK_UNAVAILABLE in (UPGRADE_RETRY.non_retryable_error_types or [])


def test_the_identity_names_node_backend_and_the_rollout_when_there_is_one() -> None:
    assert [update.key for update in state().identity()] == [NODE_ID, BACKEND_NAME]
    assert ROLLOUT_ID in [update.key for update in state(rollout_id="r1").identity()]


def test_an_upgrade_is_never_sent_to_a_node_that_does_not_list_the_backend() -> None:
    upgrade = state()
    with pytest.raises(ApplicationError) as raised:
        upgrade.inspected_before(inspected(BackendVersion()))
    assert raised.value.type == BACKEND_NOT_INSTALLED
    assert 'backend "b" is not installed on node n1' in raised.value.message


def test_a_rollback_is_sent_even_to_a_node_that_lost_the_backend() -> None:
    state(rollback=True).inspected_before(inspected(BackendVersion()))


def test_each_request_counts_and_never_waits_past_the_deadline() -> None:
    upgrade = state(deadline_seconds=60, upgrade_timeout_seconds=900)
    first = upgrade.next_request(NOW)
    late = upgrade.next_request(NOW + timedelta(seconds=59.99))
    assert upgrade.status.requests == 2
    assert first.timeout_seconds == 60
    assert late.timeout_seconds == 0.1
    assert first.request.op_id == late.request.op_id == upgrade.op_id


@pytest.mark.parametrize(
    ("cause", "step"),
    [
        (
            TimeoutError("hung", type=TimeoutType.HEARTBEAT, last_heartbeat_details=[]),
            NextStep.PROBE,
        ),
        (failure(WORKER_STILL_INSTALLING), NextStep.PROBE),
        (failure(NODE_UNREACHABLE), NextStep.BACK_OFF),
    ],
)
def test_a_failed_request_decides_the_next_step_by_its_cause(
    cause: BaseException, step: NextStep
) -> None:
    assert state().after_failed_send(cause, cause) is step


def test_a_worker_that_died_mid_request_leaves_the_upgrade_still_upgrading() -> None:
    upgrade = state()
    upgrade.status.phase = UpgradePhase.UPGRADING
    timeout = TimeoutError("hung", type=TimeoutType.HEARTBEAT, last_heartbeat_details=[])
    upgrade.after_failed_send(timeout, timeout)
    assert upgrade.status.phase is UpgradePhase.STILL_UPGRADING
    upgrade.status.phase = UpgradePhase.UPGRADING
    upgrade.after_failed_send(failure(WORKER_STILL_INSTALLING), Exception())
    assert upgrade.status.phase is UpgradePhase.UPGRADING, "the node said so: still upgrading"
    assert upgrade.status.error == f"node said {WORKER_STILL_INSTALLING}"


@pytest.mark.parametrize(
    ("cause", "type"),
    [
        (failure(INSTALL_REJECTED), INSTALL_REJECTED),
        (ApplicationError("no type"), INSTALL_FAILED),
        (RuntimeError("worker crashed"), INSTALL_FAILED),
    ],
)
def test_anything_else_a_request_fails_with_is_final(cause: BaseException, type: str) -> None:
    with pytest.raises(ApplicationError) as raised:
        state().after_failed_send(cause, cause)
    assert (raised.value.type, raised.value.non_retryable) == (type, True)


@pytest.mark.parametrize(
    ("probe", "step"),
    [
        (InspectBackendResult(reachable=False, version=BackendVersion()), NextStep.BACK_OFF),
        (inspected(V1, upgrade_in_flight=True), NextStep.WAIT),
        (inspected(V2), NextStep.VERIFY),
        (inspected(V1), NextStep.SEND),
    ],
)
def test_the_inspection_decides_what_is_sent_next(
    probe: InspectBackendResult, step: NextStep
) -> None:
    assert state().after_probe(probe, V1) is step


def test_the_back_off_doubles_while_the_node_is_silent_and_starts_over_when_it_answers() -> None:
    upgrade = state(retry_backoff_seconds=1, retry_backoff_max_seconds=60)
    silent = InspectBackendResult(reachable=False, version=BackendVersion())
    waits = []
    for _ in range(3):
        upgrade.after_probe(silent, V1)
        waits.append(upgrade.backoff_seconds())
    upgrade.after_failed_send(failure(NODE_UNREACHABLE), Exception())
    waits.append(upgrade.backoff_seconds())
    upgrade.after_probe(inspected(V1), V1)
    upgrade.after_probe(silent, V1)
    waits.append(upgrade.backoff_seconds())
    assert waits == [1, 2, 4, 8, 1]


def test_with_an_expected_version_only_that_version_counts_as_applied() -> None:
    upgrade = state(expected_version="3.0.0")
    assert not upgrade.applied(V1, V2)
    assert upgrade.applied(V1, V2.model_copy(update={"version": "3.0.0"}))


def test_a_node_that_says_success_but_lists_the_old_install_fails_the_upgrade() -> None:
    upgrade = state()
    with pytest.raises(ApplicationError) as raised:
        upgrade.verify(V1, V1)
    assert raised.value.type == UPGRADE_NOT_APPLIED
    assert "replied success to the upgrade of b, but backend.list shows version 1.0.0" in (
        raised.value.message
    )
    assert upgrade.status.after == V1
    upgrade.verify(V1, V2)


def test_the_slots_that_come_back_are_those_inspected_stopped_or_named() -> None:
    upgrade = state(restore_slots=[SlotRef(model_id="named", replica_index=0)])
    before = inspected(V1, slots=[SlotRef(model_id="m", replica_index=0)], slots_known=True)
    reply = UpgradeActivityResult(stopped_process_keys=["m#0", "m#1", "b#0", "not a key"])
    assert upgrade.slots_to_restore(before, inspected(V2), reply) == [
        SlotRef(model_id="m", replica_index=0),
        SlotRef(model_id="named", replica_index=0),
        SlotRef(model_id="m", replica_index=1),
        SlotRef(model_id="", replica_index=0),
    ]


def test_on_a_stock_worker_the_slots_gone_after_the_upgrade_come_back() -> None:
    stayed, gone = SlotRef(model_id="other", replica_index=0), SlotRef(model_id="m")
    before = inspected(V1, running=[stayed, gone], slots_known=False)
    after = inspected(V2, running=[stayed], slots_known=False)
    assert state().slots_to_restore(before, after, None) == [gone]


def test_slots_that_do_not_answer_health_fail_the_upgrade_naming_them() -> None:
    upgrade = state()
    upgrade.status.slots = [
        SlotOutcome(model_id="m", replica_index=0, workflow_id="w0", address="10.0.0.1:1"),
        SlotOutcome(model_id="m", replica_index=1, workflow_id="w1", address="10.0.0.1:2"),
        SlotOutcome(model_id="", replica_index=0, workflow_id="w2", error="install failed"),
    ]
    upgrade.record_health(HealthCheckResult(healthy={"10.0.0.1:1": True}))
    error = upgrade.unhealthy_error()
    assert error is not None and error.type == SLOTS_NOT_RESTORED
    assert error.message == (
        "2 of 3 slot(s) of b on node n1 did not come back healthy: "
        "m#1: 10.0.0.1:2 does not answer gRPC Health with OK; -#0: install failed"
    )
    upgrade.status.slots = upgrade.status.slots[:1]
    assert upgrade.unhealthy_error() is None


def test_a_slot_comes_back_with_the_callers_options_and_the_health_gate_as_deadline() -> None:
    upgrade = state(
        health_gate_seconds=120, rollout_id="r1", install_options={"probe_interval_seconds": 2}
    )
    install = restore_install_input(upgrade.input, SlotRef(model_id="m", replica_index=1))
    assert (install.node_id, install.backend, install.model_id, install.replica_index) == (
        "n1",
        "b",
        "m",
        1,
    )
    assert (install.deadline_seconds, install.rollout_id, install.probe_interval_seconds) == (
        120,
        "r1",
        2,
    )


def test_the_previous_version_is_dropped_unless_kept_or_rolled_back_to() -> None:
    assert state().drops_previous
    assert not state(keep_previous=True).drops_previous
    assert not state(rollback=True).drops_previous


def test_the_deadline_error_says_what_was_last_met() -> None:
    upgrade = state(deadline_seconds=60)
    assert not upgrade.past_deadline(NOW + timedelta(seconds=59))
    assert upgrade.past_deadline(NOW + timedelta(seconds=60))
    upgrade.node_silent()
    error = upgrade.deadline_error()
    assert error.type == INSTALL_DEADLINE_EXCEEDED
    assert error.message == (
        "upgrade of b on node n1 did not finish within 60s; "
        "last error: node n1 does not answer backend.list"
    )


def test_a_wait_never_runs_past_the_deadline() -> None:
    upgrade = state(deadline_seconds=60)
    assert upgrade.sleep_seconds(30, NOW + timedelta(seconds=50)) == 10
    assert upgrade.sleep_seconds(30, NOW + timedelta(seconds=70)) == 0.001


def test_the_failure_carries_the_status_for_the_rollouts_table() -> None:
    upgrade = state()
    upgrade.status.before = V1
    failed = upgrade.failed(failure(UPGRADE_NOT_APPLIED))
    assert (failed.type, failed.non_retryable) == (UPGRADE_NOT_APPLIED, True)
    assert failed.details == (upgrade.status,)
    assert upgrade.status.phase is UpgradePhase.FAILED
    assert upgrade.status.error == f"node said {UPGRADE_NOT_APPLIED}"


def test_progress_of_another_op_or_older_than_the_newest_is_dropped() -> None:
    upgrade = state()
    newer = InstallProgress(op_id=upgrade.op_id, node_id="n1", event_count=5)
    assert upgrade.record_progress(newer)
    assert not upgrade.record_progress(newer.model_copy(update={"event_count": 4}))
    assert not upgrade.record_progress(newer.model_copy(update={"op_id": "other"}))
    assert upgrade.status.progress == newer


def test_the_details_show_versions_and_every_slot() -> None:
    upgrade = state(rollback=True)
    upgrade.status.before, upgrade.status.phase = V2, UpgradePhase.CHECKING_HEALTH
    upgrade.status.slots = [
        SlotOutcome(model_id="m", replica_index=0, workflow_id="w", address="a:1", healthy=True)
    ]
    assert details_markdown(upgrade.status).splitlines() == [
        "**Rollback of `b` on `n1`** · checking_health · requests 0 · probes 0",
        "",
        "before: version 2.0.0 (installed at 2026-02-01T00:00:00Z)",
        "after: -",
        "- m#0: a:1 healthy",
    ]
