"""One request per op: the install contract against a node with a stock LocalAI worker's semantics.

A stock worker has no status extension and serialises installs of one backend behind a lock,
so a second request for an op the node is still working on waits there (and on a worker
without that lock would download twice). Whatever the fast path does, the node sees one
``backend.install`` per op while it may still be working; a second one only after the
request timed out and a probe asked the node what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.fast_path import FastPathActivities
from activities.install import InstallActivities
from activities.replies import OpReplies
from durable_installs.contracts.activities import FastInstallResult, InstallActivityInput
from durable_installs.contracts.failures import WORKER_STILL_INSTALLING
from durable_installs.contracts.install import InstallBackendInput, install_workflow_id
from durable_installs.contracts.names import FAST_INSTALL_ACTIVITY
from durable_installs.contracts.rollout import RolloutInput, RolloutTarget
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode, StockWorker
from tests.workflow_helpers import FAST, assert_replays, install_input, start_install
from workflows.install_backend import InstallBackendWorkflow
from workflows.rollout import RolloutBackendWorkflow

PROBE_REQUESTS = ("models.running", "backend.list")


def cold_input(node_id: str, **overrides: Any) -> InstallBackendInput:
    """The defaults a caller gets: the fast path on (1 s), liveness checks every 15 s."""
    fields: dict[str, Any] = {
        "fast_path_seconds": 1.0,
        "install_timeout_seconds": 120.0,
        "heartbeat_timeout_seconds": 30.0,
        "liveness_check_interval_seconds": 15.0,
        **overrides,
    }
    return install_input(node_id, **fields)


async def test_a_cold_install_that_ends_in_5_seconds_is_one_request(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    async with FakeNode(nc, node_id) as node:
        StockWorker(node, install_seconds=5.0)
        handle = await start_install(client, task_queue, cold_input(node_id))
        result = await handle.result()

    assert node.log.count("install") == 1
    assert (result.attempts, result.probes, result.fast_path) == (1, 0, False)
    assert result.progress_events > 0, "the install activity followed the op's progress"
    await assert_replays(handle)


async def test_a_cold_install_that_ends_in_30_seconds_is_one_request(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    async with FakeNode(nc, node_id) as node:
        StockWorker(node, install_seconds=30.0)
        handle = await start_install(client, task_queue, cold_input(node_id))
        result = await handle.result()

    assert node.log.count("install") == 1
    assert (result.attempts, result.probes) == (1, 0)
    await assert_replays(handle)


async def test_an_install_that_outlives_the_request_timeout_is_probed_before_one_resend(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    async with FakeNode(nc, node_id) as node:
        StockWorker(node, install_seconds=6.0)
        handle = await start_install(
            client, task_queue, cold_input(node_id, install_timeout_seconds=2.0)
        )
        result = await handle.result()

    installs = [i for i, kind in enumerate(node.log) if kind == "install"]
    assert len(installs) == 2, node.log
    first_probe = next(i for i, kind in enumerate(node.log) if kind in PROBE_REQUESTS)
    assert installs[0] < first_probe < installs[1], node.log
    assert result.found_running
    assert (result.attempts, result.fast_path) == (2, False)
    assert result.probes >= 1
    await assert_replays(handle)


def _request(node_id: str, **fields: Any) -> InstallActivityInput:
    return InstallActivityInput(
        node_id=node_id,
        request=BackendInstallRequest(backend="llama-cpp", op_id="op-7"),
        install_timeout_seconds=0.3,
        progress_report_interval_seconds=0,
        **fields,
    )


async def _fast_path_gives_up(nc: NATS, node: FakeNode, replies: OpReplies) -> None:
    """The fast path sends the op, hears nothing within its bound, and leaves its subscription."""
    silent_until_told = asyncio.Event()

    async def silent(request: BackendInstallRequest, number: int) -> None:
        await silent_until_told.wait()

    node.script = silent
    fast = await ActivityEnvironment().run(
        FastPathActivities(nc, replies=replies).install_backend_fast, _request(node.node_id)
    )
    assert (fast.answered, fast.request_sent) == (False, True)
    assert replies.kept == 1


async def test_the_install_activity_on_the_same_worker_takes_the_fast_paths_reply_over(
    nc: NATS, node_id: str
) -> None:
    replies = OpReplies(nc)
    async with FakeNode(nc, node_id) as node:
        await _fast_path_gives_up(nc, node, replies)
        # The node answers after the fast path gave up, before the install activity starts.
        await nc.publish(
            replies.subject(node_id, "op-7"),
            BackendInstallReply(success=True, address="10.0.0.7:50051").to_wire(),
        )
        await nc.flush()
        follow = _request(node_id, request_sent=True).model_copy(
            update={"install_timeout_seconds": 30.0}
        )
        result = await ActivityEnvironment().run(
            InstallActivities(nc, replies=replies).install_backend, follow
        )

    assert result.address == "10.0.0.7:50051"
    assert node.log.count("install") == 1
    assert replies.kept == 0


async def test_a_reply_lost_between_two_workers_ends_in_still_installing_not_a_resend(
    nc: NATS, node_id: str
) -> None:
    """On another worker the install activity subscribes afresh; a reply that came before it
    did is gone, and the wait ends as any timeout does: the workflow probes next."""
    async with FakeNode(nc, node_id) as node:
        await _fast_path_gives_up(nc, node, OpReplies(nc))
        await nc.publish(
            OpReplies(nc).subject(node_id, "op-7"),
            BackendInstallReply(success=True, address="10.0.0.7:50051").to_wire(),
        )
        await nc.flush()
        with pytest.raises(ApplicationError) as failure:
            await ActivityEnvironment().run(
                InstallActivities(nc, replies=OpReplies(nc)).install_backend,
                _request(node_id, request_sent=True),
            )

    assert failure.value.type == WORKER_STILL_INSTALLING
    assert node.log.count("install") == 1


async def test_a_rollout_of_10_slots_some_shared_with_other_installs_is_one_request_per_slot(
    client: Client, nc: NATS, task_queue: str
) -> None:
    nodes = [FakeNode(nc, f"node-{uuid.uuid4().hex[:8]}") for _ in range(5)]
    options = {**FAST, "fast_path_seconds": 1.0, "install_timeout_seconds": 60.0}
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
            StockWorker(node, install_seconds=3.0)
        targets = [RolloutTarget(node_id=n.node_id, model_id=m) for n in nodes for m in "ab"]
        # Three of the ten slots already have an install someone else started.
        others = [
            await client.start_workflow(
                InstallBackendWorkflow.run,
                InstallBackendInput(
                    node_id=t.node_id, backend="llama-cpp", model_id=t.model_id, **options
                ),
                id=install_workflow_id(t.node_id, "llama-cpp", t.model_id, 0),
                task_queue=task_queue,
            )
            for t in targets[:3]
        ]
        handle = await client.start_workflow(
            RolloutBackendWorkflow.run,
            RolloutInput(
                backend="llama-cpp", targets=targets, install_options=options, max_in_flight=10
            ),
            id=f"rollout-{uuid.uuid4().hex[:10]}",
            task_queue=task_queue,
        )
        result = await handle.result()
        for other in others:
            await other.result()

    assert result.counts["succeeded"] == 10
    assert sum(1 for slot in result.slots if slot.shared) == 3
    per_slot = Counter(
        install_workflow_id(node.node_id, r.backend, r.model_id, r.replica_index)
        for node in nodes
        for r in node.install_requests
    )
    assert len(per_slot) == 10 and set(per_slot.values()) == {1}, per_slot


async def test_a_fast_path_that_fails_after_sending_is_followed_by_a_probe_not_a_resend(
    client: Client, nc: NATS, node_id: str
) -> None:
    """A fast path that overruns its timeout may have sent the op: the workflow asks first."""

    @activity.defn(name=FAST_INSTALL_ACTIVITY)
    async def sends_then_hangs(input: InstallActivityInput) -> FastInstallResult:
        await nc.publish(subjects.install(input.node_id), input.request.to_wire(), reply="lost")
        await asyncio.sleep(3600)  # past the local activity's timeout: it is cancelled
        raise AssertionError("unreachable")

    queue = f"install-{uuid.uuid4().hex[:8]}"
    async with (
        FakeNode(nc, node_id) as node,
        create_worker(client, nc, queue, replace={FAST_INSTALL_ACTIVITY: sends_then_hangs}),
    ):
        StockWorker(node, install_seconds=4.0)
        handle = await start_install(client, queue, cold_input(node_id, fast_path_seconds=0.5))
        result = await handle.result()

    installs = [i for i, kind in enumerate(node.log) if kind == "install"]
    assert len(installs) == 2, node.log
    assert any(kind in PROBE_REQUESTS for kind in node.log[installs[0] : installs[1]]), node.log
    assert result.probes >= 1
    await assert_replays(handle)
