"""The orchestrator's InstallBackendWorkflow driving a real node agent over real NATS."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from durable_installs.devstack.sample_backend import Gallery, SampleBackend, build_archive
from tests.node_agent.conftest import ADVERTISE_HOST, AgentFactory
from tests.node_agent.helpers import ArtifactServer
from tests.workflow_helpers import assert_replays, install_input, start_install, wait_until
from workflows.install_backend import InstallBackendWorkflow


async def test_fresh_install_then_warm_path_return_the_same_routable_address(
    client: Client, task_queue: str, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo"), archives)
    gallery.write()
    node = await start_agent()

    first = await start_install(
        client, task_queue, install_input(node.node_id, backend="cpu-echo", model_id="qwen3")
    )
    fresh = await first.result()
    second = await start_install(
        client, task_queue, install_input(node.node_id, backend="cpu-echo", model_id="qwen3")
    )
    warm = await second.result()

    assert fresh.address.startswith(f"{ADVERTISE_HOST}:")
    assert warm.address == fresh.address
    assert fresh.progress_events > 0, "the agent streamed progress for the fresh install"
    assert (warm.attempts, warm.probes, warm.progress_events) == (1, 0, 0)
    await assert_replays(first)


async def test_slow_install_is_probed_through_the_status_extension_and_downloads_once(
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
        install_input(node.node_id, backend="cpu-slow", install_timeout_seconds=1),
    )

    async def probed() -> bool:
        return (await handle.query(InstallBackendWorkflow.progress)).last_probe is not None

    await wait_until(probed, what="a probe of the node agent")
    status = await handle.query(InstallBackendWorkflow.progress)
    assert status.last_probe is not None
    assert status.last_probe.source == "status" and status.last_probe.state == "IN_FLIGHT"
    artifact_server.release()
    result = await handle.result()

    assert result.address.startswith(f"{ADVERTISE_HOST}:")
    assert result.attempts == 2, "one more install once the agent said the slot runs"
    assert [r.path for r in artifact_server.requests] == ["/cpu-slow.tar.gz"]
    await assert_replays(handle)


async def test_an_install_from_an_untrusted_uri_fails_at_once_as_rejected(
    client: Client,
    task_queue: str,
    start_agent: AgentFactory,
    archives: Path,
    artifact_server: ArtifactServer,
) -> None:
    built = build_archive(archives / "evil.tar.gz", SampleBackend("evil"))
    uri = artifact_server.publish("/evil.tar.gz", built.path)
    node = await start_agent()

    handle = await start_install(
        client, task_queue, install_input(node.node_id, backend="evil", uri=uri, name="evil")
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InstallRejected" and cause.non_retryable
    assert "--allow-request-uri" in cause.message
    assert artifact_server.requests == []
