"""The upgrade workflow's pure parts: each activity's input, timeouts, retry policies, op ids.

Everything here is a deterministic function of its arguments or a constant, with no workflow
state and no I/O, so the sandbox passes it through (imported once per worker, not once per
run) and ``tests/test_architecture.py`` checks that it reads no clock, randomness or
environment. What the upgrade knows and decides is ``workflows/upgrade_state.py``.
"""

import uuid
from datetime import timedelta
from enum import Enum

from temporalio.common import RetryPolicy

from durable_installs.contracts.failures import ACTIVITY_ROUTED_TYPES
from durable_installs.contracts.install import InstallBackendInput, install_workflow_id
from durable_installs.contracts.upgrade import (
    ROLLBACK_UNAVAILABLE,
    InspectBackendInput,
    SlotRef,
    UpgradeActivityInput,
    UpgradeBackendInput,
)
from durable_installs.protocol.messages import encode_galleries
from workflows.install_steps import ACTIVITY_MARGIN

OP_ID_NAMESPACE = uuid.UUID("0b7c3a52-47c1-4d33-9f0e-2e51c9a7d6b4")
"""Namespace of the op ids an upgrade derives from its workflow id. Never change it: a running
upgrade derives its op id again on every replay, and a node joins a re-send by that id (the
install's namespace, a different one, is ``workflows.install_steps.OP_ID_NAMESPACE``)."""

SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
"""Inspections, health checks and dropping the previous version: quick questions, asked a
few times; the workflow itself decides what a silent node means."""

UPGRADE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=[*ACTIVITY_ROUTED_TYPES, ROLLBACK_UNAVAILABLE],
)
"""Temporal retries an upgrade attempt only when the worker running it died; everything the
node said goes back to the workflow, which inspects before anything is sent again."""

INSPECT_TIMEOUT = timedelta(minutes=2)
"""Bound on one inspection (``backend.list`` and ``models.running``), one health check of
every slot, and dropping the previous version."""

ATTACH_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
"""Waiting for someone else's install of a slot heartbeats; a dead waiter is noticed soon."""

MIN_REQUEST_SECONDS = 0.1
"""The shortest request timeout: a request sent at the deadline still gets an answer window."""


class NextStep(Enum):
    """What the upgrade does next while it re-pulls (``UpgradeState.after_failed_send`` and
    ``UpgradeState.after_probe`` decide it)."""

    SEND = "send"
    """Send the upgrade (again, with the same op id)."""
    PROBE = "probe"
    """Inspect the node before anything is sent again: it may still be upgrading."""
    BACK_OFF = "back_off"
    """The node did not answer: wait, doubling each time, then inspect."""
    WAIT = "wait"
    """The node still works on the op: wait the probe interval, then inspect."""
    VERIFY = "verify"
    """An inspection shows the new install (its reply was lost): go on to verify it."""


def upgrade_op_id(workflow_id: str) -> str:
    """The op id of an upgrade started without one: the same across retries and replays."""
    return str(uuid.uuid5(OP_ID_NAMESPACE, workflow_id))


def verb(input: UpgradeBackendInput) -> str:
    """``upgrade`` or ``roll back``, for summaries and messages."""
    return "roll back" if input.rollback else "upgrade"


def upgrade_activity_input(
    input: UpgradeBackendInput, op_id: str, remaining_seconds: float
) -> UpgradeActivityInput:
    """What one upgrade request sends; its timeout never runs past the time left."""
    galleries = encode_galleries(input.backend_galleries or [])
    return UpgradeActivityInput(
        node_id=input.node_id,
        request=input.upgrade_request(op_id, galleries),
        rollback=input.rollback,
        timeout_seconds=max(
            min(input.upgrade_timeout_seconds, remaining_seconds), MIN_REQUEST_SECONDS
        ),
        heartbeat_interval_seconds=min(5.0, input.heartbeat_timeout_seconds / 3),
        liveness_check_interval_seconds=input.liveness_check_interval_seconds,
    )


def upgrade_timeout(activity_input: UpgradeActivityInput) -> timedelta:
    """The upgrade activity's start-to-close timeout: its request's, plus slack."""
    return timedelta(seconds=activity_input.timeout_seconds) + ACTIVITY_MARGIN


def inspect_input(input: UpgradeBackendInput, op_id: str) -> InspectBackendInput:
    """What one inspection asks: the backend's ``backend.list`` row, its slots, the op."""
    return InspectBackendInput(node_id=input.node_id, backend=input.backend, op_id=op_id)


def restore_workflow_id(input: UpgradeBackendInput, slot: SlotRef) -> str:
    """The slot's own install workflow id, so a slot is never installed twice at once."""
    return install_workflow_id(input.node_id, input.backend, slot.model_id, slot.replica_index)


def restore_install_input(input: UpgradeBackendInput, slot: SlotRef) -> InstallBackendInput:
    """The install that brings ``slot`` back: the caller's install options, the health gate
    as its deadline, and the fields the upgrade sets itself."""
    return InstallBackendInput.model_validate(
        {
            **input.install_options,
            "node_id": input.node_id,
            "backend": input.backend,
            "model_id": slot.model_id,
            "replica_index": slot.replica_index,
            "backend_galleries": input.backend_galleries,
            "deadline_seconds": input.health_gate_seconds,
            "rollout_id": input.rollout_id,
        }
    )


def attach_timeout(input: UpgradeBackendInput) -> timedelta:
    """How long to wait for someone else's install of a slot: the health gate, plus slack."""
    return timedelta(seconds=input.health_gate_seconds) + ACTIVITY_MARGIN
