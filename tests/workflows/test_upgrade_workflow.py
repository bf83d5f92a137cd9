"""``UpgradeBackendWorkflow`` driving a real node agent (or a scripted liar) over real NATS."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from durable_installs.backendctl.cli import build_parser
from durable_installs.backendctl.command import Context
from durable_installs.backendctl.lifecycle import run_upgrade
from durable_installs.contracts.upgrade import UpgradeBackendInput, UpgradeBackendResult
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendListReply,
    BackendUpgradeReply,
    NodeBackendInfo,
)
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import NodeClient
from tests.workflow_helpers import assert_replays, install_input, start_install
from workflows.upgrade_backend import UpgradeBackendWorkflow

FAST_UPGRADE: dict[str, Any] = {
    "probe_interval_seconds": 0.5,
    "retry_backoff_seconds": 0.5,
    "retry_backoff_max_seconds": 1,
    "health_gate_seconds": 60,
    "install_options": {"probe_interval_seconds": 0.5, "retry_backoff_seconds": 0.5},
}


async def start_upgrade(
    client: Client, task_queue: str, node_id: str, backend: str, **fields: Any
) -> WorkflowHandle[UpgradeBackendWorkflow, UpgradeBackendResult]:
    return await client.start_workflow(
        UpgradeBackendWorkflow.run,
        UpgradeBackendInput(node_id=node_id, backend=backend, **{**FAST_UPGRADE, **fields}),
        id=f"upgrade-test-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue,
    )


async def _running_v1(
    client: Client, task_queue: str, node: NodeClient, gallery: Gallery, archives: Path
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), archives)
    handle = await start_install(
        client, task_queue, install_input(node.node_id, backend="cpu-echo", model_id="m")
    )
    await handle.result()


async def test_upgrade_of_a_running_slot_restarts_it_from_the_new_version(
    client: Client, task_queue: str, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    node = await start_agent()
    await _running_v1(client, task_queue, node, gallery, archives)
    old = node.agent.service.supervisor.get("m#0")
    gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives)

    handle = await start_upgrade(client, task_queue, node.node_id, "cpu-echo")
    result = await handle.result()

    assert (result.before.version, result.after.version) == ("1.0.0", "2.0.0")
    assert result.stopped_process_keys == ["m#0"]
    assert [(s.model_id, s.replica_index, s.healthy) for s in result.slots] == [("m", 0, True)]
    new = node.agent.service.supervisor.get("m#0")
    assert old is not None and not old.alive
    assert new is not None and new is not old and new.runs_current_directory()
    assert node.installed_version("cpu-echo") == "2.0.0"
    rows = (await node.listing()).backends or []
    assert [(r.name, r.version) for r in rows] == [("cpu-echo", "2.0.0")]
    assert not (node.backends_dir / ".previous" / "cpu-echo").exists(), "dropped at the end"
    await assert_replays(handle)


async def test_an_upgrade_is_never_sent_to_a_node_without_the_backend(
    client: Client, task_queue: str, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    node = await start_agent()
    gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives)

    handle = await start_upgrade(client, task_queue, node.node_id, "cpu-echo")
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "BackendNotInstalled"
    assert f'"cpu-echo" is not installed on node {node.node_id}' in cause.message
    assert (await node.listing()).backends is None


async def test_a_node_that_says_success_but_lists_the_old_version_fails_the_upgrade(
    client: Client, task_queue: str, nc: NATS
) -> None:
    node_id = f"liar-{uuid.uuid4().hex[:6]}"
    old = NodeBackendInfo(name="cpu-echo", version="1.0.0", installed_at="2026-01-01T00:00:00Z")
    upgrades: list[bytes] = []

    async def on_upgrade(msg: Msg) -> None:
        upgrades.append(msg.data)
        await msg.respond(BackendUpgradeReply(success=True).to_wire())

    async def on_list(msg: Msg) -> None:
        await msg.respond(BackendListReply(backends=[old]).to_wire())

    async def on_running(msg: Msg) -> None:
        await msg.respond(b'{"models": []}')

    subscriptions = [
        await nc.subscribe(subjects.upgrade(node_id), cb=on_upgrade),
        await nc.subscribe(subjects.backend_list(node_id), cb=on_list),
        await nc.subscribe(subjects.models_running(node_id), cb=on_running),
    ]
    try:
        handle = await start_upgrade(client, task_queue, node_id, "cpu-echo")
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "UpgradeNotApplied"
    assert f"node {node_id} replied success to the upgrade of cpu-echo" in cause.message
    assert "backend.list shows version 1.0.0" in cause.message
    assert len(upgrades) == 1
    await assert_replays(handle)


async def test_backendctl_upgrade_prints_the_change_and_fails_in_one_line_on_a_bad_input(
    client: Client,
    task_queue: str,
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
) -> None:
    node = await start_agent()
    await _running_v1(client, task_queue, node, gallery, archives)
    gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives)
    base = ["--node-id", node.node_id, "--backend", "cpu-echo", "--task-queue", task_queue]
    out, err = io.StringIO(), io.StringIO()

    def upgrade(*flags: str) -> Context[None]:
        args = build_parser().parse_args(["upgrade", *base, *flags])
        return Context(args=args, client=client, checked=None, out=out, err=err)

    code = await run_upgrade(upgrade())
    bad = await run_upgrade(upgrade("--option", "deadline_seconds=0"))

    assert code == 0, err.getvalue()
    printed = out.getvalue()
    assert "succeeded" in printed and "after version 2.0.0" in printed
    assert "slot m#0:" in printed and "healthy" in printed
    assert bad == 2
    error = err.getvalue().strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: invalid input: deadline_seconds: ")
