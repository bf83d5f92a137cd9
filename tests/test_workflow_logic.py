"""The install workflow's decisions, with its activities replaced under their real names.

No NATS and no node: each test scripts what the install and probe activities return, runs the
real ``InstallBackendWorkflow`` on the real dev server with intervals of milliseconds, and reads
the decisions back from the history (which activities ran, which timers were started and for
how long). A time-skipping test server would make the timers free, but it is a separate binary
that no registry we may use ships; millisecond intervals on the dev server cost well under a
second a test instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from durable_installs.contracts.activities import (
    InstallActivityInput,
    InstallActivityResult,
    InstallProgress,
    ProbeInput,
    ProbeResult,
    ProbeState,
)
from durable_installs.contracts.failures import (
    INSTALL_FAILED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
    node_failure,
)
from durable_installs.contracts.install import InstallBackendInput, InstallBackendResult
from durable_installs.contracts.names import INSTALL_ACTIVITY, PROBE_ACTIVITY
from workflows.install_backend import InstallBackendWorkflow

TICK = 0.1
"""Every interval of these tests, in seconds."""

Outcome = Callable[[InstallActivityInput], InstallActivityResult]


def succeed(input: InstallActivityInput) -> InstallActivityResult:
    return InstallActivityResult(
        node_id=input.node_id,
        op_id=input.request.op_id,
        address="10.0.0.7:50051",
        attempt=1,
        progress=InstallProgress(op_id=input.request.op_id, node_id=input.node_id),
        elapsed_seconds=0.0,
    )


def fail_with(error_type: str) -> Outcome:
    def raise_it(input: InstallActivityInput) -> InstallActivityResult:
        raise node_failure(error_type, f"{error_type} from the script")

    return raise_it


def probe_says(state: ProbeState, *, offline: bool = False) -> ProbeResult:
    return ProbeResult(
        state=state,
        source="script",
        node_answered=not offline,
        node_offline=offline,
        probed_at=datetime.now(UTC),
    )


@dataclass
class Script:
    """What the scripted activities return, in order; the last entry repeats."""

    installs: list[Outcome] = field(default_factory=lambda: [succeed])
    probes: list[ProbeResult] = field(default_factory=lambda: [probe_says(ProbeState.ABSENT)])
    install_inputs: list[InstallActivityInput] = field(default_factory=list)
    probe_inputs: list[ProbeInput] = field(default_factory=list)

    async def install(self, input: InstallActivityInput) -> InstallActivityResult:
        self.install_inputs.append(input)
        return self.installs[min(len(self.install_inputs), len(self.installs)) - 1](input)

    async def probe(self, input: ProbeInput) -> ProbeResult:
        self.probe_inputs.append(input)
        return self.probes[min(len(self.probe_inputs), len(self.probes)) - 1]


def scripted_activities(current: Callable[[], Script]) -> list[Callable[..., Any]]:
    """The install and probe activities under their real names, answering from a script."""

    @activity.defn(name=INSTALL_ACTIVITY)
    async def install(input: InstallActivityInput) -> InstallActivityResult:
        return await current().install(input)

    @activity.defn(name=PROBE_ACTIVITY)
    async def probe(input: ProbeInput) -> ProbeResult:
        return await current().probe(input)

    return [install, probe]


FAST_INPUT: dict[str, Any] = {
    "install_timeout_seconds": 1.0,
    "probe_interval_seconds": TICK,
    "retry_backoff_seconds": TICK,
    "retry_backoff_max_seconds": 4 * TICK,
    "probe_listen_seconds": TICK,
    "heartbeat_timeout_seconds": 5.0,
    "deadline_seconds": 30.0,
    "fast_path_seconds": 0.0,  # the scripted worker has no fast path activity; these are the loop's
}


@dataclass
class Run:
    """Starts installs on the scripted worker; the script of the latest start answers."""

    client: Client
    queue: str
    script: Script = field(default_factory=Script)

    async def start(
        self, script: Script, **fields: Any
    ) -> WorkflowHandle[InstallBackendWorkflow, InstallBackendResult]:
        input = InstallBackendInput(node_id="node-1", backend="llama-cpp", **FAST_INPUT | fields)
        self.script = script
        return await self.client.start_workflow(
            InstallBackendWorkflow.run,
            input,
            id=f"logic-{uuid.uuid4().hex[:10]}",
            task_queue=self.queue,
        )


@pytest.fixture
async def run(client: Client) -> AsyncIterator[Run]:
    """A worker with the real workflow and the scripted activities on a fresh task queue."""
    runner = Run(client, f"logic-{uuid.uuid4().hex[:8]}")
    async with Worker(
        client,
        task_queue=runner.queue,
        workflows=[InstallBackendWorkflow],
        activities=scripted_activities(lambda: runner.script),
    ):
        yield runner


async def timers(handle: WorkflowHandle[Any, Any]) -> list[float]:
    """The durations of the durable timers the workflow started, in order, in seconds."""
    history = await handle.fetch_history()
    return [
        event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]


async def activity_sequence(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """``install`` / ``probe`` / ``timer`` in the order the workflow scheduled them."""
    history = await handle.fetch_history()
    names = {INSTALL_ACTIVITY: "install", PROBE_ACTIVITY: "probe"}
    sequence = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activity_type = event.activity_task_scheduled_event_attributes.activity_type.name
            sequence.append(names[activity_type])
        elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            sequence.append("timer")
    return sequence


# --- backoff -----------------------------------------------------------------------------------


async def test_backoff_doubles_while_the_node_stays_offline_and_is_capped(run: Run) -> None:
    offline = probe_says(ProbeState.UNKNOWN, offline=True)
    script = Script(
        installs=[fail_with(NODE_UNREACHABLE), succeed],
        probes=[offline, offline, offline, offline, probe_says(ProbeState.ABSENT)],
    )
    handle = await run.start(script)
    await handle.result()

    assert await timers(handle) == pytest.approx([TICK, 2 * TICK, 4 * TICK, 4 * TICK, 4 * TICK])


async def test_backoff_starts_over_once_the_node_answers_again(run: Run) -> None:
    script = Script(
        installs=[fail_with(NODE_UNREACHABLE), fail_with(NODE_UNREACHABLE), succeed],
        probes=[
            probe_says(ProbeState.UNKNOWN, offline=True),
            probe_says(ProbeState.ABSENT),
        ],
    )
    handle = await run.start(script)
    await handle.result()

    # unreachable → TICK, offline probe → 2·TICK, answering probe resets; unreachable → TICK.
    assert await timers(handle) == pytest.approx([TICK, 2 * TICK, TICK])


# --- failure budget ----------------------------------------------------------------------------


async def test_transient_failures_use_up_the_budget_and_fail_with_install_failed(
    run: Run,
) -> None:
    script = Script(installs=[fail_with(INSTALL_FAILED)])
    handle = await run.start(script, max_failed_attempts=3)

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == INSTALL_FAILED
    assert "failed 3 times" in cause.message
    assert len(script.install_inputs) == 3


async def test_timeouts_never_count_against_the_failure_budget(run: Run) -> None:
    still = fail_with(WORKER_STILL_INSTALLING)
    failed = fail_with(INSTALL_FAILED)
    script = Script(installs=[still, failed, still, still, failed, still, succeed])
    handle = await run.start(script, max_failed_attempts=3)

    result = await handle.result()

    assert result.attempts == 7
    status = await handle.query(InstallBackendWorkflow.progress)
    assert status.failed_attempts == 2


# --- deadline ----------------------------------------------------------------------------------


async def test_the_deadline_ends_an_install_the_node_never_finishes(run: Run) -> None:
    script = Script(
        installs=[fail_with(WORKER_STILL_INSTALLING)],
        probes=[probe_says(ProbeState.IN_FLIGHT)],
    )
    handle = await run.start(script, deadline_seconds=1.0)

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InstallDeadlineExceeded"
    assert len(script.install_inputs) == 1, "in flight: the install is never sent again"


async def test_no_timer_runs_past_the_deadline(run: Run) -> None:
    script = Script(
        installs=[fail_with(NODE_UNREACHABLE)],
        probes=[probe_says(ProbeState.UNKNOWN, offline=True)],
    )
    handle = await run.start(
        script, deadline_seconds=1.0, retry_backoff_seconds=0.4, retry_backoff_max_seconds=60.0
    )

    with pytest.raises(WorkflowFailureError):
        await handle.result()

    assert sum(await timers(handle)) <= 1.0 + 1e-6


# --- the probe decision table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "next_steps"),
    [
        (probe_says(ProbeState.RUNNING), ["install"]),
        (probe_says(ProbeState.INSTALLED), ["install"]),
        (probe_says(ProbeState.ABSENT), ["install"]),
        (probe_says(ProbeState.IN_FLIGHT), ["timer", "probe", "install"]),
        (probe_says(ProbeState.UNKNOWN), ["timer", "probe", "install"]),
        (probe_says(ProbeState.UNKNOWN, offline=True), ["timer", "probe", "install"]),
    ],
    ids=["running", "installed", "absent", "in-flight", "unknown", "offline"],
)
async def test_after_a_timeout_the_probe_decides_the_next_step(
    run: Run, probe: ProbeResult, next_steps: list[str]
) -> None:
    script = Script(
        installs=[fail_with(WORKER_STILL_INSTALLING), succeed],
        probes=[probe, probe_says(ProbeState.ABSENT)],
    )
    handle = await run.start(script)
    result = await handle.result()

    assert await activity_sequence(handle) == ["install", "probe", *next_steps]
    assert result.found_running is (probe.state is ProbeState.RUNNING)
    assert {i.request.op_id for i in script.install_inputs} == {result.op_id}


async def test_an_offline_node_is_backed_off_while_a_busy_one_is_polled(run: Run) -> None:
    busy = Script(
        installs=[fail_with(WORKER_STILL_INSTALLING), succeed],
        probes=[probe_says(ProbeState.IN_FLIGHT), probe_says(ProbeState.ABSENT)],
    )
    busy_handle = await run.start(busy, probe_interval_seconds=0.2)
    await busy_handle.result()
    offline = Script(
        installs=[fail_with(WORKER_STILL_INSTALLING), succeed],
        probes=[probe_says(ProbeState.UNKNOWN, offline=True), probe_says(ProbeState.ABSENT)],
    )
    offline_handle = await run.start(offline, probe_interval_seconds=0.2)
    await offline_handle.result()

    assert await timers(busy_handle) == pytest.approx([0.2])  # the probe interval
    assert await timers(offline_handle) == pytest.approx([TICK])  # the first backoff


# --- continue-as-new ---------------------------------------------------------------------------


async def test_a_continued_run_keeps_op_id_counters_deadline_and_first_start(
    small_history_client: Client,
) -> None:
    """Probing a busy node for long enough makes the server suggest continue-as-new."""
    queue = f"logic-can-{uuid.uuid4().hex[:8]}"
    probes_before_done = 8
    script = Script(
        installs=[fail_with(WORKER_STILL_INSTALLING), succeed],
        probes=[probe_says(ProbeState.IN_FLIGHT)] * probes_before_done
        + [probe_says(ProbeState.RUNNING)],
    )
    async with Worker(
        small_history_client,
        task_queue=queue,
        workflows=[InstallBackendWorkflow],
        activities=scripted_activities(lambda: script),
    ):
        runner = Run(small_history_client, queue)
        handle = await runner.start(script)
        first_run = (await handle.describe()).run_id
        latest = small_history_client.get_workflow_handle_for(InstallBackendWorkflow.run, handle.id)
        result = await latest.result()
        last_run = (await latest.describe()).run_id
        first = await small_history_client.get_workflow_handle_for(
            InstallBackendWorkflow.run, handle.id, run_id=first_run
        ).query(InstallBackendWorkflow.progress)
        last = await latest.query(InstallBackendWorkflow.progress)

    assert last_run != first_run, "the install continued as new"
    # Counters are carried, not restarted: they count every probe and request of every run.
    assert result.probes == len(script.probe_inputs) > probes_before_done
    assert result.attempts == len(script.install_inputs) == 2
    assert result.found_running
    assert result.started_at == first.started_at
    assert last.deadline_at == first.deadline_at
    assert {i.request.op_id for i in script.install_inputs} == {result.op_id}
