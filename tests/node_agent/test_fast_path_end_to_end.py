"""The fast path against a real node agent: one request per op, one download."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.client import Client

from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.protocol import subjects
from tests.node_agent.conftest import ADVERTISE_HOST, AgentFactory
from tests.node_agent.helpers import ArtifactServer
from tests.test_fast_path import fast_answers
from tests.workflow_helpers import assert_replays, install_input, start_install, wait_until
from workflows.install_backend import InstallBackendWorkflow


async def test_a_download_outlasting_the_fast_path_is_joined_by_the_install_activity(
    client: Client,
    task_queue: str,
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
    artifact_server: ArtifactServer,
) -> None:
    artifact_server.publish_backend(gallery, archives, SampleBackend("cpu-slow"))
    artifact_server.hold_after = 64  # the download stalls until released
    node = await start_agent()

    handle = await start_install(
        client,
        task_queue,
        install_input(
            node.node_id, backend="cpu-slow", fast_path_seconds=0.5, install_timeout_seconds=60
        ),
    )

    async def install_activity_waiting() -> bool:
        return bool((await handle.describe()).raw_description.pending_activities)

    await wait_until(install_activity_waiting, what="the install activity waiting on the node")
    artifact_server.release()
    result = await handle.result()

    assert result.address.startswith(f"{ADVERTISE_HOST}:")
    assert not result.fast_path
    assert (result.attempts, result.probes) == (1, 0), "the agent answered the one request"
    assert [r.path for r in artifact_server.requests] == ["/cpu-slow.tar.gz"], "one download"
    [answer] = await fast_answers(handle)
    assert not answer.answered and answer.op_id == result.op_id
    await assert_replays(handle)


async def test_a_backend_already_running_on_the_agent_is_answered_by_the_fast_path(
    client: Client, task_queue: str, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo"), archives)
    gallery.write()
    node = await start_agent()
    slot = {"backend": "cpu-echo", "model_id": "qwen3", "fast_path_seconds": 5.0}
    first = await (
        await start_install(client, task_queue, install_input(node.node_id, **slot))
    ).result()

    warm = await start_install(client, task_queue, install_input(node.node_id, **slot))
    result = await warm.result()

    assert result.fast_path
    assert result.address == first.address
    assert (result.attempts, result.probes, result.progress_events) == (1, 0, 0)
    await assert_replays(warm)


class RequestLog:
    """What reached one node's subjects, in order: a second subscriber sees every request."""

    KINDS = {"backend.install": "install", "backend.install.status": "status"}

    def __init__(self, nc: NATS, node_id: str) -> None:
        self.nc, self.node_id = nc, node_id
        self.kinds: list[str] = []

    async def __aenter__(self) -> RequestLog:
        prefix = f"nodes.{self.node_id}."

        async def seen(msg: Msg) -> None:
            self.kinds.append(self.KINDS.get(msg.subject.removeprefix(prefix), "probe"))

        self._subs = [
            await self.nc.subscribe(subjects.install(self.node_id), cb=seen),
            await self.nc.subscribe(subjects.install_status(self.node_id), cb=seen),
            await self.nc.subscribe(subjects.models_running(self.node_id), cb=seen),
            await self.nc.subscribe(subjects.backend_list(self.node_id), cb=seen),
        ]
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            await sub.unsubscribe()


@pytest.mark.parametrize("download_seconds", [5.0, 30.0])
async def test_a_cold_install_on_the_agent_is_one_request(
    client: Client,
    nc: NATS,
    task_queue: str,
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
    artifact_server: ArtifactServer,
    download_seconds: float,
) -> None:
    artifact_server.publish_backend(gallery, archives, SampleBackend("cpu-slow"))
    artifact_server.hold_after = 64
    node = await start_agent()
    slot = {"backend": "cpu-slow", "fast_path_seconds": 1.0, "install_timeout_seconds": 120}
    async with RequestLog(nc, node.node_id) as log:
        handle = await start_install(client, task_queue, install_input(node.node_id, **slot))
        await asyncio.sleep(download_seconds)
        artifact_server.release()
        result = await handle.result()

    assert log.kinds.count("install") == 1, log.kinds
    assert (result.attempts, result.probes) == (1, 0)
    assert [r.path for r in artifact_server.requests] == ["/cpu-slow.tar.gz"], "one download"


async def test_an_agent_install_outliving_the_request_timeout_is_probed_before_one_resend(
    client: Client,
    nc: NATS,
    task_queue: str,
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
    artifact_server: ArtifactServer,
) -> None:
    artifact_server.publish_backend(gallery, archives, SampleBackend("cpu-slow"))
    artifact_server.hold_after = 64
    node = await start_agent()
    slot = {"backend": "cpu-slow", "fast_path_seconds": 1.0, "install_timeout_seconds": 2.0}
    async with RequestLog(nc, node.node_id) as log:
        handle = await start_install(client, task_queue, install_input(node.node_id, **slot))

        async def probed_twice() -> bool:
            return (await handle.query(InstallBackendWorkflow.progress)).probes >= 2

        await wait_until(probed_twice, what="the workflow probing the busy agent")
        artifact_server.release()
        result = await handle.result()

    installs = [i for i, kind in enumerate(log.kinds) if kind == "install"]
    assert len(installs) == 2, log.kinds
    assert "status" in log.kinds[installs[0] : installs[1]], "a probe came before the re-send"
    assert result.found_running and result.attempts == 2
    assert [r.path for r in artifact_server.requests] == ["/cpu-slow.tar.gz"], "one download"
