"""The fast path against a real node agent: a slow install is joined, never started twice."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client

from devstack.sample_backend import Gallery, SampleBackend
from tests.node_agent.conftest import ADVERTISE_HOST, AgentFactory
from tests.node_agent.helpers import ArtifactServer
from tests.test_fast_path import fast_answers
from tests.workflow_helpers import assert_replays, install_input, start_install, wait_until


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
    assert (result.attempts, result.probes) == (1, 0), "the agent answered the joined request"
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
