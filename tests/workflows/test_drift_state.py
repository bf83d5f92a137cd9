"""The drift check's decisions, checked without a server: ``workflows/drift_state.py`` is
plain code (``workflows/drift.py`` is the shell that turns each decision into Temporal
commands)."""

import uuid
from datetime import UTC, datetime, timedelta

from durable_installs.contracts.drift import (
    NODES_PER_CHECK,
    BackendDrift,
    CheckDriftResult,
    DriftCheckInput,
    DriftState,
    NodeDrift,
)
from durable_installs.contracts.nodes import FleetView
from durable_installs.protocol.announce import NodeAnnouncement
from workflows.drift_state import (
    DriftCheck,
    batches,
    check_timeout,
    details_markdown,
    nodes_to_check,
    rollout_task_queue,
    upgrade_workflow_id,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GALLERY = {"name": "main", "url": "https://example.com/index.yaml"}


def drift_input(**fields: object) -> DriftCheckInput:
    return DriftCheckInput.model_validate({"backend_galleries": [GALLERY], **fields})


def fleet(*node_ids: str, duplicates: list[str] | None = None) -> FleetView:
    return FleetView(
        nodes=[
            NodeAnnouncement(node_id=node, instance_id=f"i{i}", started_at=NOW, announced_at=NOW)
            for i, node in enumerate(node_ids)
        ],
        duplicates=duplicates or [],
    )


def node(node_id: str, **states: DriftState) -> NodeDrift:
    return NodeDrift(
        node_id=node_id,
        answered=True,
        backends=[
            BackendDrift(name=name, state=state, reason="") for name, state in states.items()
        ],
    )


def test_explicit_nodes_come_first_then_the_announced_ones_each_once() -> None:
    input = drift_input(nodes=["stock", "a", "stock"])
    assert nodes_to_check(input, fleet("b", "a", "c")) == ["stock", "a", "b", "c"]
    assert nodes_to_check(input, None) == ["stock", "a"]


def test_nodes_are_asked_in_batches_in_order() -> None:
    node_ids = [f"n{i}" for i in range(NODES_PER_CHECK + 1)]
    assert batches(node_ids) == [node_ids[:NODES_PER_CHECK], node_ids[NODES_PER_CHECK:]]
    assert batches([]) == []


def test_the_report_keeps_every_node_and_each_gallery_note_once() -> None:
    check = DriftCheck(drift_input(), NOW, fleet("a", duplicates=["a"]))
    check.add(CheckDriftResult(nodes=[node("a")], gallery_notes=["index slow"]))
    check.add(CheckDriftResult(nodes=[node("b")], gallery_notes=["index slow", "entry odd"]))
    assert [n.node_id for n in check.report.nodes] == ["a", "b"]
    assert check.report.gallery_notes == ["index slow", "entry odd"]
    assert (check.report.checked_at, check.report.duplicates) == (NOW, ["a"])


def test_without_start_upgrades_the_check_only_reports() -> None:
    check = DriftCheck(drift_input(), NOW, None)
    check.add(CheckDriftResult(nodes=[node("a", echo=DriftState.OUTDATED)]))
    assert check.upgrade_rollouts() == []


def test_each_outdated_backend_becomes_one_rollout_of_exactly_its_outdated_nodes() -> None:
    check = DriftCheck(
        drift_input(start_upgrades=True, upgrade_options={"max_unavailable": 2}), NOW, None
    )
    check.add(
        CheckDriftResult(
            nodes=[
                node("b", echo=DriftState.OUTDATED, old=DriftState.NOT_IN_GALLERY),
                node("a", echo=DriftState.OUTDATED, plain=DriftState.OUTDATED),
                node("c", echo=DriftState.UP_TO_DATE, plain=DriftState.UNKNOWN),
            ]
        )
    )
    rollouts = check.upgrade_rollouts()
    assert [(r.backend, r.targets) for r in rollouts] == [("echo", ["a", "b"]), ("plain", ["a"])]
    assert rollouts[0].input == {
        "max_unavailable": 2,
        "backend": "echo",
        "action": "upgrade",
        "targets": [{"node_id": "a"}, {"node_id": "b"}],
        "backend_galleries": [check.input.backend_galleries[0].model_dump(mode="json")],
    }
    assert rollouts[1].summary == "drift: upgrade plain on 1 node(s)"
    started = rollouts[0].started("drift-upgrade/echo/x", already_running=True)
    assert (started.backend, started.targets, started.already_running) == (
        "echo",
        ["a", "b"],
        True,
    )


def test_a_rollout_id_names_the_backend_and_the_time_of_the_check() -> None:
    unique = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
    assert (
        upgrade_workflow_id("echo", NOW, unique) == "drift-upgrade/echo/20261128T120000Z-12345678"
    )


def test_rollouts_run_on_the_queue_asked_for_else_the_checks_own() -> None:
    assert rollout_task_queue(drift_input(), "own") == "own"
    assert rollout_task_queue(drift_input(upgrade_task_queue="other"), "own") == "other"


def test_a_batch_may_take_its_request_timeout_plus_the_gallery_reads() -> None:
    assert check_timeout(drift_input(request_timeout_seconds=10)) == timedelta(seconds=130)


def test_the_details_count_every_state_and_name_what_is_outdated() -> None:
    check = DriftCheck(drift_input(), NOW, None)
    check.add(
        CheckDriftResult(
            nodes=[
                node("a", echo=DriftState.OUTDATED),
                node("b", echo=DriftState.UP_TO_DATE),
                NodeDrift(node_id="gone", answered=False, error="no responders"),
            ]
        )
    )
    assert details_markdown(check.report).splitlines() == [
        "**drift** across 3 node(s): outdated 1, unreachable 1, up_to_date 1",
        "- echo outdated on a",
    ]
