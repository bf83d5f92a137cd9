"""The node agent is SIGKILLed mid-install and restarted; the install still completes.

Three windows: mid-download (the restarted agent resumes the partial file with ``Range``),
between "download complete" and "extracted" (the complete download must not be fetched
again), and once the backend it spawned serves but before the agent replied (that process
must be adopted or replaced, never left running beside a second one). The install requests wait as
long as in production (900 s), so only a liveness check, not a request timeout, can notice
that the node restarted.
"""

from __future__ import annotations

import pytest
from temporalio.client import Client, WorkflowHandle

from durable_installs.contracts.install import InstallBackendResult
from durable_installs.node_agent import backend_rpc
from tests.chaos.conftest import ChaosNode, Harness
from tests.chaos.procs import pid_alive
from tests.chaos.scenario import (
    MIB,
    assert_survived,
    backend_processes,
    install_input,
    install_result,
    start_install,
)
from tests.workflow_helpers import wait_for, wait_until
from workflows.install_backend import InstallBackendWorkflow

pytestmark = pytest.mark.timeout(300)


async def _start(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str, node: ChaosNode
) -> WorkflowHandle[InstallBackendWorkflow, InstallBackendResult]:
    """A worker process, then the install of the node's slow backend."""
    await chaos.worker(temporal_address, nats_url)
    return await start_install(
        client, chaos.task_queue, install_input(node.node_id, node.backend.name)
    )


async def test_agent_killed_mid_download_restarts_and_the_install_resumes(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str
) -> None:
    node = await chaos.node(nats_url)
    handle = await _start(chaos, client, temporal_address, nats_url, node)
    await node.backend.served_at_least(0.3)

    node.agent.kill()
    node.backend.assert_mid_download()
    await node.agent.start()
    result = await install_result(handle)

    await assert_survived(result, node.backend, node.backends_dir, node.cancels)
    assert node.backend.server.ranges[-1] != node.backend.server.ranges[0], "resumed with Range"


async def test_agent_killed_between_download_and_extraction_does_not_download_again(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str
) -> None:
    node = await chaos.node(nats_url, size=2 * MIB, rate=2 * MIB, unpacked_zeros=256 * MIB)
    handle = await _start(chaos, client, temporal_address, nats_url, node)

    def downloaded() -> bool:
        files = node.partial_files()
        return bool(files) and files[0].stat().st_size >= node.backend.archive_size

    await wait_for(downloaded, within=120, what="the download complete", interval=0.01)
    node.agent.pause()
    assert not node.installed(), "the fault came too late: the backend was already extracted"
    node.agent.kill()
    await node.agent.start()
    result = await install_result(handle)

    await assert_survived(result, node.backend, node.backends_dir, node.cancels)


async def test_agent_killed_once_its_backend_serves_leaves_one_process_for_the_slot(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str
) -> None:
    node = await chaos.node(nats_url, size=1 * MIB, rate=2 * MIB)
    handle = await _start(chaos, client, temporal_address, nats_url, node)

    await wait_for(
        lambda: bool(backend_processes(node.backends_dir)),
        within=120,
        what="the backend process spawned",
        interval=0.01,
    )
    # Paused, the agent cannot see its backend become healthy nor reply; the backend's
    # output still fits the pipe, so the backend serves on once the agent is killed.
    node.agent.pause()
    (orphan,) = backend_processes(node.backends_dir)
    address = orphan.option("--addr") or ""

    async def serving() -> bool:
        return await backend_rpc.health(address, call_timeout=2)

    await wait_until(serving, within=60, what="the backend serving before its agent dies")
    node.agent.kill()
    assert pid_alive(orphan.pid), "the backend process outlived its agent"
    await node.agent.start()
    result = await install_result(handle)

    await assert_survived(result, node.backend, node.backends_dir, node.cancels)
