"""The install workflow's pure parts: each activity's input, timeouts, back-off, op ids.

Everything here is a deterministic function of its arguments or a constant, with no workflow
state and no I/O. That is why it is a module of its own: the workflow sandbox re-imports a
workflow's module for every run, but passes this one through (imported once per worker),
which keeps a warm install's one workflow task cheap (bench/README.md, "The warm path").
``tests/test_architecture.py`` checks that it reads no clock, randomness or environment.
"""

import uuid
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

from temporalio.common import RetryPolicy

from durable_installs.contracts.activities import InstallActivityInput, ProbeInput
from durable_installs.contracts.failures import ACTIVITY_ROUTED_TYPES
from durable_installs.contracts.install import InstallBackendInput, InstallPhase
from durable_installs.contracts.limits import MAX_NAME_LENGTH
from durable_installs.contracts.rollout import SlotState
from durable_installs.protocol.messages import BackendInstallRequest, encode_galleries

ACTIVITY_MARGIN = timedelta(seconds=30)
"""Slack between the NATS request timeout and the activity's own start-to-close timeout."""

INSTALL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=list(ACTIVITY_ROUTED_TYPES),
)
"""Temporal retries an install attempt only when the worker running it died or hung (timeouts,
crashes): the retry resumes the same op from its heartbeat. Everything the node said goes back
to the workflow, which probes before anything is sent again."""

PROBE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2)

INVALID_INPUT_WRITES_NO_SEARCH_ATTRIBUTE = "invalid-input-writes-no-search-attribute"
"""Patch id: an invalid input used to upsert ``InstallPhase=failed`` before failing; now it
writes nothing (tests/histories/InstallBackendWorkflow/invalid_input.json replays the old way).
Remove the old branch once no execution started before this change can still be replayed."""

FAST_PATH = "fast-path"
"""Patch id: a fresh install first asks the node with a short bound in a local activity and
completes in its first workflow task when the node answers at once; executions started before
replay the old way (straight to the install activity; tests/histories/InstallBackendWorkflow)."""

FAST_PATH_WRITES_ATTRIBUTES_ONCE = "fast-path-writes-attributes-once"
"""Patch id: a fresh install asks the node first and writes its search attributes once, with
the first phase it records (a warm install: node, backend, model and ``completed`` in one
upsert). Executions started before upserted the identity and ``installing`` first, then
patched ``fast-path`` (tests/histories/InstallBackendWorkflow/fast_path_*.json)."""

FAST_PATH_ONCE = "fast-path-once"
"""Patch id: the fast path's request goes out in the first attempt of the first workflow task
only. When that task is run again (the worker running it died or overran the task timeout
while the local activity waited) or the local activity itself failed, the request may be out
and nobody hears its reply, so the workflow probes before anything is sent again. Executions
started before ran the fast path again, or fell through to an install activity that sent the
op once more: a second request with no probe, while the node may still be working."""

FIRST_TASK_HISTORY_LENGTH = 3
"""Events in a history during the first attempt of its first workflow task (started, task
scheduled, task started); more means an earlier attempt of that task ran, or something came in
before it (a cancel): the fast path may have sent the request already, or is pointless."""

CANCEL_TELLS_THE_NODE = "cancel-tells-the-node"
"""Patch id: an install cancelled while no install activity runs (a probe, a wait, a
back-off, after a request timed out) tells the node to stop the op with a local activity
before it ends. Executions started before ended without a word to the node, which kept
pulling."""

CANCEL_OP_TIMEOUT = timedelta(seconds=5)
"""Bound on telling the node to stop an op: one publish and a flush."""

CANCEL_OP_RETRY = RetryPolicy(maximum_attempts=1)
"""Telling the node is tried once: the install ends cancelled either way."""

FAST_PATH_MARGIN = timedelta(seconds=2)
"""Slack between the fast path's NATS bound and its local activity's start-to-close timeout."""

FAST_PATH_RETRY = RetryPolicy(maximum_attempts=1)
"""The fast path is tried once: anything but an immediate answer falls through to the install
activity, which has its own retries."""

OP_ID_NAMESPACE = uuid.UUID("5f0c3d4e-6a39-4d8e-9a51-0d7e2b8c1f00")


class NextStep(Enum):
    """What the install loop does next."""

    INSTALL = "install"
    PROBE = "probe"
    WAIT = "wait"
    BACK_OFF = "back_off"


ROLLOUT_STATE = {
    InstallPhase.INSTALLING: SlotState.INSTALLING,
    InstallPhase.STILL_INSTALLING: SlotState.STILL_INSTALLING,
    InstallPhase.PROBING: SlotState.STILL_INSTALLING,
    InstallPhase.WAITING: SlotState.STILL_INSTALLING,
    InstallPhase.BACKING_OFF: SlotState.STILL_INSTALLING,
}


MAX_BACKOFF_DOUBLINGS = 60
"""The back-off doubles at most this often: 2**60 times any valid first wait is far beyond
any valid cap, and a bounded exponent cannot overflow however long a node stays away."""


class BacksOff(Protocol):
    """An input with a doubling back-off: installs and upgrades."""

    @property
    def retry_backoff_seconds(self) -> float: ...

    @property
    def retry_backoff_max_seconds(self) -> float: ...


def backoff_seconds(input: BacksOff, streak: int) -> float:
    """The wait before the ``streak``-th consecutive retry: doubling, capped."""
    doublings = min(max(streak - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return min(input.retry_backoff_seconds * 2.0**doublings, input.retry_backoff_max_seconds)


def install_deadline(input: InstallBackendInput, now: datetime) -> datetime:
    """When the install gives up: carried over by continue-as-new, else from ``now``."""
    if input.resume is not None:
        return input.resume.deadline_at
    return now + timedelta(seconds=max(input.deadline_seconds, 0.0))


def install_activity_input(
    input: InstallBackendInput, op_id: str, remaining: timedelta
) -> InstallActivityInput:
    """What one install request sends; its timeout never runs past the time left."""
    request = BackendInstallRequest(
        backend=input.backend,
        model_id=input.model_id,
        backend_galleries=encode_galleries(input.backend_galleries or []),
        uri=input.uri,
        name=input.name,
        alias=input.alias,
        replica_index=input.replica_index,
        op_id=op_id,
    )
    return InstallActivityInput(
        node_id=input.node_id,
        request=request,
        install_timeout_seconds=min(input.install_timeout_seconds, remaining.total_seconds()),
        heartbeat_interval_seconds=min(5.0, input.heartbeat_timeout_seconds / 3),
        progress_report_interval_seconds=input.progress_report_interval_seconds,
        liveness_check_interval_seconds=input.liveness_check_interval_seconds,
    )


def probe_activity_input(input: InstallBackendInput, op_id: str) -> ProbeInput:
    """What one probe asks the node about the slot and its op."""
    return ProbeInput(
        node_id=input.node_id,
        backend=input.backend,
        model_id=input.model_id,
        replica_index=input.replica_index,
        op_id=op_id,
        galleries_json=encode_galleries(input.backend_galleries or []),
        listen_seconds=input.probe_listen_seconds,
    )


def probe_timeout(probe: ProbeInput) -> timedelta:
    """The probe activity's start-to-close timeout: every step's own timeout, plus slack."""
    budget = (
        probe.status_timeout_seconds
        + probe.listen_seconds
        + max(probe.running_timeout_seconds, probe.list_timeout_seconds)
    )
    return timedelta(seconds=budget) + ACTIVITY_MARGIN


def stand_in_input(input: InstallBackendInput | None) -> InstallBackendInput:
    """A harmless input in place of an invalid one: the query and the UI still say what failed.

    Only the identifying strings are kept, cut to their limits; no number of the invalid
    input is used, so nothing can overflow or be NaN on the way to the failure.
    """
    if input is None:
        return InstallBackendInput(node_id="", backend="")
    return InstallBackendInput(
        node_id=input.node_id[:MAX_NAME_LENGTH],
        backend=input.backend[:MAX_NAME_LENGTH],
        model_id=input.model_id[:MAX_NAME_LENGTH],
    )


def derive_op_id(workflow_id: str) -> str:
    """A stable op id for a workflow: the same across retries, resets and continue-as-new."""
    return str(uuid.uuid5(OP_ID_NAMESPACE, workflow_id))
