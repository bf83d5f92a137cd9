"""HTTP sources: Range resume, mirrors, and recovery after the agent is killed mid-install."""

from __future__ import annotations

import asyncio
from pathlib import Path

from durable_installs.devstack.sample_backend import SampleBackend, build_archive
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallRequest
from tests.node_agent.agent_process import agent_command
from tests.node_agent.helpers import ArtifactServer, NodeClient, eventually

GALLERY = "installing backend from gallery: "


def _publish(node: NodeClient, server: ArtifactServer, archives: Path, name: str) -> str:
    return server.publish_backend(node.gallery, archives, SampleBackend(name))


async def test_a_truncated_download_fails_and_the_next_attempt_resumes_with_range(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    url = _publish(node, artifact_server, archives, "cpu-echo")
    artifact_server.truncate_once_after = 700

    failed = await node.install("cpu-echo")

    assert failed.error.startswith(f'{GALLERY}failed to download backend "{url}": ')
    assert "unexpected EOF" in failed.error
    assert len(node.partial_files()) == 1
    resumed = await node.install("cpu-echo")
    assert resumed.success, resumed.error
    assert [r.range for r in artifact_server.requests] == [None, "bytes=700-"]
    assert node.partial_files() == []


async def test_mirrors_are_tried_in_order_after_the_primary_fails(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    built = build_archive(archives / "cpu-echo.tar.gz", SampleBackend("cpu-echo"))
    good = artifact_server.publish("/good.tar.gz", built.path)
    missing = artifact_server.url("/missing.tar.gz")
    node.gallery.add(
        {
            "name": "cpu-echo",
            "uri": missing,
            "mirrors": [artifact_server.url("/also-missing.tar.gz"), good],
            "sha256": built.sha256,
        }
    )

    reply = await node.install("cpu-echo")

    assert reply.success, reply.error
    assert [r.path for r in artifact_server.requests] == [
        "/missing.tar.gz",
        "/also-missing.tar.gz",
        "/good.tar.gz",
    ]
    rows = (await node.listing()).backends or []
    assert rows[0].uri == good


async def test_all_sources_failing_names_the_primary_uri(
    node: NodeClient, artifact_server: ArtifactServer
) -> None:
    missing = artifact_server.url("/missing.tar.gz")
    node.gallery.add({"name": "cpu-echo", "uri": missing, "mirrors": [missing + "?m"]})

    reply = await node.install("cpu-echo")

    assert reply.error.startswith(f'{GALLERY}failed to download backend "{missing}": HTTP 404')


async def test_agent_killed_mid_install_is_cleaned_at_restart_and_the_next_install_succeeds(
    start_agent,
    nc,
    node_id: str,
    tmp_path: Path,
    gallery,
    archives: Path,
    artifact_server: ArtifactServer,
    nats_url: str,
    port_range: tuple[int, int],
) -> None:
    client = NodeClient(nc, node_id, None, gallery, tmp_path / "backends")  # type: ignore[arg-type]
    _publish(client, artifact_server, archives, "cpu-echo")
    artifact_server.hold_after = 900
    proc = await asyncio.create_subprocess_exec(
        *agent_command(client.node_id, client.backends_dir, client.gallery, nats_url, port_range),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert b"ready" in await proc.stdout.readline()
        events = await client.watch("op-kill")
        request = BackendInstallRequest(backend="cpu-echo", op_id="op-kill").to_wire()
        await nc.publish(subjects.install(node_id), request)
        await eventually(
            lambda: any(e.phase == "downloading" and e.current for e in events), "downloading"
        )
        assert client.staging_leftovers() == ["cpu-echo.install-tmp"]
    finally:
        proc.kill()  # SIGKILL: no clean-up of any kind
        await proc.wait()

    node = await start_agent()

    assert node.staging_leftovers() == []
    artifact_server.release()
    reply = await node.install("cpu-echo")
    assert reply.success, reply.error
    assert artifact_server.requests[-1].range == "bytes=900-"  # the partial file was resumed
    assert node.installed_version("cpu-echo") == "1.0.0"
