"""A node agent killed mid-install: the install notices and finishes on the restarted agent.

The agent names itself in every status answer with an instance id that is new on each start;
the install activity, waiting on a request the dead agent will never answer, notices the
silence (or the new id) and the workflow probes and re-sends the same op instead of waiting
out ``install_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nats.aio.client import Client as NATS
from temporalio.client import Client

from node_agent.sample_backend import Gallery, SampleBackend, build_archive
from protocol.messages import encode_galleries
from tests.node_agent.conftest import ADVERTISE_HOST, AgentFactory
from tests.node_agent.helpers import ArtifactServer, eventually
from tests.workflow_helpers import assert_replays, install_input, start_install

INSTALL_TIMEOUT = 600.0
COMPLETES_WITHIN = 120.0
"""Generous bound that only noticing the dead agent can meet (without it: 600 s)."""


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


def agent_command(
    node_id: str, backends_dir: Path, gallery: Gallery, nats_url: str, ports: tuple[int, int]
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "node_agent",
        "--node-id",
        node_id,
        "--backends-dir",
        str(backends_dir),
        "--galleries",
        encode_galleries([gallery.config]),
        "--advertise-host",
        "127.0.0.1",
        "--port-range",
        f"{ports[0]}-{ports[1]}",
        "--nats-url",
        nats_url,
    ]


async def test_an_agent_killed_mid_download_is_noticed_and_the_install_finishes_after_restart(
    client: Client,
    task_queue: str,
    nc: NATS,
    nats_url: str,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    archives: Path,
    artifact_server: ArtifactServer,
    port_range: tuple[int, int],
    start_agent: AgentFactory,
) -> None:
    built = build_archive(archives / "cpu-slow.tar.gz", SampleBackend("cpu-slow"))
    uri = artifact_server.publish("/cpu-slow.tar.gz", built.path)
    gallery.add({"name": "cpu-slow", "uri": uri, "sha256": built.sha256})
    artifact_server.hold_after = 900  # the download stalls mid-body until released
    command = agent_command(node_id, tmp_path / "backends", gallery, nats_url, port_range)
    agent = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    try:
        assert agent.stdout is not None
        assert b"ready" in await agent.stdout.readline()
        handle = await start_install(
            client,
            task_queue,
            install_input(
                node_id,
                backend="cpu-slow",
                install_timeout_seconds=INSTALL_TIMEOUT,
                liveness_check_interval_seconds=2,
                deadline_seconds=3600,
            ),
        )
        await eventually(lambda: artifact_server.active == 1, "the download is under way")
    finally:
        agent.kill()  # SIGKILL: the request in flight is never answered
        await agent.wait()
    artifact_server.release()
    await start_agent()

    async with asyncio.timeout(COMPLETES_WITHIN):
        result = await handle.result()

    assert result.address.startswith(f"{ADVERTISE_HOST}:")
    assert result.attempts >= 2, "the same op was sent again to the restarted agent"
    assert artifact_server.requests[-1].range == "bytes=900-", "the partial file was resumed"
    await assert_replays(handle)
