"""A node agent killed mid-install: the install notices and finishes on the restarted agent.

The agent names itself in every status answer with an instance id that is new on each start;
the install activity, waiting on a request the dead agent will never answer, notices the
silence (or the new id) and the workflow probes and re-sends the same op instead of waiting
out ``install_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from durable_installs.contracts.install import InstallBackendResult
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.protocol import subjects
from tests.node_agent.agent_process import agent_command, running_agent
from tests.node_agent.conftest import ADVERTISE_HOST, AgentFactory
from tests.node_agent.helpers import ArtifactServer, eventually
from tests.workflow_helpers import assert_replays, install_input, start_install, wait_until
from workflows.install_backend import InstallBackendWorkflow

INSTALL_TIMEOUT = 600.0
COMPLETES_WITHIN = 120.0
"""Generous bound that only noticing the dead agent can meet (without it: 600 s)."""
NODE_UNREACHABLE_TEXT = "became unreachable"


async def test_every_status_answer_names_the_agent_instance_and_a_restart_changes_it(
    start_agent: AgentFactory,
) -> None:
    first = await start_agent()
    before = await first.status("cpu-echo")
    again = await first.status("cpu-echo", op_id="op-1")
    await first.agent.stop()
    restarted = await start_agent()
    after = await restarted.status("cpu-echo")

    assert before.instance_id and again.instance_id == before.instance_id
    assert after.instance_id and after.instance_id != before.instance_id


@dataclass
class Scene:
    """A gallery backend whose download stalls mid-body, and how to run an agent for it."""

    node_id: str
    command: list[str]
    server: ArtifactServer
    log: Path


@pytest.fixture
def scene(
    node_id: str,
    nats_url: str,
    tmp_path: Path,
    gallery: Gallery,
    archives: Path,
    artifact_server: ArtifactServer,
    port_range: tuple[int, int],
) -> Scene:
    artifact_server.publish_backend(gallery, archives, SampleBackend("cpu-slow"))
    artifact_server.hold_after = 900  # the download stalls mid-body until released
    command = agent_command(node_id, tmp_path / "backends", gallery, nats_url, port_range)
    return Scene(node_id, command, artifact_server, tmp_path / "agent.log")


async def start_slow_install(
    client: Client, task_queue: str, scene: Scene
) -> WorkflowHandle[InstallBackendWorkflow, InstallBackendResult]:
    handle = await start_install(
        client,
        task_queue,
        install_input(
            scene.node_id,
            backend="cpu-slow",
            install_timeout_seconds=INSTALL_TIMEOUT,
            liveness_check_interval_seconds=2,
            deadline_seconds=3600,
        ),
    )
    await eventually(lambda: scene.server.active == 1, "the download is under way")
    return handle


async def failed_attempts(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Failure messages of the install activity's attempts, oldest first."""
    history = await handle.fetch_history()
    return [
        event.activity_task_failed_event_attributes.failure.message
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]


async def finished_on_the_new_agent(
    handle: WorkflowHandle[InstallBackendWorkflow, InstallBackendResult], scene: Scene
) -> InstallBackendResult:
    async with asyncio.timeout(COMPLETES_WITHIN):
        result = await handle.result()
    assert result.address.startswith(f"{ADVERTISE_HOST}:")
    assert result.attempts >= 2, "the same op was sent again to the restarted agent"
    assert scene.server.requests[-1].range == "bytes=900-", "the partial file was resumed"
    await assert_replays(handle)
    return result


async def test_an_agent_killed_mid_download_is_found_unreachable_and_finishes_after_restart(
    client: Client, task_queue: str, scene: Scene, start_agent: AgentFactory
) -> None:
    async with running_agent(scene.command, scene.log):
        handle = await start_slow_install(client, task_queue, scene)
    scene.server.release()

    async def noticed() -> bool:
        return any(NODE_UNREACHABLE_TEXT in m for m in await failed_attempts(handle))

    await wait_until(noticed, within=COMPLETES_WITHIN, what="the install noticed the dead agent")
    await start_agent()

    await finished_on_the_new_agent(handle, scene)


async def test_an_agent_restarted_between_two_checks_is_noticed_by_its_new_instance_id(
    client: Client, task_queue: str, nc: NATS, scene: Scene, start_agent: AgentFactory
) -> None:
    checks: list[bytes] = []

    async def observe(msg: Msg) -> None:  # listens only; the agent answers
        checks.append(msg.data)

    # With a listener on the status subject it never has "no responders": the install can
    # only tell the restart from the instance id.
    observer = await nc.subscribe(subjects.install_status(scene.node_id), cb=observe)
    try:
        async with running_agent(scene.command, scene.log):
            handle = await start_slow_install(client, task_queue, scene)
            await eventually(lambda: bool(checks), "a first liveness check")
        scene.server.release()
        await start_agent()

        await finished_on_the_new_agent(handle, scene)
    finally:
        await observer.unsubscribe()
    assert any("restarted" in m for m in await failed_attempts(handle))
