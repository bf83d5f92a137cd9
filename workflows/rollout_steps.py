"""A rollout's steps: sizes, timeouts, patch ids, and the inputs of what it starts.

Constants and deterministic functions of their arguments only, passed through the sandbox
with the rollout's core (``workflows/rollout_state.py``).
"""

from __future__ import annotations

import urllib.parse
from datetime import timedelta

from temporalio.common import RetryPolicy

from durable_installs.contracts.rollout import (
    InstallSlotsInput,
    RolloutAction,
    RolloutInput,
    RolloutTarget,
    SlotStatus,
)

DETAIL_ROWS = 40
"""Slots (or nodes) listed in the UI's current details; the query always has all of them."""

BATCH_SIZE = 100
"""Most slots one ``install_slots`` activity starts: big enough that a large rollout's
history grows per batch, small enough that one activity's input stays a few kilobytes."""

BATCH_MARGIN = timedelta(minutes=5)
"""Slack beyond the installs' own deadline before a batch activity is presumed stuck."""

BATCH_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
"""A batch heartbeats every second (also while its installs stop after a cancel); the
cancellation reaches it with the next heartbeat's answer."""

BATCH_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
"""A batch whose worker died is retried: it finds its installs from its heartbeat."""

LIST_NODES_TIMEOUT = timedelta(minutes=1)
LIST_NODES_RETRY = RetryPolicy(maximum_attempts=5)
DROP_PREVIOUS_TIMEOUT = timedelta(minutes=1)
DROP_PREVIOUS_RETRY = RetryPolicy(maximum_attempts=3)

CANCELLED_ENDS_CANCELLED = "cancelled-rollout-ends-cancelled"
"""Patch id: a rollout cancelled through Temporal (``backendctl cancel``) ends CANCELED once
the installs, upgrades or deletes it started have stopped, its status query still answering
with every slot. Executions started before completed with ``cancelled: true``. The
``cancel_rollout`` signal still stops a rollout and completes it with its table."""


def batch_input(
    input: RolloutInput, batch: list[SlotStatus], rollout_id: str, task_queue: str
) -> InstallSlotsInput:
    """What one ``install_slots`` activity gets: the rollout's install options, its slots."""
    targets = [
        RolloutTarget(node_id=s.node_id, model_id=s.model_id, replica_indexes=[s.replica_index])
        for s in batch
    ]
    return InstallSlotsInput(
        rollout_id=rollout_id,
        task_queue=task_queue,
        batch=input.model_copy(
            update={"targets": targets, "carried_slots": [], "carried_stopped": ""}
        ),
    )


def batch_deadline(input: RolloutInput) -> timedelta:
    """Every install of a batch ends by its deadline, so a batch's retries are bounded by it."""
    seconds = input.install_input("", "", 0).deadline_seconds
    if input.action is RolloutAction.LOAD:
        seconds = max(seconds, input.load_input("", "", 0).deadline_seconds)
    return timedelta(seconds=seconds) + BATCH_MARGIN


def child_id(verb: str, node: str, backend: str, tag: str) -> str:
    """A child id unique to this rollout and node, short whatever the rollout's id."""
    return "/".join(urllib.parse.quote(part, safe="") for part in (verb, node, backend, tag))
