"""Record the histories that ``tests/test_replay.py`` replays: ``python -m tests.histories.record``.

Each scenario runs one real execution on a real Temporal dev server and ``nats-server`` against
scripted nodes, and saves its history as ``tests/histories/<WorkflowType>/<scenario>.json`` in
the same JSON that ``temporal workflow show --output json`` prints. Recorded histories are the
contract with executions already running in a cluster: a change to workflow code that no longer
replays one of them would break those executions on deploy. Re-record only when you *add* a
shape (a new workflow type or a new path through one); never re-record to make a failing replay
pass — version the change with ``workflow.patched`` instead (docs/contributing.md, "Changing
workflow code").

``python -m tests.histories.record`` records the scenarios that have no history yet; naming
scenarios (``python -m tests.histories.record warm_install rollout``) re-records them.

Histories that no scenario records any more are older shapes of the code, kept so that the
executions they stand for still replay:

- ``InstallBackendWorkflow/fast_path_warm_install``, ``fast_path_slow_node`` and
  ``fast_path_failure_then_success``: the fast path before the patch
  ``fast-path-writes-attributes-once`` (identity and ``installing`` upserted before the fast
  path); today's shape is ``fast_path_answered``, ``fast_path_followed`` and
  ``fast_path_transient_failure``.
- ``InstallBackendWorkflow/fast_path_falls_through``: the install activity sent the op a
  second time after the fast path's bound (today it follows the fast path's one request:
  ``fast_path_followed``; the commands are the same, the node saw two requests).
- ``InstallBackendWorkflow/invalid_input``: before ``invalid-input-writes-no-search-attribute``
  (an invalid input upserted ``InstallPhase=failed``); today's shape is
  ``out_of_bounds_input``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from durable_installs.contracts.activities import FastInstallResult, InstallActivityInput
from durable_installs.contracts.drift import DriftCheckInput
from durable_installs.contracts.install import InstallPhase
from durable_installs.contracts.lifecycle import DeleteBackendInput
from durable_installs.contracts.names import FAST_INSTALL_ACTIVITY
from durable_installs.contracts.rollout import (
    FailurePolicy,
    RolloutAction,
    RolloutInput,
    RolloutTarget,
)
from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.contracts.upgrade import UpgradeBackendInput
from durable_installs.devstack.sample_backend import Gallery
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendInstallRequest,
    BackendUpgradeReply,
    NodeBackendInfo,
    RunningModelInfo,
)
from durable_installs.servers import find_binary, nats_server
from tests.fake_node import FakeNode
from tests.workflow_helpers import (
    FAST,
    heartbeat_with_events,
    install_input,
    start_install,
    wait_for,
    wait_until,
)
from workflows.delete_backend import DeleteBackendWorkflow
from workflows.drift import DriftCheckWorkflow
from workflows.install_backend import InstallBackendWorkflow
from workflows.rollout import RolloutBackendWorkflow
from workflows.upgrade_backend import UpgradeBackendWorkflow

HISTORIES = Path(__file__).resolve().parent


@dataclass
class Stack:
    """What a scenario runs against; ``small`` suggests continue-as-new after 40 events."""

    client: Client
    small: Client
    nc: NATS
    queue: str
    small_queue: str
    nats_url: str = ""

    async def node(self) -> FakeNode:
        return await FakeNode(self.nc, f"node-{uuid.uuid4().hex[:8]}").start()


Scenario = Callable[[Stack], Awaitable[list[WorkflowHandle[Any, Any]]]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


async def _settle(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait for the workflow to close, whatever its outcome."""
    with contextlib.suppress(Exception):
        await handle.result()


def _fail_once_then_run(node: FakeNode) -> None:
    """The first install fails transiently (a download error); later ones run the slot."""

    async def flaky(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        if number == 1:
            return BackendInstallReply(
                success=False,
                error='installing backend from gallery: failed to download backend "x": EOF',
            )
        return await node.reply_running(request, number)

    node.script = flaky


def _reject_every_install(node: FakeNode) -> None:
    """Every install fails permanently (the gallery has no such backend)."""

    async def reject(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        return BackendInstallReply(
            success=False,
            error='installing backend from gallery: no backend found with name "vllm"',
        )

    node.script = reject


@scenario
async def warm_install(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()
    handle = await start_install(
        stack.client, stack.queue, install_input(node.node_id, model_id="qwen3")
    )
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def fast_path_answered(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """The node answers the fast path's request at once: one workflow task, no activity."""
    node = await stack.node()
    input = install_input(node.node_id, model_id="qwen3", fast_path_seconds=1.0)
    handle = await start_install(stack.client, stack.queue, input)
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def fast_path_short_task_timeout(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """A task timeout too short for the fast path's bound: attributes first, then the path."""
    node = await stack.node()
    handle = await stack.client.start_workflow(
        InstallBackendWorkflow.run,
        install_input(node.node_id, model_id="qwen3", fast_path_seconds=1.0),
        id=f"install-short-task-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
        task_timeout=timedelta(seconds=2),
    )
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def fast_path_followed(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """The fast path gets no answer in time; the install activity follows its one request."""
    node = await stack.node()
    finished = asyncio.Event()

    async def slow(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await node.stream_progress(request.op_id, request.backend, finished)
        return BackendInstallReply(success=True, address="10.0.0.7:50077")

    node.script = slow
    input = install_input(node.node_id, fast_path_seconds=0.5, install_timeout_seconds=60.0)
    handle = await start_install(stack.client, stack.queue, input)
    await heartbeat_with_events(stack.client, handle, at_least=1)  # it follows the op
    finished.set()
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def fast_path_transient_failure(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """The fast path's answer is a transient failure: back off, probe, the same op again."""
    node = await stack.node()

    _fail_once_then_run(node)
    input = install_input(node.node_id, fast_path_seconds=5.0)
    handle = await start_install(stack.client, stack.queue, input)
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def fast_path_overran_then_probed(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """The fast path sends and then overruns its timeout: a probe, then the op once more
    (patch ``fast-path-once``; before it, the install activity sent the op again at once)."""
    node = await stack.node()

    @activity.defn(name=FAST_INSTALL_ACTIVITY)
    async def sends_then_hangs(input: InstallActivityInput) -> FastInstallResult:
        await stack.nc.publish(
            subjects.install(input.node_id), input.request.to_wire(), reply="_INBOX.lost"
        )
        await asyncio.sleep(3600)  # cancelled by the local activity's timeout
        raise AssertionError("unreachable")

    queue = f"{stack.queue}-overran"
    replace = {FAST_INSTALL_ACTIVITY: sends_then_hangs}
    async with create_worker(stack.client, stack.nc, queue, replace=replace):
        input = install_input(node.node_id, fast_path_seconds=0.5)
        handle = await start_install(stack.client, queue, input)
        await handle.result()
    await node.stop()
    return [handle]


@scenario
async def still_installing_then_running(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """The first request times out while progress flows; probes wait; the node finishes."""
    node = await stack.node()
    finished = asyncio.Event()

    async def slow(request: BackendInstallRequest, number: int) -> BackendInstallReply | None:
        if number > 1:
            return BackendInstallReply(success=True, address="10.0.0.7:50099")
        await node.stream_progress(request.op_id, request.backend, finished)
        return None

    node.script = slow
    handle = await start_install(
        stack.client, stack.queue, install_input(node.node_id, install_timeout_seconds=2.0)
    )

    async def probed_twice() -> bool:
        status = await handle.query(InstallBackendWorkflow.progress)
        return status.probes >= 2 and status.phase == InstallPhase.WAITING

    await wait_until(probed_twice, what="two probes")
    node.mark_running(node.install_requests[0], port=50099)
    finished.set()
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def permanent_failure(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()

    _reject_every_install(node)
    handle = await start_install(stack.client, stack.queue, install_input(node.node_id))
    await _settle(handle)
    await node.stop()
    return [handle]


@scenario
async def transient_failure_then_success(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()

    _fail_once_then_run(node)
    handle = await start_install(stack.client, stack.queue, install_input(node.node_id))
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def unreachable_then_present(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    handle = await start_install(stack.client, stack.queue, install_input(node_id))

    async def backing_off() -> bool:
        status = await handle.query(InstallBackendWorkflow.progress)
        return status.phase == InstallPhase.BACKING_OFF

    await wait_until(backing_off, what="backing off")
    node = await FakeNode(stack.nc, node_id).start()
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def cancelled_install(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()

    async def silent(request: BackendInstallRequest, number: int) -> None:
        return None

    node.script = silent
    handle = await start_install(
        stack.client, stack.queue, install_input(node.node_id, install_timeout_seconds=60)
    )
    await wait_for(lambda: len(node.install_bodies) == 1, what="install sent")
    await handle.cancel()
    await _settle(handle)
    await node.stop()
    return [handle]


@scenario
async def cancelled_while_node_busy(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """Cancelled while waiting between probes: the workflow tells the node to stop the op."""
    node = await stack.node()
    pulling = asyncio.Event()

    async def slow_pull(request: BackendInstallRequest, number: int) -> None:
        await node.stream_progress(request.op_id, request.backend, pulling)

    node.script = slow_pull
    handle = await start_install(
        stack.client, stack.queue, install_input(node.node_id, install_timeout_seconds=1.0)
    )

    async def waiting() -> bool:
        status = await handle.query(InstallBackendWorkflow.progress)
        return status.phase == InstallPhase.WAITING

    await wait_until(waiting, what="waiting between probes")
    await handle.cancel()
    await _settle(handle)
    pulling.set()
    await node.stop()
    return [handle]


@scenario
async def deadline_exceeded(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()

    async def silent(request: BackendInstallRequest, number: int) -> None:
        return None

    node.script = silent
    input = install_input(node.node_id, install_timeout_seconds=1.0, deadline_seconds=4.0)
    handle = await start_install(stack.client, stack.queue, input)
    await _settle(handle)
    await node.stop()
    return [handle]


@scenario
async def out_of_bounds_input(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """Validated in the first task, failing without writing a search attribute (patched)."""
    handle = await stack.client.start_workflow(
        "InstallBackendWorkflow",
        {"node_id": "node-1", "backend": "llama-cpp", "deadline_seconds": "NaN"},
        id=f"install-bounds-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await _settle(handle)
    return [handle]


@scenario
async def missing_input(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    handle = await stack.client.start_workflow(
        "InstallBackendWorkflow",
        None,
        id=f"install-missing-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await _settle(handle)
    return [handle]


@scenario
async def install_continue_as_new(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """A long pull on the small-history server: the first run continues as new."""
    node = await FakeNode(stack.nc, f"node-{uuid.uuid4().hex[:8]}").start()
    pulling = asyncio.Event()

    async def long(request: BackendInstallRequest, number: int) -> BackendInstallReply | None:
        if number == 1:
            await node.stream_progress(request.op_id, request.backend, pulling, interval=0.1)
            return None
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = long
    input = install_input(node.node_id, install_timeout_seconds=1, probe_interval_seconds=0.1)
    handle = await start_install(stack.small, stack.small_queue, input)
    first_run = (await handle.describe()).run_id
    latest = stack.small.get_workflow_handle(handle.id)

    async def continued() -> bool:
        return (await latest.describe()).run_id != first_run

    await wait_until(continued, within=60, what="continue-as-new")
    node.mark_running(node.install_requests[0])
    pulling.set()
    await latest.result()
    await node.stop()
    return [stack.small.get_workflow_handle(handle.id, run_id=first_run), latest]


async def _rollout(
    stack: Stack, client: Client, queue: str, nodes: list[FakeNode], **fields: Any
) -> WorkflowHandle[Any, Any]:
    targets = [
        RolloutTarget(node_id=node.node_id, model_id=model, replica_indexes=[0, 1])
        for node in nodes
        for model in ("qwen3", "phi")
    ]
    fields.setdefault("max_in_flight", 3)
    input = RolloutInput(backend="llama-cpp", targets=targets, install_options=FAST, **fields)
    return await client.start_workflow(
        RolloutBackendWorkflow.run, input, id=f"rollout-{uuid.uuid4().hex[:8]}", task_queue=queue
    )


@scenario
async def rollout(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    nodes = [await stack.node() for _ in range(2)]
    handle = await _rollout(stack, stack.client, stack.queue, nodes)
    await handle.result()
    for node in nodes:
        await node.stop()
    return [handle]


@scenario
async def rollout_stopped_by_failures(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()

    _reject_every_install(node)
    handle = await _rollout(
        stack,
        stack.client,
        stack.queue,
        [node],
        failure_policy=FailurePolicy.STOP,
        max_failures=2,
    )
    await _settle(handle)
    await node.stop()
    return [handle]


@scenario
async def rollout_cancelled(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()
    release = asyncio.Event()

    async def held(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await release.wait()
        return await node.reply_running(request, number)

    node.script = held
    handle = await _rollout(stack, stack.client, stack.queue, [node])
    await wait_for(lambda: len(node.install_bodies) >= 2, what="installs in flight")
    await handle.signal(RolloutBackendWorkflow.cancel_rollout)
    await _settle(handle)
    release.set()
    await node.stop()
    return [handle]


@scenario
async def rollout_cancelled_through_temporal(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """``backendctl cancel``: the rollout stops its installs and ends CANCELED."""
    node = await stack.node()
    release = asyncio.Event()

    async def held(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await release.wait()
        return await node.reply_running(request, number)

    node.script = held
    handle = await _rollout(stack, stack.client, stack.queue, [node])
    await wait_for(lambda: len(node.install_bodies) >= 2, what="installs in flight")
    await handle.cancel()
    await _settle(handle)
    release.set()
    await node.stop()
    return [handle]


@scenario
async def rollout_continue_as_new(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    nodes = [await stack.node() for _ in range(4)]
    handle = await _rollout(stack, stack.small, stack.small_queue, nodes, max_in_flight=1)
    first_run = (await handle.describe()).run_id
    await handle.result()
    for node in nodes:
        await node.stop()
    latest = stack.small.get_workflow_handle(handle.id)
    runs = [stack.small.get_workflow_handle(handle.id, run_id=first_run)]
    if (await latest.describe()).run_id != first_run:
        runs.append(latest)
    return runs


# --- UpgradeBackendWorkflow and rollouts of action upgrade (issue 13) ---------------------

UPGRADE_FAST: dict[str, Any] = {
    "probe_interval_seconds": 0.5,
    "retry_backoff_seconds": 0.5,
    "retry_backoff_max_seconds": 1,
    "health_gate_seconds": 30,
    "install_options": {k: v for k, v in FAST.items() if k != "deadline_seconds"},
}


def _stock_upgradable(node: FakeNode) -> None:
    """A stock node (no upgrade subject) whose forced install of a uri installs that version."""
    node.backends = [
        NodeBackendInfo(name="echo", version="1.0.0", uri="file:///echo-v1", installed_at="t0")
    ]
    node.running = [RunningModelInfo(model_id="m", replica_index=0, address="127.0.0.1:50051")]

    async def forced(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        version = "1.0.0" if request.uri.endswith("v1") else "2.0.0"
        node.backends = [
            NodeBackendInfo(
                name="echo",
                version=version,
                uri=request.uri or "file:///echo-v2",
                installed_at=f"t{number}",
            )
        ]
        return await node.reply_running(request, number)

    node.script = forced


async def _lying(stack: Stack, node: FakeNode) -> None:
    """The node answers ``backend.upgrade`` with success and changes nothing."""
    node.backends = [
        NodeBackendInfo(name="echo", version="1.0.0", uri="file:///echo-v1", installed_at="t0")
    ]

    async def on_upgrade(msg: Any) -> None:
        await msg.respond(BackendUpgradeReply(success=True).to_wire())

    node._subs.append(await stack.nc.subscribe(subjects.upgrade(node.node_id), cb=on_upgrade))


@scenario
async def upgrade_stock_fallback(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()
    _stock_upgradable(node)
    handle = await stack.client.start_workflow(
        UpgradeBackendWorkflow.run,
        UpgradeBackendInput(node_id=node.node_id, backend="echo", **UPGRADE_FAST),
        id=f"upgrade-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await handle.result()
    await node.stop()
    return [handle]


@scenario
async def upgrade_not_applied(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()
    await _lying(stack, node)
    handle = await stack.client.start_workflow(
        UpgradeBackendWorkflow.run,
        UpgradeBackendInput(node_id=node.node_id, backend="echo", **UPGRADE_FAST),
        id=f"upgrade-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await _settle(handle)
    await node.stop()
    return [handle]


@scenario
async def rollout_upgrade_rolled_back(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    good, liar = await stack.node(), await stack.node()
    _stock_upgradable(good)
    await _lying(stack, liar)
    fast = {k: v for k, v in UPGRADE_FAST.items() if k not in ("install_options",)}
    gate = fast.pop("health_gate_seconds")
    handle = await stack.client.start_workflow(
        RolloutBackendWorkflow.run,
        RolloutInput(
            backend="echo",
            action=RolloutAction.UPGRADE,
            targets=[RolloutTarget(node_id=good.node_id), RolloutTarget(node_id=liar.node_id)],
            rollback=True,
            health_gate_seconds=gate,
            install_options=UPGRADE_FAST["install_options"],
            upgrade_options=fast,
        ),
        id=f"rollout-upgrade-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await _settle(handle)
    for node in (good, liar):
        await node.stop()
    return [handle]


@scenario
async def rollout_upgrade_cancelled(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """An upgrade rollout cancelled through Temporal while a node re-pulls: CANCELED."""
    node = await stack.node()
    node.backends = [NodeBackendInfo(name="echo", version="1.0.0", uri="file:///echo-v1")]
    release, upgrading = asyncio.Event(), asyncio.Event()

    async def on_upgrade(msg: Any) -> None:
        upgrading.set()
        await release.wait()
        await msg.respond(BackendUpgradeReply(success=True).to_wire())

    node._subs.append(await stack.nc.subscribe(subjects.upgrade(node.node_id), cb=on_upgrade))
    fast = {k: v for k, v in UPGRADE_FAST.items() if k not in ("install_options",)}
    gate = fast.pop("health_gate_seconds")
    handle = await stack.client.start_workflow(
        RolloutBackendWorkflow.run,
        RolloutInput(
            backend="echo",
            action=RolloutAction.UPGRADE,
            targets=[RolloutTarget(node_id=node.node_id)],
            health_gate_seconds=gate,
            install_options=UPGRADE_FAST["install_options"],
            upgrade_options=fast,
        ),
        id=f"rollout-upgrade-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await asyncio.wait_for(upgrading.wait(), 30)
    await handle.cancel()
    await _settle(handle)
    release.set()
    await node.stop()
    return [handle]


# --- issue 13: delete and drift ------------------------------------------------------------------


async def _deleting_node(stack: Stack, installed: bool, running: bool) -> FakeNode:
    """A stock node with cpu-echo (listed and/or running) that obeys stop and delete."""
    node = await stack.node()
    if installed:
        node.backends = [NodeBackendInfo(name="cpu-echo", version="1.0.0")]
    if running:
        node.running = [RunningModelInfo(model_id="qwen3", backend="cpu-echo")]
    await node.obey_stop_and_delete()
    return node


async def _delete(stack: Stack, node: FakeNode, force: bool = False) -> WorkflowHandle[Any, Any]:
    handle = await stack.client.start_workflow(
        DeleteBackendWorkflow.run,
        DeleteBackendInput(
            node_id=node.node_id,
            backend="cpu-echo",
            force=force,
            request_timeout_seconds=5,
            poll_interval_seconds=0.2,
        ),
        id=f"delete-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await _settle(handle)
    await node.stop()
    return handle


@scenario
async def delete_absent(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    return [await _delete(stack, await _deleting_node(stack, installed=False, running=False))]


@scenario
async def delete_refused(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    return [await _delete(stack, await _deleting_node(stack, installed=True, running=True))]


@scenario
async def delete_forced(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    node = await _deleting_node(stack, installed=True, running=True)
    return [await _delete(stack, node, force=True)]


@scenario
async def rollout_delete(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """A rollout with action delete over two stock nodes named as targets."""
    nodes = [await _deleting_node(stack, installed=True, running=False) for _ in range(2)]
    handle = await stack.client.start_workflow(
        RolloutBackendWorkflow.run,
        RolloutInput(
            backend="cpu-echo",
            action=RolloutAction.DELETE,
            targets=[RolloutTarget(node_id=node.node_id) for node in nodes],
        ),
        id=f"rollout-delete-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )
    await _settle(handle)
    for node in nodes:
        await node.stop()
    return [handle]


async def _drift(stack: Stack, start_upgrades: bool) -> list[WorkflowHandle[Any, Any]]:
    node = await stack.node()
    node.backends = [
        NodeBackendInfo(name="cpu-echo", version="1.0.0"),
        NodeBackendInfo(name="cpu-gone", version="1.0.0"),
    ]
    with tempfile.TemporaryDirectory() as root:
        gallery = Gallery(path=Path(root) / "index.yaml")
        gallery.add({"name": "cpu-echo", "uri": "file:///srv/cpu-echo.tar.gz", "version": "2.0"})
        handle = await stack.client.start_workflow(
            DriftCheckWorkflow.run,
            DriftCheckInput(
                backend_galleries=[gallery.config],
                nodes=[node.node_id],
                use_registry=False,
                start_upgrades=start_upgrades,
                upgrade_task_queue="record-rollout-unpolled",
                request_timeout_seconds=5,
            ),
            id=f"drift-{uuid.uuid4().hex[:8]}",
            task_queue=stack.queue,
        )
        report = await handle.result()
    for upgrade in report.upgrades:  # nobody polls their queue; they only had to start
        await stack.client.get_workflow_handle(upgrade.workflow_id).terminate("recorded")
    await node.stop()
    return [handle]


@scenario
async def drift_report_only(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    return await _drift(stack, start_upgrades=False)


@scenario
async def drift_starts_upgrades(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    return await _drift(stack, start_upgrades=True)


@contextlib.asynccontextmanager
async def _loading_node(stack: Stack) -> AsyncIterator[tuple[str, Path, str]]:
    """A real node agent serving files and a sample backend that loads models, and a worker
    that trusts a sources directory: (node id, sources directory, task queue)."""
    from activities.sources import TrustedSources
    from activities.staging import StagingConfig
    from durable_installs.devstack.sample_backend import SampleBackend
    from durable_installs.node_agent import Agent
    from durable_installs.node_agent.files import FilesConfig
    from tests.node_agent.conftest import fast_config
    from tests.ports import AGENT_PORTS

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        gallery = Gallery(path=root / "gallery" / "index.yaml")
        gallery.add_backend(SampleBackend("cpu-load"), root / "archives")
        gallery.write()
        node_id = f"node-{uuid.uuid4().hex[:8]}"
        config = fast_config(
            node_id, root / "backends", gallery, stack.nats_url, AGENT_PORTS.block()
        )
        files = FilesConfig(token="record", address="127.0.0.1:0", reserve_bytes=0)
        agent = Agent(replace(config, files=files))
        await agent.start()
        staging = StagingConfig(
            sources=TrustedSources(((root / "sources").as_uri() + "/",)),
            files_token="record",
            cache_dir=root / "cache",
        )
        queue = f"record-load-{uuid.uuid4().hex[:6]}"
        try:
            async with create_worker(stack.client, stack.nc, queue, staging=staging):
                yield node_id, root / "sources", queue
        finally:
            await agent.stop()


def _model_file(directory: Path, name: str, content: bytes) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(content)
    return {
        "uri": (directory / name).as_uri(),
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "path": f"qwen3/{name}",
    }


@scenario
async def model_loaded(stack: Stack) -> list[WorkflowHandle[Any, Any]]:
    """Two files staged to a real agent and loaded; then the same load answers at once."""
    from durable_installs.contracts.load import LoadModelInput
    from workflows.load_model import LoadModelWorkflow

    async with _loading_node(stack) as (node_id, sources, queue):
        files = [
            _model_file(sources, "model.gguf", b"weights" * 50_000),
            _model_file(sources, "tokenizer.json", b'{"tokens": []}'),
        ]
        input = LoadModelInput.model_validate(
            {
                "node_id": node_id,
                "backend": "cpu-load",
                "model_id": "qwen3",
                "files": files,
                "install_options": dict(FAST),
            }
        )
        handles = []
        for _ in range(2):
            handle = await stack.client.start_workflow(
                LoadModelWorkflow.run,
                input,
                id=f"load-record-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
            await handle.result()
            handles.append(handle)
    return handles


@contextlib.asynccontextmanager
async def running_stack() -> AsyncIterator[Stack]:
    """Two dev servers (one with a small history limit), nats-server, in-process workers."""

    async def dev_server(*extra: str) -> WorkflowEnvironment:
        return await WorkflowEnvironment.start_local(
            dev_server_existing_path=find_binary("temporal"),
            search_attributes=SEARCH_ATTRIBUTES,
            data_converter=pydantic_data_converter,
            dev_server_log_level="error",
            dev_server_extra_args=list(extra),
        )

    with nats_server() as url:
        nc = await nats.connect(url, name="history-recorder")
        env = await dev_server()
        small = await dev_server(
            "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"
        )
        try:
            async with (
                create_worker(env.client, nc, "record") as _,
                create_worker(small.client, nc, "record-small") as _,
            ):
                yield Stack(env.client, small.client, nc, "record", "record-small", url)
        finally:
            await small.shutdown()
            await env.shutdown()
            await nc.drain()


async def record(names: list[str]) -> None:
    async with running_stack() as stack:
        for name in names:
            handles = await SCENARIOS[name](stack)
            for number, handle in enumerate(handles, start=1):
                history = await handle.fetch_history()
                workflow_type = history.events[
                    0
                ].workflow_execution_started_event_attributes.workflow_type.name
                suffix = f".run{number}" if len(handles) > 1 else ""
                path = HISTORIES / workflow_type / f"{name}{suffix}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(history.to_json() + "\n")
                print(f"recorded {path.relative_to(HISTORIES.parent.parent)}")


def _recorded(name: str) -> bool:
    """Whether a history of the scenario exists (``<name>.json`` or ``<name>.run1.json``)."""
    return any(HISTORIES.glob(f"*/{name}.json")) or any(HISTORIES.glob(f"*/{name}.run1.json"))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("temporalio").setLevel(logging.ERROR)  # failed activities are scenarios
    unknown = [name for name in argv if name not in SCENARIOS]
    if unknown:
        print(f"error: unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
        return 2
    asyncio.run(record(argv or [name for name in SCENARIOS if not _recorded(name)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
