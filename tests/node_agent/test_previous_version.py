"""The previous version an upgrade replaced: kept for a rollback, dropped when the rollout ends."""

from __future__ import annotations

from pathlib import Path

from durable_installs.devstack.sample_backend import SampleBackend
from durable_installs.protocol import subjects
from tests.node_agent.helpers import NodeClient


async def _upgraded_from_1_to_2(node: NodeClient, archives: Path) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), archives)
    await node.install("cpu-echo", model_id="a")
    node.gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives)
    reply = await node.upgrade("cpu-echo")
    assert reply.success, reply.error


async def test_an_upgrade_keeps_the_replaced_version_outside_the_listing(
    node: NodeClient, archives: Path
) -> None:
    await _upgraded_from_1_to_2(node, archives)

    kept = node.backends_dir / ".previous" / "cpu-echo"
    assert (kept / "VERSION").read_text().strip() == "1.0.0"
    assert [row.name for row in (await node.listing()).backends or []] == ["cpu-echo"]


async def test_a_rollback_restores_the_previous_version_and_stops_its_processes(
    node: NodeClient, archives: Path
) -> None:
    await _upgraded_from_1_to_2(node, archives)
    await node.install("cpu-echo", model_id="a")

    reply = await node.raw(subjects.rollback(node.node_id), b'{"backend": "cpu-echo"}')

    assert reply["success"] is True and reply["stopped_process_keys"] == ["a#0"]
    assert node.installed_version("cpu-echo") == "1.0.0"
    assert await node.running_keys() == []
    assert not (node.backends_dir / ".previous" / "cpu-echo").exists()
    respawned = await node.install("cpu-echo", model_id="a")
    assert respawned.success
    proc = node.agent.service.supervisor.get("a#0")
    assert proc is not None and proc.runs_current_directory()


async def test_a_second_upgrade_keeps_the_first_previous_version(
    node: NodeClient, archives: Path
) -> None:
    await _upgraded_from_1_to_2(node, archives)
    node.gallery.add_backend(SampleBackend("cpu-echo", version="3.0.0"), archives)
    assert (await node.upgrade("cpu-echo")).success

    await node.raw(subjects.rollback(node.node_id), b'{"backend": "cpu-echo"}')

    assert node.installed_version("cpu-echo") == "1.0.0"


async def test_a_rollback_without_a_kept_version_fails_and_changes_nothing(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), archives)
    await node.install("cpu-echo", model_id="a")

    reply = await node.raw(subjects.rollback(node.node_id), b'{"backend": "cpu-echo"}')

    assert reply["success"] is False
    assert "no previous version" in reply["error"]
    assert await node.running_keys() == ["a#0"]


async def test_dropping_the_previous_version_is_idempotent(
    node: NodeClient, archives: Path
) -> None:
    await _upgraded_from_1_to_2(node, archives)
    body = b'{"backend": "cpu-echo"}'

    first = await node.raw(subjects.previous_drop(node.node_id), body)
    second = await node.raw(subjects.previous_drop(node.node_id), body)

    assert first == {"success": True, "dropped": True}
    assert second == {"success": True}
    assert not (node.backends_dir / ".previous").joinpath("cpu-echo").exists()
    assert node.installed_version("cpu-echo") == "2.0.0"
