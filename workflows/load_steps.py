"""The load's steps: each activity's input, timeouts and retries, and the load's deadline.

Deterministic functions of their arguments and constants only, passed through the sandbox
with the load's core (``workflows/load_state.py``).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from durable_installs.contracts.failures import (
    SOURCE_MISMATCH,
    SOURCE_NOT_TRUSTED,
    STAGING_REFUSED,
)
from durable_installs.contracts.load import (
    LoadModelActivityInput,
    LoadModelInput,
    StageFileInput,
)

GIB = 2**30

ACTIVITY_MARGIN = timedelta(seconds=30)
"""Slack between an activity's own bound and its start-to-close timeout."""

SHORT_TIMEOUT = timedelta(minutes=1)
SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)

STAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=[SOURCE_NOT_TRUSTED, STAGING_REFUSED, SOURCE_MISMATCH],
)
"""A transfer that broke (worker, agent or NATS gone, a stall) is retried, and every retry
resumes from what the node has committed; a refusal is final."""

LOAD_RETRY = RetryPolicy(maximum_attempts=1)
"""A failed load is the backend's answer, not a glitch: reported, not repeated."""


def load_timeout(input: LoadModelInput, total_bytes: int) -> float:
    """``LoadModel``'s deadline: scales with the model's size, never with wall clock alone."""
    return input.load_base_seconds + input.load_seconds_per_gib * total_bytes / GIB


def stage_input(input: LoadModelInput, position: int, files_url: str) -> StageFileInput:
    return StageFileInput(
        node_id=input.node_id,
        files_url=files_url,
        file=input.files[position],
        stall_seconds=input.stage_stall_seconds,
    )


def stage_timeout(input: LoadModelInput, position: int) -> timedelta:
    """A file's transfer may take as long as the load's deadline allows; a stall is caught
    by the heartbeat timeout and the activity's own stall bound, not by this."""
    return timedelta(seconds=input.deadline_seconds)


def load_input(
    input: LoadModelInput,
    address: str,
    model_path: str,
    total_bytes: int,
    *,
    all_present: bool,
) -> LoadModelActivityInput:
    return LoadModelActivityInput(
        address=address,
        options=input.load_options,
        model_path=model_path,
        model_relative=input.load_options.model or input.files[0].path,
        timeout_seconds=load_timeout(input, total_bytes),
        stall_seconds=input.load_stall_seconds,
        reuse_loaded=all_present and not input.reload,
    )
