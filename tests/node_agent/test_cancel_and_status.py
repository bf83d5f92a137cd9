"""The status extension and cancel-by-op."""

from __future__ import annotations

import asyncio
from pathlib import Path

from durable_installs.devstack.sample_backend import SampleBackend
from durable_installs.protocol.messages import BackendStopRequest, NodeSlotState
from tests.node_agent.conftest import ADVERTISE_HOST
from tests.node_agent.helpers import ArtifactServer, NodeClient, eventually


def _publish_held(node: NodeClient, server: ArtifactServer, archives: Path) -> None:
    server.publish_backend(node.gallery, archives, SampleBackend("cpu-echo"))
    server.hold_after = 512


def _downloading(node: NodeClient, op_id: str) -> bool:
    return any(e.phase == "downloading" and e.current for e in node.events.get(op_id, []))


async def test_cancel_mid_download_replies_cancelled_and_leaves_no_staging_directory(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives)
    install = asyncio.create_task(node.install("cpu-echo", op_id="op-cancel"))
    await eventually(lambda: _downloading(node, "op-cancel"), "download in progress")
    assert node.staging_leftovers() == ["cpu-echo.install-tmp"]

    ack = await node.cancel("op-cancel")
    reply = await install

    assert ack == {"op_id": "op-cancel", "cancelled": True}
    assert not reply.success and reply.error.startswith("cancelled")
    assert node.staging_leftovers() == [] and node.partial_files() == []
    assert not (node.backends_dir / "cpu-echo").exists()
    assert (await node.status("cpu-echo")).state is NodeSlotState.ABSENT


async def test_cancel_of_an_op_that_is_not_in_flight_is_acknowledged_as_not_found(
    node: NodeClient,
) -> None:
    ack = await node.cancel("op-unknown")

    assert ack["cancelled"] is False and "op-unknown" in ack["error"]


async def test_cancelling_one_of_two_ops_keeps_the_shared_install_for_the_other(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives)
    first = asyncio.create_task(node.install("cpu-echo", op_id="op-keep"))
    await eventually(lambda: _downloading(node, "op-keep"), "download in progress")
    second = asyncio.create_task(node.install("cpu-echo", op_id="op-drop"))
    await eventually(lambda: len(node.agent.service._installs.all()[0].ops) == 2, "joined")

    await node.cancel("op-drop")
    dropped = await second
    artifact_server.release()
    kept = await first

    assert dropped.error == "cancelled"
    assert kept.success, kept.error


async def test_status_follows_a_slot_from_absent_to_in_flight_to_running_to_installed(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives)
    assert (await node.status("cpu-echo", model_id="m")).state is NodeSlotState.ABSENT

    install = asyncio.create_task(node.install("cpu-echo", model_id="m", op_id="op-s"))
    await eventually(lambda: _downloading(node, "op-s"), "download in progress")
    in_flight = await node.status("cpu-echo", model_id="m", op_id="op-s")
    assert in_flight.state is NodeSlotState.IN_FLIGHT
    assert in_flight.progress is not None and in_flight.progress.op_id == "op-s"
    assert in_flight.progress.phase == "downloading"

    artifact_server.release()
    reply = await install
    running = await node.status("cpu-echo", model_id="m")
    assert running.state is NodeSlotState.RUNNING and running.address == reply.address
    assert running.address.startswith(ADVERTISE_HOST + ":")

    await node.stop(BackendStopRequest(backend="m#0"))
    await eventually(lambda: not node.agent.service.supervisor.all(), "process stopped")
    assert (await node.status("cpu-echo", model_id="m")).state is NodeSlotState.INSTALLED
