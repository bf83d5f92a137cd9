"""RolloutBackendWorkflow: many slots, bounded concurrency, one install per slot, ever."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.activity import ActivityCancellationDetails
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from activities.install_slots import install_slots
from durable_installs.contracts.install import install_workflow_id
from durable_installs.contracts.rollout import (
    InstallSlotsInput,
    InstallSlotsProgress,
    RolloutInput,
    RolloutStatus,
    RolloutTarget,
    SlotState,
)
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode, InstallScript
from tests.worker_process import worker_process
from tests.workflow_helpers import (
    FAST,
    assert_replays,
    count_events,
    install_input,
    wait_for,
    wait_until,
)
from workflows.install_backend import InstallBackendWorkflow
from workflows.rollout import RolloutBackendWorkflow


class Fleet:
    """Scripted nodes sharing one view of how many installs run at once."""

    def __init__(self, nc: NATS, count: int, reply_after: float = 0.2) -> None:
        self.nodes = [FakeNode(nc, f"node-{uuid.uuid4().hex[:8]}") for _ in range(count)]
        self.reply_after = reply_after
        self.in_flight = 0
        self.peak = 0
        self.release = asyncio.Event()
        self.release.set()
        self.failing: set[str] = set()
        for node in self.nodes:
            node.script = self._script(node)

    def _script(self, node: FakeNode) -> InstallScript:
        async def install(request: BackendInstallRequest, number: int) -> BackendInstallReply:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await asyncio.sleep(self.reply_after)
                await self.release.wait()
            finally:
                self.in_flight -= 1
            if node.node_id in self.failing:
                return BackendInstallReply(
                    success=False,
                    error='installing backend from gallery: no backend found with name "vllm"',
                )
            return await node.reply_running(request, number)

        return install

    async def __aenter__(self) -> Fleet:
        for node in self.nodes:
            await node.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        for node in self.nodes:
            await node.stop()

    def targets(self, models: list[str], replicas: int = 1) -> list[RolloutTarget]:
        return [
            RolloutTarget(
                node_id=node.node_id, model_id=model, replica_indexes=list(range(replicas))
            )
            for node in self.nodes
            for model in models
        ]

    def requests_per_slot(self) -> Counter[str]:
        return Counter(
            install_workflow_id(node.node_id, r.backend, r.model_id, r.replica_index)
            for node in self.nodes
            for r in node.install_requests
        )


CANCEL_REQUESTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED

HELD = {**FAST, "install_timeout_seconds": 60.0}
"""For nodes that hold their replies: long enough that no request times out."""


def rollout(
    targets: list[RolloutTarget], install_options: dict[str, Any] = FAST, **fields: Any
) -> RolloutInput:
    return RolloutInput(
        backend="llama-cpp", targets=targets, install_options=install_options, **fields
    )


async def start_rollout(
    client: Client, task_queue: str, input: RolloutInput
) -> WorkflowHandle[RolloutBackendWorkflow, RolloutStatus]:
    return await client.start_workflow(
        RolloutBackendWorkflow.run,
        input,
        id=f"rollout-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue,
    )


async def status_of(client: Client, workflow_id: str) -> str:
    description = await client.get_workflow_handle(workflow_id).describe()
    return description.status.name if description.status is not None else ""


async def test_rollout_over_30_slots_never_runs_more_than_max_in_flight(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=3) as fleet:
        input = rollout(fleet.targets(["qwen3", "phi"], replicas=5), max_in_flight=5)
        handle = await start_rollout(client, task_queue, input)
        result = await handle.result()

    assert len(result.slots) == 30
    assert result.counts["succeeded"] == 30
    assert all(slot.address == "10.0.0.7:50051" for slot in result.slots)
    assert 1 < fleet.peak <= 5
    assert set(fleet.requests_per_slot().values()) == {1}
    await assert_replays(handle)


async def test_failed_slots_are_reported_and_the_rest_finish_with_policy_continue(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=3, reply_after=0) as fleet:
        fleet.failing = {fleet.nodes[0].node_id}
        handle = await start_rollout(
            client, task_queue, rollout(fleet.targets(["a", "b"]), max_in_flight=2)
        )
        result = await handle.result()

    failed = [s for s in result.slots if s.state is SlotState.FAILED]
    assert {s.node_id for s in failed} == {fleet.nodes[0].node_id} and len(failed) == 2
    assert all('no backend found with name "vllm"' in s.error for s in failed)
    assert result.counts["succeeded"] == 4
    await assert_replays(handle)


async def test_policy_stop_starts_no_slot_after_max_failures(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=1, reply_after=0) as fleet:
        fleet.failing = {fleet.nodes[0].node_id}
        input = rollout(
            fleet.targets(["a", "b", "c", "d", "e", "f"]),
            max_in_flight=1,
            failure_policy="stop",
            max_failures=2,
        )
        handle = await start_rollout(client, task_queue, input)
        result = await handle.result()

    assert result.counts["failed"] == 2 and result.counts["skipped"] == 4
    assert "stopped after 2 failed" in result.stopped
    assert sum(fleet.requests_per_slot().values()) == 2


async def test_overlapping_rollouts_send_exactly_one_install_per_slot(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=2) as fleet:
        fleet.release.clear()
        models = [f"m{i}" for i in range(10)]
        first = await start_rollout(
            client, task_queue, rollout(fleet.targets(models[:8]), HELD, max_in_flight=20)
        )
        second = await start_rollout(
            client, task_queue, rollout(fleet.targets(models[3:]), HELD, max_in_flight=20)
        )

        async def shared_slots() -> int:
            statuses = [await h.query(RolloutBackendWorkflow.status) for h in (first, second)]
            return sum(1 for status in statuses for slot in status.slots if slot.shared)

        async def all_shared() -> bool:
            return await shared_slots() == 10

        await wait_until(all_shared, what="both rollouts sharing the 10 common slots")
        fleet.release.set()
        first_result, second_result = await first.result(), await second.result()

    per_slot = fleet.requests_per_slot()
    assert len(per_slot) == 20 and set(per_slot.values()) == {1}
    assert first_result.counts["succeeded"] == 16 and second_result.counts["succeeded"] == 14
    shared = [s for r in (first_result, second_result) for s in r.slots if s.shared]
    assert len(shared) == 10 and all(s.address for s in shared)
    await assert_replays(second)


async def test_cancelling_a_rollout_cancels_in_flight_installs_and_reports_the_rest(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=1) as fleet:
        fleet.release.clear()
        handle = await start_rollout(
            client,
            task_queue,
            rollout(fleet.targets(["a", "b", "c", "d", "e"]), HELD, max_in_flight=2),
        )
        await wait_for(lambda: fleet.in_flight == 2)
        await handle.signal(RolloutBackendWorkflow.cancel_rollout)
        result = await handle.result()

    assert result.cancelled
    assert result.counts["cancelled"] == 2 and result.counts["skipped"] == 3
    for slot in result.slots:
        if slot.state is SlotState.CANCELLED:
            assert await status_of(client, slot.workflow_id) == "CANCELED"
    await assert_replays(handle)


async def test_a_cancelled_rollout_ends_cancelled_once_the_installs_it_started_have_stopped(
    client: Client, nc: NATS, task_queue: str
) -> None:
    """``backendctl cancel`` asks Temporal to cancel; the default heartbeat timeout (30 s)
    made each install take up to 24 s to notice, and the batch waiting for them timed out."""
    async with Fleet(nc, count=1) as fleet:
        fleet.release.clear()
        defaults = {**HELD, "heartbeat_timeout_seconds": 30.0}
        handle = await start_rollout(
            client,
            task_queue,
            rollout(fleet.targets(["a", "b", "c", "d", "e"]), defaults, max_in_flight=2),
        )
        await wait_for(lambda: fleet.in_flight == 2)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query(RolloutBackendWorkflow.status)
        cancelled = [s for s in status.slots if s.state is SlotState.CANCELLED]
        installs = [await status_of(client, s.workflow_id) for s in cancelled]

    assert isinstance(failure.value.cause, CancelledError)
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    assert status.cancelled
    assert (status.counts["cancelled"], status.counts["skipped"]) == (2, 3)
    assert status.counts["failed"] == 0
    assert installs == ["CANCELED", "CANCELED"], "every install it started has stopped"
    await assert_replays(handle)


async def test_targets_added_to_a_running_rollout_are_installed_once(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=1) as fleet:
        fleet.release.clear()
        handle = await start_rollout(client, task_queue, rollout(fleet.targets(["a"]), HELD))
        added = await handle.execute_update(
            RolloutBackendWorkflow.add_targets, fleet.targets(["a", "b", "c"])
        )
        fleet.release.set()
        result = await handle.result()

    assert (added.added, added.already_known) == (2, 1)
    assert result.counts["succeeded"] == 3
    assert set(fleet.requests_per_slot().values()) == {1}


async def test_slow_slots_show_still_installing_with_their_progress(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    done = asyncio.Event()

    async def slow(request: BackendInstallRequest, number: int) -> BackendInstallReply | None:
        if number == 1:
            await node.stream_progress(request.op_id, request.backend, done)
            return None
        return await node.reply_running(request, number)

    node.script = slow
    handle = await start_rollout(
        client, task_queue, rollout([RolloutTarget(node_id=node_id, model_id="qwen3")])
    )

    async def state() -> SlotState:
        return (await handle.query(RolloutBackendWorkflow.status)).slots[0].state

    async def still_installing() -> bool:
        return await state() is SlotState.STILL_INSTALLING

    await wait_until(still_installing, what="the slot shown as still installing")
    metadata = await handle.query("__temporal_workflow_metadata")
    assert "| still installing |" in str(metadata)
    node.mark_running(node.install_requests[0])
    done.set()
    result = await handle.result()
    assert result.slots[0].state is SlotState.SUCCEEDED
    await node.stop()


async def test_a_rollouts_installs_are_top_level_workflows_found_by_its_rollout_id(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=2) as fleet:
        handle = await start_rollout(client, task_queue, rollout(fleet.targets(["a", "b"])))
        result = await handle.result()
    install_ids = {slot.workflow_id for slot in result.slots}

    async def all_listed() -> bool:
        query = f"RolloutId = '{handle.id}'"
        return {execution.id async for execution in client.list_workflows(query)} == install_ids

    await wait_until(all_listed)
    for workflow_id in install_ids:
        assert (await client.get_workflow_handle(workflow_id).describe()).parent_id is None


async def test_cancelling_a_rollout_leaves_an_install_it_joined_running(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=1) as fleet:
        fleet.release.clear()
        node_id = fleet.nodes[0].node_id
        joined_id = install_workflow_id(node_id, "llama-cpp", "a", 0)
        other = await client.start_workflow(
            InstallBackendWorkflow.run,
            install_input(node_id, model_id="a", install_timeout_seconds=60.0),
            id=joined_id,
            task_queue=task_queue,
        )
        await wait_for(lambda: fleet.in_flight == 1)
        handle = await start_rollout(
            client, task_queue, rollout(fleet.targets(["a", "b"]), HELD, max_in_flight=2)
        )

        async def joined_and_installing() -> bool:
            status = await handle.query(RolloutBackendWorkflow.status)
            return fleet.in_flight == 2 and any(slot.shared for slot in status.slots)

        await wait_until(joined_and_installing)
        await handle.signal(RolloutBackendWorkflow.cancel_rollout)
        result = await handle.result()
        by_model = {slot.model_id: slot for slot in result.slots}
        assert by_model["a"].shared and by_model["a"].state is SlotState.CANCELLED
        assert by_model["b"].state is SlotState.CANCELLED
        assert await status_of(client, by_model["b"].workflow_id) == "CANCELED"
        assert await status_of(client, joined_id) == "RUNNING"
        fleet.release.set()
        assert (await other.result()).address == "10.0.0.7:50051"


async def test_a_terminated_rollout_cancels_the_installs_it_started(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=1) as fleet:
        fleet.release.clear()
        handle = await start_rollout(
            client, task_queue, rollout(fleet.targets(["a", "b"]), HELD, max_in_flight=2)
        )
        await wait_for(lambda: fleet.in_flight == 2)
        await handle.terminate("operator gave up")
        installs = [
            install_workflow_id(fleet.nodes[0].node_id, "llama-cpp", model, 0)
            for model in ("a", "b")
        ]

        async def all_cancelled() -> bool:
            return all([await status_of(client, w) == "CANCELED" for w in installs])

        # The batch learns of the termination at its next heartbeat (throttled to 8 s).
        await wait_until(all_cancelled, within=40.0)


async def test_a_batch_whose_worker_died_resumes_and_still_owns_the_installs_it_started(
    client: Client, nc: NATS, nats_url: str, temporal_address: str
) -> None:
    queue = f"batch-crash-{uuid.uuid4().hex[:8]}"
    async with Fleet(nc, count=3) as fleet:
        fleet.release.clear()
        with worker_process(temporal_address, nats_url, queue) as first:
            handle = await start_rollout(client, queue, rollout(fleet.targets(["a"]), HELD))
            await wait_for(lambda: fleet.in_flight == 3)
            first.send_signal(signal.SIGKILL)
            first.wait()
        fleet.release.set()
        with worker_process(temporal_address, nats_url, queue):
            result = await handle.result()

    assert result.counts["succeeded"] == 3
    assert not any(slot.shared for slot in result.slots)
    await assert_replays(handle)


async def test_every_slot_of_a_fast_100_slot_batch_is_reported_once(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=25, reply_after=0) as fleet:
        handle = await start_rollout(
            client, task_queue, rollout(fleet.targets(["a", "b", "c", "d"]), max_in_flight=100)
        )
        result = await handle.result()

    assert result.counts["succeeded"] == 100, {s.error for s in result.slots if s.error}
    assert set(fleet.requests_per_slot().values()) == {1}


async def test_a_worker_shutting_down_mid_batch_leaves_the_installs_running(
    client: Client, nc: NATS
) -> None:
    queue = f"batch-shutdown-{uuid.uuid4().hex[:8]}"
    async with Fleet(nc, count=2) as fleet:
        fleet.release.clear()
        worker = create_worker(client, nc, queue, graceful_shutdown_timeout=timedelta(seconds=1))
        async with worker:
            handle = await start_rollout(client, queue, rollout(fleet.targets(["a"]), HELD))
            await wait_for(lambda: fleet.in_flight == 2)
        installs = [install_workflow_id(n.node_id, "llama-cpp", "a", 0) for n in fleet.nodes]
        assert [await status_of(client, w) for w in installs] == ["RUNNING", "RUNNING"]
        fleet.release.set()
        async with create_worker(client, nc, queue):
            result = await handle.result()

    assert result.counts["succeeded"] == 2
    assert not any(slot.shared for slot in result.slots)
    for workflow_id in installs:
        install = client.get_workflow_handle(workflow_id)
        assert await count_events(install, CANCEL_REQUESTED) == 0


async def test_a_stale_batch_attempt_leaves_the_installs_of_a_running_rollout_alone(
    client: Client, nc: NATS, task_queue: str
) -> None:
    async with Fleet(nc, count=2) as fleet:
        fleet.release.clear()
        input = rollout(fleet.targets(["a"]), HELD)
        handle = await start_rollout(client, task_queue, input)
        await wait_for(lambda: fleet.in_flight == 2)
        installs = [install_workflow_id(n.node_id, "llama-cpp", "a", 0) for n in fleet.nodes]
        # An attempt that timed out while still alive: its heartbeat answers NotFound
        # although the rollout runs on, and a retry owns the installs now.
        stale = ActivityEnvironment(client=client)
        progress = InstallSlotsProgress(started=installs).model_dump()
        stale.info = dataclasses.replace(stale.info, heartbeat_details=[progress])
        collecting = asyncio.Event()
        stale.on_heartbeat = lambda *details: collecting.set()
        batch = InstallSlotsInput(rollout_id=handle.id, task_queue=task_queue, batch=input)
        attempt = asyncio.create_task(stale.run(install_slots, batch))
        await asyncio.wait_for(collecting.wait(), 30)
        stale.cancel(cancellation_details=ActivityCancellationDetails(not_found=True))
        with pytest.raises(asyncio.CancelledError):
            await attempt
        fleet.release.set()
        result = await handle.result()

    assert result.counts["succeeded"] == 2
    for workflow_id in installs:
        install = client.get_workflow_handle(workflow_id)
        cancels = await count_events(install, CANCEL_REQUESTED)
        assert cancels == 0
